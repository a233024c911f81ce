"""What one cell runs in a worker (a process of the local pool, or a Dask worker): :func:`run_cell`.

* Torch threads are set explicitly (``CellOptions.threads``): Dask's nanny sets ``OMP_NUM_THREADS=1`` in its
  workers, and torch reads that at import, so a worker meant to use 2 threads would silently use 1. The BLAS and
  OpenMP pools of NumPy and scikit-learn are limited to the same number (threadpoolctl).
* Inside a daemon process (a Dask worker under its nanny) no DataLoader worker process can be started
  ("daemonic processes are not allowed to have children"): file pools read in the task's own process there.
* The run is written to the shared store, as ``python -m al.bench`` writes it. An exception raised by the run is
  recorded as status ``failed`` with its traceback in the run's message; the cell's log file gets it too.
* The claim of a previous holder that is known dead is taken over at once: on this host by its pid (the store's
  own rule), on another host when the Dask scheduler says the worker that held it has left the cluster (the
  executor knows, so the claim is handed over explicitly instead of waiting 120 s for its heartbeat to go
  stale). A holder the cluster does not know (a person's ``al.bench``, another grid) is waited for: the cell
  polls the store until that run is finished, released, or silent long enough to be taken over.
* One thread per run per process: a second task of the same cell in this process (the client was killed and
  resubmitted the grid while the first still runs) waits for the first instead of writing the same run under
  the same claim.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..store.claims import STALE_AFTER_S, owner_token
from .progress import CellLog

if TYPE_CHECKING:
    from ..pool import Pool
    from ..store import Store
    from .cells import Cell

#: Seconds between two looks at the store while a cell waits for another holder of its run.
POLL_S = 2.0


@dataclass(frozen=True)
class CellOptions:
    """How every cell of a grid runs: the shared store, threads, data and log folders."""

    store_url: str
    threads: int = 1
    data_dir: str | None = None
    log_dir: str | None = None
    #: A claim held from another host, silent this long, is taken over (the store's rule; see al.store.claims).
    stale_after_s: float = STALE_AFTER_S
    poll_s: float = POLL_S


@dataclass(frozen=True)
class CellOutcome:
    """What became of one attempt at a cell.

    status: ``finished``; ``failed`` (the run raised: recorded in the store); ``refused`` (the store holds this
    run with other settings or data, or the cell could not be built: nothing written); ``waiting`` (the oracle
    answered part of a query); ``taken over`` (another process took the claim while this one ran)."""

    name: str
    status: str
    message: str | None = None
    seconds: float = 0.0
    rounds: int = 0  # rounds completed by this attempt
    worker: str = ""  # host:pid that ran it


_DATASETS: dict[tuple[str, str | None], Pool] = {}
_STORES: dict[str, Store] = {}
_RUN_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()
_threads_set: int | None = None


def limit_threads(n: int) -> None:
    """torch, BLAS and OpenMP thread pools of this process to ``n`` threads (0: leave them as they are)."""
    global _threads_set
    if n <= 0 or _threads_set == n:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n)
    _threads_set = n


def init_worker(threads: int) -> None:
    """Initializer of each local pool process."""
    limit_threads(threads)


@contextmanager
def _one_thread_per_run(name: str) -> Iterator[None]:
    with _LOCKS_LOCK:
        lock = _RUN_LOCKS.setdefault(name, threading.Lock())
    with lock:
        yield


def _store(url: str) -> Store:
    """One Store per URL per process, kept open for the process's life.

    Why not one per cell: opening a Store on an SQLite file reads the file's header with a plain open()/close(),
    and closing any descriptor of a file drops every POSIX lock this process holds on it, those of its open
    SQLite connections included; another process may then checkpoint and delete the WAL under them ("database
    disk image is malformed"). Two cells of one process (see _one_thread_per_run) would do exactly that."""
    from ..store import Store

    with _LOCKS_LOCK:
        if url not in _STORES:
            _STORES[url] = Store(url)
        return _STORES[url]


def _dataset(name: str, data_dir: str | None) -> Pool:
    """The built-in dataset ``name``, loaded once per process (runs only read it, as run_protocol.py relied on)."""
    from ..data import load_dataset

    key = (name, data_dir)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(name, data_dir)
    pool = _DATASETS[key]
    if multiprocessing.current_process().daemon:
        _no_loader_workers(pool)
    return pool


def _no_loader_workers(pool: Any) -> None:
    """Read a file pool in this process: a daemon process (a Dask worker) cannot start DataLoader workers."""
    if hasattr(pool, "workers"):
        pool.workers = 0
    test = getattr(pool, "test", None)
    if test is not None and hasattr(test.inputs, "workers"):
        test.inputs.workers = 0


def dask_handover() -> Callable[[str], bool] | None:
    """In a Dask worker: register this process's claim token with the scheduler, and return the test "the
    holder ``owner`` was a worker of this cluster and has left it" (its claim can be handed over at once).
    None outside Dask."""
    try:
        from distributed import get_client, get_worker
    except ImportError:
        return None
    try:
        worker = get_worker()
    except ValueError:  # not inside a Dask task
        return None
    try:
        client = get_client()
        client.set_metadata(["al-grid-owners", owner_token()], worker.address)
    except Exception:  # noqa: BLE001 - no handover then: a dead holder elsewhere is taken over when its claim is stale
        return None

    def left_cluster(owner: str) -> bool:
        try:
            address = client.get_metadata(["al-grid-owners", owner], default=None)
            return address is not None and address not in client.scheduler_info(n_workers=-1)["workers"]
        except Exception:  # noqa: BLE001 - the scheduler cannot say: keep to the store's own rule
            return False

    return left_cluster


def acquire(
    store: Store,
    run_id: int,
    name: str,
    *,
    left_cluster: Callable[[str], bool] | None,
    stale_after_s: float = STALE_AFTER_S,
    poll_s: float = POLL_S,
    log: Callable[[str], None] = lambda _: None,
) -> bool:
    """Claim the run for this process; returns False when its holder finished it meanwhile (nothing to do).

    A holder that is alive keeps the cell waiting, polling the store every ``poll_s``; a dead one is taken over:
    on this host at once (pid gone), elsewhere when ``left_cluster(owner)`` says so, else once its heartbeat
    has been silent for ``stale_after_s``."""
    from ..errors import StoreError

    told = None
    while True:
        rec = store.run(name)
        if rec.status == "finished":
            return False
        handover = rec.owner is not None and left_cluster is not None and left_cluster(rec.owner)
        try:
            store.claim(run_id, stale_after_s=0.0 if handover else stale_after_s)
            if handover:
                log(f"took over the claim of {rec.owner}: its Dask worker has left the cluster")
            return True
        except StoreError:
            holder = store.run(name).owner
            if holder is None or holder == owner_token():
                raise  # not a claim held by another process
            if holder != told:
                log(f"waiting: the run is held by {holder} (alive as far as the store can tell)")
                told = holder
        time.sleep(poll_s)


def run_cell(cell: Cell, opts: CellOptions) -> CellOutcome:
    """Run or continue one cell to its end in the shared store. Never raises for a failure of the run itself
    (that is the outcome); a KeyboardInterrupt is passed on after the run is marked stopped."""
    from ..errors import ConfigMismatchError, LabelsPending
    from ..loop import Experiment

    limit_threads(opts.threads)
    me = owner_token()
    log = CellLog(opts.log_dir, cell.name)
    t0 = time.perf_counter()
    with _one_thread_per_run(cell.name):
        store = _store(opts.store_url)
        done = {"rounds": 0}

        def on_round(rep: Any) -> None:
            done["rounds"] += 1
            acc = "acc " + ("-" if rep.accuracy is None else f"{rep.accuracy:.4f}")
            if rep.rmse is not None:  # a regression round
                acc = f"rmse {rep.rmse:.4g}"
            log.write(
                f"round {rep.round_idx:3d} labels {rep.n_labelled:5d} {acc} train {rep.train_seconds:5.1f}s "
                f"select {rep.select_seconds:5.1f}s"
            )

        def outcome(status: str, message: str | None = None) -> CellOutcome:
            return CellOutcome(cell.name, status, message, time.perf_counter() - t0, done["rounds"], me)

        try:
            try:
                exp = Experiment(
                    cell.experiment_config(),
                    store,
                    name=cell.name,
                    dataset=_dataset(cell.dataset, opts.data_dir),
                    on_round=on_round,
                )
                st = exp.open_run()
            except ConfigMismatchError as e:
                log.write(f"refused: {e}")
                return outcome("refused", str(e))
            except Exception as e:  # noqa: BLE001 - nothing is stored yet: the cell is refused, the grid goes on
                log.write(f"refused before anything was written: {type(e).__name__}: {e}")
                return outcome("refused", f"{type(e).__name__}: {e}")
            if st.status == "finished":
                return outcome("finished")
            log.write(f"start on {me} (status {st.status}, {len(st.rounds)} rounds stored)")
            if not acquire(
                store,
                st.run_id,
                cell.name,
                left_cluster=dask_handover(),
                stale_after_s=opts.stale_after_s,
                poll_s=opts.poll_s,
                log=log.write,
            ):
                log.write("finished by another process")
                return outcome("finished")
            try:
                exp.run()
            except LabelsPending as e:
                log.write(f"waiting for labels: {e}")
                return outcome("waiting", str(e))
            except Exception as e:  # noqa: BLE001 - recorded in the store; the other cells go on
                text = traceback.format_exc()
                log.write(f"failed: {type(e).__name__}: {e}\n{text}")
                holder = store.run(cell.name).owner
                if holder not in (None, me):  # taken over meanwhile: the run's status is its new holder's
                    return outcome("taken over", f"{type(e).__name__}: {e}")
                store.set_status(st.run_id, "failed", f"{type(e).__name__}: {e}\n{text}")
                return outcome("failed", f"{type(e).__name__}: {e}")
            log.write(f"finished in {time.perf_counter() - t0:.1f}s ({done['rounds']} rounds this attempt)")
            return outcome("finished")
        except KeyboardInterrupt:
            log.write("interrupted")
            raise
