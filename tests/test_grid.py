"""al.grid, the fast parts: protocol files -> cells, the command's usage errors and --list, the claim taken over
or waited for, the SQLite rule for clusters, and two real grids on SQLite: the local process pool and a Dask
LocalCluster (2 workers each). The long fault cases against PostgreSQL and separate Dask processes are in
tests/test_grid_dask.py (slow)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from grid_helpers import FAIL_MARKER, ROOT, protocol, results, table_counts

from al.errors import ConfigError
from al.grid import CellOptions, grid_cells, run_grid
from al.grid.__main__ import main
from al.grid.executors import LocalPool, check_store_for_cluster
from al.grid.worker import acquire
from al.store import Store

TWO = [{"strategy": "entropy", "seeds": [0, 1]}, {"strategy": "random", "seeds": [0]}]


# --- cells ------------------------------------------------------------------------------------------------------
def test_cells_are_seed_major_and_a_name_is_one_configuration(tmp_path):
    a = protocol(tmp_path, "a", TWO)
    b = protocol(tmp_path, "b", [{"strategy": "random", "seeds": [0, 2]}])
    # b's random seed 0 has a's settings exactly: still its own run (a protocol may rerun settings on purpose)
    assert [c.name for c in grid_cells([a, b]).cells] == [
        "a-entropy-seed0",
        "a-random-seed0",
        "a-entropy-seed1",
        "b-random-seed0",
        "b-random-seed2",
    ]
    assert [c.name for c in grid_cells([a, a]).cells] == [c.name for c in grid_cells([a]).cells]
    assert [c.name for c in grid_cells([a], names=["a-entropy-*"]).cells] == ["a-entropy-seed0", "a-entropy-seed1"]
    assert [c.name for c in grid_cells([a], strategies=["random"], seeds=[0]).cells] == ["a-random-seed0"]
    (tmp_path / "copy").mkdir()
    same = protocol(tmp_path / "copy", "a", TWO)  # same name, same settings: nothing added
    assert len(grid_cells([a, same]).cells) == 3
    other = protocol(tmp_path / "copy", "a", TWO, budget=80)  # same name, other settings
    with pytest.raises(ConfigError, match="cell a-entropy-seed0 is defined twice with different settings"):
        grid_cells([a, other])


@pytest.mark.parametrize(
    "runs,msg",
    [
        ([{"strategy": "entropi", "seeds": [0]}], "did you mean 'entropy'"),
        ([{"strategy": "entropy", "seeds": [0], "strategy_kwargs": {"alpha": 1}}], "has no parameter 'alpha'"),
        ([{"strategy": "entropy"}], r"runs\[0\] needs a strategy and a list of seeds"),
    ],
)
def test_a_bad_cell_is_refused_before_anything_runs(tmp_path, runs, msg):
    with pytest.raises(ConfigError, match=msg):
        grid_cells([protocol(tmp_path, "p", runs)])


def test_shipped_protocols_name_the_committed_runs():
    """Every run of the committed store that a shipped protocol defines is that protocol's cell, by name."""
    files = sorted((ROOT / "benchmarks" / "protocols").glob("*.json"))
    names = {c.name for c in grid_cells(files).cells}
    committed = Store(f"sqlite:///{ROOT / 'benchmarks' / 'results' / 'protocols.sqlite'}", must_exist=True)
    try:
        stored = set(committed.runs()["run"])
    finally:
        committed.close()
    by_hand = {r for r in stored if r.startswith("mnist-p1-regrad-root-a0-")}  # an ablation in no protocol file
    assert stored - by_hand <= names, sorted(stored - by_hand - names)
    assert len(names) == sum(len(r["seeds"]) for f in files for r in json.loads(f.read_text())["runs"])


# --- the command ------------------------------------------------------------------------------------------------
def test_usage_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    p = protocol(tmp_path, "p", TWO)
    db = tmp_path / "g.db"
    url = f"sqlite:///{db}"
    for argv, msg in [
        ([str(tmp_path / "nope.json"), "--store", url], "not found"),
        ([str(p), "--store", "sqlite://"], "keeps the runs in memory"),
        ([str(p), "--store", url, "--until", "8"], "--until takes a UTC time as HH:MM"),
        ([str(p), "--store", url, "--scheduler", "tcp://127.0.0.1:1", "--executor", "local"], "drop --executor local"),
        ([str(p), "--store", url, "--cells", "q-*"], "--cells q-* matches no cell"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as e:
        main([str(p), "--stor", url])
    assert e.value.code == 2 and "unrecognized arguments: --stor" in capsys.readouterr().err
    assert not db.exists()


def test_list_reads_a_missing_store_as_empty_without_creating_it(tmp_path, capsys):
    db = tmp_path / "none.db"
    assert main([str(protocol(tmp_path, "p", TWO)), "--store", f"sqlite:///{db}", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("not started") == 3 + 1 and "report protocol digits-b60-i20bal-q20-" in out
    assert not db.exists()


def test_sqlite_is_refused_for_a_cluster_with_workers_elsewhere():
    here = {"tcp://127.0.0.1:40001": {}, "tcp://127.0.0.1:40002": {}}
    check_store_for_cluster(True, "sqlite:///g.db", "tcp://127.0.0.1:8786", here)
    check_store_for_cluster(False, "postgresql://al@db/al", "tcp://192.0.2.7:8786", {"tcp://192.0.2.8:1": {}})
    with pytest.raises(ConfigError, match=r"workers on 192\.0\.2\.7, 192\.0\.2\.8.*PostgreSQL store"):
        check_store_for_cluster(True, "sqlite:///g.db", "tcp://192.0.2.7:8786", {"tcp://192.0.2.8:1": {}})


# --- the claim of a cell's run -----------------------------------------------------------------------------------
@pytest.fixture
def claimed_elsewhere(tmp_path, monkeypatch):
    """A run claimed by a process on another host ("node-b": socket.gethostname is what the store's owner token
    reads), through the real Store; yields (url, run name, the holder's Store)."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    holder = Store(url)
    run_id = holder.open_run("r", {"dataset": "digits"}).run_id
    real = socket.gethostname
    monkeypatch.setattr(socket, "gethostname", lambda: "node-b")
    holder.claim(run_id)
    monkeypatch.setattr(socket, "gethostname", real)
    assert holder.run("r").owner.startswith("node-b:")
    yield url, run_id, holder
    holder.close()


def test_a_silent_holder_on_another_host_is_waited_for_then_taken_over(claimed_elsewhere):
    url, run_id, _ = claimed_elsewhere
    with Store(url) as store:
        t0 = time.perf_counter()
        lines = []
        assert acquire(store, run_id, "r", left_cluster=None, stale_after_s=1.5, poll_s=0.2, log=lines.append)
        waited = time.perf_counter() - t0
        assert 1.3 < waited < 10, waited
        assert store.run("r").owner.split(":")[0] == socket.gethostname()
        assert lines and "held by node-b:" in lines[0]


def test_a_holder_that_left_the_cluster_is_handed_over_at_once(claimed_elsewhere):
    url, run_id, holder = claimed_elsewhere
    owner = holder.run("r").owner
    with Store(url) as store:
        t0 = time.perf_counter()
        lines = []
        assert acquire(store, run_id, "r", left_cluster=lambda o: o == owner, poll_s=0.2, log=lines.append)
        assert time.perf_counter() - t0 < 1.0
        assert "took over the claim of node-b:" in lines[0]


def test_a_live_holder_is_waited_for_until_it_finishes_the_run(claimed_elsewhere):
    url, run_id, holder = claimed_elsewhere
    with Store(url) as store:
        stop = threading.Event()

        def beat_then_finish():
            while not stop.wait(0.2):
                holder.heartbeat(run_id)
            holder.set_status(run_id, "finished")

        t = threading.Thread(target=beat_then_finish)
        t.start()
        threading.Timer(2.0, stop.set).start()
        t0 = time.perf_counter()
        # stale_after_s 1: a holder beating every 0.2 s is alive, so the cell waits, then finds the run finished
        assert not acquire(store, run_id, "r", left_cluster=None, stale_after_s=1.0, poll_s=0.2)
        assert time.perf_counter() - t0 >= 1.9
        t.join()


# --- real grids on SQLite ----------------------------------------------------------------------------------------
def test_local_pool_runs_the_grid_and_a_resubmission_adds_nothing(tmp_path, capsys):
    p = protocol(tmp_path, "loc", [{"strategy": "entropy", "seeds": [0]}, {"strategy": "random", "seeds": [0]}])
    url = f"sqlite:///{tmp_path / 'g.db'}"
    argv = [str(p), "--store", url, "--workers", "2", "--logs", str(tmp_path / "logs")]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "2 of 2 cells finished" in cap.out and "round" not in cap.out + cap.err
    assert "local process pool, 2 workers, 1 torch thread(s) each" in cap.err
    log = (tmp_path / "logs" / "loc-entropy-seed0.log").read_text()
    assert "start on" in log and log.count(" round ") == 3 and "finished in" in log
    with Store(url) as s:
        before = table_counts(s), results(s)
        assert set(s.runs()["status"]) == {"finished"}
    # the same run made in this process by the loop alone, as al.bench makes it: identical, bit for bit
    from al.loop import Experiment

    alone = f"sqlite:///{tmp_path / 'alone.db'}"
    cell = grid_cells([p]).cells[0]
    Experiment(cell.experiment_config(), alone, name=cell.name).run()
    with Store(alone) as s:
        assert results(s)[cell.name] == before[1][cell.name]
    assert main(argv) == 0
    assert "2 of 2 cells finished (2 already before this command)" in capsys.readouterr().out
    with Store(url) as s:
        assert (table_counts(s), results(s)) == before


@pytest.mark.slow
def test_local_pool_retries_a_cell_whose_process_died_then_reports_killed_worker(tmp_path):
    """The pool's own KilledWorker: a cell that kills its process is retried on a fresh one, then fails; the
    others finish (a plain ProcessPoolExecutor would have failed every cell with BrokenProcessPool)."""
    p = protocol(
        tmp_path,
        "kill",
        [{"strategy": "random", "seeds": [0, 1]}],
        oracle="tests.grid_helpers:kills_its_process",
    )
    q = protocol(tmp_path, "ok", [{"strategy": "random", "seeds": [0]}])
    url = f"sqlite:///{tmp_path / 'g.db'}"
    grid = grid_cells([p, q], names=["kill-random-seed0", "ok-*"])
    pool = LocalPool(2, threads=1, allowed_failures=0)
    try:
        res = run_grid(grid.cells, CellOptions(url, log_dir=str(tmp_path / "logs")), pool)
    finally:
        pool.shutdown()
    assert res.status == {"kill-random-seed0": "killed", "ok-random-seed0": "finished"}
    assert "died 1 times" in res.message["kill-random-seed0"]
    with Store(url) as s:
        rec = s.run("kill-random-seed0")
        assert rec.status == "failed" and rec.message.startswith("KilledWorker:")


def test_local_cluster_on_sqlite_a_cell_that_raises_then_a_rerun_retries_only_it(tmp_path, capsys):
    """A Dask LocalCluster of 2 workers (one cluster for both passes: each start costs seconds here)."""
    pytest.importorskip("distributed")
    import psutil

    from al.grid.executors import dask_pool

    ok = protocol(tmp_path, "ok", [{"strategy": "entropy", "seeds": [0]}, {"strategy": "random", "seeds": [0]}])
    failing = "tests.grid_helpers:fails_while_marked"
    bad = protocol(tmp_path, "bad", [{"strategy": "random", "seeds": [0]}], oracle=failing)
    url = f"sqlite:///{tmp_path / 'g.db'}"
    logs = tmp_path / "logs"
    cells = grid_cells([ok, bad]).cells
    opts = CellOptions(url, log_dir=str(logs))
    with dask_pool(
        scheduler=None,
        workers=2,
        dashboard_address="127.0.0.1:0",
        scratch=str(tmp_path / "scratch"),
        allowed_failures=None,
        store_is_sqlite=True,
        shown_store=url,
    ) as pool:
        assert pool.description.startswith("Dask LocalCluster on 127.0.0.1, 2 workers")
        assert pool.capacity() == 2
        workers = pool.workers()
        assert all(a.startswith("tcp://127.0.0.1:") for a in workers)
        pids = list(pool.client.run(os.getpid).values())
        Path(FAIL_MARKER).write_text("fail")
        try:
            first = run_grid(cells, opts, pool)
        finally:
            os.unlink(FAIL_MARKER)
        assert first.status == {
            "ok-entropy-seed0": "finished",
            "ok-random-seed0": "finished",
            "bad-random-seed0": "failed",
        }
        assert "OracleError: the oracle 'tests.grid_helpers:fails_while_marked'" in first.message["bad-random-seed0"]
        with Store(url) as s:
            rec = s.run("bad-random-seed0")
            assert rec.status == "failed"
            assert "RuntimeError: the test oracle fails" in rec.message
            assert "Traceback (most recent call last)" in rec.message
            kept = {r: v for r, v in results(s).items() if r.startswith("ok-")}
            updated = {r: u for r, u in zip(s.runs()["run"], s.runs()["updated_at"], strict=True) if r != rec.name}
        assert "Traceback" in (logs / "bad-random-seed0.log").read_text()
        assert main([str(ok), str(bad), "--store", url, "--list"]) == 0
        listed = capsys.readouterr().out
        assert "bad-random-seed0 failed  1 rounds, 20 labels" in listed and "OracleError: the oracle" in listed
        # the marker is gone: the rerun runs only the failed cell, from its last completed round
        second = run_grid(cells, opts, pool)
        assert second.ok and second.finished_before == 2
        # nothing listens beyond loopback: the workers, the scheduler and its dashboard (in this process)
        for pid in [os.getpid(), *pids]:
            for c in psutil.Process(pid).net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    assert c.laddr.ip in ("127.0.0.1", "::1"), (pid, c)
    with Store(url) as s:
        assert {r: v for r, v in results(s).items() if r.startswith("ok-")} == kept
        now = {r: u for r, u in zip(s.runs()["run"], s.runs()["updated_at"], strict=True) if r in updated}
        assert now == updated
        assert s.run("bad-random-seed0").status == "finished"
        assert len(s.curves().query("run == 'bad-random-seed0'")) == 3
    assert (tmp_path / "scratch").is_dir()
