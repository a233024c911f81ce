"""Name -> object registries that refuse duplicates and answer typos with suggestions.

Third-party objects register through an entry-point group (``al.strategies`` for strategies), so
``pip install my-strategy`` is enough to make ``--strategy my-strategy`` work.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .errors import ConfigError, DuplicateNameError, UnknownNameError

if TYPE_CHECKING:
    from .strategy import Strategy

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; used bare or as a decorator."""
        if obj is None:

            def decorate(o: T) -> T:
                return self.register(name, o)

            return decorate
        key = self._normalise(name)
        if key in self._items and self._items[key] is not obj:
            raise DuplicateNameError(
                f"{self.kind} {name!r} is already registered (by {_describe(self._items[key])}); "
                f"choose another name or unregister the old one first"
            )
        self._items[key] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(self._normalise(name), None)

    def get(self, name: str) -> T:
        self._load_entry_points()
        key = self._normalise(name)
        if key not in self._items:
            close = difflib.get_close_matches(key, list(self._items), n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items))})")
        return self._items[key]

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return self._normalise(name) in self._items

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    @staticmethod
    def _normalise(name: str) -> str:
        return name.strip().lower().replace("_", "-")

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            obj = ep.load()
            key = self._normalise(ep.name)
            if key in self._items and self._items[key] is not obj:
                # Silently keeping either one would run a strategy the user did not ask for.
                dist = getattr(ep, "dist", None)
                by = f"package {dist.name!r}" if dist is not None else "an installed package"
                raise DuplicateNameError(
                    f"{self.kind} {ep.name!r} from {by} (entry point {ep.value!r}, group {self.entry_point_group!r}) "
                    f"collides with the {self.kind} already registered by {_describe(self._items[key])}; rename "
                    f"the entry point in that package or uninstall it"
                )
            self.register(ep.name, obj)


def _describe(obj: object) -> str:
    mod = getattr(obj, "__module__", "?")
    return f"{mod}.{getattr(obj, '__qualname__', type(obj).__name__)}"


# --------------------------------------------------------------------------------------------------------------
# The strategy registry. Built-in strategies are declared in pyproject.toml's ``al.strategies`` entry-point group,
# exactly as a third party declares its own, so the framework never imports the ``strategies`` package by name.
# --------------------------------------------------------------------------------------------------------------
STRATEGIES: Registry[type[Strategy]] = Registry("strategy", entry_point_group="al.strategies")
S = TypeVar("S", bound="type[Strategy]")


def register_strategy(cls: S) -> S:
    """Register a :class:`~al.strategy.Strategy` subclass under its ``name`` (usable as a decorator)."""
    if not getattr(cls, "name", ""):
        raise ConfigError(f"{cls.__qualname__} needs a class attribute `name` to be registered")
    STRATEGIES.register(cls.name, cls)
    return cls


def strategy_parameters(cls: type) -> list[str]:
    """The keyword settings a strategy class accepts: its constructor's named parameters."""
    init = getattr(cls, "__init__", object.__init__)
    if init is object.__init__:
        return []
    params = inspect.signature(init).parameters
    return [k for k, p in params.items() if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def build_strategy(name: str, **kwargs: Any) -> Strategy:
    """Instantiate a registered strategy, checking ``kwargs`` against its constructor."""
    cls = STRATEGIES.get(name)
    accepted = strategy_parameters(cls)
    init = getattr(cls, "__init__", object.__init__)
    takes_any = init is not object.__init__ and any(
        p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()
    )
    if not takes_any:
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ConfigError(
                f"strategy {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"it accepts: {', '.join(accepted) or 'no parameters'}"
            )
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad --strategy-kwargs for {name!r}: {e}") from e


def strategies_for(task: str) -> list[str]:
    """The registered strategies that apply to ``task`` and can run on it here (:attr:`Strategy.tasks`)."""
    out = []
    for n in STRATEGIES.names():
        cls = STRATEGIES.get(n)
        if task in cls.tasks and not cls.unavailable_for(task):
            out.append(n)
    return out


def check_strategy_task(name: str | type[Strategy], task: str, settings: Mapping[str, Any] | None = None) -> None:
    """Refuse, before anything runs, a strategy that does not apply to ``task`` (its ``tasks``) or cannot run on it
    here (``unavailable_for``), and settings given that only mean something for the other task: for a classifier
    (its ``classification_settings``) on a regression task, for a regression model (its ``regression_settings``)
    on any other. Every message names the strategies that do apply, or the settings to drop.

    ``name``: a registered name or a strategy class (the Python API's object); ``settings``: the settings given
    (``--strategy-kwargs``), not the defaults."""
    from .tasks import REGRESSION

    cls = STRATEGIES.get(name) if isinstance(name, str) else name
    shown = name if isinstance(name, str) else (cls.name or cls.__qualname__)
    applies = f"strategies for a {task} task: {', '.join(strategies_for(task))}"
    if task not in cls.tasks:
        raise ConfigError(
            f"strategy {shown!r} does not apply to a {task} task (it applies to {', '.join(sorted(cls.tasks))}); "
            f"{applies}"
        )
    why = cls.unavailable_for(task)
    if why:
        raise ConfigError(f"strategy {shown!r} on a {task} task: not yet: {why}; {applies}")
    given = sorted(set(settings or {}) & cls.classification_settings) if task == REGRESSION else []
    if given:
        raise ConfigError(
            f"strategy {shown!r}: {', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to classifiers "
            f"only (they weigh classes), and this is a regression task; drop "
            f"{'it' if len(given) == 1 else 'them'} from --strategy-kwargs"
        )
    given = sorted(set(settings or {}) & cls.regression_settings) if task != REGRESSION else []
    if given:
        raise ConfigError(
            f"strategy {shown!r}: {', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to regression "
            f"models only (the scores of a model that predicts a number), and this is a {task} task; drop "
            f"{'it' if len(given) == 1 else 'them'} from --strategy-kwargs, or run with --task regression"
        )
