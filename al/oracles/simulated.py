"""Oracles that answer without a person: the true labels, the true labels with seeded noise, a user's function."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ..errors import OracleError
from .base import Answers, Oracle


class GroundTruthOracle(Oracle):
    """Simulation: answers every query from the dataset's true labels (``labels: (n_pool,)``): class indices, or
    a regression pool's targets (a float array: answered as floats)."""

    name = "ground-truth"

    def __init__(self, labels: np.ndarray) -> None:
        y = np.asarray(labels)
        self.labels = y.astype(np.float64) if y.dtype.kind == "f" else y.astype(np.int64)

    def label(self, ids: np.ndarray) -> dict[int, int]:
        if self.labels.dtype.kind == "f":
            return {int(i): float(self.labels[i]) for i in ids}  # type: ignore[misc]
        return {int(i): int(self.labels[i]) for i in ids}


class NoisyOracle(Oracle):
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


class CallbackOracle(Oracle):
    """Wraps any function ``fn(ids) -> labels``: a sequence aligned with ``ids`` or a mapping id -> label."""

    name = "callback"

    def __init__(self, fn: Callable[[np.ndarray], Mapping[int, int] | Iterable[int]], name: str = "callback"):
        self.fn = fn
        self.name = name

    def label(self, ids: np.ndarray) -> dict[int, int]:
        answer = self.fn(np.asarray(ids, dtype=np.int64))
        if isinstance(answer, Answers):  # keep the rows it refused: they are reported, not dropped
            return Answers(answer, answer.refused)
        if isinstance(answer, Mapping):
            return dict(answer)
        answer = list(answer)
        if len(answer) != len(ids):
            raise OracleError(
                f"oracle {self.name!r} returned {len(answer)} labels for {len(ids)} ids; return one "
                f"label per id, in order, or a mapping id -> label for those it can answer"
            )
        return {int(i): y for i, y in zip(ids, answer, strict=True)}
