"""One writer per run: claims, fencing, and the heartbeat that keeps a claim alive.

A process claims a run before writing it (``Store.claim``) and refreshes the claim's heartbeat from a thread
while it works (``Heartbeat``). Another process takes a claim over only when its holder looks dead: a pid gone
on this host, or a heartbeat silent for ``stale_after_s``. Every later write of the old holder is then fenced
off (``fence``), so a process that wakes up after a long pause cannot add a second copy of a round.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

from sqlalchemy.orm import Session

from ..errors import StoreError
from ._tables import Run, now

#: Seconds of silence after which a claim held from another host may be taken over.
STALE_AFTER_S = 120.0
#: Seconds between heartbeats: several beats fit in STALE_AFTER_S, so one slow write never loses a claim.
HEARTBEAT_S = 20.0


def owner_token() -> str:
    """This process, as written in ``al_runs.owner``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_gone(owner: str, heartbeat: datetime | None, stale_after_s: float) -> bool:
    """Whether the claimant ``owner`` is dead: its pid is gone (same host) or its heartbeat is stale (any host)."""
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, under another user
            return False
        return False
    return heartbeat is None or (now() - heartbeat).total_seconds() > stale_after_s


def take(s: Session, run_id: int, token: str, stale_after_s: float) -> None:
    """Claim the run for ``token`` inside the write transaction ``s``; refuse if a live process holds it."""
    # FOR UPDATE: on PostgreSQL two processes claiming at once would both read "no owner" under READ COMMITTED;
    # the row lock makes the second wait and then see the first's claim. (SQLite ignores it: BEGIN IMMEDIATE
    # already serialises writers.)
    run = s.get(Run, run_id, with_for_update=True)
    if run is None:
        raise StoreError(f"no run with id {run_id} in the store; open it with Store.open_run first")
    if run.owner and run.owner != token and not owner_gone(run.owner, run.heartbeat, stale_after_s):
        raise StoreError(
            f"run {run.name!r} is being written by another process ({run.owner}); wait for it "
            f"to finish, or stop it first"
        )
    run.owner, run.heartbeat, run.status, run.updated_at = token, now(), "running", now()


def fence(s: Session, run_id: int, token: str | None, where: str) -> Run:
    """The run's row, locked; refuses if this process claimed the run (``token``) and another has since taken it.

    Why: a claim can be taken over when its holder looks dead (a pid gone, a heartbeat silent too long, e.g. a
    host paused for minutes). If the old holder then wakes up, its next write must fail instead of adding a
    second copy of a round. Stores that never claimed the run (direct API use, ``token`` None) are not fenced.
    """
    run = s.get(Run, run_id, with_for_update=True)
    if run is None:
        raise StoreError(f"no run with id {run_id} in {where}")
    if token is not None and run.owner != token:
        raise StoreError(
            f"run {run.name!r} was taken over by {run.owner or 'another process'} while this "
            f"process ({token}) held it; this process stops writing to it. Nothing it wrote is "
            f"lost; check the run with `python -m al.bench` with the same settings"
        )
    return run


def refresh(s: Session, run_id: int, token: str | None, where: str) -> None:
    fence(s, run_id, token, where).heartbeat = now()


class Heartbeat:
    """Calls ``beat`` every ``every_s`` seconds from a thread, from ``start`` (or ``with``) until ``stop``.

    ``stop`` also joins the thread, and ``with Heartbeat(...)`` stops it on every way out of the block (return,
    exception, KeyboardInterrupt). Why join: a thread still alive while the interpreter shuts down can die
    while it frees objects that torch owns, and the process then aborts (exit 134) instead of returning its
    exit code. A beat that fails ends the thread quietly: a missed beat only risks a takeover, and the next
    write of this process reports that (``fence``).
    """

    def __init__(self, beat: Callable[[], None], *, every_s: float = HEARTBEAT_S, name: str = "al-heartbeat") -> None:
        self._beat, self.every_s, self.name = beat, every_s, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - see the class docstring
                return

    def start(self) -> Heartbeat:
        if self._thread is None:
            # daemon: if a caller forgets stop(), the process can still exit; stop() is what joins it.
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and join the thread; waits at most for one beat in flight (bounded by the store's busy timeout)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
