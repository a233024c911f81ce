"""The store: a small typed wrapper over private SQLAlchemy tables. It is the truth about every run.

A round moves ``queried -> labelled -> complete``, each step one transaction: the query (ids, ranks, scores)
is written before the oracle is asked, labels as they arrive, metrics last. A fresh process rebuilds the
labelled set and the pending query from these rows and carries on.

Invariants live in the schema: one label per (run, sample), one query per (run, sample), one round row per
(run, round_idx). A ``meta`` row holds the schema version, checked on open.

SQLite opens with WAL, a busy timeout and ``BEGIN IMMEDIATE`` for writes, so that concurrent writers wait
for the lock instead of failing half-way through a read-then-write transaction.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .errors import ConfigMismatchError, StoreError

SCHEMA_VERSION = 1
DEFAULT_URL = "sqlite:///al-runs.db"
ROUND_STATES = ("queried", "labelled", "complete")
RUN_STATUSES = ("running", "waiting", "finished", "failed", "stopped")
SCORE_STATS = ("mean", "std", "min", "q10", "q25", "median", "q75", "q90", "max")


def crash_point(point: str, round_idx: int | None = None) -> None:
    """Fault-injection hook for the crash tests: SIGKILL this process at a named point.

    ``AL_CRASH_AT=<point>`` or ``<point>:<round_idx>`` names where. Points: ``after-query``, ``after-labels``,
    ``after-train``, ``after-metrics`` (between transactions, in the loop) and ``in-query-commit``,
    ``in-labels-commit``, ``in-metrics-commit`` (inside a transaction, its statements sent, before COMMIT).
    SIGKILL, not an exception, so that no ``finally`` or ``except`` runs: the process dies as under the OOM
    killer or a power cut. Unset (always, outside tests) it costs one environment lookup.
    """
    spec = os.environ.get("AL_CRASH_AT")
    if not spec:
        return
    name, _, r = spec.partition(":")
    if name == point and (not r or (round_idx is not None and int(r) == round_idx)):
        os.kill(os.getpid(), signal.SIGKILL)


def _with_installed_driver(url: sa.engine.URL) -> sa.engine.URL:
    """A bare ``postgresql://`` URL with the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, 2.0 to psycopg2; the project's extras install
    psycopg2-binary. So a URL without an explicit driver gets psycopg 3 if importable, else psycopg2, and a
    URL that names its driver (``postgresql+psycopg2://``) is left alone.
    """
    if url.drivername != "postgresql":
        return url
    import importlib.util

    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return url.set(drivername=driver)
    return url


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class _Base(DeclarativeBase):
    pass


class _Meta(_Base):
    __tablename__ = "al_meta"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(256))


class _Run(_Base):
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
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now)
    __table_args__ = (sa.CheckConstraint(f"status IN {RUN_STATUSES}", name="run_status"),)


class _Round(_Base):
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
    queried_at: Mapped[datetime] = mapped_column(default=_now)
    completed_at: Mapped[datetime | None]
    __table_args__ = (sa.UniqueConstraint("run_id", "round_idx", name="one_round_row"),
                      sa.CheckConstraint(f"state IN {ROUND_STATES}", name="round_state"))


class _Query(_Base):
    __tablename__ = "al_queries"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("al_runs.id", ondelete="CASCADE"), index=True)
    round_idx: Mapped[int]
    sample_id: Mapped[int]
    rank: Mapped[int]
    score: Mapped[float | None]
    __table_args__ = (sa.UniqueConstraint("run_id", "sample_id", name="query_once"),)


class _Label(_Base):
    __tablename__ = "al_labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("al_runs.id", ondelete="CASCADE"), index=True)
    sample_id: Mapped[int]
    label: Mapped[int]
    round_idx: Mapped[int]
    oracle: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(default=_now)
    __table_args__ = (sa.UniqueConstraint("run_id", "sample_id", name="label_once"),)


@dataclass
class RunState:
    """Everything a process needs to continue a run.

    labels: {sample_id: label} of every labelled sample. label_round: {sample_id: round_idx}.
    rounds: one dict per round row, by round_idx. pending: the open round's queried ids still without a label.
    """

    run_id: int
    name: str
    status: str
    config: dict[str, Any]
    labels: dict[int, int] = field(default_factory=dict)
    label_round: dict[int, int] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_round(self) -> dict[str, Any] | None:
        return self.rounds[-1] if self.rounds else None

    def labelled_ids(self, up_to_round: int | None = None) -> np.ndarray:
        ids = [i for i, r in self.label_round.items() if up_to_round is None or r <= up_to_round]
        return np.array(sorted(ids), dtype=np.int64)


def _canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def sqlite_file_missing(url: str) -> str | None:
    """The absolute path of the file an SQLite ``url`` names when that file does not exist, else None (also for
    other backends, in-memory databases and unparsable URLs, which ``Store`` itself reports)."""
    try:
        parsed = sa.engine.make_url(url)
    except exc.ArgumentError:
        return None
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or db in (None, "", ":memory:") or os.path.exists(db):
        return None
    return os.path.abspath(db)


def _with_absent(stored: dict[str, Any], absent_means: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``stored`` with each setting of ``absent_means`` filled in where its sub-dict lacks it."""
    out = dict(stored)
    for key, added in absent_means.items():
        if isinstance(out.get(key), dict) and added:
            out[key] = {**added, **out[key]}
    return out


class Store:
    """Typed access to runs, rounds, queries and labels over any SQLAlchemy URL.

    ``Store("sqlite:///al-runs.db")`` (the default) or ``Store("postgresql://user@host/db")``.
    """

    def __init__(self, url: str = DEFAULT_URL, *, busy_timeout_s: float = 60.0, must_exist: bool = False) -> None:
        """``must_exist``: refuse an SQLite URL whose file is missing instead of creating it (for readers)."""
        self.url = url
        try:
            parsed = sa.engine.make_url(url)
        except exc.ArgumentError as e:
            raise StoreError(f"cannot parse store URL {url!r}: give e.g. sqlite:///al-runs.db or "
                             f"postgresql://user@localhost/al") from e
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            missing = sqlite_file_missing(url) if must_exist else None
            if missing:
                raise StoreError(f"no store file at {missing}; check the path in {url!r} "
                                 f"(sqlite:///relative/path.db or sqlite:////absolute/path.db)")
            self._check_sqlite_path(parsed.database)
            self.engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})
            self._install_sqlite_hooks(busy_timeout_s)
        else:
            try:
                self.engine = sa.create_engine(_with_installed_driver(parsed), pool_pre_ping=True)
            except Exception as e:  # noqa: BLE001 - missing driver, bad dialect
                raise StoreError(f"cannot open store {url!r}: {e}. For PostgreSQL install the driver with "
                                 f"`pip install psycopg2-binary` (the project's dev extras include it)") from e
        self._writer = self.engine.execution_options(al_write=True)
        self._claims: dict[int, str] = {}  # run_id -> this process's owner token, for the runs it claimed
        self._open()

    # --- opening ------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_sqlite_path(database: str | None) -> None:
        if not database or database == ":memory:":
            return
        path = os.path.abspath(database)
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise StoreError(f"cannot create store {path}: folder {folder} does not exist; create it or pass "
                             f"--store sqlite:///<existing folder>/al-runs.db")
        if os.path.exists(path):
            if not os.access(path, os.R_OK | os.W_OK):
                raise StoreError(f"store file {path} is not readable and writable by this user; fix its "
                                 f"permissions or pass another --store")
            with open(path, "rb") as f:
                head = f.read(16)
            if head and head != b"SQLite format 3\x00":
                raise StoreError(f"{path} is not an SQLite database (it may be corrupt or another kind of file); "
                                 f"it was left untouched. Pass another --store, or move the file away")
        elif not os.access(folder, os.W_OK):
            raise StoreError(f"cannot create store {path}: folder {folder} is not writable; pass --store "
                             f"sqlite:///<writable folder>/al-runs.db")

    def _install_sqlite_hooks(self, busy_timeout_s: float) -> None:
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn, _record):  # noqa: ANN001
            # Let SQLAlchemy, not pysqlite, emit BEGIN (pysqlite's implicit BEGIN cannot be IMMEDIATE).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn):  # noqa: ANN001
            # Writers take the write lock up front: a deferred transaction that reads and then writes can fail
            # with "database is locked" when another writer got there first, and busy_timeout cannot help it.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("al_write") else "BEGIN")

    def _open(self) -> None:
        try:
            insp = sa.inspect(self.engine)
            tables = set(insp.get_table_names())
        except exc.DatabaseError as e:
            if not self.is_sqlite:  # a server: say so, in one line, without echoing the password
                shown = self.engine.url.render_as_string(hide_password=True)
                reason = " ".join(str(getattr(e, "orig", e)).split())
                raise StoreError(f"cannot connect to store {shown}: {reason}. Check that the server is running "
                                 f"and that the URL's user, password, host, port and database are right") from e
            raise StoreError(f"cannot open store {self.url!r}: {e.orig if hasattr(e, 'orig') else e}. "
                             f"The file was left untouched; check it or pass another --store") from e
        except exc.SQLAlchemyError as e:
            raise StoreError(f"cannot open store {self.url!r}: {e}") from e
        if "al_meta" in tables:
            with Session(self.engine) as s:
                row = s.get(_Meta, "schema_version")
            version = int(row.value) if row else None
            if version is None:
                raise StoreError(f"store {self.url!r} has tables but no schema version; it was not written by al")
            if version > SCHEMA_VERSION:
                raise StoreError(f"store {self.url!r} was written by a newer al (schema {version}, this is "
                                 f"{SCHEMA_VERSION}); upgrade al (pip install -U al) to open it")
            if version < SCHEMA_VERSION:
                raise StoreError(f"store {self.url!r} has old schema {version}; this al reads {SCHEMA_VERSION}")
            return
        if tables & {t.name for t in _Base.metadata.sorted_tables}:
            raise StoreError(f"store {self.url!r} holds al tables without a schema version row; refusing to touch it")
        try:
            with self._write() as s:
                if self.engine.dialect.name == "postgresql":
                    # Several processes opening a new database at once would race in CREATE TABLE (PostgreSQL's
                    # DDL is transactional but not serialised); a transaction-scoped advisory lock makes them
                    # take turns, and create_all's own existence check then sees the first one's tables.
                    s.execute(sa.text("SELECT pg_advisory_xact_lock(7340531)"))
                _Base.metadata.create_all(s.connection())
                if s.get(_Meta, "schema_version") is None:
                    s.add(_Meta(key="schema_version", value=str(SCHEMA_VERSION)))
        except exc.SQLAlchemyError as e:
            raise StoreError(f"cannot write to store {self.url!r}: {e}") from e

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction (BEGIN IMMEDIATE on SQLite)."""
        with Session(self._writer) as s, s.begin():
            yield s

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine) as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- runs ---------------------------------------------------------------------------------------------------
    def open_run(self, name: str, config: Mapping[str, Any], *,
                 absent_means: Mapping[str, Mapping[str, Any]] | None = None) -> RunState:
        """The run named ``name``, created with ``config`` if new.

        ``absent_means`` maps a key of ``config`` whose value is a dict (such as ``strategy_params``) to settings
        that were added to the code later, each with the value that a stored config lacking it ran with: the
        stored config is compared as if it held them, so a run recorded before a setting existed still
        continues when the setting keeps its old behaviour. The stored record itself is left as written.

        Raises ConfigMismatchError if it exists with a different config.
        """
        text = _canonical(config)
        for _ in range(2):
            with self._write() as s:
                run = s.execute(sa.select(_Run).where(_Run.name == name)).scalar_one_or_none()
                if run is None:
                    try:
                        with s.begin_nested():
                            s.add(_Run(name=name, config=text, seed=int(config.get("seed", 0)),
                                       strategy=str(config.get("strategy", "")),
                                       dataset=str(config.get("dataset", "")), model=str(config.get("model", "")),
                                       status="running"))
                    except exc.IntegrityError:
                        continue  # another process created it between our read and write: read it again
                    break
                if run.config != text:
                    stored = _with_absent(json.loads(run.config), absent_means or {})
                    if _canonical(stored) != text:
                        raise ConfigMismatchError(self._mismatch_message(name, stored, dict(config)))
                break
        return self.state(name)

    @staticmethod
    def _mismatch_message(name: str, old: dict, new: dict) -> str:
        diffs = [f"{k}: stored {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(set(old) | set(new))
                 if old.get(k) != new.get(k)]
        return (f"run {name!r} already exists in the store with a different configuration ({'; '.join(diffs)}). "
                f"Pass --run-name to start a separate run, or repeat the original settings to continue it")

    def state(self, name: str) -> RunState:
        with self._read() as s:
            run = s.execute(sa.select(_Run).where(_Run.name == name)).scalar_one_or_none()
            if run is None:
                raise StoreError(f"no run named {name!r} in {self.url}")
            st = RunState(run.id, run.name, run.status, json.loads(run.config))
            for sid, y, r in s.execute(sa.select(_Label.sample_id, _Label.label, _Label.round_idx)
                                       .where(_Label.run_id == run.id)):
                st.labels[sid] = y
                st.label_round[sid] = r
            rounds = s.execute(sa.select(_Round).where(_Round.run_id == run.id).order_by(_Round.round_idx))
            st.rounds = [_row_dict(r) for r in rounds.scalars()]
        return st

    def set_status(self, run_id: int, status: str, message: str | None = None) -> None:
        """Set a run's status; any status but ``running`` also releases this process's claim on it.

        A process whose claim was taken over leaves the run alone: its status belongs to the new owner."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}")
        with self._write() as s:
            run = s.get(_Run, run_id, with_for_update=True)
            token = self._claims.get(run_id)
            if token is not None and run.owner != token:
                self._claims.pop(run_id, None)
                return
            run.status, run.message, run.updated_at = status, message, _now()
            if status != "running":
                run.owner = None
                self._claims.pop(run_id, None)

    def claim(self, run_id: int, *, stale_after_s: float = 120.0) -> str:
        """Mark this process as the run's only writer; refuse if another live process holds it.

        A holder on this host whose pid is gone, or any holder silent for ``stale_after_s``, is taken over.
        """
        token = f"{socket.gethostname()}:{os.getpid()}"
        with self._write() as s:
            # FOR UPDATE: on PostgreSQL two processes claiming at once would both read "no owner" under READ
            # COMMITTED; the row lock makes the second wait and then see the first's claim. (SQLite ignores it:
            # BEGIN IMMEDIATE already serialises writers.)
            run = s.get(_Run, run_id, with_for_update=True)
            if run.owner and run.owner != token and not self._owner_gone(run.owner, run.heartbeat, stale_after_s):
                raise StoreError(f"run {run.name!r} is being written by another process ({run.owner}); wait for it "
                                 f"to finish, or stop it first")
            run.owner, run.heartbeat, run.status, run.updated_at = token, _now(), "running", _now()
        self._claims[run_id] = token
        return token

    def heartbeat(self, run_id: int) -> None:
        """Tell other processes that the claimant is alive (a silent claim is taken over after its timeout)."""
        with self._write() as s:
            self._fence(s, run_id).heartbeat = _now()

    def _fence(self, s: Session, run_id: int) -> _Run:
        """The run's row, locked; refuses if this process claimed the run and another has since taken it over.

        Why: a claim can be taken over when its holder looks dead (a pid gone, a heartbeat silent too long, e.g.
        a host paused for minutes). If the old holder then wakes up, its next write must fail instead of adding a
        second copy of a round. Stores that never claimed the run (direct API use) are not fenced.
        """
        run = s.get(_Run, run_id, with_for_update=True)
        if run is None:
            raise StoreError(f"no run with id {run_id} in {self.url}")
        token = self._claims.get(run_id)
        if token is not None and run.owner != token:
            raise StoreError(f"run {run.name!r} was taken over by {run.owner or 'another process'} while this "
                             f"process ({token}) held it; this process stops writing to it. Nothing it wrote is "
                             f"lost; check the run with `python -m al.bench` with the same settings")
        return run

    @staticmethod
    def _owner_gone(owner: str, heartbeat: datetime | None, stale_after_s: float) -> bool:
        host, _, pid = owner.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
        return heartbeat is None or (_now() - heartbeat).total_seconds() > stale_after_s

    # --- a round's transitions ----------------------------------------------------------------------------------
    def record_query(self, run_id: int, round_idx: int, ids: np.ndarray, scores: np.ndarray | None,
                     *, pool_scores: np.ndarray | None = None, select_seconds: float | None = None) -> None:
        """Open round ``round_idx`` in state ``queried`` with its query (ids in rank order and their scores)."""
        ids = np.asarray(ids, dtype=np.int64)
        stats = score_summary(pool_scores) if pool_scores is not None else {}
        with self._write() as s:
            self._fence(s, run_id)
            prev = s.execute(sa.select(_Round.state).where(_Round.run_id == run_id)
                             .order_by(_Round.round_idx.desc()).limit(1)).scalar_one_or_none()
            if prev not in (None, "complete"):
                raise StoreError(f"cannot open round {round_idx}: the previous round is still {prev!r}")
            s.add(_Round(run_id=run_id, round_idx=round_idx, state="queried", n_queried=len(ids),
                         select_seconds=select_seconds, **{f"score_{k}": v for k, v in stats.items()},
                         n_scored=None if pool_scores is None else int(len(pool_scores))))
            sc = [None] * len(ids) if scores is None else [None if not np.isfinite(v) else float(v) for v in scores]
            s.execute(sa.insert(_Query), [dict(run_id=run_id, round_idx=round_idx, sample_id=int(i), rank=r,
                                               score=sc[r]) for r, i in enumerate(ids)])
            s.flush()
            crash_point("in-query-commit", round_idx)

    def pending(self, run_id: int, round_idx: int) -> np.ndarray:
        """Queried ids of ``round_idx`` without a label yet, in rank order."""
        with self._read() as s:
            q = (sa.select(_Query.sample_id)
                 .where(_Query.run_id == run_id, _Query.round_idx == round_idx)
                 .where(~sa.exists().where(_Label.run_id == run_id, _Label.sample_id == _Query.sample_id))
                 .order_by(_Query.rank))
            return np.array(s.execute(q).scalars().all(), dtype=np.int64)

    def queried(self, run_id: int, round_idx: int) -> pd.DataFrame:
        with self._read() as s:
            q = (sa.select(_Query.sample_id, _Query.rank, _Query.score)
                 .where(_Query.run_id == run_id, _Query.round_idx == round_idx).order_by(_Query.rank))
            return pd.DataFrame(s.execute(q).all(), columns=["sample_id", "rank", "score"])

    def record_labels(self, run_id: int, round_idx: int, labels: Mapping[int, int], oracle: str) -> int:
        """Add labels to the open round; it becomes ``labelled`` when none is pending. Returns #still pending."""
        with self._write() as s:
            self._fence(s, run_id)
            rnd = s.execute(sa.select(_Round).where(_Round.run_id == run_id, _Round.round_idx == round_idx)
                            ).scalar_one_or_none()
            if rnd is None or rnd.state != "queried":
                raise StoreError(f"round {round_idx} is not waiting for labels (state "
                                 f"{None if rnd is None else rnd.state!r})")
            queried = set(s.execute(sa.select(_Query.sample_id).where(
                _Query.run_id == run_id, _Query.round_idx == round_idx)).scalars())
            done = set(s.execute(sa.select(_Label.sample_id).where(
                _Label.run_id == run_id, _Label.sample_id.in_(queried))).scalars())
            stray = [i for i in labels if int(i) not in queried or int(i) in done]
            if stray:
                raise StoreError(f"labels for ids not pending in round {round_idx}: {sorted(stray)[:10]}")
            if labels:
                s.execute(sa.insert(_Label), [dict(run_id=run_id, sample_id=int(i), label=int(y),
                                                   round_idx=round_idx, oracle=oracle) for i, y in labels.items()])
            left = len(queried) - len(done) - len(labels)
            if left == 0:
                rnd.state = "labelled"
            s.flush()
            crash_point("in-labels-commit", round_idx)
            return left

    def record_metrics(self, run_id: int, round_idx: int, *, n_labelled: int, accuracy: float, nll: float,
                       train_seconds: float | None = None, eval_seconds: float | None = None,
                       store_seconds: float | None = None) -> None:
        """Close a ``labelled`` round with the test metrics of the model trained on its labelled set."""
        with self._write() as s:
            self._fence(s, run_id)
            rnd = s.execute(sa.select(_Round).where(_Round.run_id == run_id, _Round.round_idx == round_idx)
                            ).scalar_one_or_none()
            if rnd is None or rnd.state != "labelled":
                raise StoreError(f"round {round_idx} is not labelled yet; cannot record its metrics")
            rnd.state, rnd.n_labelled, rnd.accuracy, rnd.nll = "complete", n_labelled, accuracy, nll
            rnd.train_seconds, rnd.eval_seconds, rnd.store_seconds = train_seconds, eval_seconds, store_seconds
            rnd.completed_at = _now()
            run = s.get(_Run, run_id)
            run.updated_at = run.heartbeat = _now()
            s.flush()
            crash_point("in-metrics-commit", round_idx)

    # --- reading ------------------------------------------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        with self._read() as s:
            rows = s.execute(sa.select(_Run.id, _Run.name, _Run.strategy, _Run.dataset, _Run.model, _Run.seed,
                                       _Run.status, _Run.message, _Run.config, _Run.created_at, _Run.updated_at)
                             .order_by(_Run.id)).all()
        cols = ["run_id", "run", "strategy", "dataset", "model", "seed", "status", "message", "config",
                "created_at", "updated_at"]
        return pd.DataFrame(rows, columns=cols)

    def curves(self) -> pd.DataFrame:
        """One row per run and completed round: run, strategy, dataset, seed, round_idx, n_labelled, accuracy..."""
        cols = [_Run.name.label("run"), _Run.strategy, _Run.dataset, _Run.model, _Run.seed, _Run.status,
                _Round.round_idx, _Round.n_labelled, _Round.accuracy, _Round.nll, _Round.n_queried,
                _Round.train_seconds, _Round.eval_seconds, _Round.select_seconds, _Round.store_seconds,
                _Round.n_scored, *[getattr(_Round, f"score_{k}") for k in SCORE_STATS]]
        q = (sa.select(*cols).join(_Run, _Run.id == _Round.run_id).where(_Round.state == "complete")
             .order_by(_Run.id, _Round.round_idx))
        with self._read() as s:
            res = s.execute(q)
            return pd.DataFrame(res.all(), columns=list(res.keys()))

    def labels(self, run: str) -> pd.DataFrame:
        """Labelled samples of a run: sample_id, label, round_idx, oracle."""
        with self._read() as s:
            q = (sa.select(_Label.sample_id, _Label.label, _Label.round_idx, _Label.oracle)
                 .join(_Run, _Run.id == _Label.run_id).where(_Run.name == run)
                 .order_by(_Label.round_idx, _Label.sample_id))
            return pd.DataFrame(s.execute(q).all(), columns=["sample_id", "label", "round_idx", "oracle"])

    def queries(self, run: str) -> pd.DataFrame:
        """Every query of a run: round_idx, rank, sample_id, score."""
        with self._read() as s:
            q = (sa.select(_Query.round_idx, _Query.rank, _Query.sample_id, _Query.score)
                 .join(_Run, _Run.id == _Query.run_id).where(_Run.name == run)
                 .order_by(_Query.round_idx, _Query.rank))
            return pd.DataFrame(s.execute(q).all(), columns=["round_idx", "rank", "sample_id", "score"])


def score_summary(scores: np.ndarray) -> dict[str, float | None]:
    """Mean, std and quantiles of finite scores; all None when there are none."""
    x = np.asarray(scores, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {k: None for k in SCORE_STATS}
    q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    vals = [x.mean(), x.std(), x.min(), *q, x.max()]
    return {k: float(v) for k, v in zip(SCORE_STATS, vals)}


def _row_dict(obj: _Base) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in sa.inspect(obj).mapper.column_attrs}
