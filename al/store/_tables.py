"""The private ORM tables. Nothing outside ``al.store`` touches them; the typed API in ``api.py`` does.

Invariants live here as constraints: one label per (run, sample), one query per (run, sample), one round row
per (run, round_idx), a run status and a round state from a fixed set, one key per (run, sample) and one sample
per (run, key), one value per (run, round, name). A column added by a migration carries
``info={"since": <schema version>}`` and is deferred, so that reading a store of an older (compatible) schema
never selects it; a table added by one carries the same ``info`` and is read only when the store's schema has it.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROUND_STATES = ("queried", "labelled", "complete")
RUN_STATUSES = ("running", "waiting", "finished", "failed", "stopped")
KEY_LENGTH = 1024  # a sample's key (a relative path, an id value): longer ones are refused before the INSERT
NAME_LENGTH = 64  # a round value's name
SCORE_STATS = ("mean", "std", "min", "q10", "q25", "median", "q75", "q90", "max")
#: ``al_labels.label`` of a row whose answer is a regression target (``al_labels.target``, schema 5): no class.
NO_CLASS = -1


def now() -> datetime:
    """UTC without tzinfo: SQLite has no time zones, and both backends then store the same value."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "al_meta"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(256))


class Run(Base):
    __tablename__ = "al_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(256), unique=True)
    config: Mapped[str] = mapped_column(sa.Text)
    seed: Mapped[int]
    strategy: Mapped[str] = mapped_column(sa.String(128))
    dataset: Mapped[str] = mapped_column(sa.String(128))
    model: Mapped[str] = mapped_column(sa.String(256))
    status: Mapped[str] = mapped_column(sa.String(16))
    message: Mapped[str | None] = mapped_column(sa.Text)
    owner: Mapped[str | None] = mapped_column(sa.String(256))
    heartbeat: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now)
    # Schema 2: what the run's data actually is (name, pool size and shape, a hash of its ids or paths), so that
    # a run is never resumed on other data that happens to share the dataset's name. NULL for runs recorded
    # before it existed.
    data_fingerprint: Mapped[str | None] = mapped_column(sa.String(128), deferred=True, info={"since": 2})
    __table_args__ = (sa.CheckConstraint(f"status IN {RUN_STATUSES}", name="run_status"),)


class Round(Base):
    __tablename__ = "al_rounds"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("al_runs.id", ondelete="CASCADE"), index=True)
    round_idx: Mapped[int]
    state: Mapped[str] = mapped_column(sa.String(16))
    n_queried: Mapped[int]
    n_labelled: Mapped[int | None]
    accuracy: Mapped[float | None]
    nll: Mapped[float | None]
    train_seconds: Mapped[float | None]
    eval_seconds: Mapped[float | None]
    select_seconds: Mapped[float | None]
    store_seconds: Mapped[float | None]
    n_scored: Mapped[int | None]
    score_mean: Mapped[float | None]
    score_std: Mapped[float | None]
    score_min: Mapped[float | None]
    score_q10: Mapped[float | None]
    score_q25: Mapped[float | None]
    score_median: Mapped[float | None]
    score_q75: Mapped[float | None]
    score_q90: Mapped[float | None]
    score_max: Mapped[float | None]
    queried_at: Mapped[datetime] = mapped_column(default=now)
    completed_at: Mapped[datetime | None]
    # Schema 5: a regression run's test RMSE (in the target's units; ``nll`` is then the Gaussian NLL and
    # ``accuracy`` NULL). NULL for classification rounds.
    rmse: Mapped[float | None] = mapped_column(sa.Float, deferred=True, info={"since": 5})
    __table_args__ = (
        sa.UniqueConstraint("run_id", "round_idx", name="one_round_row"),
        sa.CheckConstraint(f"state IN {ROUND_STATES}", name="round_state"),
    )


class Query(Base):
    __tablename__ = "al_queries"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("al_runs.id", ondelete="CASCADE"), index=True)
    round_idx: Mapped[int]
    sample_id: Mapped[int]
    rank: Mapped[int]
    score: Mapped[float | None]
    __table_args__ = (sa.UniqueConstraint("run_id", "sample_id", name="query_once"),)


class Label(Base):
    __tablename__ = "al_labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("al_runs.id", ondelete="CASCADE"), index=True)
    sample_id: Mapped[int]
    label: Mapped[int]
    round_idx: Mapped[int]
    oracle: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(default=now)
    # Schema 5: the numeric target of a regression run's sample (its answer); ``label`` then holds NO_CLASS, since
    # the column is NOT NULL in every store and an additive step cannot relax that. NULL for class labels.
    target: Mapped[float | None] = mapped_column(sa.Float, deferred=True, info={"since": 5})
    __table_args__ = (sa.UniqueConstraint("run_id", "sample_id", name="label_once"),)


class Sample(Base):
    """Schema 3: what a sample id stands for, so that ids stay the same samples across processes and resumes.

    ``key``: a file's path relative to the pool folder (POSIX separators) or a table's id value as text.
    ``excluded``: why the sample is left out of the pool (``"unreadable: OSError: truncated file"``); NULL when
    it is in. The primary key is (run_id, sample_id): ids are looked up and updated by it in bulk.
    """

    __tablename__ = "al_samples"
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("al_runs.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    key: Mapped[str] = mapped_column(sa.String(KEY_LENGTH))
    excluded: Mapped[str | None] = mapped_column(sa.Text)
    __table_args__ = (sa.UniqueConstraint("run_id", "key", name="one_sample_per_key"), {"info": {"since": 3}})


class RoundValue(Base):
    """Schema 3: named per-round values, such as a stopping criterion's value and its threshold."""

    __tablename__ = "al_round_values"
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("al_runs.id", ondelete="CASCADE"), primary_key=True)
    round_idx: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH), primary_key=True)
    value: Mapped[float | None] = mapped_column(sa.Float)
    __table_args__ = ({"info": {"since": 3}},)


class Guess(Base):
    """Schema 4: the model's top classes for each queried sample, recorded with the query (an oracle shows them to
    the person labelling: the web page's guesses, Label Studio's predictions). ``k``: 0 = the most probable."""

    __tablename__ = "al_guesses"
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("al_runs.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    k: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    round_idx: Mapped[int]
    label: Mapped[int]
    p: Mapped[float]
    __table_args__ = ({"info": {"since": 4}},)


TABLE_NAMES = frozenset(t.name for t in Base.metadata.sorted_tables)
