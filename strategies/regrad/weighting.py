"""How REGrad combines per-class, per-layer gradient norms: the class weights c and the layer weights w.

    U(x) = sum_k c_k sum_l w_l ||g_{k,l}||       w = softmax(alpha * (l-1)/(L-1))

Each class weighting is written once, in :data:`CLASS_WEIGHTING_RULES`; :class:`~strategies.regrad.GradientNorms`
and any caller holding plain probabilities use the same functions.

References: Wang & Ji, "Gradient-based Uncertainty Quantification for Pre-trained Classifiers", CVPR 2024
(arXiv 2404.10124); Igoe et al., "How Useful are Gradients for OOD Detection?", arXiv 2205.10439 ("expected").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from al.errors import ConfigError

from .settings import CLASS_WEIGHTINGS


def _root(p: np.ndarray) -> np.ndarray:
    r = np.sqrt(np.clip(p, 0, None))
    return r / r.sum(1, keepdims=True)


def _expected(p: np.ndarray) -> np.ndarray:
    return p / p.sum(1, keepdims=True)


def _predicted(p: np.ndarray) -> np.ndarray:
    # All weight on the most probable column. When the columns are in rank order (GradientNorms) that is column 0,
    # since argmax returns the first of tied maxima.
    c = np.zeros_like(p)
    c[np.arange(len(p)), p.argmax(1)] = 1.0
    return c


def _uniform(p: np.ndarray) -> np.ndarray:
    return np.full_like(p, 1.0 / p.shape[1])


#: name -> c(p): (n, C) float64 probabilities (already restricted to the classes kept) -> (n, C) weights.
CLASS_WEIGHTING_RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "root": _root,
    "expected": _expected,
    "predicted": _predicted,
    "uniform": _uniform,
}
assert tuple(CLASS_WEIGHTING_RULES) == CLASS_WEIGHTINGS

#: Class ranks a weighting can put weight on, when fewer than all: "predicted" needs only the argmax class, so
#: one backward pass suffices.
RANKS_NEEDED: dict[str, int] = {"predicted": 1}


def class_weights(probs: np.ndarray, weighting: str) -> np.ndarray:
    """c: ``(n, C)`` from probs ``(n, C)`` (already restricted to the classes kept, if ``top_k``)."""
    rule = CLASS_WEIGHTING_RULES.get(weighting) if isinstance(weighting, str) else None
    if rule is None:
        raise ConfigError(f"class_weighting must be one of {CLASS_WEIGHTINGS}, got {weighting!r}")
    return rule(np.asarray(probs, dtype=np.float64))


def layer_weights(n_layers: int, alpha: float) -> np.ndarray:
    """w_l = softmax(alpha * (l-1)/(L-1)), ``(n_layers,)``; uniform for alpha = 0, the last layer as alpha grows."""
    if n_layers == 1:
        return np.ones(1)
    z = alpha * np.arange(n_layers) / (n_layers - 1)
    z = np.exp(z - z.max())
    return z / z.sum()
