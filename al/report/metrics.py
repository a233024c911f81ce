"""Maths on one learning curve: AUBC, accuracy at n labels, labels to reach an accuracy.

The definitions are in the :mod:`al.report` docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_TARGETS = (0.8, 0.9, 0.95)


# --- maths on one curve ------------------------------------------------------------------------------------------
def _sorted_curve(n_labelled: Sequence[float], accuracy: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(n_labelled, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    if n.shape != a.shape or n.ndim != 1:
        raise ValueError(f"n_labelled {n.shape} and accuracy {a.shape} must be 1-d of the same length")
    order = np.argsort(n, kind="stable")
    n, a = n[order], a[order]
    if len(n) > 1 and np.any(np.diff(n) <= 0):
        raise ValueError("a learning curve has two evaluations at the same label count; pass one run at a time")
    return n, a


def aubc(n_labelled: Sequence[float], accuracy: Sequence[float]) -> float:
    """Normalised area under the budget curve, in [0, 1] (see the module docstring). NaN for < 2 points.

    n_labelled: (R+1,) label counts; accuracy: (R+1,) test accuracies in [0, 1].
    """
    n, a = _sorted_curve(n_labelled, accuracy)
    if len(n) < 2:
        return float("nan")
    # np.trapz was renamed trapezoid in numpy 2; the explicit sum works with both.
    area = float(np.sum((a[1:] + a[:-1]) * np.diff(n)) / 2.0)
    return area / float(n[-1] - n[0])


def accuracy_at(n_labelled: Sequence[float], accuracy: Sequence[float], at: float) -> float:
    """Test accuracy at ``at`` labels, linearly interpolated; NaN outside the curve's range."""
    n, a = _sorted_curve(n_labelled, accuracy)
    if len(n) == 0 or at < n[0] or at > n[-1]:
        return float("nan")
    return float(np.interp(at, n, a))


def labels_to_reach(n_labelled: Sequence[float], accuracy: Sequence[float], target: float) -> float:
    """Smallest evaluated label count whose accuracy is >= ``target``; ``inf`` if never reached."""
    n, a = _sorted_curve(n_labelled, accuracy)
    hit = np.flatnonzero(a >= target)
    return float(n[hit[0]]) if len(hit) else math.inf
