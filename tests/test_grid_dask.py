"""al.grid on real parts: a real PostgreSQL on loopback (tests/pg.py) as the shared store, Dask's LocalCluster with 2
worker processes, and a scheduler and two workers started as separate processes (``dask scheduler``, ``dask
worker``) on 127.0.0.1. The faults of the issue: a grid submitted twice adds nothing; a worker SIGKILLed mid-cell
and the results identical, cell by cell (labelled sets and accuracies), to a grid run without the kill (on the
same host the dead pid frees the claim; from "another host" the executor hands it over, without the 120 s wait);
a cell that raises; the client interrupted and rerun; a cell whose workers die repeatedly reported as KilledWorker.

Slow (a few minutes on 2 cores): ``-m slow``.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from grid_helpers import FAIL_MARKER, ROOT, protocol, results, table_counts
from pg import PgUnavailable, free_port, start_server

from al.grid import CellOptions, grid_cells, run_grid
from al.grid.executors import LocalPool, dask_pool
from al.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
distributed = pytest.importorskip("distributed")

_counter = itertools.count()
#: The 6-cell grid: 10 rounds each (0.1-0.5 s a round), long enough to be killed in the middle.
SIX = [{"strategy": s, "seeds": [0, 1]} for s in ("entropy", "random", "margin")]
BUDGET = 200


@pytest.fixture(scope="module")
def pg_server():
    try:
        server = start_server()
    except PgUnavailable as e:
        pytest.skip(f"no PostgreSQL server for the tests: {e}")
    yield server
    server.stop()


def new_db(server) -> str:
    return server.create_database(f"g{os.getpid()}_{next(_counter)}")


@pytest.fixture(scope="module")
def grid_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("protocols")
    six = protocol(d, "six", SIX, budget=BUDGET)
    bad = protocol(d, "bad", [{"strategy": "random", "seeds": [0]}], oracle="tests.grid_helpers:fails_while_marked")
    return six, bad


@pytest.fixture(scope="module")
def reference(pg_server, grid_files, tmp_path_factory):
    """The 6-cell grid run without any fault, on the local process pool: the results every faulty run must equal
    (and a check that the executor does not change a result)."""
    url = new_db(pg_server)
    pool = LocalPool(2, threads=1)
    try:
        res = run_grid(grid_cells([grid_files[0]]).cells, CellOptions(url, threads=1), pool)
    finally:
        pool.shutdown()
    assert res.ok, res.summary()
    with Store(url) as s:
        ref = results(s)
    assert len(ref) == 6 and all(len(acc) == BUDGET // 20 for _, acc in ref.values())
    return ref


def local_cluster(tmp_path, **kw):
    return dask_pool(
        scheduler=None,
        workers=2,
        dashboard_address=None,
        scratch=str(tmp_path / "scratch"),
        allowed_failures=kw.pop("allowed_failures", None),
        store_is_sqlite=False,
        shown_store="postgresql",
        **kw,
    )


def kill_mid_cell(url: str, *, min_rounds: int = 2, timeout: float = 300.0) -> tuple[str, str, float]:
    """Wait until some run of the store is running with ``min_rounds`` complete rounds, SIGKILL the process that
    holds it; returns (run, owner, time of the kill)."""
    deadline = time.time() + timeout
    with Store(url) as s:
        while time.time() < deadline:
            runs = s.runs()
            curves = s.curves()
            for name in runs.loc[runs["status"] == "running", "run"]:
                if (curves["run"] == name).sum() >= min_rounds:
                    owner = s.run(name).owner
                    if owner:
                        os.kill(int(owner.rsplit(":", 1)[1]), signal.SIGKILL)
                        return name, owner, time.time()
            time.sleep(0.1)
    raise AssertionError("no run reached the middle of a cell in time")


def starts_of(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if " start on " in line]


# --- a LocalCluster ----------------------------------------------------------------------------------------------
def test_local_cluster_on_postgres_twice_a_worker_killed_mid_cell_and_a_cell_that_raises(
    pg_server, grid_files, reference, tmp_path, capsys
):
    six, bad = grid_files
    cells = grid_cells([six]).cells
    with local_cluster(tmp_path) as pool:
        # the 6-cell grid completes, with the reference's results
        url = new_db(pg_server)
        opts = CellOptions(url, threads=1, log_dir=str(tmp_path / "logs1"))
        assert run_grid(cells, opts, pool).ok
        with Store(url) as s:
            assert results(s) == reference
            before = table_counts(s)
        # submitted again: nothing is run, nothing is written
        again = run_grid(cells, opts, pool)
        assert again.ok and again.finished_before == 6
        with Store(url) as s:
            assert table_counts(s) == before

        # a worker SIGKILLed mid-cell: Dask reschedules the cell on a restarted worker, which continues the run
        # from its last completed round at once (the claim's pid is gone on this host)
        url2 = new_db(pg_server)
        logs = tmp_path / "logs2"
        opts2 = CellOptions(url2, threads=1, log_dir=str(logs))
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("res", run_grid(cells, opts2, pool)))
        t.start()
        name, owner, killed_at = kill_mid_cell(url2)
        # the store is read while the grid runs: --list and al.report
        from al.grid.__main__ import main as grid_main
        from al.report import main as report_main

        assert grid_main([str(six), "--store", url2, "--list"]) == 0
        assert report_main(["--store", url2, "--out", str(tmp_path / "report")]) == 0
        t.join(timeout=600)
        assert not t.is_alive() and out["res"].ok, out["res"].summary()
        listed = capsys.readouterr().out
        assert f"{name}" in listed and "running (" in listed
        assert (tmp_path / "report" / "report.md").exists()
        with Store(url2) as s:
            assert results(s) == reference  # cell by cell: labelled sets and accuracies
        starts = starts_of(logs / f"{name}.log")
        assert len(starts) == 2 and owner not in starts[1], starts
        resumed = time.mktime(time.strptime(starts[1][:19], "%Y-%m-%d %H:%M:%S"))
        assert resumed - killed_at < 60, "the resumed cell waited for the dead holder's claim"
        assert "rounds stored)" in starts[1] and "(status running, 0 rounds stored)" not in starts[1]

        # one cell that raises: failed with its traceback in the store, the others left alone, the rerun retries it
        Path(FAIL_MARKER).write_text("fail")
        try:
            res = run_grid(grid_cells([six, bad]).cells, opts, pool)
        finally:
            os.unlink(FAIL_MARKER)
        assert res.status["bad-random-seed0"] == "failed" and res.finished_before == 6
        with Store(url) as s:
            rec = s.run("bad-random-seed0")
            assert rec.status == "failed" and "Traceback (most recent call last)" in rec.message
            assert {k: v for k, v in results(s).items() if k != "bad-random-seed0"} == reference
        res = run_grid(grid_cells([six, bad]).cells, opts, pool)
        assert res.ok and res.finished_before == 6
        with Store(url) as s:
            assert s.run("bad-random-seed0").status == "finished"
            assert {k: v for k, v in results(s).items() if k != "bad-random-seed0"} == reference


def test_workers_dying_repeatedly_on_a_cell_are_reported_as_killed_worker(pg_server, tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    kill = protocol(d, "kill", [{"strategy": "random", "seeds": [0]}], oracle="tests.grid_helpers:kills_its_process")
    ok = protocol(d, "ok", [{"strategy": "random", "seeds": [0]}])
    url = new_db(pg_server)
    t0 = time.perf_counter()
    with local_cluster(tmp_path, allowed_failures=1) as pool:
        res = run_grid(grid_cells([kill, ok]).cells, CellOptions(url, threads=1), pool)
    assert time.perf_counter() - t0 < 300
    assert res.status == {"kill-random-seed0": "killed", "ok-random-seed0": "finished"}
    assert res.message["kill-random-seed0"].startswith("KilledWorker:")
    with Store(url) as s:
        rec = s.run("kill-random-seed0")
        assert rec.status == "failed" and rec.message.startswith("KilledWorker:")
        # each of the 2 attempts completed one round before its oracle's second call killed it: the retry resumed
        assert len(s.curves().query("run == 'kill-random-seed0'")) == 2


def test_the_client_interrupted_and_rerun_picks_up_every_cell(pg_server, grid_files, reference, tmp_path):
    url = new_db(pg_server)
    cmd = [sys.executable, "-m", "al.grid", str(grid_files[0]), "--store", url, "--executor", "dask"]
    cmd += ["--workers", "2", "--no-progress", "--no-dashboard", "--logs", str(tmp_path / "logs")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A shell without job control starts background commands with SIGINT ignored: give the client the default.
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        with Store(url) as s:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                curves = s.curves() if len(s.runs()) else None
                if curves is not None and curves.groupby("run").size().ge(2).sum() >= 2:
                    break
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "interrupted; run the same command to continue" in err and "Traceback" not in err
    with Store(url) as s:
        status = set(s.runs()["status"])
        assert "running" not in status, s.runs()[["run", "status", "message"]]
        assert len(s.runs()) < 6 or status != {"finished"}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "6 of 6 cells finished" in r.stdout
    with Store(url) as s:
        assert results(s) == reference


# --- a scheduler and workers started as separate processes --------------------------------------------------------
SITECUSTOMIZE = """
import os
import socket

if os.environ.get("AL_TEST_HOSTNAME"):  # this process plays a worker on another machine: the store sees its host
    socket.gethostname = lambda: os.environ["AL_TEST_HOSTNAME"]
"""


@pytest.fixture
def cluster_processes(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1; worker "b" has no nanny and plays a
    machine named node-b. Yields (scheduler address, {name: Popen}); all are stopped at the end."""
    dask = str(Path(sys.executable).with_name("dask"))
    (tmp_path / "fakehost").mkdir()
    (tmp_path / "fakehost" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        procs[name] = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env={**env, **(extra_env or {})},
            stdout=open(tmp_path / f"{name}.out", "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    start(
        "scheduler",
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
    )
    # --dashboard-address: without it a worker's HTTP server (health, metrics) listens on 0.0.0.0, --no-dashboard or not
    common = ["--host", "127.0.0.1", "--nthreads", "1", "--dashboard-address", "127.0.0.1:0"]
    start("a", [dask, "worker", address, *common, "--name", "a", "--local-directory", str(tmp_path / "wa")])
    start(
        "b",
        [dask, "worker", address, *common, "--name", "b", "--no-nanny", "--local-directory", str(tmp_path / "wb")],
        {"AL_TEST_HOSTNAME": "node-b", "PYTHONPATH": os.pathsep.join([str(tmp_path / "fakehost"), str(ROOT)])},
    )
    try:
        client = None
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                client = client or distributed.Client(address, timeout="5s", set_as_default=False)
                if len(client.scheduler_info(n_workers=-1)["workers"]) == 2:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("the Dask processes did not start: " + (tmp_path / "scheduler.out").read_text())
        client.close()
        yield address, procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_scheduler_and_worker_processes_a_worker_of_another_host_killed_is_handed_over(
    pg_server, grid_files, reference, cluster_processes, tmp_path
):
    import psutil

    address, procs = cluster_processes
    six, bad = grid_files
    cells = grid_cells([six]).cells
    url = new_db(pg_server)
    logs = tmp_path / "logs"
    with dask_pool(
        scheduler=address,
        workers=0,
        dashboard_address=None,
        scratch=None,
        allowed_failures=None,
        store_is_sqlite=False,
        shown_store="postgresql",
    ) as pool:
        assert pool.capacity() == 2 and pool.description == f"Dask scheduler {address}"
        opts = CellOptions(url, threads=1, log_dir=str(logs))  # the store's own 120 s for silent claims
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("res", run_grid(cells, opts, pool)))
        t.start()
        # kill worker b (node-b) in the middle of one of its cells
        deadline = time.time() + 300
        with Store(url) as s:
            while time.time() < deadline:
                mine = [
                    r
                    for r in s.runs().itertuples()
                    if r.status == "running" and (s.run(r.run).owner or "").startswith("node-b:")
                ]
                if mine and (s.curves()["run"] == mine[0].run).sum() >= 2:
                    break
                time.sleep(0.1)
            name = mine[0].run
        procs["b"].send_signal(signal.SIGKILL)
        killed_at = time.time()
        t.join(timeout=600)
        assert not t.is_alive() and out["res"].ok, out["res"].summary()
        log = (logs / f"{name}.log").read_text()
        assert "took over the claim of node-b:" in log and "its Dask worker has left the cluster" in log
        took = [ln for ln in log.splitlines() if "took over the claim" in ln][0]
        assert time.mktime(time.strptime(took[:19], "%Y-%m-%d %H:%M:%S")) - killed_at < 60
        with Store(url) as s:
            assert results(s) == reference
            before = table_counts(s)
        # submitted again: nothing added
        assert run_grid(cells, opts, pool).finished_before == 6
        with Store(url) as s:
            assert table_counts(s) == before
        # a cell that raises, on the cluster path too
        Path(FAIL_MARKER).write_text("fail")
        try:
            res = run_grid(grid_cells([six, bad]).cells, opts, pool)
        finally:
            os.unlink(FAIL_MARKER)
        assert res.status["bad-random-seed0"] == "failed"
    # workers on this machine may share an SQLite file (the rule refuses only workers elsewhere): worker a is left
    lite = protocol(tmp_path, "lite", [{"strategy": "random", "seeds": [0]}])
    r = subprocess.run(
        [sys.executable, "-m", "al.grid", str(lite), "--store", f"sqlite:///{tmp_path / 'g.db'}"]
        + ["--scheduler", address, "--no-progress"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "1 of 1 cells finished" in r.stdout and f"Dask scheduler {address}" in r.stderr
    # nothing listens beyond loopback: scheduler (with its dashboard server), worker a and its nanny
    for name in ("scheduler", "a"):
        root = psutil.Process(procs[name].pid)
        for p in [root, *root.children(recursive=True)]:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    assert c.laddr.ip in ("127.0.0.1", "::1"), (name, p.pid, c)
