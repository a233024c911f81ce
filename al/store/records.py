"""What the store hands out: frozen records, read by attribute, built fresh from the rows on every call."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from . import _tables as t
from ._tables import SCORE_STATS


@dataclass(frozen=True)
class RunRecord:
    """One run's row. ``config`` is the configuration as stored (JSON), ``owner`` the claimant ("host:pid")."""

    run_id: int
    name: str
    status: str
    config: dict[str, Any]
    seed: int
    strategy: str
    dataset: str
    model: str
    message: str | None
    owner: str | None
    heartbeat: datetime | None
    created_at: datetime
    updated_at: datetime
    data_fingerprint: str | None = None  # schema 2; None for runs recorded before it

    @classmethod
    def of(cls, row: t.Run, *, with_fingerprint: bool) -> RunRecord:
        return cls(
            row.id,
            row.name,
            row.status,
            json.loads(row.config),
            row.seed,
            row.strategy,
            row.dataset,
            row.model,
            row.message,
            row.owner,
            row.heartbeat,
            row.created_at,
            row.updated_at,
            row.data_fingerprint if with_fingerprint else None,
        )


@dataclass(frozen=True)
class RoundRecord:
    """One round's row: its state (``queried -> labelled -> complete``), its metrics once complete, and the
    summary (``score_<stat>``) of the ``n_scored`` pool scores it was chosen from."""

    id: int
    run_id: int
    round_idx: int
    state: str
    n_queried: int
    n_labelled: int | None
    accuracy: float | None
    nll: float | None
    train_seconds: float | None
    eval_seconds: float | None
    select_seconds: float | None
    store_seconds: float | None
    n_scored: int | None
    score_mean: float | None
    score_std: float | None
    score_min: float | None
    score_q10: float | None
    score_q25: float | None
    score_median: float | None
    score_q75: float | None
    score_q90: float | None
    score_max: float | None
    queried_at: datetime
    completed_at: datetime | None
    rmse: float | None = None  # schema 5: a regression round's test RMSE; None for classification

    @classmethod
    def of(cls, row: t.Round, *, with_rmse: bool = True) -> RoundRecord:
        """``with_rmse``: the store has schema 5 (an older store read as it is has no rmse column to load)."""
        skip = () if with_rmse else ("rmse",)
        return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls) if f.name not in skip})

    def __getitem__(self, key: str) -> Any:
        # Rounds were dicts before schema 2's API; code reading them by key keeps working for a while.
        warnings.warn(f"round[{key!r}] is deprecated; read round.{key}", DeprecationWarning, stacklevel=2)
        return getattr(self, key)


@dataclass(frozen=True)
class RunState:
    """Everything a process needs to continue a run.

    labels: {sample_id: label} of every labelled sample (NO_CLASS, -1, for a regression run's samples).
    label_round: {sample_id: round_idx}. targets: a regression run's answers, {sample_id: target} (schema 5).
    rounds: the round rows by round_idx. Each call of ``Store.state`` builds a new one (the dicts are its own).
    """

    run: RunRecord
    labels: Mapping[int, int]
    label_round: Mapping[int, int]
    rounds: tuple[RoundRecord, ...]
    targets: Mapping[int, float] = dataclasses.field(default_factory=dict)

    @property
    def run_id(self) -> int:
        return self.run.run_id

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def config(self) -> dict[str, Any]:
        return self.run.config

    @property
    def last_round(self) -> RoundRecord | None:
        return self.rounds[-1] if self.rounds else None

    def labelled_ids(self, up_to_round: int | None = None) -> np.ndarray:
        """Sorted ids labelled in rounds <= ``up_to_round`` (all rounds when None): (n,) int64."""
        ids = [i for i, r in self.label_round.items() if up_to_round is None or r <= up_to_round]
        return np.array(sorted(ids), dtype=np.int64)


def score_summary(scores: np.ndarray) -> dict[str, float | None]:
    """Mean, std and quantiles of finite scores; all None when there are none."""
    x = np.asarray(scores, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {k: None for k in SCORE_STATS}
    q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    vals = [x.mean(), x.std(), x.min(), *q, x.max()]
    return {k: float(v) for k, v in zip(SCORE_STATS, vals, strict=True)}
