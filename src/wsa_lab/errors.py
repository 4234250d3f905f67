"""User-facing errors: the CLI prints these as one line (no traceback unless HYDRA_FULL_ERROR=1)."""

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
    """Another live wsa_lab process holds the run folder's lock (`<run dir>/.lock`, see `wsa_lab.runlock`)."""

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


def exit_with_one_line(program: str, exc: BaseException) -> NoReturn:
    """The CLIs' way out for a `WsaLabError` (or a config error): `<program>: error: <message>`, exit code 1."""
    print(f"{program}: error: {exc}", file=sys.stderr)
    sys.exit(1)
