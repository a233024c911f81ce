"""Choosing the driver and opening the engine: URL parsing, SQLite file checks and pragmas.

SQLite opens with WAL, a busy timeout and ``BEGIN IMMEDIATE`` for writes, so that concurrent writers wait for
the lock instead of failing half-way through a read-then-write transaction (measured: two processes doing 300
read-then-write rounds each lost 220 of 600 with plain ``BEGIN``, none with ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event, exc

from ..errors import StoreError
from ._tables import TABLE_NAMES

#: Execution option that marks a write transaction (``BEGIN IMMEDIATE`` on SQLite).
WRITE_OPTION = "al_write"


def parse_url(url: str) -> sa.engine.URL:
    try:
        return sa.engine.make_url(url)
    except (exc.ArgumentError, ValueError) as e:  # ValueError: a bad port, an unclosed [ipv6]
        raise StoreError(
            f"cannot parse store URL {display_url(url)!r}: give e.g. sqlite:///al-runs.db or "
            f"postgresql://user@localhost/al"
        ) from e


_PASSWORD = re.compile(r"(://[^:/@?#\s]*:)[^@\s]*@")


def hide_passwords(text: str) -> str:
    """``text`` (a command line, a message) with the password of every ``scheme://user:password@`` masked."""
    return _PASSWORD.sub(r"\1***@", text)


def display_url(url: str | sa.engine.URL) -> str:
    """``url`` as it may be shown or written anywhere (messages, logs, reports): with its password masked.

    SQLAlchemy's own rendering when the URL parses; otherwise (it is about to be reported as unparsable) the
    text between ``user:`` and ``@`` is masked by hand.
    """
    if isinstance(url, sa.engine.URL):
        return url.render_as_string(hide_password=True)
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (exc.ArgumentError, ValueError):
        return hide_passwords(url)


def with_installed_driver(url: sa.engine.URL) -> sa.engine.URL:
    """A bare ``postgresql://`` URL with the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, 2.0 to psycopg2; the project's extras install
    psycopg2-binary. So a URL without an explicit driver gets psycopg 3 if importable, else psycopg2, and a
    URL that names its driver (``postgresql+psycopg2://``) is left alone.
    """
    if url.drivername != "postgresql":
        return url
    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return url.set(drivername=driver)
    return url


def sqlite_path(url: sa.engine.URL) -> str | None:
    """The absolute path of an SQLite URL's file; None for other backends and in-memory databases."""
    db = url.database
    if url.get_backend_name() != "sqlite" or db in (None, "", ":memory:"):
        return None
    return os.path.abspath(db)


def sqlite_file_missing(url: str) -> str | None:
    """The absolute path of the file an SQLite ``url`` names when that file does not exist, else None (also for
    other backends, in-memory databases and unparsable URLs, which ``Store`` itself reports)."""
    try:
        parsed = sa.engine.make_url(url)
    except exc.ArgumentError:
        return None
    path = sqlite_path(parsed)
    return None if path is None or os.path.exists(path) else path


def check_sqlite_path(path: str | None, *, reader: bool = False, busy_timeout_s: float = 60.0) -> None:
    """Refuse, before SQLite creates or touches anything, a file we could not use or that is not our store.

    ``reader``: the caller only reads (``al.report``): an empty file is refused too, instead of having the
    tables of a new store written into it.
    """
    if path is None:
        return
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise StoreError(
            f"store {path} is a folder, not a file; name a database file in it, e.g. "
            f"--store sqlite:///{os.path.join(path, 'al-runs.db')}"
        )
    if not os.path.isdir(folder):
        raise StoreError(
            f"cannot create store {path}: folder {folder} does not exist; create it or pass "
            f"--store sqlite:///<existing folder>/al-runs.db"
        )
    if os.path.exists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(
                f"store file {path} is not readable and writable by this user; fix its "
                f"permissions or pass another --store"
            )
        if os.path.getsize(path) == 0:
            if reader:
                raise StoreError(
                    f"store file {path} is empty (0 bytes): no run was ever recorded in it. It was left untouched; "
                    f"record runs into it with `python -m al.bench ... --store sqlite:///{path}` first"
                )
            return
        _refuse_foreign_file(path, busy_timeout_s)
    elif not os.access(folder, os.W_OK):
        raise StoreError(
            f"cannot create store {path}: folder {folder} is not writable; pass --store "
            f"sqlite:///<writable folder>/al-runs.db"
        )


def _refuse_foreign_file(path: str, busy_timeout_s: float) -> None:
    """Refuse a file that is not an SQLite database, or one that holds tables but no al store.

    Checked through a read-only SQLite connection before the engine's first connection, which would switch
    the file to WAL: another application's file is left byte for byte as it was. Never with Python's own
    ``open()``: closing any descriptor of the file drops every POSIX lock this process holds on it, so a
    process that already has the store open (the web oracle opens a second engine beside the loop's) would
    lose its locks, and another process closing its last connection would then checkpoint and delete the
    WAL and shared-memory files under it (tests/test_store.py shows the deleted files).
    """
    try:
        con = sqlite3.connect(Path(path).as_uri() + "?mode=ro", uri=True, timeout=busy_timeout_s)
        try:
            tables = {
                r[0]
                for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            }
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if getattr(e, "sqlite_errorname", "") == "SQLITE_NOTADB":
            raise StoreError(
                f"{path} is not an SQLite database (it may be corrupt or another kind of file); "
                f"it was left untouched. Pass another --store, or move the file away"
            ) from e
        raise StoreError(
            f"cannot open store {path}: {e}. The file was left untouched; check it or pass another --store"
        ) from e
    foreign = sorted(tables - TABLE_NAMES)
    if foreign and "al_meta" not in tables:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise StoreError(
            f"{path} is another application's SQLite database (tables {shown}, no al store); al does not add "
            f"its tables to it and left it untouched. Pass a new file, e.g. --store sqlite:///al-runs.db"
        )


def open_engine(url: str, *, busy_timeout_s: float, must_exist: bool) -> sa.engine.Engine:
    """The engine for ``url``, with the checks and hooks its backend needs. Nothing is read or written yet."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        try:
            return sa.create_engine(with_installed_driver(parsed), pool_pre_ping=True)
        except Exception as e:  # noqa: BLE001 - missing driver, bad dialect
            raise StoreError(
                f"cannot open store {display_url(parsed)!r}: {e}. For PostgreSQL install the driver with "
                f"`pip install psycopg2-binary` (the project's dev extras include it)"
            ) from e
    missing = sqlite_file_missing(url) if must_exist else None
    if missing:
        raise StoreError(
            f"no store file at {missing}; check the path in {display_url(parsed)!r} "
            f"(sqlite:///relative/path.db or sqlite:////absolute/path.db)"
        )
    check_sqlite_path(sqlite_path(parsed), reader=must_exist, busy_timeout_s=busy_timeout_s)
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})
    _install_sqlite_hooks(engine, busy_timeout_s)
    return engine


def _install_sqlite_hooks(engine: sa.engine.Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # Let SQLAlchemy, not pysqlite, emit BEGIN (pysqlite's implicit BEGIN cannot be IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # Writers take the write lock up front: a deferred transaction that reads and then writes can fail
        # with "database is locked" when another writer got there first, and busy_timeout cannot help it.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")
