"""``python -m al.grid``: run the cells (dataset x strategy x seed) of protocol files into one store.

    python -m al.grid benchmarks/protocols/mnist_batchbald.json --store sqlite:///grid.db
    python -m al.grid protocols/*.json --executor dask --workers 4 --store postgresql://USER@HOST/DB
    python -m al.grid protocols/*.json --scheduler tcp://HOST:8786 --store postgresql://USER@HOST/DB
    python -m al.grid protocols/*.json --list --store sqlite:///grid.db

Each cell is one run, named ``<protocol>-<strategy>-seed<seed>`` and identified by its configuration; the store
is the truth about it. Submitting the same grid again (or from another machine) runs only what the store says is
not finished: an unfinished run continues from its last completed round, a finished one is left alone.

Exit codes: 0 every cell finished; 1 some cell failed, was refused or was not reached (the summary says which;
rerunning retries exactly those); 2 bad usage (nothing submitted); 130 interrupted (rerun to continue).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli_parser import OneLineParser
from ..errors import ALError, ConfigError
from ..store import DEFAULT_URL, STALE_AFTER_S

EXIT_INTERRUPTED = 130


def build_parser(prog: str = "python -m al.grid", default_store: str = DEFAULT_URL) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    a = p.add_argument
    a("protocols", nargs="+", help="protocol JSON files; their cells run in the order given, each file seed-major")
    a("--store", default=default_store, help=f"SQLAlchemy URL of the shared store (default {default_store})")
    a("--list", action="store_true", help="show every cell's state in the store and run nothing")
    a(
        "--executor",
        choices=("local", "dask"),
        help="local: a process pool on this machine (default); dask: Dask distributed (a LocalCluster, or --scheduler)",
    )
    a("--workers", type=int, help="worker processes (local pool or LocalCluster; default: CPU cores / --threads)")
    a("--threads", type=int, default=1, help="torch threads per worker (default 1; 0: torch's own default)")
    a("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://HOST:8786 (implies --executor dask)")
    a(
        "--dashboard-address",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="the LocalCluster's dashboard (default 127.0.0.1 on a free port; Dask's own default is 0.0.0.0:8787)",
    )
    a(
        "--no-dashboard",
        action="store_true",
        help="no dashboard pages for the LocalCluster (Dask's health endpoint stays on 127.0.0.1)",
    )
    a("--scratch", metavar="DIR", help="the LocalCluster workers' scratch folder (default Dask's, in the temp dir)")
    a(
        "--logs",
        metavar="DIR",
        help="folder of the per-run log files (default <store file>-logs next to an SQLite store, else al-grid-logs)",
    )
    a(
        "--allowed-failures",
        type=int,
        metavar="N",
        help="deaths of a cell's worker tolerated before it fails as KilledWorker (local pool and LocalCluster; "
        "default 3)",
    )
    a("--strategies", nargs="+", help="only these strategies")
    a("--seeds", type=int, nargs="+", help="only these seeds")
    a("--cells", nargs="+", metavar="PATTERN", help="only cells whose name matches a pattern (mnist-p1-random-*)")
    a("--data-dir", help="data root on the workers (default $AL_DATA_DIR, else ~/.cache/al/data)")
    a("--until", metavar="HH:MM", help="submit no new cell after this UTC time")
    a("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
    a(
        "--stale-after",
        type=float,
        default=STALE_AFTER_S,
        metavar="SECONDS",
        help=f"a run claimed from another host and silent this long is taken over (default {STALE_AFTER_S:g})",
    )
    return p


def parse_until(until: str | None) -> float | None:
    if not until:
        return None
    import datetime as dt

    try:
        h, m = map(int, until.split(":"))
        if not (0 <= h < 24 and 0 <= m < 60):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--until takes a UTC time as HH:MM, e.g. 08:30; got {until!r}") from None
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(hour=h, minute=m, second=0, microsecond=0).timestamp()


def absolute_store_url(url: str) -> str:
    """The URL with a relative SQLite path made absolute: workers may run in another folder. An in-memory SQLite
    store is refused (each worker would have its own, and all of them vanish)."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return url  # the Store reports it
    if parsed.get_backend_name() != "sqlite":
        return url
    if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
        raise ConfigError(
            f"--store {url} keeps the runs in memory, where no worker can see them; give a file, e.g. "
            f"--store sqlite:///grid.db"
        )
    if parsed.database.startswith("file:") or os.path.isabs(parsed.database):
        return url
    return parsed.set(database=os.path.abspath(parsed.database)).render_as_string(hide_password=False)


def default_logs(url: str) -> str:
    from ..store.engine import parse_url, sqlite_path

    try:
        path = sqlite_path(parse_url(url))
    except ALError:
        path = None
    if path:
        return str(Path(path).with_suffix("")) + "-logs"
    return os.path.abspath("al-grid-logs")


def _list(cells_grid, url: str, out=None) -> int:  # noqa: ANN001 - a cells.Grid, a text file (default stdout)
    from ..report.protocols import protocol_id
    from ..store import Store, sqlite_file_missing
    from .cells import cell_states

    # --list only reads: it neither creates a missing store nor upgrades an older one.
    store = None if sqlite_file_missing(url) else Store(url, upgrade=False)
    try:
        states = cell_states(store, cells_grid.cells)
    finally:
        if store is not None:
            store.close()
    out = out or sys.stdout
    counts: dict[str, int] = {}
    width = max([len(c.name) for c in cells_grid.cells] + [10])
    last = None
    for c in cells_grid.cells:
        if (c.protocol, c.source) != last:
            last = (c.protocol, c.source)
            n = sum(1 for x in cells_grid.cells if (x.protocol, x.source) == last)
            print(f"{c.protocol} ({c.source}): {n} cells, report protocol {protocol_id(c.config)}", file=out)
        s = states[c.name]
        status = s.status
        if status == "running":
            status = f"running ({s.owner}{', gone: rerun to continue' if s.holder_gone else ''})"
        counts[s.status] = counts.get(s.status, 0) + 1
        line = f"  {c.name:{width}s} {status}"
        if s.rounds:
            acc = "" if s.accuracy is None else f" acc {s.accuracy:.4f}"
            if s.rmse is not None:  # a regression run
                acc = f" rmse {s.rmse:.4g}"
            line += f"  {s.rounds} rounds, {s.n_labelled} labels{acc}"
        if s.status in ("failed", "stopped", "waiting") and s.message:
            line += f"  {s.message.strip().splitlines()[0][:160]}"
        print(line, file=out)
    print(", ".join(f"{v} {k}" for k, v in counts.items()) or "no cells", file=out)
    return 0


def main(
    argv: Sequence[str] | None = None, *, parser: argparse.ArgumentParser | None = None, noun: str = "cells"
) -> int:
    """The command; ``parser`` and ``noun`` let benchmarks/run_protocol.py keep its own defaults and wording."""
    args = (parser or build_parser()).parse_args(argv)
    from .cells import grid_cells

    try:
        deadline = parse_until(args.until)
        grid = grid_cells(args.protocols, strategies=args.strategies, seeds=args.seeds, names=args.cells)
        if args.list:
            return _list(grid, args.store)
        return _run(args, grid, deadline, noun)
    except ALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, grid, deadline: float | None, noun: str) -> int:  # noqa: ANN001 - a cells.Grid
    from contextlib import ExitStack

    from ..store import Store
    from .executors import ALLOWED_FAILURES, GridExecutor, LocalPool, dask_pool
    from .progress import GridProgress
    from .runner import run_grid
    from .worker import CellOptions

    executor_kind = args.executor or ("dask" if args.scheduler else "local")
    if args.scheduler and executor_kind != "dask":
        raise ConfigError("--scheduler is a Dask scheduler: drop --executor local (or use --executor dask)")
    if args.threads < 0:
        raise ConfigError(f"--threads must be 0 (torch's default) or positive, got {args.threads}")
    if args.allowed_failures is not None and args.allowed_failures < 0:
        raise ConfigError(f"--allowed-failures must be 0 or more, got {args.allowed_failures}")
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 1) // max(1, args.threads))
    url = absolute_store_url(args.store)
    logs = os.path.abspath(args.logs or default_logs(url))
    # The client's one Store (see worker._store): created or upgraded here, a bad URL or server said up front.
    store = Store(url)
    shown, is_sqlite = store.shown_url, store.is_sqlite
    opts = CellOptions(
        store_url=url,
        threads=args.threads,
        data_dir=os.path.abspath(args.data_dir) if args.data_dir else None,
        log_dir=logs,
        stale_after_s=args.stale_after,
    )
    executor: GridExecutor
    with store, ExitStack() as stack:  # the executor's processes stop before the client's Store closes
        if executor_kind == "local":
            allowed = ALLOWED_FAILURES if args.allowed_failures is None else args.allowed_failures
            executor = LocalPool(workers, threads=args.threads, allowed_failures=allowed)
            stack.callback(executor.shutdown, wait=True)
        else:
            executor = stack.enter_context(
                dask_pool(
                    scheduler=args.scheduler,
                    workers=workers,
                    dashboard_address=None if args.no_dashboard else args.dashboard_address,
                    scratch=os.path.abspath(args.scratch) if args.scratch else None,
                    allowed_failures=args.allowed_failures,
                    store_is_sqlite=is_sqlite,
                    shown_store=shown,
                )
            )
        print(
            f"{len(grid.cells)} {noun} of {', '.join(dict.fromkeys(c.protocol for c in grid.cells))} on "
            f"{executor.description}; store {shown}; logs in {logs}",
            file=sys.stderr,
            flush=True,
        )
        bar = GridProgress(len(grid.cells), 0, enabled=not args.no_progress)
        try:
            result = run_grid(grid.cells, opts, executor, store=store, progress=bar, deadline=deadline)
        except KeyboardInterrupt as e:
            bar.close()
            stack.close()  # the worker processes are stopped first: then their runs' claims are known dead
            _mark_abandoned(store, grid.cells)
            res = getattr(e, "grid_result", None)
            if res is not None:
                print(res.summary(noun), file=sys.stderr)
            print("interrupted; run the same command to continue", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            bar.close()
    print(result.summary(noun), flush=True)
    if not result.ok:
        print(f"run the same command again to retry them (per-run logs in {logs})", flush=True)
    return 0 if result.ok else 1


def _mark_abandoned(store, cells) -> None:  # noqa: ANN001 - a Store, Sequence[Cell]
    """Runs left ``running`` by worker processes this command stopped (their pids gone) are marked stopped."""
    from ..store.claims import STALE_AFTER_S, owner_gone

    runs = store.runs()
    for name in sorted(set(runs.loc[runs["status"] == "running", "run"]) & {c.name for c in cells}):
        rec = store.run(name)
        if rec.owner is not None and owner_gone(rec.owner, rec.heartbeat, STALE_AFTER_S):
            store.set_status(rec.run_id, "stopped", "interrupted: the grid that ran it was stopped")


if __name__ == "__main__":
    sys.exit(main())
