"""Synthetic ``image_folder`` trees for load tests and benchmarks: 100k files in seconds.

Every class is one solid color (so a model can learn it) encoded once as a tiny PNG; the files
of a class are hard links to that encoding (one syscall each, no data written), or plain copies
where the file system has no hard links.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

# ext4 allows 65,000 links per inode; start a new source file well before that.
LINKS_PER_SOURCE = 10_000


def png_bytes(color: tuple[int, int, int], size: int = 8) -> bytes:
    """A ``size`` x ``size`` solid-color RGB PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def class_color(k: int, n: int) -> tuple[int, int, int]:
    """Distinct, evenly spaced colors for ``n`` classes."""
    level = int(255 * k / max(n - 1, 1))
    return level, 255 - level, (97 * k) % 256


def write_image_tree(
    root: str | os.PathLike,
    n_images: int,
    classes: Sequence[str] = ("a", "b", "c", "d"),
    size: int = 8,
    link: bool = True,
) -> Path:
    """Write ``root/<class>/<i>.png``, ``n_images`` files spread evenly over ``classes``.

    Returns ``root``. ``link=False`` writes every file's bytes instead of hard-linking them.
    """
    root = Path(root)
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        data = png_bytes(class_color(k, len(classes)), size)
        count = n_images // len(classes) + (k < n_images % len(classes))
        source: Path | None = None
        for i in range(count):
            path = folder / f"{i:07d}.png"
            if link and source is not None and i % LINKS_PER_SOURCE:
                try:
                    os.link(source, path)
                    continue
                except OSError:  # no hard links here (some network and FAT file systems)
                    link = False
            path.write_bytes(data)
            source = path
    return root
