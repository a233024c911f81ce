"""Bayesian acquisition on MC-dropout samples: BALD and greedy BatchBALD.

Both read ``ctx.mc_probs: (T, n_candidates, C)``, the softmax outputs of T stochastic forward passes in which
only dropout layers are stochastic (``TorchLearner.mc_predict_proba``; BatchNorm stays in eval mode and a model
without dropout is refused by ``Strategy.check_learner``). T is ``ExperimentConfig.mc_samples``
(``--mc-samples``, default 20).

References: Houlsby et al., "Bayesian Active Learning for Classification and Preference Learning" (2011);
Gal, Islam & Ghahramani, "Deep Bayesian Active Learning with Image Data" (ICML 2017);
Kirsch, van Amersfoort & Gal, "BatchBALD: Efficient and Diverse Batch Acquisition for Deep Bayesian Active
Learning" (NeurIPS 2019).
"""
from __future__ import annotations

import numpy as np

from al.errors import ConfigError
from al.strategy import Context, Selection, Strategy, top_n

from . import register_strategy

#: Probabilities are clipped below at this before taking logs, so that 0 * log 0 contributes 0, not NaN.
_TINY = 1e-300


def _xlogx(p: np.ndarray) -> np.ndarray:
    """Elementwise p * log p with 0 log 0 = 0 (float64)."""
    return p * np.log(np.maximum(p, _TINY))


def _check_mc(mc_probs: np.ndarray) -> np.ndarray:
    p = np.asarray(mc_probs, dtype=np.float64)
    if p.ndim != 3:
        raise ConfigError(f"mc_probs must have shape (T, n, n_classes), got {p.shape}; stack the T MC-dropout "
                          f"passes along the first axis")
    if p.shape[0] < 1:
        raise ConfigError("mc_probs holds no MC sample; use at least one (typically 20) MC-dropout passes")
    return p


def conditional_entropy(mc_probs: np.ndarray) -> np.ndarray:
    """Expected entropy E_w H[y | x, w] = -(1/T) sum_t sum_c p_tc log p_tc, in nats.

    mc_probs: (T, N, C) -> (N,) float64.
    """
    p = _check_mc(mc_probs)
    return -_xlogx(p).sum(axis=2).mean(axis=0)


def mutual_information(mc_probs: np.ndarray) -> np.ndarray:
    """BALD score: mutual information I[y; w | x] = H[E_w p(y|x,w)] - E_w H[p(y|x,w)], in nats.

    mc_probs: (T, N, C) softmax outputs of T stochastic forward passes -> (N,) float64, >= 0. Zero when all T
    passes agree; at most log C. Tiny negative values from rounding are clipped to 0, so that candidates the
    model is certain about tie exactly (and ``top_n`` then breaks the tie by the smaller id).

    References: Houlsby et al. (2011), eq. 3; Gal, Islam & Ghahramani (2017).
    """
    p = _check_mc(mc_probs)
    mean = p.mean(axis=0)
    predictive = -_xlogx(mean).sum(axis=1)
    expected = -_xlogx(p).sum(axis=2).mean(axis=0)
    return np.maximum(predictive - expected, 0.0)


@register_strategy
class BALD(Strategy):
    """Top-n mutual information between the label and the weights, from MC dropout.

    Each candidate is scored on its own, so a batch of near-copies of one informative image is picked whole:
    that is the redundancy BatchBALD removes.

    References: Houlsby et al. (2011); Gal, Islam & Ghahramani (2017).
    """

    name = "bald"
    needs = frozenset({"mc_probs"})

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        return top_n(mutual_information(ctx.mc_probs), ctx.candidates, n)
