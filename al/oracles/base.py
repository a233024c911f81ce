"""The oracle contract: whoever answers a query with labels.

An oracle is an :class:`Oracle`: ``label(ids) -> Mapping[int, int]`` returns labels for some or all of the given
global sample ids. Ids it leaves out stay pending; the run stops and a later run asks again. Every optional
feature has a default here, so the loop calls each one on every oracle and never probes with ``getattr``:

- ``name`` (default ``"oracle"``): recorded with every label it gives, and used in messages.
- ``one_at_a_time`` (default False): when True the loop asks for one id at a time and stores each answer as
  soon as it is given (a person at a terminal must not lose twenty answers because the twenty-first was never
  given).
- ``begin_round(info: RoundInfo)`` (default: nothing): called before ``label`` with the round index, the whole
  query and the labels already stored (the CSV hand-off oracle needs them to name its files and to recognise
  rows it has already handed over).
- ``how_to_answer(round_idx) -> str``: one sentence added to the "still awaited" message.
- ``close()`` (default: nothing): called once when the command that built the oracle ends, on every way out;
  an oracle that started a server or a thread stops it here.

``label`` may return an :class:`Answers` (a dict) whose ``refused`` lists rows it could not accept; the valid
rows are stored and the refused ones reported. It may raise :class:`LabellingStopped` (the person chose to
quit): the answers given so far are kept and the run waits.

A user's object that has only ``label(ids)``, or a plain function ``ids -> labels``, needs no subclassing:
:func:`al.oracles.as_oracle` wraps it once, where it enters the framework.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OracleError


@dataclass(frozen=True)
class RoundInfo:
    """What an oracle is told before it is asked.

    query: (n_queried, 3) DataFrame with columns sample_id, rank, score: the round's whole query in rank order
    (answered or not). labels / label_round: every label already stored for the run, and its round.
    guesses: for each queried id, the model's top classes as (class index, probability), most probable first, from
    the model that chose the query (empty for round 0, which no model chose, and for rounds stored before schema 4).
    run_name: the run's name in the store.
    """

    round_idx: int
    query: Any  # pandas.DataFrame; typed loosely so that importing oracles does not import pandas
    labels: Mapping[int, int]
    label_round: Mapping[int, int]
    n_classes: int
    guesses: Mapping[int, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    run_name: str = ""

    @property
    def n_queried(self) -> int:
        """How many samples the round queried (answered or not)."""
        return len(self.query)


class Answers(dict):
    """A mapping id -> label plus the rows the oracle refused, each as a message naming the row and why."""

    def __init__(self, labels: Mapping[int, int] | None = None, refused: Iterable[str] = ()) -> None:
        super().__init__(labels or {})
        self.refused: list[str] = list(refused)


class RefusedAnswersWarning(UserWarning):
    """Some answer rows were refused although every queried sample of the round got a label, so the run goes on;
    the refused rows are named in the message."""


class LabellingStopped(Exception):
    """Raised by an interactive oracle when the person quits; what was answered before is kept."""


class Oracle(abc.ABC):
    """Base class of every oracle the loop talks to; subclass it and implement :meth:`label`.

    The class attributes and methods other than ``label`` are the documented defaults of the optional features
    (see the module docstring); override only those your oracle needs.
    """

    #: Recorded with every label this oracle gives (the store's ``oracle`` column) and named in messages.
    name: str = "oracle"
    #: True: ask for one id per call and store each answer at once (a person answering at a terminal).
    one_at_a_time: bool = False

    def begin_round(self, info: RoundInfo) -> None:  # noqa: B027 - an optional hook; doing nothing is its default
        """Called once per labelling attempt of round ``info.round_idx``, before any ``label`` call. Default:
        nothing. An exception here stops the run with an OracleError; the query stays saved."""

    @abc.abstractmethod
    def label(self, ids: np.ndarray) -> Mapping[int, int]:
        """Labels for some or all of ``ids: (n,) int64`` (global sample ids), as {id: label}; may be an
        :class:`Answers` listing refused rows. Ids left out stay pending."""

    def how_to_answer(self, round_idx: int) -> str:
        """The sentence that ends the "still await a label" message of round ``round_idx``."""
        return "answer them and run the same command again to continue"

    def close(self) -> None:  # noqa: B027 - an optional hook; doing nothing is its default
        """Called once when the command that built this oracle ends (also on errors and Ctrl-C). Default: nothing.
        An oracle that started a server or a thread stops and joins it here."""


def validate_answers(
    answers: Mapping,
    queried: Iterable[int],
    n_classes: int,
    already_labelled: Iterable[int] | Mapping[int, int] = (),
    label_round: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """Check an oracle's answer as a whole; return it as {id: label} or raise OracleError naming bad rows.

    Refused: ids that are not integers or were not queried, an id given twice (as 3 and "3"), labels that are not
    integers in [0, n_classes), NaN or empty values, and labels for samples already labelled (``already_labelled``:
    their ids, or {id: label}; with ``label_round`` {id: round} the message names the stored label and its round).
    """

    def read(raw_y: Any) -> tuple[int | None, str]:
        y = _as_int(raw_y)
        if y is None or not 0 <= y < n_classes:
            return None, f"label {_short(raw_y)} is not a class in 0..{n_classes - 1}"
        return y, ""

    return _validated(answers, queried, already_labelled, label_round, read)


def validate_targets(
    answers: Mapping,
    queried: Iterable[int],
    already_labelled: Iterable[int] | Mapping[int, float] = (),
    label_round: Mapping[int, int] | None = None,
) -> dict[int, float]:
    """:func:`validate_answers` for a regression task: each answer must be a finite number (an int, a float, or
    text such as ``"3.5"``); booleans, NaN, infinities and empty values are refused, as are the same ids as
    there. Returns {id: target} as floats."""

    def read(raw_y: Any) -> tuple[float | None, str]:
        y = _as_number(raw_y)
        if y is None:
            return None, f"target {_short(raw_y)} is not a finite number"
        return y, ""

    return _validated(answers, queried, already_labelled, label_round, read)


def _validated(
    answers: Mapping,
    queried: Iterable[int],
    already_labelled: Iterable[int] | Mapping[int, Any],
    label_round: Mapping[int, int] | None,
    read: Callable[[Any], tuple[Any, str]],
) -> dict[int, Any]:
    """The checks of the ids shared by :func:`validate_answers` and :func:`validate_targets`; ``read(raw)`` gives
    the answer's value, or None and why it is refused."""
    if not isinstance(answers, Mapping):
        raise OracleError(f"the oracle returned {type(answers).__name__}; return a mapping id -> label")
    queried_set = {int(i) for i in queried}
    stored = already_labelled if isinstance(already_labelled, Mapping) else dict.fromkeys(already_labelled)
    bad: list[str] = []
    out: dict[int, Any] = {}
    seen: set[int] = set()
    for raw_id, raw_y in answers.items():
        i = _as_int(raw_id)
        if i is None:
            bad.append(f"id {_short(raw_id)}: not an integer sample id")
            continue
        if i in seen:
            bad.append(f"id {i}: given more than once (as {_short(raw_id)} too)")
            continue
        seen.add(i)
        if i in stored:
            y0, r0 = stored[i], (label_round or {}).get(i)
            bad.append(
                f"id {i}: is already labelled"
                + ("" if y0 is None else f" {y0}")
                + ("" if r0 is None else f" in round {r0}")
                + "; stored labels are final"
            )
            continue
        if i not in queried_set:
            bad.append(f"id {i}: was not queried in this round")
            continue
        y, why = read(raw_y)
        if y is None:
            bad.append(f"id {i}: {why}")
            continue
        out[i] = y
    if bad:
        raise OracleError(
            f"{len(bad)} invalid answer(s), nothing recorded: "
            + "; ".join(bad[:20])
            + (" ..." if len(bad) > 20 else "")
        )
    return out


def _as_number(v: object) -> float | None:
    """``v`` as a finite float, or None: booleans, None, NaN, infinities, empty or non-numeric text are not."""
    if isinstance(v, (bool, np.bool_)) or v is None:
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        out = float(v)
    elif isinstance(v, str) and 0 < len(v.strip()) <= 400:
        try:
            out = float(v.strip())
        except ValueError:
            return None
    else:
        return None
    return out if np.isfinite(out) else None


_INT_TEXT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: str.isdigit() also takes "²" and "٣"


def _as_int(v: object) -> int | None:
    """``v`` as an integer id or class index, or None when it is no integer: bools, None, NaN, infinities, 2.5,
    "3.0", "x", bytes and text of over 4000 digits are not; 3, np.int64(3), 3.0 and " 3 " are."""
    if isinstance(v, (bool, np.bool_)) or v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return int(v) if np.isfinite(v) and float(v).is_integer() else None
    if isinstance(v, str):
        t = v.strip()
        return int(t) if len(t) <= 4000 and _INT_TEXT.fullmatch(t) else None
    return None


def _short(v: object, limit: int = 40) -> str:
    """``repr(v)`` for a message, cut short when long."""
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + f"... ({len(r)} characters)"
