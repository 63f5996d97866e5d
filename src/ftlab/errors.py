"""User-facing errors.

Anything a researcher can fix by changing a config value or a path raises
:class:`FtlabError`. The CLI prints its message as one line and exits non-zero;
``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""


class FtlabError(Exception):
    """A bad input: the message names the key or path and how to fix it."""
