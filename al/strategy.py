"""The strategy contract: ``select(ctx, n, rng) -> Selection``.

Strategies are pure: they never train and never write files. Each declares the quantities it ``needs``;
the :class:`Context` computes each of them once per round, whichever strategy asks, and hands model-based
strategies the trained model and the pool inputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from .errors import ConfigError, IncompatibleStrategyError, ModelError, StrategyError
from .seeding import RngFor, mc_dropout_seed, round_rng
from .settings import Setting, check_settings, settings_of
from .tasks import CLASSIFICATION

if TYPE_CHECKING:
    from .learner import TorchLearner

#: The quantities a context can provide.
NEEDS = frozenset(
    {"probs", "mc_probs", "mc_predictions", "embeddings", "labelled_embeddings", "model", "inputs", "labelled_inputs"}
)
#: The needs that MC dropout provides (the model must have a dropout layer).
MC_NEEDS = frozenset({"mc_probs", "mc_predictions"})


@dataclass(frozen=True)
class Selection:
    """The picked sample ids in rank order and their acquisition scores (higher = picked first).

    ids: (n,) int64 global sample ids. scores: (n,) float64.
    pool_scores: (n_candidates,) scores of every candidate, when the strategy has them (for per-round
    uncertainty summaries); None for strategies without a per-sample score (random, core-set, BADGE...).
    """

    ids: np.ndarray
    scores: np.ndarray
    pool_scores: np.ndarray | None = None


def top_n(scores: np.ndarray, ids: np.ndarray, n: int) -> Selection:
    """The ``n`` highest scores; ties broken by the smaller sample id, so picks never depend on pool order.

    scores: (n_candidates,) float; ids: (n_candidates,) int. StrategyError when their shapes differ (a bug in the
    strategy). ModelError when a score is NaN or infinite (the model's outputs are not finite), or when every
    candidate has the same score while the scores must choose (more than one candidate, fewer picks than
    candidates): the model is degenerate (constant output, or saturated after diverged training), and ranking by
    id alone would be a silent fallback to id order. Ties among some candidates are fine.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    if scores.shape != ids.shape:
        raise StrategyError(
            f"scores {scores.shape} and ids {ids.shape} differ in shape; a strategy must score "
            f"every candidate it ranks, one score per id"
        )
    finite = np.isfinite(scores)
    if not finite.all():
        n_nan = int(np.isnan(scores).sum())
        raise ModelError(
            f"acquisition scores are not finite: {n_nan} NaN and {scores.size - int(finite.sum()) - n_nan} inf "
            f"of {scores.size}; the model's outputs are probably not finite: lower the learning rate (--lr) or "
            f"check the inputs and the model"
        )
    if 1 < scores.size and n < scores.size and (scores == scores[0]).all():
        raise ModelError(
            f"all {scores.size} candidates have the same acquisition score ({scores[0]:g}), so the scores cannot "
            f"rank them: the model's outputs are degenerate (constant, or saturated after diverged training); "
            f"lower the learning rate (--lr) or check the model"
        )
    order = np.lexsort((ids, -scores))[:n]
    return Selection(ids[order], scores[order], scores)


def _default_rng_for(purpose: str) -> np.random.Generator:
    return round_rng(0, 0, purpose)


class Context:
    """What one round knows, computed lazily and at most once.

    candidates: (n_candidates,) int64 unlabelled ids that may be picked (a random subset of the pool when
    ``--pool-subset`` is set). labelled: (n_labelled,) int64 ids already labelled.
    Arrays may be given directly (tests, modAL interop); anything missing is computed with the learner from
    ``inputs_of(ids)``.

    rng_for: ``rng_for(purpose)`` returns a fresh numpy generator for one purpose of this round, the same one on
    every call; the loop passes ``lambda purpose: round_rng(seed, round_idx, purpose)``. It is the only source of
    the context's own randomness: the MC-dropout masks are seeded by ``mc_dropout_seed(rng_for("mc"))``.
    Default: ``round_rng(0, 0, purpose)``, so a context built by hand is deterministic.

    task: the run's task (:mod:`al.tasks`); a regression round's learner is an :class:`al.regression.TorchRegressor`,
    which provides ``mc_predictions`` (and embeddings, the model, the inputs) but no class probabilities.
    """

    def __init__(
        self,
        candidates: np.ndarray,
        labelled: np.ndarray | None = None,
        *,
        learner: TorchLearner | None = None,
        inputs_of: Any = None,
        probs: np.ndarray | None = None,
        mc_probs: np.ndarray | None = None,
        embeddings: np.ndarray | None = None,
        labelled_embeddings: np.ndarray | None = None,
        mc_samples: int = 20,
        rng_for: RngFor | None = None,
        n_classes: int | None = None,
        mc_predictions: np.ndarray | None = None,
        task: str = CLASSIFICATION,
    ) -> None:
        self.candidates = np.asarray(candidates, dtype=np.int64)
        self.labelled = np.asarray(labelled if labelled is not None else [], dtype=np.int64)
        self.learner = learner
        self._inputs_of = inputs_of
        self.mc_samples = mc_samples
        self.rng_for: RngFor = rng_for if rng_for is not None else _default_rng_for
        self._n_classes = n_classes
        self.task = task
        for name, value in (
            ("probs", probs),
            ("mc_probs", mc_probs),
            ("mc_predictions", mc_predictions),
            ("embeddings", embeddings),
            ("labelled_embeddings", labelled_embeddings),
        ):
            if value is not None:
                self.__dict__[name] = np.asarray(value)

    def _need(self, what: str) -> TorchLearner:
        if self.learner is None:
            raise IncompatibleStrategyError(f"this context has no learner to compute {what!r}; pass it directly")
        return self.learner

    def inputs_for(self, ids: np.ndarray) -> torch.Tensor:
        if self._inputs_of is None:
            raise IncompatibleStrategyError("this context has no pool inputs; build it with inputs_of=...")
        return self._inputs_of(np.asarray(ids, dtype=np.int64))

    @cached_property
    def inputs(self) -> torch.Tensor:
        """Candidate inputs, (n_candidates, ...)."""
        return self.inputs_for(self.candidates)

    @cached_property
    def labelled_inputs(self) -> torch.Tensor:
        """Inputs of the labelled set, (n_labelled, ...): the data the round's model was trained on (REGrad's
        kfac-laplace metric fits its posterior to them). Read on first use only, as the candidate inputs are."""
        return self.inputs_for(self.labelled)

    @cached_property
    def probs(self) -> np.ndarray:
        """(n_candidates, n_classes) float64."""
        return self._need("probs").predict_proba(self.inputs)

    @cached_property
    def mc_probs(self) -> np.ndarray:
        """(mc_samples, n_candidates, n_classes) float64, MC-dropout."""
        seed = mc_dropout_seed(self.rng_for("mc"))
        return self._need("mc_probs").mc_predict_proba(self.inputs, self.mc_samples, seed=seed)

    @cached_property
    def mc_predictions(self) -> np.ndarray:
        """(mc_samples, n_candidates) float64: a regression model's MC-dropout predicted means, seeded as
        ``mc_probs`` is."""
        from .regression import TorchRegressor

        seed = mc_dropout_seed(self.rng_for("mc"))
        learner = self._need("mc_predictions")
        if not isinstance(learner, TorchRegressor):
            raise IncompatibleStrategyError(
                "this strategy needs MC-dropout predictions of a regression model, but the learner is a classifier; "
                "run it with --task regression"
            )
        return learner.mc_predict(self.inputs, self.mc_samples, seed=seed)

    @cached_property
    def embeddings(self) -> np.ndarray:
        """(n_candidates, d) penultimate features."""
        return self._need("embeddings").embed(self.inputs)

    @cached_property
    def labelled_embeddings(self) -> np.ndarray:
        """(n_labelled, d) penultimate features of the labelled set."""
        return self._need("embeddings").embed(self.inputs_for(self.labelled))

    @property
    def model(self) -> torch.nn.Module:
        return self._need("model").network

    @property
    def n_classes(self) -> int:
        if self._n_classes is not None:
            return self._n_classes
        if "probs" in self.__dict__:
            return self.probs.shape[1]
        return self._need("n_classes").n_classes


class Strategy:
    """Base class. Subclasses set ``name``, ``needs`` and implement ``select``.

    Keyword settings are taken by ``__init__`` and stored; nothing is computed there.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    #: The tasks (:mod:`al.tasks`) the strategy applies to. Default: classification only, since most strategies
    #: score class probabilities; a strategy that works on a regression model too declares both. Checked by
    #: :func:`al.registry.check_strategy_task` before anything runs.
    tasks: ClassVar[frozenset[str]] = frozenset({CLASSIFICATION})
    #: Constructor settings that only mean something for a classifier (REGrad's class weighting): given on a
    #: regression task they are refused by name. Default: none.
    classification_settings: ClassVar[frozenset[str]] = frozenset()
    #: Constructor settings that only mean something for a regression model (REGrad's likelihood target and
    #: metric): given on a classification task they are refused by name. Default: none.
    regression_settings: ClassVar[frozenset[str]] = frozenset()
    #: True when ``pool_scores`` are uncertainties (higher = more uncertain) worth summarising per round.
    scores_are_uncertainty: ClassVar[bool] = True
    #: Settings added to the strategy after runs may already have been recorded without them, each with the value
    #: such a run used. A run whose stored ``strategy_params`` lack one of these keys continues under the new code
    #: when the current value equals this one (the store refuses any other change of settings on resume).
    params_added: ClassVar[Mapping[str, Any]] = {}
    #: Settings whose default changed after runs may already have been recorded, each with its previous default. A
    #: stored run made at that previous default without setting it (its ``strategy_kwargs`` lack it) continues
    #: under the value it was made with (:meth:`al.loop.Experiment.open_run` builds the strategy again with it);
    #: new runs take the new default. Default: none.
    previous_defaults: ClassVar[Mapping[str, Any]] = {}
    #: The declared type and range of each constructor setting (see :mod:`al.settings`); the constructor checks
    #: them with :meth:`checked_settings` before storing them, so a bad ``--strategy-kwargs`` value is refused
    #: before anything runs.
    settings_spec: ClassVar[Mapping[str, Setting]] = {}

    @classmethod
    def unavailable_for(cls, task: str) -> str | None:
        """Why this strategy cannot run on ``task`` here although it declares it (a part not in this install),
        or None when it can (the default)."""
        return None

    def checked_settings(self, **values: Any) -> dict[str, Any]:
        """``values`` checked against ``settings_spec`` and normalised (``4.0`` -> 4 for a whole number); a
        ConfigError names the strategy: ``strategy 'gradnorm': temperature must be > 0, got 0``."""
        with self.naming_errors():
            return check_settings(values, self.settings_spec)

    def naming_errors(self) -> AbstractContextManager[None]:
        """A context in which a ConfigError is prefixed with ``strategy '<name>': `` (for checks of settings made
        elsewhere, such as a frozen settings dataclass built in the constructor)."""
        return settings_of(f"strategy {self.name!r}")

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        raise NotImplementedError

    def check_learner(self, learner: TorchLearner) -> None:
        """Raise IncompatibleStrategyError early if ``learner`` cannot provide what this strategy needs."""
        if MC_NEEDS & self.needs and not learner.has_dropout:
            raise IncompatibleStrategyError(
                f"strategy {self.name!r} needs MC-dropout samples but the model has no dropout layer; "
                f"add nn.Dropout to the model or pick a strategy that needs no MC samples"
            )
        if {"embeddings", "labelled_embeddings"} & self.needs:
            learner.last_linear()

    def __call__(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        """Validate ``n`` then select; the result is checked against the contract (StrategyError if broken)."""
        self.params()  # a setting not stored under its name fails here, before any work
        n_cand = len(ctx.candidates)
        if n < 1:
            raise ConfigError(f"query size must be at least 1, got {n}")
        if n > n_cand:
            raise ConfigError(
                f"cannot select {n} samples from {n_cand} unlabelled candidates; lower the query "
                f"size or enlarge --pool-subset"
            )
        sel = self.select(ctx, n, rng)
        ids = np.asarray(sel.ids, dtype=np.int64)
        if len(ids) != n or len(np.unique(ids)) != n:
            raise StrategyError(
                f"strategy {self.name!r} returned {len(ids)} ids ({len(np.unique(ids))} unique), "
                f"expected {n} unique ids; fix its select() to return exactly n distinct candidates"
            )
        return sel

    def __repr__(self) -> str:
        # repr must not raise (it is printed inside other errors), so a setting that was not stored is shown so.
        params = ", ".join(
            f"{k}={getattr(self, k)!r}" if hasattr(self, k) else f"{k}=<not stored>" for k in self._setting_names()
        )
        return f"{type(self).__name__}({params})"

    def _setting_names(self) -> list[str]:
        sig = inspect.signature(type(self).__init__)
        return [k for k, p in sig.parameters.items() if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def params(self) -> dict[str, Any]:
        """Every constructor setting by name, read back from ``self.<name>`` (the store records these, and a run
        resumes only under the same ones).

        A setting kept under another name would drop out of the record and let a changed value resume unnoticed,
        so it is a StrategyError instead. ``*args``/``**kwargs`` are not settings and are skipped.
        """
        names = self._setting_names()
        missing = [k for k in names if not hasattr(self, k)]
        if missing:
            raise StrategyError(
                f"{type(self).__name__} takes {', '.join(map(repr, missing))} but does not store "
                f"{'it' if len(missing) == 1 else 'them'}; store each constructor setting as self.<name> "
                f"(self.{missing[0]} = {missing[0]}) so that runs record it and resume only under the same value"
            )
        return {k: getattr(self, k) for k in names}
