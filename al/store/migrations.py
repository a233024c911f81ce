"""Schema versions and the upgrade path between them.

``STEPS`` is the ordered list of upgrades; step k turns schema k into k + 1, so ``SCHEMA_VERSION`` is one more
than their number. Opening a store of an older schema for writing runs the missing steps in one transaction
(all or none), after a backup copy of the file for SQLite, and says so with a ``StoreUpgradedWarning``. A store
of a newer schema is refused: only a newer al knows what its columns mean.

Opening an older store for reading only (``Store(url, must_exist=True)``, as ``al.report`` does) leaves it as
it is when every missing step is additive (new nullable columns, read as None), so that reading a committed
result never changes it.

Add a step by appending to ``STEPS``, adding its column to ``_tables.py`` with ``info={"since": <version>}``
and ``deferred=True`` (a new table: ``info={"since": <version>}`` in its ``__table_args__``), and a test that
upgrades a store written by the previous version.

Schema 2 added ``al_runs.data_fingerprint``; schema 3 the tables ``al_samples`` (what each sample id is, and
which samples are excluded) and ``al_round_values`` (named values per round, such as a stopping criterion's);
schema 4 the table ``al_guesses`` (the model's top classes for each queried sample); schema 5 the columns
``al_labels.target`` (a regression run's numeric answers) and ``al_rounds.rmse`` (its test RMSE).
"""

from __future__ import annotations

import os
import sqlite3
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc

from ..errors import StoreError
from ._tables import TABLE_NAMES, Base
from .faults import crash_point

#: Transaction-scoped advisory lock key under which PostgreSQL processes create or upgrade the schema in turn.
PG_SCHEMA_LOCK = 7340531


class StoreUpgradedWarning(UserWarning):
    """A store was upgraded to this al's schema; the message names the backup copy, if one was made."""


@dataclass(frozen=True)
class Step:
    """One upgrade: ``apply`` turns schema ``to_version - 1`` into ``to_version`` on an open transaction."""

    to_version: int
    what: str
    apply: Callable[[sa.Connection], None]
    additive: bool  # only adds nullable columns or tables: code of to_version can read a store without it


def _add_data_fingerprint(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE al_runs ADD COLUMN data_fingerprint VARCHAR(128)"))


def _add_samples_and_round_values(conn: sa.Connection) -> None:
    # The tables as _tables.py declares them: new tables, so there is no older shape to reproduce by hand.
    for name in ("al_samples", "al_round_values"):
        Base.metadata.tables[name].create(conn)


def _add_guesses(conn: sa.Connection) -> None:
    Base.metadata.tables["al_guesses"].create(conn)


def _add_targets_and_rmse(conn: sa.Connection) -> None:
    # The column type as this dialect spells sa.Float (FLOAT on both SQLite and PostgreSQL).
    kind = sa.Float().compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE al_labels ADD COLUMN target {kind}"))
    conn.execute(sa.text(f"ALTER TABLE al_rounds ADD COLUMN rmse {kind}"))


STEPS: tuple[Step, ...] = (
    Step(2, "al_runs.data_fingerprint (what a run's data is, checked on resume)", _add_data_fingerprint, additive=True),
    Step(
        3,
        "al_samples (each sample id's key) and al_round_values (named values per round)",
        _add_samples_and_round_values,
        additive=True,
    ),
    Step(4, "al_guesses (the model's top classes for each queried sample)", _add_guesses, additive=True),
    Step(
        5,
        "al_labels.target and al_rounds.rmse (regression runs' numeric answers and test RMSE)",
        _add_targets_and_rmse,
        additive=True,
    ),
)
SCHEMA_VERSION = 1 + len(STEPS)


def tables_since(version: int) -> frozenset[str]:
    """The al tables a store of schema ``version`` has (tables added later carry ``info={"since": v}``)."""
    return frozenset(t.name for t in Base.metadata.sorted_tables if t.info.get("since", 1) <= version)


def missing_steps(version: int, steps: Sequence[Step] = STEPS) -> list[Step]:
    return [s for s in steps if s.to_version > version]


def readable_without_upgrade(version: int, steps: Sequence[Step] = STEPS) -> bool:
    return all(s.additive for s in missing_steps(version, steps))


def read_version(conn: sa.Connection) -> int | None:
    value = conn.execute(sa.text("SELECT value FROM al_meta WHERE key = 'schema_version'")).scalar_one_or_none()
    return None if value is None else int(value)


def backup_sqlite(path: str, version: int) -> str:
    """Copy the database at ``path`` to ``<path>.v<version>.bak`` (or ``.v<version>.<n>.bak`` if taken).

    SQLite's backup API, not a file copy: it copies a consistent snapshot even with a WAL beside the file. The
    caller holds the write lock, so nothing changes while it runs.
    """
    target, n = f"{path}.v{version}.bak", 1
    while os.path.exists(target):
        target, n = f"{path}.v{version}.{n}.bak", n + 1
    src, dst = sqlite3.connect(path), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


def upgrade_store(writer: sa.Engine, *, shown: str, sqlite_file: str | None, steps: Sequence[Step] = STEPS) -> int:
    """Bring the store to the last version of ``steps`` in one write transaction. Returns the version it found.

    ``writer``: an engine whose transactions take the write lock (``BEGIN IMMEDIATE`` on SQLite). The version is
    read again under the lock, so processes opening an old store at once upgrade it once.
    """
    target = steps[-1].to_version if steps else 1
    backup = None
    try:
        with writer.connect() as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({PG_SCHEMA_LOCK})"))
            found = read_version(conn) or 1
            if found >= target:
                return found  # another process got there first
            if sqlite_file is not None:
                backup = backup_sqlite(sqlite_file, found)
            todo = missing_steps(found, steps)
            for step in todo:
                step.apply(conn)
            conn.execute(sa.text("UPDATE al_meta SET value = :v WHERE key = 'schema_version'"), {"v": str(target)})
            crash_point("in-upgrade-commit")
    except exc.SQLAlchemyError as e:
        kept = f"; a copy of it before the attempt is at {backup}" if backup else ""
        reason = " ".join(str(getattr(e, "orig", e)).split())  # one line: SQLAlchemy appends the SQL and a link
        raise StoreError(
            f"could not upgrade store {shown} to schema {target}: {reason}. Nothing was changed{kept}. "
            f"Check that this user may alter its tables, or open it with the al that wrote it"
        ) from e
    kept = f"; a copy of the old file is at {backup}" if backup else ""
    warnings.warn(
        f"upgraded store {shown} from schema {found} to {target} ({'; '.join(s.what for s in todo)}){kept}",
        StoreUpgradedWarning,
        stacklevel=5,  # the caller of Store(...)
    )
    return found


def ensure_schema(
    writer: sa.Engine, tables: set[str], *, url: str, shown: str, sqlite_file: str | None, upgrade: bool
) -> int:
    """Create the tables of an empty database, or check (and with ``upgrade``, upgrade) an existing store's
    schema. Returns the schema version the store is to be used at: ``SCHEMA_VERSION``, or an older one that is
    read as it is (then the store refuses writes)."""
    if "al_meta" not in tables:
        if tables & TABLE_NAMES:
            raise StoreError(f"store {url!r} holds al tables without a schema version row; refusing to touch it")
        _create(writer, url)
        return SCHEMA_VERSION
    with writer.connect() as conn:
        version = read_version(conn)
    if version is None:
        raise StoreError(f"store {url!r} has tables but no schema version; it was not written by al")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {url!r} was written by a newer al (schema {version}, this is "
            f"{SCHEMA_VERSION}); upgrade al (pip install -U al) to open it"
        )
    if version == SCHEMA_VERSION:
        return version
    if upgrade:
        upgrade_store(writer, shown=shown, sqlite_file=sqlite_file)
        return SCHEMA_VERSION
    if readable_without_upgrade(version):
        return version
    raise StoreError(
        f"store {url!r} has the old schema {version} (this al reads {SCHEMA_VERSION}); open it once "
        f"for writing, e.g. Store(url), to upgrade it (SQLite files are backed up first)"
    )


def _create(writer: sa.Engine, url: str) -> None:
    try:
        with writer.connect() as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                # Several processes opening a new database at once would race in CREATE TABLE (PostgreSQL's DDL
                # is transactional but not serialised); a transaction-scoped advisory lock makes them take turns,
                # and create_all's own existence check then sees the first one's tables.
                conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({PG_SCHEMA_LOCK})"))
            Base.metadata.create_all(conn)
            if read_version(conn) is None:
                conn.execute(
                    sa.text("INSERT INTO al_meta (key, value) VALUES ('schema_version', :v)"),
                    {"v": str(SCHEMA_VERSION)},
                )
    except exc.SQLAlchemyError as e:
        reason = " ".join(str(getattr(e, "orig", e)).split())  # one line: SQLAlchemy appends the SQL and a link
        hint = ""
        orig = getattr(e, "orig", None)
        if "42501" in (getattr(orig, "pgcode", None), getattr(orig, "sqlstate", None)):  # insufficient_privilege
            hint = (
                ". This user may not create tables here: as the database's owner run `GRANT CREATE ON SCHEMA "
                "public TO <user>;`, or create the store once as a user who may"
            )
        raise StoreError(f"cannot create the al tables in store {url!r}: {reason}{hint}") from e
