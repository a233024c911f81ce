"""Running a grid: submit its unfinished cells to an executor, follow them through the store, say what became of
each.

The store is the single source of truth: a cell whose run is finished there is not submitted; a cell is
``running`` on the bar when the store says so; what a rerun does is read from the store again, so a grid cut short
in any way (Ctrl-C, a client that died, a worker killed) is continued by the same command. At most
``capacity()`` cells are in flight at once (a worker each), in the grid's order, so ``--until`` can stop
submitting and a grid cut short leaves every strategy with the same number of seeds.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..store import Store
from .cells import Cell, cell_states
from .executors import GridExecutor
from .progress import GridProgress
from .worker import CellOptions, CellOutcome, run_cell

#: Seconds between two reads of the store for the progress bar while no cell finishes.
POLL_S = 1.0


@dataclass
class GridResult:
    """Per cell (by name): ``finished``, ``failed``, ``killed`` (KilledWorker), ``refused``, ``waiting``,
    ``taken over``, ``not started`` (--until) or ``interrupted``; with a one-line message for all but finished."""

    status: dict[str, str] = field(default_factory=dict)
    message: dict[str, str] = field(default_factory=dict)
    finished_before: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def left(self) -> dict[str, str]:
        return {k: v for k, v in self.status.items() if v != "finished"}

    @property
    def ok(self) -> bool:
        return not self.left and not self.interrupted

    def summary(self, noun: str = "cells") -> str:
        n, left = len(self.status), self.left
        text = f"{n - len(left)} of {n} {noun} finished"
        if self.finished_before:
            text += f" ({self.finished_before} already before this command)"
        if left:
            text += "; not finished:\n" + "\n".join(
                f"  {k}: {v}" + (f": {self.message[k][:300]}" if self.message.get(k) else "") for k, v in left.items()
            )
        return text


def _is_killed_worker(e: BaseException) -> bool:
    return type(e).__name__ == "KilledWorker"  # distributed.KilledWorker or executors.KilledWorker


def _record_failure(store: Store, name: str, message: str) -> None:
    """Mark a cell's run failed when no worker could (its processes died): the store says what happened."""
    from ..errors import StoreError

    try:
        rec = store.run(name)
    except StoreError:
        return  # never created: nothing to mark
    if rec.status != "finished":
        store.set_status(rec.run_id, "failed", message)


def run_grid(
    cells: Sequence[Cell],
    opts: CellOptions,
    executor: GridExecutor,
    *,
    store: Store | None = None,
    progress: GridProgress | None = None,
    deadline: float | None = None,
    poll_s: float = POLL_S,
) -> GridResult:
    """Run every unfinished cell of ``cells`` on ``executor`` into the store ``opts.store_url``.

    Raises KeyboardInterrupt after stopping the cells in flight (their runs are marked stopped where the executor
    can stop them; see GridExecutor.interrupt) with ``result`` left on the exception as ``.grid_result``.

    ``store``: the client's Store of ``opts.store_url`` (default: opened here and closed at the end). A process
    should hold one Store per SQLite file: see worker._store."""
    t0 = time.perf_counter()
    res = GridResult()
    own = store is None
    if store is None:
        store = Store(opts.store_url)  # created or upgraded here, once, before any worker opens it
    try:
        states = cell_states(store, cells)
        todo = deque(c for c in cells if states[c.name].status != "finished")
        for c in cells:
            if states[c.name].status == "finished":
                res.status[c.name] = "finished"
        res.finished_before = len(res.status)
        bar = progress or GridProgress(len(cells), res.finished_before, enabled=False)
        in_flight: dict[cf.Future, Cell] = {}

        def show() -> None:
            now = {r.run: r.status for r in store.runs().itertuples()}
            running = sum(1 for c in in_flight.values() if now.get(c.name) == "running")
            done = sum(1 for v in res.status.values() if v == "finished")
            bar.update(
                done=done,
                running=running,
                failed=len(res.status) - done,
                waiting=len(todo) + len(in_flight) - running,
            )

        try:
            while todo or in_flight:
                cap = executor.capacity()
                while todo and len(in_flight) < cap and (deadline is None or time.time() < deadline):
                    c = todo.popleft()
                    in_flight[executor.submit(run_cell, c, opts)] = c
                if not in_flight:
                    break  # past the deadline
                done, _ = cf.wait(list(in_flight), timeout=poll_s, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    c = in_flight.pop(f)
                    _conclude(res, c, f, store, bar)
                show()
        except KeyboardInterrupt as e:
            res.interrupted = True
            # Ctrl-C at a terminal reaches the local workers too; give them a moment to mark their runs stopped
            # before the ones that did not get it (the client alone was interrupted) are told.
            cf.wait(list(in_flight), timeout=2.0)
            executor.interrupt()
            executor.shutdown(wait=True, cancel_futures=True)
            for f in [f for f in in_flight if f.done()]:
                _conclude(res, in_flight.pop(f), f, store, bar)
            for c in in_flight.values():
                res.status.setdefault(c.name, "interrupted")
            for c in todo:
                res.status.setdefault(c.name, "not started")
            res.seconds = time.perf_counter() - t0
            e.grid_result = res  # type: ignore[attr-defined]
            raise
        for c in todo:
            res.status[c.name] = "not started"
            res.message[c.name] = "--until passed before it started"
        show()
    finally:
        if own:
            store.close()
    res.status = {c.name: res.status[c.name] for c in cells}  # in the grid's order
    res.seconds = time.perf_counter() - t0
    return res


def _conclude(res: GridResult, cell: Cell, f: cf.Future, store: Store, bar: GridProgress) -> None:
    try:
        out: CellOutcome = f.result()
    except cf.CancelledError:
        res.status[cell.name] = "interrupted"
        return
    except KeyboardInterrupt:
        res.status[cell.name] = "interrupted"
        return
    except Exception as e:  # noqa: BLE001 - one cell's infrastructure failure is that cell's outcome
        if _is_killed_worker(e):
            msg = f"KilledWorker: {e}"
            res.status[cell.name], res.message[cell.name] = "killed", msg
            _record_failure(store, cell.name, f"{msg}. The worker processes running this cell died repeatedly")
        else:
            res.status[cell.name], res.message[cell.name] = "failed", f"{type(e).__name__}: {e}"
        bar.note(f"{cell.name}: {res.status[cell.name]}: {res.message[cell.name][:200]}")
        return
    res.status[cell.name] = out.status
    if out.message:
        res.message[cell.name] = out.message.splitlines()[0] if out.message.strip() else out.message
    if out.status != "finished":
        bar.note(f"{cell.name}: {out.status}: {res.message.get(cell.name, '')[:200]}")
