"""User-facing errors.

Anything a researcher can fix by changing a config value or a path raises
:class:`FtlabError`. The CLI prints its message as one line and exits non-zero;
``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""


class FtlabError(Exception):
    """A bad input: the message names the key or path and how to fix it."""


class RunInterrupted(Exception):
    """The run stopped on a signal (SIGTERM: a preemption) with its state saved to resume from.

    Not an error: the CLI prints ``interrupted: <message>`` (the message ends with the exact
    command that resumes the run) and exits with ``exit_code``, 128 + the signal number as a
    shell reports a process ended by that signal (143 for SIGTERM).
    """

    def __init__(self, message: str, exit_code: int = 143) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RunCompleted(FtlabError):
    """``resume=true`` on a run that completed: nothing to do, and nothing of it is rewritten.

    The CLI prints the message as one line and exits 0; a sweep's job returns ``value``, the
    optimized metric the run recorded.
    """

    def __init__(self, message: str, value: float | None = None) -> None:
        super().__init__(message)
        self.value = value
