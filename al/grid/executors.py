"""Where a grid's cells run: a process pool on this machine, or Dask distributed. Both are used only through the
``concurrent.futures`` interface (``submit`` -> ``Future``, ``wait``, ``shutdown``), plus ``capacity()`` (how many
cells can run at once) and ``interrupt()`` (Ctrl-C: stop the cells running now, their runs marked stopped).

``LocalPool``: one single-process ``ProcessPoolExecutor`` per worker slot (forked from a fork server, see
``worker_context``; one torch thread each by default). A plain pool of N processes breaks as a whole when one of
them dies (every pending future fails with BrokenProcessPool); here only the slot whose process died is replaced,
the cell it ran is retried, and a cell whose process dies more than ``allowed_failures`` times fails with
:class:`KilledWorker`, as Dask reports it.

``dask_pool``: ``distributed.Client`` on a given scheduler, or a ``LocalCluster(processes=True,
threads_per_worker=1, host="127.0.0.1")`` of ``workers`` processes with its dashboard on loopback (or none) and
its scratch files in a chosen folder; cells are submitted through ``Client.get_executor`` (a
``concurrent.futures.Executor``).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ConfigError
from .worker import init_worker

#: Deaths of a cell's worker process tolerated before the cell fails (Dask's distributed.scheduler.allowed-failures).
ALLOWED_FAILURES = 3


class GridExecutor(Protocol):
    """What the grid needs of an executor: the concurrent.futures interface and two additions."""

    description: str

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...

    def capacity(self) -> int: ...

    def interrupt(self) -> None: ...


class KilledWorker(Exception):
    """The worker processes running a cell died more than ``allowed_failures`` times (named as Dask's is)."""


@dataclass
class _Item:
    future: cf.Future
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    deaths: int = 0
    started: bool = False


def worker_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: forked from a fork server that has imported the worker's modules once (torch,
    the loop) where the platform has one, else spawned. Never forked from the client itself, which may hold torch
    threads and open store connections. Why the fork server: a spawned worker imports torch and al itself, about
    5 s each on 2 cores, paid again for every replacement of a dead worker; forked from the server it starts at
    once."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # One fork server per process, shared with a LocalCluster's nannies (see dask_pool): the preload takes
        # effect only before the server's first start.
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


#: What the fork server imports once for every worker it forks. torch._dynamo: torch.optim imports it when the first
#: optimizer is made, 4-6 s on this machine, which every fresh worker would pay in its first cell.
PRELOAD = ["al.grid.worker", "al.loop", "al.data", "torch._dynamo", "distributed"]


class LocalPool(cf.Executor):
    """``workers`` worker processes on this machine; see the module docstring."""

    def __init__(self, workers: int, *, threads: int = 1, allowed_failures: int = ALLOWED_FAILURES) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.workers, self.threads, self.allowed_failures = workers, threads, allowed_failures
        self.description = f"local process pool, {workers} worker{'s' * (workers > 1)}, {threads} torch thread(s) each"
        self._ctx = worker_context()
        self._slots: list[cf.ProcessPoolExecutor | None] = [None] * workers
        self._busy: list[_Item | None] = [None] * workers
        self._queue: deque[_Item] = deque()
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._closing = False
        self._cancel_queued = False
        self._submit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="al-grid-local-pool", daemon=True)
        self._thread.start()

    # --- the concurrent.futures interface ------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        if kwargs:
            raise TypeError("LocalPool.submit takes positional arguments only (as the Dask path passes them)")
        with self._submit_lock:
            if self._closing:
                raise RuntimeError("cannot submit to a LocalPool after shutdown")
            item = _Item(cf.Future(), fn, args)
            self._events.put(("submit", item))
        return item.future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._submit_lock:
            if not self._closing:
                self._closing = True
                self._events.put(("close", cancel_futures))
        if wait:
            self._thread.join()

    # --- the grid's additions ------------------------------------------------------------------------------------
    def capacity(self) -> int:
        return self.workers

    def pids(self, *, busy_only: bool = False) -> list[int]:
        """The worker processes alive now (``busy_only``: those running a cell)."""
        out = []
        for pool, item in zip(list(self._slots), list(self._busy), strict=True):
            if pool is None or (busy_only and item is None):
                continue
            # ProcessPoolExecutor keeps its processes in _processes (pid -> Process) since Python 3.2.
            procs = getattr(pool, "_processes", None) or {}
            out += [p.pid for p in list(procs.values()) if p.is_alive() and p.pid is not None]
        return out

    def interrupt(self) -> None:
        """SIGINT to every worker process running a cell: its run is marked stopped, as Ctrl-C at al.bench does.
        (An idle one is left alone: interrupted between cells it would only die and break its slot.)"""
        for pid in self.pids(busy_only=True):
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    # --- the dispatcher thread -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # a bug here must not leave the grid waiting on futures that never finish
            for item in [*self._queue, *(b for b in self._busy if b is not None)]:
                if not item.future.done():
                    item.future.set_exception(e)
            raise

    def _serve(self) -> None:
        while True:
            ev = self._events.get()
            if ev[0] == "submit":
                self._queue.append(ev[1])
            elif ev[0] == "done":
                self._finished(ev[1], ev[2], ev[3])
            elif ev[0] == "close":
                self._cancel_queued = self._cancel_queued or ev[1]
            if self._cancel_queued:
                while self._queue:
                    self._queue.popleft().future.cancel()
            self._dispatch()
            if self._closing and not self._queue and not any(self._busy):
                for pool in self._slots:
                    if pool is not None:
                        pool.shutdown(wait=True)
                return

    def _dispatch(self) -> None:
        for i in range(self.workers):
            while self._busy[i] is None and self._queue:
                item = self._queue.popleft()
                if not item.started:
                    if not item.future.set_running_or_notify_cancel():
                        continue  # cancelled before it started
                    item.started = True
                pool = self._slots[i]
                if pool is None:
                    pool = self._slots[i] = cf.ProcessPoolExecutor(
                        max_workers=1, mp_context=self._ctx, initializer=init_worker, initargs=(self.threads,)
                    )
                try:
                    inner = pool.submit(item.fn, *item.args)
                except BrokenProcessPool:  # broke between two cells: a fresh process takes the cell
                    self._slots[i] = None
                    self._queue.appendleft(item)
                    continue
                self._busy[i] = item
                inner.add_done_callback(functools.partial(self._on_done, i, item))

    def _on_done(self, slot: int, item: _Item, inner: cf.Future) -> None:
        # Called in the pool's own manager thread: hand the work to the dispatcher thread.
        self._events.put(("done", slot, item, inner))

    def _finished(self, slot: int, item: _Item, inner: cf.Future) -> None:
        self._busy[slot] = None
        exc = inner.exception()
        if isinstance(exc, BrokenProcessPool):  # the slot's process died running this cell
            pool, self._slots[slot] = self._slots[slot], None
            if pool is not None:
                pool.shutdown(wait=False)
            item.deaths += 1
            if item.deaths > self.allowed_failures:
                item.future.set_exception(
                    KilledWorker(
                        f"the worker process running this cell died {item.deaths} times (allowed failures: "
                        f"{self.allowed_failures})"
                    )
                )
            elif self._cancel_queued:
                item.future.set_exception(exc)
            else:
                self._queue.appendleft(item)  # retried first, on a fresh process
        elif exc is not None:
            item.future.set_exception(exc)
        else:
            item.future.set_result(inner.result())


@dataclass
class DaskPool:
    """A Dask client's ``concurrent.futures`` executor, with the cluster it runs on."""

    client: Any
    executor: cf.Executor
    description: str
    local_cluster: bool

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future:
        return self.executor.submit(fn, *args)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.executor.shutdown(wait=wait and not cancel_futures)

    def workers(self) -> dict[str, dict[str, Any]]:
        return dict(self.client.scheduler_info(n_workers=-1)["workers"])

    def capacity(self) -> int:
        return max(1, sum(int(w.get("nthreads", 1)) for w in self.workers().values()))

    def interrupt(self) -> None:
        """Cancel the cells in flight. Dask cannot stop a task that has started: on a LocalCluster its workers are
        stopped with the cluster (their runs' claims are taken over at once by the next command); on a cluster
        the running cells finish there and the next command finds them done or waits for them."""
        self.executor.shutdown(wait=False)


def local_addresses() -> set[str]:
    """This machine's IP addresses (loopback included)."""
    out = {"127.0.0.1", "::1", "localhost"}
    try:
        import psutil  # a dependency of distributed

        for addrs in psutil.net_if_addrs().values():
            out |= {a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)}
    except ImportError:
        pass
    try:
        out |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return out


def _host_of(address: str) -> str:
    """``tcp://10.0.0.5:8786`` -> ``10.0.0.5``; ``tls://[::1]:8786`` -> ``::1``."""
    rest = address.split("://", 1)[-1]
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rsplit(":", 1)[0]


def check_store_for_cluster(is_sqlite: bool, shown_url: str, scheduler: str, workers: dict[str, Any]) -> None:
    """SQLite only for workers on this machine: a ConfigError when the scheduler or a worker is elsewhere."""
    if not is_sqlite:
        return
    here = local_addresses()
    away = sorted({h for h in [_host_of(scheduler), *(_host_of(a) for a in workers)] if h not in here})
    if away:
        raise ConfigError(
            f"--store {shown_url} is an SQLite file on this machine, but the Dask cluster at {scheduler} has "
            f"{'workers' if len(away) > 1 else 'a worker or scheduler'} on {', '.join(away)}; an SQLite file is "
            f"only safe for workers on one machine. Give a PostgreSQL store all workers can reach "
            f"(--store postgresql://USER@HOST/DB)"
        )


@contextmanager
def dask_pool(
    *,
    scheduler: str | None,
    workers: int,
    dashboard_address: str | None,
    scratch: str | None,
    allowed_failures: int | None,
    store_is_sqlite: bool,
    shown_store: str,
) -> Iterator[DaskPool]:
    """A Dask executor for the grid: on ``scheduler``, else on a LocalCluster of ``workers`` processes."""
    try:
        import dask
        import distributed
    except ImportError as e:
        raise ConfigError(
            f"--executor dask needs Dask distributed ({e}); pip install 'al[grid]' (or 'dask[distributed]')"
        ) from None
    cluster = None
    if scheduler is not None:
        if allowed_failures is not None:
            raise ConfigError(
                "--allowed-failures sets a LocalCluster's scheduler; a running scheduler keeps its own "
                "(distributed.scheduler.allowed-failures in its Dask config)"
            )
        try:
            client = distributed.Client(scheduler, timeout="30s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        description = f"Dask scheduler {scheduler}"
    else:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        settings: dict[str, Any] = {}
        if dask.config.get("distributed.worker.multiprocessing-method") == "spawn" and (
            worker_context().get_start_method() == "forkserver"
        ):
            # Dask's default start method spawns each worker, which then imports torch and al (about 5 s on 2
            # cores, again for each worker restarted after a death); forked from the shared fork server, whose
            # preload includes them, a worker starts at once. Set for this process: the nannies read it again when
            # they restart a worker. distributed's own get_mp_context would set a preload without al: set ours.
            dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
            from distributed.utils import get_mp_context

            get_mp_context().set_forkserver_preload(PRELOAD)
        if allowed_failures is not None:
            settings["distributed.scheduler.allowed-failures"] = allowed_failures
        if scratch is not None:
            os.makedirs(scratch, exist_ok=True)
        with dask.config.set(settings):
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                # The scheduler's HTTP server (dashboard, /health, metrics) listens on 0.0.0.0:8787 unless told
                # otherwise; None switches it off.
                dashboard_address=dashboard_address,
                local_directory=scratch,
                silence_logs=logging.ERROR,
            )
        client = distributed.Client(cluster, set_as_default=False)
        description = f"Dask LocalCluster on 127.0.0.1, {workers} worker{'s' * (workers > 1)}"
    try:
        info = client.scheduler_info(n_workers=-1)
        check_store_for_cluster(store_is_sqlite, shown_store, client.scheduler.address, info["workers"])
        link = client.dashboard_link if dashboard_address is not None or scheduler is not None else None
        if link and cluster is not None and "dashboard" in info.get("services", {}):
            description += f", dashboard {link}"
        pool = DaskPool(client, client.get_executor(pure=False), description, cluster is not None)
        yield pool
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
