"""studylib's errors, in a module that imports only the standard library, so every other module can
raise them.

Each one reaches the user as one line (`studylib: error: ...`) and its exit code; none is a
traceback.
"""

from __future__ import annotations

import sys


def cut(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


def shown(value: object, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: an error line never echoes a huge value whole."""
    return cut(repr(value), limit)


def one_line(message: str, limit: int = 1000) -> str:
    """A message as one line of at most about `limit` characters."""
    return cut(" ".join(message.split()), limit)


def one_line_in_notebooks() -> None:
    """In a Jupyter kernel, show a StudylibError as its one line instead of a traceback (the cell
    still fails, so papermill and nbval stop on it). Outside IPython, nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return

    def show(
        _shell: object, _type: type, err: StudylibError, _tb: object, tb_offset: int | None = None
    ) -> list[str]:
        line = f"studylib: {err.kind}: {err}"
        print(line, file=sys.stderr, flush=True)
        return [line]

    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((StudylibError,), show)


class StudylibError(Exception):
    """An error the user can act on; its message names the file, key or path and what is allowed."""

    exit_code = 2
    kind = "error"  # the word after 'studylib:' in the one line the user sees


class ConfigError(StudylibError, ValueError):
    """A bad setting: a config key or value, a command-line argument, an environment variable."""


class DataError(StudylibError):
    """A dataset that cannot be read or does not hold what it should."""


class RunFolderError(StudylibError):
    """A run folder whose files cannot be used as they are: weights of another run, too little
    disk."""


class WriteError(StudylibError):
    """A file that could not be written: a full disk or quota, a file too large, an I/O error."""


class DivergedError(StudylibError, RuntimeError):
    """The loss became NaN or infinite; the last checkpoint is from the epoch before."""

    exit_code = 1
    kind = "diverged"


class JobError(StudylibError):
    """A job failed with an error that is not one of the above (its log holds the traceback)."""

    exit_code = 1
    kind = "job failed"
