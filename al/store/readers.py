"""Reading the store into pandas DataFrames (for reports, notebooks and tests); never writes."""

from __future__ import annotations

from contextlib import AbstractContextManager

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ._tables import SCORE_STATS, Label, Query, Round, Run


class Readers:
    """DataFrame readers, mixed into ``Store``; they need only its ``_read`` session."""

    def _read(self) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def runs(self) -> pd.DataFrame:
        """One row per run: run_id, run, strategy, dataset, model, seed, status, message, config (JSON text),
        created_at, updated_at."""
        with self._read() as s:
            rows = s.execute(
                sa.select(
                    Run.id,
                    Run.name,
                    Run.strategy,
                    Run.dataset,
                    Run.model,
                    Run.seed,
                    Run.status,
                    Run.message,
                    Run.config,
                    Run.created_at,
                    Run.updated_at,
                ).order_by(Run.id)
            ).all()
        cols = [
            "run_id",
            "run",
            "strategy",
            "dataset",
            "model",
            "seed",
            "status",
            "message",
            "config",
            "created_at",
            "updated_at",
        ]
        return pd.DataFrame(rows, columns=cols)

    def curves(self) -> pd.DataFrame:
        """One row per run and completed round: run, strategy, dataset, seed, round_idx, n_labelled, accuracy..."""
        cols = [
            Run.name.label("run"),
            Run.strategy,
            Run.dataset,
            Run.model,
            Run.seed,
            Run.status,
            Round.round_idx,
            Round.n_labelled,
            Round.accuracy,
            Round.nll,
            Round.n_queried,
            Round.train_seconds,
            Round.eval_seconds,
            Round.select_seconds,
            Round.store_seconds,
            Round.n_scored,
            *[getattr(Round, f"score_{k}") for k in SCORE_STATS],
        ]
        q = (
            sa.select(*cols)
            .join(Run, Run.id == Round.run_id)
            .where(Round.state == "complete")
            .order_by(Run.id, Round.round_idx)
        )
        with self._read() as s:
            res = s.execute(q)
            return pd.DataFrame(res.all(), columns=list(res.keys()))

    def labels(self, run: str) -> pd.DataFrame:
        """Labelled samples of a run: sample_id, label, round_idx, oracle."""
        with self._read() as s:
            q = (
                sa.select(Label.sample_id, Label.label, Label.round_idx, Label.oracle)
                .join(Run, Run.id == Label.run_id)
                .where(Run.name == run)
                .order_by(Label.round_idx, Label.sample_id)
            )
            return pd.DataFrame(s.execute(q).all(), columns=["sample_id", "label", "round_idx", "oracle"])

    def queries(self, run: str) -> pd.DataFrame:
        """Every query of a run: round_idx, rank, sample_id, score."""
        with self._read() as s:
            q = (
                sa.select(Query.round_idx, Query.rank, Query.sample_id, Query.score)
                .join(Run, Run.id == Query.run_id)
                .where(Run.name == run)
                .order_by(Query.round_idx, Query.rank)
            )
            return pd.DataFrame(s.execute(q).all(), columns=["round_idx", "rank", "sample_id", "score"])

    def queried(self, run_id: int, round_idx: int) -> pd.DataFrame:
        """One round's query in rank order: sample_id, rank, score."""
        with self._read() as s:
            q = (
                sa.select(Query.sample_id, Query.rank, Query.score)
                .where(Query.run_id == run_id, Query.round_idx == round_idx)
                .order_by(Query.rank)
            )
            return pd.DataFrame(s.execute(q).all(), columns=["sample_id", "rank", "score"])
