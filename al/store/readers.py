"""Reading the store into pandas DataFrames (for reports, notebooks and tests); never writes."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import overload

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ._tables import SCORE_STATS, Guess, Label, Query, Round, RoundValue, Run, Sample

#: The schema that added ``al_samples`` and ``al_round_values``: an older store read as it is has neither.
SAMPLES_SINCE = 3
#: The schema that added ``al_guesses``.
GUESSES_SINCE = 4
#: The schema that added ``al_labels.target`` and ``al_rounds.rmse`` (regression runs).
TARGETS_SINCE = 5


class Readers:
    """DataFrame readers, mixed into ``Store``; they need only its ``_read`` session and ``schema_version``."""

    schema_version: int

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
        """One row per run and completed round: run, strategy, dataset, seed, round_idx, n_labelled, accuracy...,
        and last ``rmse`` (a regression round's test RMSE; NaN for classification and in stores before schema 5)."""
        with_rmse = self.schema_version >= TARGETS_SINCE
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
            Round.rmse if with_rmse else sa.null().label("rmse"),
        ]
        q = (
            sa.select(*cols)
            .join(Run, Run.id == Round.run_id)
            .where(Round.state == "complete")
            .order_by(Run.id, Round.round_idx)
        )
        with self._read() as s:
            res = s.execute(q)
            frame = pd.DataFrame(res.all(), columns=list(res.keys()))
        return frame.astype({"rmse": "float64"})  # NULL everywhere would otherwise read as an object column

    def targets(self, run: str) -> pd.DataFrame:
        """A regression run's answers: sample_id, target, round_idx, oracle (empty before schema 5 and for a
        classification run, whose answers are :meth:`labels`)."""
        cols = ["sample_id", "target", "round_idx", "oracle"]
        if self.schema_version < TARGETS_SINCE:
            return pd.DataFrame(columns=cols)
        with self._read() as s:
            q = (
                sa.select(Label.sample_id, Label.target, Label.round_idx, Label.oracle)
                .join(Run, Run.id == Label.run_id)
                .where(Run.name == run, Label.target.is_not(None))
                .order_by(Label.round_idx, Label.sample_id)
            )
            return pd.DataFrame(s.execute(q).all(), columns=cols)

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

    # --- schema 3: sample keys and round values (an older store read as it is has none) -------------------------
    def sample_keys(self, run_id: int) -> dict[int, str]:
        """Every recorded ``{sample_id: key}`` of the run, excluded samples included."""
        if self.schema_version < SAMPLES_SINCE:
            return {}
        with self._read() as s:
            q = sa.select(Sample.sample_id, Sample.key).where(Sample.run_id == run_id)
            return {i: k for i, k in s.execute(q)}

    def excluded_samples(self, run_id: int) -> dict[int, str]:
        """``{sample_id: reason}`` of the run's excluded samples."""
        if self.schema_version < SAMPLES_SINCE:
            return {}
        with self._read() as s:
            q = sa.select(Sample.sample_id, Sample.excluded).where(
                Sample.run_id == run_id, Sample.excluded.is_not(None)
            )
            return {i: str(why) for i, why in s.execute(q)}

    def guesses(self, run_id: int, round_idx: int) -> dict[int, tuple[tuple[int, float], ...]]:
        """The model's top classes for each sample queried in round ``round_idx``: ``{id: ((label, p), ...)}``,
        most probable first (``Store.record_query(guesses=)``); empty for round 0 and for stores before schema 4."""
        out: dict[int, list[tuple[int, float]]] = {}
        if self.schema_version < GUESSES_SINCE:
            return {}
        with self._read() as s:
            q = (
                sa.select(Guess.sample_id, Guess.label, Guess.p)
                .where(Guess.run_id == run_id, Guess.round_idx == round_idx)
                .order_by(Guess.sample_id, Guess.k)
            )
            for i, y, p in s.execute(q):
                out.setdefault(int(i), []).append((int(y), float(p)))
        return {i: tuple(top) for i, top in out.items()}

    @overload
    def round_values(self, run: int) -> dict[int, dict[str, float | None]]: ...

    @overload
    def round_values(self, run: str | None = None) -> pd.DataFrame: ...

    def round_values(self, run: int | str | None = None) -> dict[int, dict[str, float | None]] | pd.DataFrame:
        """Named per-round values (``Store.record_round_values``).

        ``run`` an int (a run id, as the loop holds it): ``{round_idx: {name: value}}``. ``run`` a run's name:
        a DataFrame with columns run, round_idx, name, value, ordered by round and name; None: the same for
        every run, ordered by run id. A NULL value reads as None in the dict and NaN in the frame.
        """
        if isinstance(run, int) and not isinstance(run, bool):
            out: dict[int, dict[str, float | None]] = {}
            if self.schema_version < SAMPLES_SINCE:
                return out
            with self._read() as s:
                q = (
                    sa.select(RoundValue.round_idx, RoundValue.name, RoundValue.value)
                    .where(RoundValue.run_id == run)
                    .order_by(RoundValue.round_idx, RoundValue.name)
                )
                for r, name, v in s.execute(q):
                    out.setdefault(r, {})[name] = v
            return out
        cols = ["run", "round_idx", "name", "value"]
        if self.schema_version < SAMPLES_SINCE:
            return pd.DataFrame(
                {c: pd.Series(dtype=d) for c, d in zip(cols, (object, "int64", object, "float64"), strict=True)}
            )
        every = (
            sa.select(Run.name, RoundValue.round_idx, RoundValue.name, RoundValue.value)
            .join(Run, Run.id == RoundValue.run_id)
            .order_by(Run.id, RoundValue.round_idx, RoundValue.name)
        )
        if run is not None:
            every = every.where(Run.name == run)
        with self._read() as s:
            rows = s.execute(every).all()
        frame = pd.DataFrame(rows, columns=cols)
        return frame.astype({"round_idx": "int64", "value": "float64"})
