"""Label-free stopping criteria: when to stop buying labels, judged from the model's predictions alone.

Each criterion is a class registered in :data:`STOPPING` under its name and built with
:func:`make_stopping` (``make_stopping("stabilising-predictions", threshold=0.99, window=3)``). Every round the
loop calls :meth:`StoppingCriterion.update` with the inputs the criterion declares in ``needs`` (so it computes
only those) and gets a :class:`CriterionValue`: the criterion's value, whether to stop, and a one-line message.
The criteria need no labels and no test set, so they work on a pool of the user's own files.

Options (``--stopping``):

* ``stabilising-predictions``: Cohen's kappa between the predicted classes of two successive rounds on a fixed
  *stop set* (:func:`stop_set_ids`); stop once kappa >= ``threshold`` (default 0.99) for ``window`` (default 3)
  successive comparisons.
* ``max-uncertainty``: stop once the largest predictive entropy over the candidate pool is below ``threshold``.
* ``overall-uncertainty``: stop once the mean predictive entropy over the candidate pool is below ``threshold``.
* ``budget``: never stops early; the budget alone ends the run (value None).

Entropies are normalised by ``log(n_classes)``, so they lie in [0, 1] whatever the number of classes and one
threshold means the same on every dataset. The uncertainty thresholds' defaults (0.1 and 0.05) are this
package's, not the papers' (their thresholds were tuned to their tasks): tune them on a labelled pilot.

Resuming: the store records each round's value (:meth:`StoppingCriterion.round_values`), and
:meth:`StoppingCriterion.from_history` rebuilds the state from those values, so a resumed run takes the same
decisions. ``stabilising-predictions`` also compares against the previous round's predictions on the stop set:
pass them to ``from_history`` (recomputed from that round's model, e.g. its checkpoint); without them the first
comparison after the resume has no value and the streak starts again.

Round values in the store: the value under the criterion's name, its threshold under ``"<name>:threshold"``
(:func:`round_value_names`), which is what ``al.report`` plots.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError
from .registry import Registry
from .settings import Setting, check_settings, settings_of

#: Inputs a criterion may need; the loop computes only those in ``needs``.
INPUTS = frozenset({"stop_set_predictions", "pool_probs"})
DEFAULT_STOP_SET_SIZE = 1000
THRESHOLD_SUFFIX = ":threshold"


@dataclass(frozen=True)
class CriterionValue:
    """One round's verdict. ``value``: the criterion's value (None: none this round, e.g. the first round of
    ``stabilising-predictions``, which has nothing to compare with); ``stop``: stop buying labels now;
    ``message``: one line for the log."""

    value: float | None
    stop: bool
    message: str


def round_value_names(name: str) -> tuple[str, str]:
    """The store's round-value names of criterion ``name``: (its value, its threshold)."""
    return name, f"{name}{THRESHOLD_SUFFIX}"


class StoppingCriterion:
    """Base class: settings checked on construction, one :meth:`update` per round, state rebuilt by
    :meth:`from_history`. Subclasses set ``name``, ``needs``, ``settings_spec`` and ``defaults`` and implement
    ``_value`` (the round's value from its inputs) and ``_decide`` (the stop decision from the value, updating the
    state). Replaying ``_decide`` over the recorded values is what makes resumed decisions the same."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    settings_spec: ClassVar[dict[str, Setting]] = {}
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **settings: Any) -> None:
        owner = f"stopping criterion {self.name!r}"
        unknown = sorted(set(settings) - set(self.settings_spec))
        if unknown:
            accepted = ", ".join(self.settings_spec) or "no settings"
            close = difflib.get_close_matches(unknown[0], list(self.settings_spec), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{owner} has no setting {unknown[0]!r}{hint}; it accepts: {accepted}")
        with settings_of(owner):
            self.settings: dict[str, Any] = check_settings({**self.defaults, **settings}, self.settings_spec)
            self._check(self.settings)
        self.last: CriterionValue | None = None

    def _check(self, settings: Mapping[str, Any]) -> None:
        """Checks across or beyond the declared settings (a ConfigError)."""

    @property
    def threshold(self) -> float | None:
        t = self.settings.get("threshold")
        return None if t is None else float(t)

    # --- the round ----------------------------------------------------------------------------------------------
    def update(
        self,
        round_idx: int,
        *,
        stop_set_predictions: np.ndarray | None = None,
        pool_probs: np.ndarray | None = None,
    ) -> CriterionValue:
        """This round's value and decision; the inputs not in ``needs`` are ignored.

        stop_set_predictions: (n_stop,) predicted classes on the stop set, in the same order every round.
        pool_probs: (n_candidates, n_classes) predicted class probabilities over the candidate pool.
        """
        given = {"stop_set_predictions": stop_set_predictions, "pool_probs": pool_probs}
        missing = sorted(k for k in self.needs if given[k] is None)
        if missing:
            raise ValueError(f"stopping criterion {self.name!r} needs {', '.join(missing)} (round {round_idx})")
        value = self._value(**{k: v for k, v in given.items() if k in self.needs and v is not None})
        stop = self._decide(value)
        self.last = CriterionValue(value, stop, self._message(round_idx, value, stop))
        return self.last

    def _value(self, **inputs: np.ndarray) -> float | None:
        raise NotImplementedError

    def _decide(self, value: float | None) -> bool:
        raise NotImplementedError

    def _message(self, round_idx: int, value: float | None, stop: bool) -> str:
        shown = "no value" if value is None else f"{value:.4f}"
        verdict = "stop" if stop else "continue"
        return f"round {round_idx}: {self.name} {shown} (threshold {self.threshold}): {verdict}"

    # --- resuming -----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the state (as before the first round)."""
        self.last = None

    def from_history(self, values: Sequence[float | None], **state: Any) -> StoppingCriterion:
        """Rebuild the state from the values recorded for rounds 0..k-1 (in round order); returns ``self``.

        The decisions replayed are the ones :meth:`update` took, so :attr:`last` says whether the run had
        already decided to stop."""
        self.reset()
        for r, v in enumerate(values):
            stop = self._decide(v)
            self.last = CriterionValue(v, stop, self._message(r, v, stop))
        return self

    def round_values(self, value: CriterionValue) -> dict[str, float | None]:
        """What to record for the round (``Store.record_round_values``): the value, and the threshold if any."""
        name, threshold = round_value_names(self.name)
        out: dict[str, float | None] = {name: value.value}
        if self.threshold is not None:
            out[threshold] = self.threshold
        return out


# --------------------------------------------------------------------------------------------------------------
# the criteria
# --------------------------------------------------------------------------------------------------------------
STOPPING: Registry[type[StoppingCriterion]] = Registry("stopping criterion")


def agreement(previous: np.ndarray, current: np.ndarray) -> float:
    """Cohen's kappa between two rounds' predicted classes, both (n,) ints on the same samples.

    Identical vectors agree fully: kappa 1.0, also when both are one constant class, where kappa itself is
    undefined (0/0: the chance agreement is 1) and sklearn returns NaN."""
    a, b = np.asarray(previous).ravel(), np.asarray(current).ravel()
    if a.shape != b.shape:
        raise ValueError(f"stop-set predictions of successive rounds differ in length: {a.shape} vs {b.shape}")
    if len(a) == 0:
        raise ValueError("the stop set is empty")
    if np.array_equal(a, b):
        return 1.0
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        # Which warning sklearn gives for a degenerate confusion matrix varies with its version; the value is
        # what matters, and the only undefined case (identical constant vectors) was answered above.
        warnings.simplefilter("ignore")
        return float(cohen_kappa_score(a, b))


@STOPPING.register("stabilising-predictions")
class StabilisingPredictions(StoppingCriterion):
    """Stop when the predictions on a fixed stop set have stopped changing: Cohen's kappa between successive
    rounds' predicted classes >= ``threshold`` for ``window`` successive comparisons.

    Settings: threshold (kappa in [-1, 1], default 0.99), window (comparisons in a row, default 3),
    stop_set_size (samples in the stop set, default 1000 or the whole pool; see :func:`stop_set_ids`). Round 0
    has no previous round: value None. A round without a value breaks the streak.

    References: Bloodgood & Vijay-Shanker, "A method for stopping active learning based on stabilizing
    predictions and the need for user-adjustable stopping", CoNLL 2009.
    """

    name = "stabilising-predictions"
    needs = frozenset({"stop_set_predictions"})
    settings_spec = {
        "threshold": Setting("float", minimum=-1.0, hint=" (Cohen's kappa)", example=0.99),
        "window": Setting("int", minimum=1, what="a whole number of comparisons", example=3),
        "stop_set_size": Setting("int", minimum=1, example=DEFAULT_STOP_SET_SIZE),
    }
    defaults = {"threshold": 0.99, "window": 3, "stop_set_size": DEFAULT_STOP_SET_SIZE}

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.previous: np.ndarray | None = None
        self.streak = 0

    def _check(self, settings: Mapping[str, Any]) -> None:
        if settings["threshold"] > 1:
            raise ConfigError(f"threshold (Cohen's kappa) must be <= 1, got {settings['threshold']!r}; e.g. 0.99")

    def reset(self) -> None:
        super().reset()
        self.previous, self.streak = None, 0

    def _value(self, **inputs: np.ndarray) -> float | None:
        current = np.asarray(inputs["stop_set_predictions"]).ravel().copy()
        value = None if self.previous is None else agreement(self.previous, current)
        self.previous = current
        return value

    def _decide(self, value: float | None) -> bool:
        self.streak = self.streak + 1 if value is not None and value >= self.settings["threshold"] else 0
        return self.streak >= self.settings["window"]

    def _message(self, round_idx: int, value: float | None, stop: bool) -> str:
        return super()._message(round_idx, value, stop) + f", {self.streak}/{self.settings['window']} in a row"

    def from_history(
        self, values: Sequence[float | None], previous_predictions: np.ndarray | None = None, **state: Any
    ) -> StabilisingPredictions:
        """The streak from the recorded kappas; ``previous_predictions``: (n_stop,) the last recorded round's
        predictions on the stop set, so that the next :meth:`update` compares with them (without them its value
        is None and the streak starts again)."""
        super().from_history(values)
        if previous_predictions is not None:
            self.previous = np.asarray(previous_predictions).ravel().copy()
        elif values:
            self.previous = None
        return self


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy of each row of ``probs`` ((n, n_classes), rows summing to 1) divided by
    ``log(n_classes)``: (n,) in [0, 1]; 0 for a single class."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"pool_probs must be (n_candidates, n_classes), got shape {p.shape}")
    if p.shape[1] < 2:
        return np.zeros(len(p))
    h = -np.sum(np.where(p > 0, p * np.log(np.clip(p, 1e-300, None)), 0.0), axis=1)
    return np.clip(h / math.log(p.shape[1]), 0.0, 1.0)


class _UncertaintyBelow(StoppingCriterion):
    """Stop once a summary of the candidates' normalised entropies is below ``threshold``; stateless."""

    needs = frozenset({"pool_probs"})
    settings_spec = {
        "threshold": Setting("float", minimum=0.0, strict=True, hint=" (normalised entropy in (0, 1])", example=0.1)
    }

    def _check(self, settings: Mapping[str, Any]) -> None:
        if settings["threshold"] > 1:
            raise ConfigError(
                f"threshold (normalised entropy in (0, 1]) must be <= 1, got {settings['threshold']!r}; e.g. 0.1"
            )

    def _summary(self, entropies: np.ndarray) -> float:
        raise NotImplementedError

    def _value(self, **inputs: np.ndarray) -> float | None:
        h = normalised_entropy(inputs["pool_probs"])
        return None if len(h) == 0 else float(self._summary(h))

    def _decide(self, value: float | None) -> bool:
        return value is not None and value < self.settings["threshold"]


@STOPPING.register("max-uncertainty")
class MaxUncertainty(_UncertaintyBelow):
    """Stop once the most uncertain candidate is certain enough: max over the candidate pool of the normalised
    predictive entropy < ``threshold`` (default 0.1). No candidates: value None, continue.

    References: Zhu, Wang & Hovy, "Multi-criteria-based strategy to stop active learning for data annotation",
    COLING 2008; Zhu, Wang & Hovy, "Learning a stopping criterion for active learning for word sense
    disambiguation and text classification", IJCNLP 2008.
    """

    name = "max-uncertainty"
    defaults = {"threshold": 0.1}

    def _summary(self, entropies: np.ndarray) -> float:
        return float(entropies.max())


@STOPPING.register("overall-uncertainty")
class OverallUncertainty(_UncertaintyBelow):
    """Stop once the pool as a whole is certain enough: mean over the candidate pool of the normalised
    predictive entropy < ``threshold`` (default 0.05). No candidates: value None, continue.

    References: Zhu, Wang & Hovy, "Multi-criteria-based strategy to stop active learning for data annotation",
    COLING 2008; Zhu, Wang & Hovy, "Learning a stopping criterion for active learning for word sense
    disambiguation and text classification", IJCNLP 2008.
    """

    name = "overall-uncertainty"
    defaults = {"threshold": 0.05}

    def _summary(self, entropies: np.ndarray) -> float:
        return float(entropies.mean())


@STOPPING.register("budget")
class Budget(StoppingCriterion):
    """Never stops early: the budget alone ends the run. Value None every round; needs nothing.

    References: none (the fixed-budget protocol of most active-learning benchmarks).
    """

    name = "budget"

    def _value(self, **inputs: np.ndarray) -> float | None:
        return None

    def _decide(self, value: float | None) -> bool:
        return False

    def _message(self, round_idx: int, value: float | None, stop: bool) -> str:
        return f"round {round_idx}: budget: continue until the budget is spent"


def make_stopping(name: str, **settings: Any) -> StoppingCriterion:
    """The criterion registered as ``name`` with ``settings`` checked; UnknownNameError with suggestions for an
    unknown name, a one-line ConfigError for a bad setting."""
    return STOPPING.get(name)(**settings)


def stop_set_ids(
    pool_ids: int | np.ndarray, size: int = DEFAULT_STOP_SET_SIZE, rng: np.random.Generator | int = 0
) -> np.ndarray:
    """A fixed stop set for ``stabilising-predictions``: ``size`` ids drawn without replacement from the pool
    (labelled or not: the set stays the same while labels are bought), or the whole pool when it is smaller.

    pool_ids: the pool's ids ((n,) ints) or their number n (ids 0..n-1). rng: a seed or a Generator; the same
    seed gives the same set, so draw it from the run's seed and a resumed run compares on the same samples.
    Returns (min(size, n),) int64, sorted.

    References: Bloodgood & Vijay-Shanker, CoNLL 2009 (a fixed set of unlabelled examples, drawn once).
    """
    ids = np.arange(pool_ids, dtype=np.int64) if isinstance(pool_ids, (int, np.integer)) else np.asarray(pool_ids)
    ids = np.unique(ids.astype(np.int64))
    with settings_of("stop set"):
        size = Setting("int", minimum=1).check("stop_set_size", size)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if len(ids) <= size:
        return ids
    return np.sort(gen.choice(ids, size=size, replace=False))
