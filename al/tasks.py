"""The kinds of task a run can be: what its answers are, what its model outputs and what its rounds record.

``classification`` (the default, and that of every run stored before tasks existed): answers are class indices,
the model outputs one logit per class, rounds record test accuracy and NLL. ``regression``: answers are numbers
(a table's numeric target column, or a built-in regression dataset's), the model outputs one value (the
predicted mean, trained with MSE on standardised targets), rounds record test RMSE and Gaussian NLL in the
target's own units. Strategies declare the tasks they apply to (:attr:`al.strategy.Strategy.tasks`).
"""

from __future__ import annotations

import numpy as np

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS: tuple[str, ...] = (CLASSIFICATION, REGRESSION)


def known_answers(labels: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: which entries of a pool's labels are known. Class indices are known where ``>= 0`` (``-1``:
    unlabelled); regression targets (a float array) where finite (NaN: unlabelled; any number, negative ones
    included, is a target)."""
    y = np.asarray(labels)
    return np.isfinite(y) if y.dtype.kind == "f" else y >= 0
