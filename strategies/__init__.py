"""Acquisition strategies, registered by name.

``STRATEGIES`` maps names to :class:`al.strategy.Strategy` subclasses. Third-party packages register theirs
through the ``al.strategies`` entry-point group; ``register_strategy`` refuses duplicates and
``build_strategy`` answers typos with suggestions and unknown keyword arguments with the valid ones.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, TypeVar

from al.errors import ConfigError
from al.registry import Registry
from al.strategy import Context, Selection, Strategy, top_n

STRATEGIES: Registry[type[Strategy]] = Registry("strategy", entry_point_group="al.strategies")
S = TypeVar("S", bound=type[Strategy])


def register_strategy(cls: S) -> S:
    if not cls.name:
        raise ConfigError(f"{cls.__qualname__} needs a class attribute `name` to be registered")
    STRATEGIES.register(cls.name, cls)
    return cls


def build_strategy(name: str, **kwargs: Any) -> Strategy:
    """Instantiate a registered strategy, checking ``kwargs`` against its constructor."""
    cls = STRATEGIES.get(name)
    params = {} if cls.__init__ is object.__init__ else dict(inspect.signature(cls.__init__).parameters)
    accepted = [k for k, p in params.items()
                if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ConfigError(f"strategy {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                              f"it accepts: {', '.join(accepted) or 'no parameters'}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad --strategy-kwargs for {name!r}: {e}") from e


# Built-in families, one module each; importing registers them.
for _mod in ("uncertainty", "regrad", "bayesian", "diversity"):
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:  # a family not written yet
        if _e.name != f"{__name__}.{_mod}":
            raise

__all__ = ["STRATEGIES", "register_strategy", "build_strategy", "Strategy", "Selection", "Context", "top_n"]
