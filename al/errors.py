"""Typed errors. Each message says what was wrong and how to fix it."""

from __future__ import annotations


class ALError(Exception):
    """Base class of every error the framework raises on purpose."""


class ConfigError(ALError, ValueError):
    """A setting is invalid (bad flag value, unknown parameter, impossible budget)."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup failed; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(ALError, ValueError):
    """A name was registered twice."""


class StoreError(ALError):
    """The store cannot be opened or written, or refuses a change that would corrupt a run."""


class ConfigMismatchError(StoreError):
    """A run of the same name exists with a different configuration."""


class DataError(ALError):
    """A dataset cannot be found or loaded."""


class OracleError(ALError):
    """The oracle failed or returned answers that cannot be accepted."""


class LabelsPending(ALError):
    """The oracle answered part of a query; the run stops and can be continued later."""

    def __init__(self, message: str, *, awaited: int) -> None:
        super().__init__(message)
        self.awaited = awaited


class IncompatibleStrategyError(ConfigError):
    """The learner cannot provide what a strategy needs (for example MC dropout without dropout layers)."""


class StrategyError(ALError):
    """A strategy broke its contract: wrong number of ids, duplicate ids, scores and ids of different shapes, or a
    constructor setting not stored under its own name. A bug in the strategy, not in the user's settings."""


class ModelError(ALError):
    """The trained model gave outputs that cannot be used, such as NaN acquisition scores (diverged training)."""


class UnreadableSamples(DataError):
    """Some samples of a pool of files could not be read (corrupt or missing files). ``reasons``: id -> "path:
    reason". The loop excludes them, records why, and goes on without them."""

    def __init__(self, reasons: dict[int, str]) -> None:
        first = "; ".join(list(reasons.values())[:3])
        more = f" and {len(reasons) - 3} more" if len(reasons) > 3 else ""
        super().__init__(f"{len(reasons)} samples could not be read: {first}{more}")
        self.reasons = reasons
