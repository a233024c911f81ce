"""PostgreSQL: check, on open, that the connecting user may use the al tables that are already there.

Tables created by one user are opened by another (a shared server, a read-only reporting account). Without
this check the first SELECT or INSERT fails half-way through with a driver traceback; with it, opening the
store says in one line which privileges are missing and the GRANT that adds them.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy import exc

from ..errors import StoreError
from ._tables import Base

#: What al does to its tables: read them; record runs, rounds, queries and labels; move states and heartbeats.
READ = ("SELECT",)
WRITE = ("SELECT", "INSERT", "UPDATE")
#: Tables whose ``id`` is drawn from a sequence (SERIAL): inserting needs USAGE on it.
SERIAL_TABLES = frozenset(t.name for t in Base.metadata.sorted_tables if "id" in t.c and t.c.id.autoincrement)


def check_postgres(engine: sa.Engine, tables: Iterable[str], *, write: bool, shown: str) -> None:
    """Raise a StoreError naming the missing privileges when the current user cannot use ``tables``.

    ``write``: the store will record runs (SELECT, INSERT, UPDATE on every table, USAGE on their id sequences);
    otherwise it is only read (SELECT). A check that cannot itself be made is skipped: the operation that
    needs the privilege then reports it.
    """
    tables = sorted(tables)
    if not tables:
        return
    privileges = WRITE if write else READ
    missing: dict[str, list[str]] = {}
    try:
        with engine.connect() as conn:
            user = conn.execute(sa.text("SELECT current_user")).scalar_one()
            for t in tables:
                for p in privileges:
                    if not conn.execute(sa.text("SELECT has_table_privilege(:t, :p)"), {"t": t, "p": p}).scalar():
                        missing.setdefault(p, []).append(t)
            sequences = []
            if write:
                for t in (t for t in tables if t in SERIAL_TABLES):
                    seq = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": t}).scalar()
                    if seq is None:
                        continue
                    sequences.append(seq)
                    if not conn.execute(sa.text("SELECT has_sequence_privilege(:s, 'USAGE')"), {"s": seq}).scalar():
                        missing.setdefault("USAGE", []).append(seq)
            owner = conn.execute(
                sa.text("SELECT tableowner FROM pg_tables WHERE tablename = :t AND schemaname = current_schema()"),
                {"t": tables[0]},
            ).scalar()
            quote = conn.dialect.identifier_preparer.quote
    except exc.SQLAlchemyError:  # a catalogue function this server lacks: no verdict
        return
    if not missing:
        return
    what = "; ".join(f"{p} on {', '.join(missing[p])}" for p in ("SELECT", "INSERT", "UPDATE", "USAGE") if p in missing)
    grant = f"GRANT {', '.join(privileges)} ON {', '.join(tables)} TO {quote(user)};"
    if write and sequences:
        grant += f" GRANT USAGE ON SEQUENCE {', '.join(sequences)} TO {quote(user)};"
    by = f"their owner {owner!r}" if owner else "their owner"
    raise StoreError(
        f"store {shown}: user {user!r} lacks {what}. al needs "
        f"{'SELECT, INSERT and UPDATE' if write else 'SELECT'} on its tables"
        f"{' and USAGE on their id sequences' if write and sequences else ''}. Fix: as {by} or a superuser run "
        f"`{grant}`, or connect as {owner or 'the user that created them'}"
    )
