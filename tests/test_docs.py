"""The documentation site builds with ``mkdocs build --strict``: a broken link, a missing page or
an API name mkdocstrings cannot find fails; the README's first screen keeps the two commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

MKDOCS = Path(sys.executable).with_name("mkdocs")


def nav_pages(nav: list) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = set(nav_pages(config["nav"]))
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert listed == on_disk


def test_the_readme_first_screen_names_the_two_commands() -> None:
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:20])
    for command in ("make train", "make test", "make test-fast"):
        assert command in first_screen
    assert len((ROOT / "README.md").read_text().splitlines()) < 120


@pytest.mark.skipif(not MKDOCS.exists(), reason="mkdocs is not installed (pip install -e .[dev])")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "load_checkpoint" in api and "FinetuneModule" in api
    assert (tmp_path / "site" / "img" / "effective_robustness_mnist.png").stat().st_size > 10_000
