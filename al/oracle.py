"""Oracles: whoever answers a query with labels.

An oracle is any object with ``label(ids) -> Mapping[int, int]``: given global sample ids it returns labels
for some or all of them. Ids it leaves out stay pending; the loop stops and a later run asks again.

Optional extras, all duck-typed so that the plain protocol keeps working:

- ``begin_round(info: RoundInfo)``: called before ``label`` with the round index, the whole query and the
  labels already stored (the CSV hand-off oracle needs them to name its files and to recognise rows it has
  already handed over).
- ``one_at_a_time = True``: the loop asks for one id at a time and stores each answer as soon as it is
  given (a person at a terminal must not lose twenty answers because the twenty-first was never given).
- ``label`` may return an :class:`Answers` (a dict) whose ``refused`` lists rows it could not accept; the
  valid rows are stored and the refused ones reported.
- ``label`` may raise :class:`LabellingStopped` (the person chose to quit): the answers given so far are kept
  and the run waits.
- ``how_to_answer(round_idx) -> str``: one sentence added to the "still awaited" message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, runtime_checkable

import numpy as np

from .errors import OracleError

if TYPE_CHECKING:
    from .data import Dataset


@runtime_checkable
class Oracle(Protocol):
    name: str

    def label(self, ids: np.ndarray) -> Mapping[int, int]:
        """Labels for some or all of ``ids: (n,) int64``."""
        ...


@dataclass(frozen=True)
class RoundInfo:
    """What a round-aware oracle is told before it is asked.

    query: (n_queried, 3) DataFrame with columns sample_id, rank, score: the round's whole query in rank order
    (answered or not). labels / label_round: every label already stored for the run, and its round.
    """

    round_idx: int
    query: Any  # pandas.DataFrame; typed loosely so that importing oracles does not import pandas
    labels: Mapping[int, int]
    label_round: Mapping[int, int]
    n_classes: int


class Answers(dict):
    """A mapping id -> label plus the rows the oracle refused, each as a message naming the row and why."""

    def __init__(self, labels: Mapping[int, int] = (), refused: Iterable[str] = ()) -> None:
        super().__init__(labels)
        self.refused: list[str] = list(refused)


class RefusedAnswersWarning(UserWarning):
    """Some answer rows were refused although every queried sample of the round got a label, so the run goes on;
    the refused rows are named in the message."""


class LabellingStopped(Exception):
    """Raised by an interactive oracle when the person quits; what was answered before is kept."""


class GroundTruthOracle:
    """Simulation: answers every query from the dataset's true labels."""

    name = "ground-truth"

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)

    def label(self, ids: np.ndarray) -> dict[int, int]:
        return {int(i): int(self.labels[i]) for i in ids}


class NoisyOracle:
    """Ground truth with a fraction ``noise`` of answers replaced by a different, uniformly drawn class.

    Which samples are flipped, and to what, depends only on ``(seed, sample id)``, so the same sample gets the
    same wrong answer in every run and after every resume.
    """

    name = "noisy"

    def __init__(self, labels: np.ndarray, noise: float, n_classes: int, seed: int = 0) -> None:
        if not 0.0 <= noise <= 1.0:
            raise OracleError(f"label noise must lie in [0, 1], got {noise}")
        if n_classes < 2:
            raise OracleError("a noisy oracle needs at least two classes")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.noise, self.n_classes, self.seed = noise, n_classes, seed

    def label(self, ids: np.ndarray) -> dict[int, int]:
        out = {}
        for i in ids:
            g = np.random.default_rng([self.seed, int(i)])
            y = int(self.labels[i])
            if g.random() < self.noise:
                y = int((y + g.integers(1, self.n_classes)) % self.n_classes)
            out[int(i)] = y
        return out


class CallbackOracle:
    """Wraps any function ``fn(ids) -> labels``: a sequence aligned with ``ids`` or a mapping id -> label."""

    name = "callback"

    def __init__(self, fn: Callable[[np.ndarray], Mapping[int, int] | Iterable[int]], name: str = "callback"):
        self.fn = fn
        self.name = name

    def label(self, ids: np.ndarray) -> dict[int, int]:
        answer = self.fn(np.asarray(ids, dtype=np.int64))
        if isinstance(answer, Mapping):
            return dict(answer)
        answer = list(answer)
        if len(answer) != len(ids):
            raise OracleError(f"oracle {self.name!r} returned {len(answer)} labels for {len(ids)} ids; return one "
                              f"label per id, in order, or a mapping id -> label for those it can answer")
        return {int(i): y for i, y in zip(ids, answer)}


def validate_answers(answers: Mapping, queried: Iterable[int], n_classes: int,
                     already_labelled: Iterable[int] = ()) -> dict[int, int]:
    """Check an oracle's answer as a whole; return it as {id: label} or raise OracleError naming bad rows.

    Refused: ids that were not queried, labels that are not integers in [0, n_classes), NaN or empty values,
    and labels for samples already labelled.
    """
    if not isinstance(answers, Mapping):
        raise OracleError(f"the oracle returned {type(answers).__name__}; return a mapping id -> label")
    queried_set = {int(i) for i in queried}
    done = {int(i) for i in already_labelled}
    bad: list[str] = []
    out: dict[int, int] = {}
    for raw_id, raw_y in answers.items():
        try:
            i = int(raw_id)
        except (TypeError, ValueError):
            bad.append(f"id {raw_id!r}: not an integer")
            continue
        if i not in queried_set:
            bad.append(f"id {i}: was not queried in this round")
            continue
        if i in done:
            bad.append(f"id {i}: is already labelled")
            continue
        y = _as_label(raw_y)
        if y is None or not 0 <= y < n_classes:
            bad.append(f"id {i}: label {raw_y!r} is not a class in 0..{n_classes - 1}")
            continue
        out[i] = y
    if bad:
        raise OracleError(f"{len(bad)} invalid answer(s), nothing recorded: " + "; ".join(bad[:20])
                          + (" ..." if len(bad) > 20 else ""))
    return out


def _as_label(v: object) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return int(v) if np.isfinite(v) and float(v).is_integer() else None
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    return None


def make_oracle(spec: str, labels: np.ndarray, n_classes: int, seed: int = 0, *, dataset: "Dataset | None" = None,
                oracle_dir: str | None = None) -> Oracle:
    """Build an oracle from a CLI spec.

    ``ground-truth``; ``noisy:0.1`` (10% of answers wrong); ``csv`` (file hand-off in ``oracle_dir``, see
    :mod:`al.human`); ``prompt`` (a person at this terminal); ``package.module:factory`` where
    ``factory(labels=..., n_classes=...)`` returns an Oracle or a function ``ids -> labels``. The human oracles
    need ``dataset`` to show the queried images.
    """
    kind, _, arg = spec.partition(":")
    if spec == "ground-truth":
        return GroundTruthOracle(labels)
    if spec in ("csv", "prompt"):
        from . import human

        if dataset is None:
            raise OracleError(f"--oracle {spec} shows the queried images, so it needs the dataset; pass dataset=")
        if spec == "csv":
            if not oracle_dir:
                raise OracleError("--oracle csv needs --oracle-dir DIR: the folder where queries-round-N.csv is "
                                  "written and answers-round-N.csv is read")
            return human.CsvOracle(oracle_dir, dataset)
        return human.PromptOracle(dataset)
    if kind == "noisy":
        try:
            noise = float(arg)
        except ValueError:
            raise OracleError(f"--oracle noisy:<fraction> needs a number, got {arg!r} (e.g. noisy:0.1)") from None
        return NoisyOracle(labels, noise, n_classes, seed)
    if arg:
        import importlib

        try:
            factory = getattr(importlib.import_module(kind), arg)
        except (ImportError, AttributeError) as e:
            raise OracleError(f"cannot import oracle {spec!r} ({e}); give it as package.module:function") from e
        made = factory(labels=labels, n_classes=n_classes)
        if isinstance(made, Oracle):
            return made
        if callable(made):
            return CallbackOracle(made, name=spec)
        raise OracleError(f"oracle factory {spec!r} returned {type(made).__name__}; return an object with "
                          f"label(ids) or a function ids -> labels")
    raise OracleError(f"unknown oracle {spec!r}; use ground-truth, noisy:<fraction>, csv, prompt or "
                      f"package.module:factory")
