"""Random sampling and the classic uncertainty-sampling scores on predicted probabilities.

Each score is a plain function of ``probs: (n, n_classes)`` returning ``(n,)``, higher = more uncertain.
References: Settles, "Active Learning Literature Survey" (2009), section 3.1.
"""

from __future__ import annotations

import numpy as np

from al.strategy import Context, Selection, Strategy, top_n
from al.tasks import TASKS


def entropy_score(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy -sum_k p_k log p_k (nats). probs: (n, C) -> (n,)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)


def margin_score(probs: np.ndarray) -> np.ndarray:
    """Negative margin between the two most probable classes: -(p_(1) - p_(2)). probs: (n, C) -> (n,)."""
    p = np.asarray(probs, dtype=np.float64)
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def least_confidence_score(probs: np.ndarray) -> np.ndarray:
    """1 - max_k p_k. probs: (n, C) -> (n,)."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


class RandomSampling(Strategy):
    """Uniform sampling without replacement from the candidates."""

    name = "random"
    needs = frozenset()
    scores_are_uncertainty = False
    tasks = frozenset(TASKS)

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        pick = rng.choice(len(ctx.candidates), size=n, replace=False)
        return Selection(ctx.candidates[pick], np.zeros(n))


class _ProbabilityScore(Strategy):
    needs = frozenset({"probs"})

    @staticmethod
    def score(probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        return top_n(self.score(ctx.probs), ctx.candidates, n)


class EntropySampling(_ProbabilityScore):
    """Highest predictive entropy. References: Shannon (1948); Settles (2009)."""

    name = "entropy"
    score = staticmethod(entropy_score)


class MarginSampling(_ProbabilityScore):
    """Smallest top-1 minus top-2 probability. References: Scheffer et al. (2001)."""

    name = "margin"
    score = staticmethod(margin_score)


class LeastConfidenceSampling(_ProbabilityScore):
    """Lowest top-1 probability. References: Lewis & Gale (1994)."""

    name = "least-confidence"
    score = staticmethod(least_confidence_score)
