"""``Store``: the typed API over the private tables. Each state transition of a round is one transaction."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import Session

from ..errors import ConfigMismatchError, StoreError
from . import claims, migrations, privileges
from ._tables import (
    KEY_LENGTH,
    NAME_LENGTH,
    NO_CLASS,
    RUN_STATUSES,
    TABLE_NAMES,
    Guess,
    Label,
    Query,
    Round,
    RoundValue,
    Run,
    Sample,
    now,
)
from .configs import canonical, mismatch_message, same_config, with_absent
from .engine import WRITE_OPTION, display_url, open_engine, parse_url, sqlite_path
from .faults import crash_point
from .migrations import SCHEMA_VERSION
from .readers import GUESSES_SINCE, TARGETS_SINCE, Readers
from .records import RoundRecord, RunRecord, RunState, score_summary

DEFAULT_URL = "sqlite:///al-runs.db"
SAMPLES: sa.Table = Sample.metadata.tables["al_samples"]  # the Core table, for the bulk INSERT


class Store(Readers):
    """Typed access to runs, rounds, queries and labels over any SQLAlchemy URL.

    ``Store("sqlite:///al-runs.db")`` (the default) or ``Store("postgresql://user@host/db")``. A store of an
    older schema is upgraded on open (see ``al.store.migrations``), unless it is opened for reading only.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        busy_timeout_s: float = 60.0,
        must_exist: bool = False,
        upgrade: bool | None = None,
    ) -> None:
        """``must_exist``: refuse an SQLite URL whose file is missing instead of creating it (for readers).
        ``upgrade``: upgrade a store of an older schema; default: unless ``must_exist`` (a reader), which reads an
        older store as it is when it can (and cannot write to it)."""
        self.url = url
        parsed = parse_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self._sqlite_file = sqlite_path(parsed) if self.is_sqlite else None
        self.engine = open_engine(url, busy_timeout_s=busy_timeout_s, must_exist=must_exist)
        self._writer = self.engine.execution_options(**{WRITE_OPTION: True})
        self._claims: dict[int, str] = {}  # run_id -> this process's owner token, for the runs it claimed
        self.schema_version = SCHEMA_VERSION
        self._open(upgrade=not must_exist if upgrade is None else upgrade)

    # --- opening ------------------------------------------------------------------------------------------------
    @property
    def shown_url(self) -> str:
        """The URL without its password (and with the driver in use), for every message, log and file."""
        return display_url(self.engine.url)

    def _open(self, *, upgrade: bool) -> None:
        try:
            tables = set(sa.inspect(self.engine).get_table_names())
        except exc.DatabaseError as e:
            if not self.is_sqlite:  # a server: say so, in one line, without echoing the password
                reason = " ".join(str(getattr(e, "orig", e)).split())
                raise StoreError(
                    f"cannot connect to store {self.shown_url}: {reason}. Check that the server is "
                    f"running and that the URL's user, password, host, port and database are right"
                ) from e
            raise StoreError(
                f"cannot open store {self.shown_url!r}: {e.orig if hasattr(e, 'orig') else e}. "
                f"The file was left untouched; check it or pass another --store"
            ) from e
        except exc.SQLAlchemyError as e:
            raise StoreError(f"cannot open store {self.shown_url!r}: {e}") from e
        if not self.is_sqlite:  # a user other than the tables' owner: say which GRANT is missing, up front
            privileges.check_postgres(self.engine, tables & TABLE_NAMES, write=upgrade, shown=self.shown_url)
        self.schema_version = migrations.ensure_schema(
            self._writer,
            tables,
            url=self.shown_url,
            shown=self.shown_url,
            sqlite_file=self._sqlite_file,
            upgrade=upgrade,
        )

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction (BEGIN IMMEDIATE on SQLite)."""
        if self.schema_version < SCHEMA_VERSION:
            raise StoreError(
                f"store {self.shown_url!r} (schema {self.schema_version}) was opened for reading only; "
                f"open it with Store(url) to upgrade it to schema {SCHEMA_VERSION} before writing"
            )
        with Session(self._writer) as s, s.begin():
            yield s

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine) as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- runs ---------------------------------------------------------------------------------------------------
    def open_run(
        self,
        name: str,
        config: Mapping[str, Any],
        *,
        absent_means: Mapping[str, Mapping[str, Any]] | None = None,
        data_fingerprint: str | None = None,
    ) -> RunState:
        """The run named ``name``, created with ``config`` if new.

        ``absent_means`` maps a key of ``config`` whose value is a dict (such as ``strategy_params``) to settings
        that were added to the code later, each with the value that a stored config lacking it ran with: the
        stored config is compared as if it held them, so a run recorded before a setting existed still
        continues when the setting keeps its old behaviour. The stored record itself is left as written.
        ``data_fingerprint``: what the run's data is; a stored run with another fingerprint is refused like a
        changed config, and a run stored without one (before schema 2) gets it.

        Raises ConfigMismatchError if it exists with a different config or data.
        """
        for _ in range(2):
            with self._write() as s:
                run = s.execute(sa.select(Run).where(Run.name == name)).scalar_one_or_none()
                if run is None:
                    try:
                        with s.begin_nested():
                            s.add(
                                Run(
                                    name=name,
                                    config=canonical(config),
                                    seed=int(config.get("seed", 0)),
                                    strategy=str(config.get("strategy", "")),
                                    dataset=str(config.get("dataset", "")),
                                    model=str(config.get("model", "")),
                                    status="running",
                                    data_fingerprint=data_fingerprint,
                                )
                            )
                    except exc.IntegrityError:
                        continue  # another process created it between our read and write: read it again
                    break
                if not same_config(run.config, config, absent_means or {}):
                    stored = with_absent(json.loads(run.config), absent_means or {})
                    raise ConfigMismatchError(mismatch_message(name, stored, dict(config)))
                if data_fingerprint is not None:
                    if run.data_fingerprint not in (None, data_fingerprint):
                        raise ConfigMismatchError(
                            f"run {name!r} was recorded on other data (stored {run.data_fingerprint}, now "
                            f"{data_fingerprint}). Pass --run-name to start a separate run on this data"
                        )
                    run.data_fingerprint = data_fingerprint
                break
        return self.state(name)

    def run(self, name: str) -> RunRecord:
        """The run's row."""
        with self._read() as s:
            return RunRecord.of(self._run_row(s, name), with_fingerprint=self.schema_version >= 2)

    def _run_row(self, s: Session, name: str) -> Run:
        run = s.execute(sa.select(Run).where(Run.name == name)).scalar_one_or_none()
        if run is None:
            raise StoreError(f"no run named {name!r} in {self.shown_url}")
        return run

    def state(self, name: str) -> RunState:
        """The run with its labels and rounds, read in one session."""
        with self._read() as s:
            run = self._run_row(s, name)
            labels, label_round, targets = {}, {}, {}
            since5 = self.schema_version >= TARGETS_SINCE
            cols = (Label.sample_id, Label.label, Label.round_idx, *((Label.target,) if since5 else ()))
            for sid, y, r, *target in s.execute(sa.select(*cols).where(Label.run_id == run.id)):
                labels[sid], label_round[sid] = y, r
                if target and target[0] is not None:  # a regression run's answer (schema 5)
                    targets[sid] = target[0]
            rounds = s.execute(sa.select(Round).where(Round.run_id == run.id).order_by(Round.round_idx)).scalars()
            return RunState(
                RunRecord.of(run, with_fingerprint=self.schema_version >= 2),
                labels,
                label_round,
                tuple(RoundRecord.of(r, with_rmse=since5) for r in rounds),
                targets,
            )

    def set_status(self, run_id: int, status: str, message: str | None = None) -> None:
        """Set a run's status; any status but ``running`` also releases this process's claim on it.

        A process whose claim was taken over leaves the run alone: its status belongs to the new owner."""
        if status not in RUN_STATUSES:
            raise StoreError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        with self._write() as s:
            run = s.get(Run, run_id, with_for_update=True)
            if run is None:
                raise StoreError(f"no run with id {run_id} in {self.shown_url}")
            token = self._claims.get(run_id)
            if token is not None and run.owner != token:
                self._claims.pop(run_id, None)
                return
            run.status, run.message, run.updated_at = status, message, now()
            if status != "running":
                run.owner = None
                self._claims.pop(run_id, None)

    # --- claims (see claims.py) ---------------------------------------------------------------------------------
    def claim(self, run_id: int, *, stale_after_s: float = claims.STALE_AFTER_S) -> str:
        """Mark this process as the run's only writer; refuse if another live process holds it.

        A holder on this host whose pid is gone, or any holder silent for ``stale_after_s``, is taken over.
        """
        token = claims.owner_token()
        with self._write() as s:
            claims.take(s, run_id, token, stale_after_s)
        self._claims[run_id] = token
        return token

    def heartbeat(self, run_id: int) -> None:
        """Tell other processes that the claimant is alive (a silent claim is taken over after its timeout)."""
        with self._write() as s:
            claims.refresh(s, run_id, self._claims.get(run_id), self.shown_url)

    def keep_alive(self, run_id: int, *, every_s: float = claims.HEARTBEAT_S) -> claims.Heartbeat:
        """A heartbeat for a claimed run, to use as ``with store.keep_alive(run_id): ...`` (joined on exit)."""
        return claims.Heartbeat(lambda: self.heartbeat(run_id), every_s=every_s, name=f"al-heartbeat-{run_id}")

    def _fence(self, s: Session, run_id: int) -> Run:
        return claims.fence(s, run_id, self._claims.get(run_id), self.shown_url)

    # --- a round's transitions ----------------------------------------------------------------------------------
    def record_query(
        self,
        run_id: int,
        round_idx: int,
        ids: np.ndarray,
        scores: np.ndarray | None,
        *,
        pool_scores: np.ndarray | None = None,
        select_seconds: float | None = None,
        guesses: Mapping[int, Sequence[tuple[int, float]]] | None = None,
    ) -> None:
        """Open round ``round_idx`` in state ``queried`` with its query (ids in rank order and their scores) and,
        when given, the model's top classes for queried ids (``{id: [(label, probability), ...]}``, most probable
        first; see :meth:`guesses`)."""
        ids = np.asarray(ids, dtype=np.int64)
        stats = score_summary(pool_scores) if pool_scores is not None else {}
        with self._write() as s:
            self._fence(s, run_id)
            prev = s.execute(
                sa.select(Round.state).where(Round.run_id == run_id).order_by(Round.round_idx.desc()).limit(1)
            ).scalar_one_or_none()
            if prev not in (None, "complete"):
                raise StoreError(f"cannot open round {round_idx}: the previous round is still {prev!r}")
            s.add(
                Round(
                    run_id=run_id,
                    round_idx=round_idx,
                    state="queried",
                    n_queried=len(ids),
                    select_seconds=select_seconds,
                    **{f"score_{k}": v for k, v in stats.items()},
                    n_scored=None if pool_scores is None else int(len(pool_scores)),
                )
            )
            sc = [None] * len(ids) if scores is None else [None if not np.isfinite(v) else float(v) for v in scores]
            s.execute(
                sa.insert(Query),
                [
                    dict(run_id=run_id, round_idx=round_idx, sample_id=int(i), rank=r, score=sc[r])
                    for r, i in enumerate(ids)
                ],
            )
            if guesses and self.schema_version >= GUESSES_SINCE:
                queried = {int(i) for i in ids}
                rows = [
                    dict(run_id=run_id, sample_id=int(i), k=k, round_idx=round_idx, label=int(y), p=float(p))
                    for i, top in guesses.items()
                    if int(i) in queried
                    for k, (y, p) in enumerate(top)
                ]
                if rows:
                    s.execute(sa.insert(Guess), rows)
            s.flush()
            crash_point("in-query-commit", round_idx)

    def pending(self, run_id: int, round_idx: int) -> np.ndarray:
        """Queried ids of ``round_idx`` without a label yet, in rank order: (n,) int64."""
        with self._read() as s:
            q = (
                sa.select(Query.sample_id)
                .where(Query.run_id == run_id, Query.round_idx == round_idx)
                .where(~sa.exists().where(Label.run_id == run_id, Label.sample_id == Query.sample_id))
                .order_by(Query.rank)
            )
            return np.array(s.execute(q).scalars().all(), dtype=np.int64)

    def record_labels(self, run_id: int, round_idx: int, labels: Mapping[int, int], oracle: str) -> int:
        """Add labels to the open round; it becomes ``labelled`` when none is pending. Returns #still pending."""
        rows = [dict(sample_id=int(i), label=int(y)) for i, y in labels.items()]
        return self._record_answers(run_id, round_idx, rows, oracle)

    def record_targets(self, run_id: int, round_idx: int, targets: Mapping[int, float], oracle: str) -> int:
        """:meth:`record_labels` for a regression run: each answer is a finite number, stored in
        ``al_labels.target`` (schema 5; the row's ``label`` is NO_CLASS) and read back in :meth:`state`'s
        ``targets``. Returns how many queried samples of the round still await an answer."""
        rows: list[dict[str, Any]] = []
        for i, y in targets.items():
            if isinstance(y, bool) or not isinstance(y, numbers.Real) or not math.isfinite(float(y)):
                raise StoreError(f"sample {int(i)}: a regression target must be a finite number, got {y!r}")
            rows.append(dict(sample_id=int(i), label=NO_CLASS, target=float(y)))
        return self._record_answers(run_id, round_idx, rows, oracle)

    def _record_answers(self, run_id: int, round_idx: int, rows: list[dict[str, Any]], oracle: str) -> int:
        """The labels or targets ``rows`` (``sample_id`` and the columns to set) of the open round, in one
        transaction; returns how many queried samples still await an answer."""
        labels = {r["sample_id"]: r for r in rows}
        with self._write() as s:
            self._fence(s, run_id)
            rnd = self._round_row(s, run_id, round_idx)
            if not labels and rnd is not None and rnd.state == "labelled":
                return 0  # nothing to add to a round whose labels were all stored (by a web server, say)
            if rnd is None or rnd.state != "queried":
                raise StoreError(
                    f"round {round_idx} is not waiting for labels (state {None if rnd is None else rnd.state!r})"
                )
            queried = set(
                s.execute(
                    sa.select(Query.sample_id).where(Query.run_id == run_id, Query.round_idx == round_idx)
                ).scalars()
            )
            done = set(
                s.execute(
                    sa.select(Label.sample_id).where(Label.run_id == run_id, Label.sample_id.in_(queried))
                ).scalars()
            )
            stray = [i for i in labels if int(i) not in queried or int(i) in done]
            if stray:
                raise StoreError(f"labels for ids not pending in round {round_idx}: {sorted(stray)[:10]}")
            if labels:
                s.execute(
                    sa.insert(Label),
                    [dict(run_id=run_id, round_idx=round_idx, oracle=oracle, **row) for row in labels.values()],
                )
            left = len(queried) - len(done) - len(labels)
            if left == 0:
                rnd.state = "labelled"
            s.flush()
            crash_point("in-labels-commit", round_idx)
            return left

    def withdraw_label(self, run_id: int, round_idx: int, sample_id: int, oracle: str) -> None:
        """Remove the label of ``sample_id`` that ``oracle`` gave in round ``round_idx``, while that round still
        waits for labels (state ``queried``: nothing has been trained on it). The web page's undo; a StoreError
        says why when the round has closed, the sample has no label, or the label came from another round or
        oracle."""
        with self._write() as s:
            self._fence(s, run_id)
            rnd = self._round_row(s, run_id, round_idx)
            if rnd is None or rnd.state != "queried":
                state = "not opened" if rnd is None else f"closed ({rnd.state})"
                raise StoreError(f"round {round_idx} is {state}; the labels of a closed round are final")
            row = s.execute(
                sa.select(Label).where(Label.run_id == run_id, Label.sample_id == int(sample_id))
            ).scalar_one_or_none()
            if row is None:
                raise StoreError(f"sample {int(sample_id)} has no label to withdraw")
            if row.round_idx != round_idx or row.oracle != oracle:
                raise StoreError(
                    f"sample {int(sample_id)} was labelled in round {row.round_idx} by {row.oracle!r}; only a label "
                    f"given by {oracle!r} in the open round {round_idx} can be withdrawn"
                )
            s.delete(row)

    def record_metrics(
        self,
        run_id: int,
        round_idx: int,
        *,
        n_labelled: int,
        accuracy: float | None = None,
        nll: float | None = None,
        train_seconds: float | None = None,
        eval_seconds: float | None = None,
        store_seconds: float | None = None,
        rmse: float | None = None,
    ) -> None:
        """Close a ``labelled`` round with the test metrics of the model trained on its labelled set.

        ``accuracy`` and ``nll`` are None for a pool without a test set (reports leave such rounds out of their
        accuracy tables and curves). A regression round gives ``rmse`` (schema 5) and its Gaussian ``nll`` instead
        of an accuracy."""
        with self._write() as s:
            run = self._fence(s, run_id)
            rnd = self._round_row(s, run_id, round_idx)
            if rnd is None or rnd.state != "labelled":
                raise StoreError(f"round {round_idx} is not labelled yet; cannot record its metrics")
            rnd.state, rnd.n_labelled, rnd.accuracy, rnd.nll = "complete", n_labelled, accuracy, nll
            rnd.train_seconds, rnd.eval_seconds, rnd.store_seconds = train_seconds, eval_seconds, store_seconds
            if rmse is not None:  # never set otherwise: a store of schema 4 read as it is has no such column
                rnd.rmse = rmse
            rnd.completed_at = now()
            run.updated_at = run.heartbeat = now()
            s.flush()
            crash_point("in-metrics-commit", round_idx)

    @staticmethod
    def _round_row(s: Session, run_id: int, round_idx: int) -> Round | None:
        return s.execute(
            sa.select(Round).where(Round.run_id == run_id, Round.round_idx == round_idx)
        ).scalar_one_or_none()

    # --- sample keys (schema 3) ---------------------------------------------------------------------------------
    def record_sample_keys(self, run_id: int, keys: Mapping[int, str]) -> int:
        """Record what each sample id is (``{sample_id: key}``); returns how many were new.

        A key is a file's path relative to the pool folder (POSIX separators) or a table's id value as text, at
        most 1024 characters. Ids already recorded with the same key are skipped, so a resumed run may record its
        whole pool again. An id recorded with another key, or a key recorded under another id, is refused with a
        StoreError naming the first such conflict and nothing is written: ids are never renumbered silently.
        One transaction, fenced like every write of a claimed run; bulk INSERT (60,000 keys in well under 2 s on
        SQLite).
        """
        given: dict[int, str] = {}
        by_key: dict[str, int] = {}
        for i, k in keys.items():
            sid = _sample_id(i)
            if not isinstance(k, str) or not k:
                raise StoreError(f"sample {sid}: a key must be a non-empty text (a relative path or an id), got {k!r}")
            if len(k) > KEY_LENGTH:
                raise StoreError(f"sample {sid}: key {k[:60]!r}... is {len(k)} characters long (at most {KEY_LENGTH})")
            if k in by_key and by_key[k] != sid:
                raise StoreError(f"key {k!r} is given to both sample {by_key[k]} and sample {sid}; a key is one sample")
            given[sid], by_key[k] = k, sid
        with self._write() as s:
            run = self._fence(s, run_id)
            q = sa.select(Sample.sample_id, Sample.key).where(Sample.run_id == run_id)
            stored: dict[int, str] = {i: k for i, k in s.execute(q)}
            stored_by_key = {k: i for i, k in stored.items()}
            new = []
            for sid, k in given.items():
                old = stored.get(sid)
                if old is not None and old != k:
                    raise StoreError(
                        f"run {run.name!r}: sample {sid} is recorded as {old!r}, not {k!r}; sample ids are never "
                        f"renumbered. Did the pool's files change? Start a separate run (--run-name) on this pool"
                    )
                other = stored_by_key.get(k)
                if other is not None and other != sid:
                    raise StoreError(
                        f"run {run.name!r}: key {k!r} is recorded as sample {other}, not {sid}; sample ids are "
                        f"never renumbered. Did the pool's files change? Start a separate run (--run-name) on "
                        f"this pool"
                    )
                if old is None:
                    new.append({"run_id": run_id, "sample_id": sid, "key": k})
            if new:
                try:
                    # Core executemany on the table: no ORM bookkeeping per row (60,000 keys in about 0.7 s).
                    s.connection().execute(sa.insert(SAMPLES), new)
                except exc.IntegrityError as e:  # a writer that never claimed the run got there first
                    raise StoreError(
                        f"run {run.name!r}: another process recorded sample keys at the same time; record them "
                        f"again to check them against what it wrote"
                    ) from e
            return len(new)

    def exclude_samples(self, run_id: int, reasons: Mapping[int, str]) -> None:
        """Mark recorded samples as left out of the pool, each with its reason (``{sample_id: reason}``, e.g.
        ``"unreadable: OSError: truncated file"``); a sample excluded before gets the new reason."""
        rows = []
        for i, why in reasons.items():
            sid = _sample_id(i)
            if not isinstance(why, str) or not why:
                raise StoreError(f"sample {sid}: the reason it is excluded must be a non-empty text, got {why!r}")
            rows.append({"run_id": run_id, "sample_id": sid, "excluded": why})
        if not rows:
            return
        with self._write() as s:
            run = self._fence(s, run_id)
            ids = [r["sample_id"] for r in rows]
            known: set[int] = set()
            for part in range(0, len(ids), 10_000):  # bounded IN lists: SQLite limits bound parameters
                chunk = ids[part : part + 10_000]
                known.update(
                    s.execute(
                        sa.select(Sample.sample_id).where(Sample.run_id == run_id, Sample.sample_id.in_(chunk))
                    ).scalars()
                )
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise StoreError(
                    f"run {run.name!r}: cannot exclude samples {unknown[:10]}: their keys are not recorded; record "
                    f"them with record_sample_keys first"
                )
            s.execute(sa.update(Sample), rows)  # bulk UPDATE by primary key (run_id, sample_id)

    # --- named values per round (schema 3) ----------------------------------------------------------------------
    def record_round_values(self, run_id: int, round_idx: int, values: Mapping[str, float | None]) -> None:
        """Record named values of round ``round_idx`` (``{"stabilising-predictions": 0.97, ...}``; None: no
        value this round). A value already recorded the same is a no-op (a resumed round may record it again);
        a different one is refused with a StoreError and nothing is written. Finite numbers only: NaN and
        infinities are refused (record None for "no value")."""
        given: dict[str, float | None] = {}
        for name, v in values.items():
            if not isinstance(name, str) or not name or len(name) > NAME_LENGTH:
                raise StoreError(f"a round value's name must be a text of 1 to {NAME_LENGTH} characters, got {name!r}")
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
                    raise StoreError(
                        f"round value {name!r} of round {round_idx} must be a finite number or None, got {v!r}"
                    )
                v = float(v)
            given[name] = v
        if not given:
            return
        with self._write() as s:
            run = self._fence(s, run_id)
            stored = dict(
                s.execute(
                    sa.select(RoundValue.name, RoundValue.value).where(
                        RoundValue.run_id == run_id, RoundValue.round_idx == round_idx
                    )
                ).all()
            )
            new = []
            for name, v in given.items():
                if name in stored:
                    if stored[name] != v:
                        raise StoreError(
                            f"run {run.name!r}: round {round_idx} already has {name} = {stored[name]!r}, not {v!r}; "
                            f"a recorded round value is never changed"
                        )
                    continue
                new.append({"run_id": run_id, "round_idx": int(round_idx), "name": name, "value": v})
            if new:
                s.execute(sa.insert(RoundValue), new)


def _sample_id(i: object) -> int:
    if isinstance(i, bool) or not isinstance(i, numbers.Integral):
        raise StoreError(f"a sample id must be a whole number, got {i!r} ({type(i).__name__})")
    return int(i)
