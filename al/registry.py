"""Name -> object registries that refuse duplicates and answer typos with suggestions.

Third-party objects register through an entry-point group (``al.strategies`` for strategies), so
``pip install my-strategy`` is enough to make ``--strategy my-strategy`` work.
"""
from __future__ import annotations

import difflib
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from .errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; used bare or as a decorator."""
        if obj is None:
            return lambda o: self.register(name, o)  # type: ignore[return-value]
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
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items))})"
            )
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
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            if self._normalise(ep.name) not in self._items:
                self.register(ep.name, ep.load())


def _describe(obj: object) -> str:
    mod = getattr(obj, "__module__", "?")
    return f"{mod}.{getattr(obj, '__qualname__', type(obj).__name__)}"
