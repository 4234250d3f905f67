"""User-facing errors: the CLI prints these as one line (no traceback unless HYDRA_FULL_ERROR=1)."""

import os
import sys
from typing import NoReturn


class WsaLabError(Exception):
    """An error caused by the user's input or machine, with a message that says how to fix it."""


class ConfigError(WsaLabError):
    """The composed configuration is invalid."""


class WeightsNotFoundError(WsaLabError):
    """Pre-trained weights were asked for but are not available offline."""


class TrainingDivergedError(WsaLabError):
    """A loss, gradient or parameter became NaN/Inf; training stops before the bad step is saved."""


class EnvContractError(ConfigError):
    """An env's observation or action space does not fit the graph env contract (checked at start-up)."""


class EnvError(WsaLabError):
    """A user's env misbehaved while training (raised, returned NaN, or an observation outside its space)."""


class RunFolderBusyError(WsaLabError):
    """Another live wsa_lab process holds the run folder's lock (`<run dir>/.lock`, see `wsa_lab.run.lock`)."""

    def __init__(self, message: str, folder: str = "", holder: dict | None = None) -> None:
        super().__init__(message)
        self.folder = folder
        self.holder = dict(holder or {})

    def __reduce__(self):  # pickles (a submitit job's result) with its fields
        return (type(self), (str(self), self.folder, self.holder))


class OutputFolderError(WsaLabError, OSError):
    """A file of a run or sweep folder cannot be written: disk full, quota, read-only file system, permissions.

    Also an `OSError` (with the original `errno` and `filename`), so code that tolerates unwritable files
    (`except OSError`) keeps doing so; its message is one line that says what to do.
    """

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None) -> None:
        OSError.__init__(self, errno, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.message, self.errno, self.filename))


def first_line(problem: BaseException | str) -> str:
    """The first line of a message (an exception's, or its type's name when it has none): what a one-line error shows."""
    return (str(problem).strip().splitlines() or [type(problem).__name__])[0]


def print_error(program: str, problem: BaseException | str) -> int:
    """Every CLI's way to report a user's error: one line, `<program>: error: <first line of the message>`, on
    stderr; returns the exit code 1. With HYDRA_FULL_ERROR=1 an exception is raised again instead (its traceback)."""
    if isinstance(problem, BaseException) and os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise problem
    print(f"{program}: error: {first_line(problem)}", file=sys.stderr, flush=True)
    return 1


def exit_with_one_line(program: str, problem: BaseException | str) -> NoReturn:
    """`print_error`, then exit with code 1 (no traceback: the message says what to fix)."""
    raise SystemExit(print_error(program, problem)) from None
