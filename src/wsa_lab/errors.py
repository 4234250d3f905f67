"""User-facing errors: the CLI prints these as one line (no traceback unless HYDRA_FULL_ERROR=1)."""


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
