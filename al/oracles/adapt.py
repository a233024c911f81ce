"""The one place where a user's object becomes an :class:`~al.oracles.base.Oracle`.

Past this edge the loop sees only ``Oracle`` instances, so it calls every optional feature directly; what a
user's object lacks is filled in here, once, with the base class's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import OracleError
from .base import Oracle, RoundInfo
from .simulated import CallbackOracle


class WrappedOracle(Oracle):
    """An object with ``label(ids)`` that does not subclass :class:`Oracle`, seen through the Oracle interface.

    ``name`` and ``one_at_a_time`` are read from the object when it is wrapped; ``begin_round`` and
    ``how_to_answer`` are called on it when it has them. Everything else is the base class's default.
    """

    def __init__(self, wrapped: Any, name: str | None = None) -> None:
        self.wrapped = wrapped
        self.name = str(getattr(wrapped, "name", None) or name or Oracle.name)
        self.one_at_a_time = bool(getattr(wrapped, "one_at_a_time", Oracle.one_at_a_time))
        self._begin_round = getattr(wrapped, "begin_round", None)
        self._how_to_answer = getattr(wrapped, "how_to_answer", None)

    def begin_round(self, info: RoundInfo) -> None:
        if self._begin_round is not None:
            self._begin_round(info)

    def label(self, ids: np.ndarray) -> Mapping[int, int]:
        return self.wrapped.label(ids)

    def how_to_answer(self, round_idx: int) -> str:
        if self._how_to_answer is not None:
            return str(self._how_to_answer(round_idx))
        return super().how_to_answer(round_idx)

    def __repr__(self) -> str:
        return f"WrappedOracle({self.wrapped!r})"


def as_oracle(obj: Any, *, name: str | None = None) -> Oracle:
    """``obj`` as an :class:`Oracle`: an Oracle itself; an object with ``label(ids)``, wrapped in
    :class:`WrappedOracle`; a function ``ids -> labels``, wrapped in :class:`CallbackOracle`. ``name`` is the
    name to record when the object has none. Anything else is refused with an OracleError."""
    if isinstance(obj, Oracle):
        return obj
    if isinstance(obj, type):  # checked first: a class has a `label` attribute, but calling it lacks `self`
        raise OracleError(
            f"the oracle is the class {obj.__qualname__}, not an instance of it; pass {obj.__qualname__}(...)"
        )
    if callable(getattr(obj, "label", None)):
        return WrappedOracle(obj, name=name)
    if callable(obj):
        return CallbackOracle(obj, name=name or CallbackOracle.name)
    raise OracleError(
        f"the oracle is a {type(obj).__name__}, which cannot label; give an object with "
        f"label(ids) -> {{id: label}}, a function ids -> labels, or an al.Oracle subclass"
    )
