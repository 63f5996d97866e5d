"""Hugging Face hub access that fails in seconds when the hub can't be reached.

Unreachable, huggingface_hub retries each file for about 45 s before giving up. We probe
the endpoint once and, if it is down, switch the hub to offline mode for the load: files
already in the local cache still load, anything else fails at once.
"""

from __future__ import annotations

import functools
import socket
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from huggingface_hub import constants
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError

from ftlab.errors import FtlabError

# What a failed download or a broken local copy raises (hub errors, OSError from
# transformers, ValueError for an unrecognised or inconsistent config).
LOAD_ERRORS = (OSError, ValueError, EntryNotFoundError, SafetensorError)
PROBE_TIMEOUT_S = 3.0


@functools.cache
def hub_reachable() -> bool:
    """Whether a TCP connection to the hub endpoint (or the HTTPS proxy) opens; probed once."""
    target = urlsplit(urllib.request.getproxies().get("https") or constants.ENDPOINT)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname or "", port), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception message, for one-line errors."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]


@contextmanager
def hub_access(message: Callable[[str], str], local: bool = False) -> Iterator[None]:
    """Run a load from the hub (or a local copy, ``local=True``) with fast offline failure.

    Any load error becomes one ``FtlabError(message(reason))``.
    """
    offline = local or constants.HF_HUB_OFFLINE or not hub_reachable()
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline  # read at call time by huggingface_hub and transformers
    try:
        yield
    except LOAD_ERRORS as error:
        # Offline, the libraries' own messages only restate that the files are not cached.
        reason = "hub unreachable and not in the local cache" if offline and not local else ""
        raise FtlabError(message(reason or first_line(error))) from error
    finally:
        constants.HF_HUB_OFFLINE = previous
