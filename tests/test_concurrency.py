"""Several processes on one store at once: no "database is locked", no lost or duplicated row, one writer per run.

The store-level workers are processes forked from the test process (or this file run as a script, which loads
``al.store`` without ``al/__init__`` and its torch import), so that they start at once and their writes really
overlap; each waits at a barrier (a file) until all are ready. tests/test_postgres.py runs the same workers
against PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IDS_PER_ROUND = 5


def _store_module():
    """``al.store`` loaded with a bare ``al`` package: no torch import, a fraction of a second."""
    import importlib
    import types

    if "al" not in sys.modules:
        pkg = types.ModuleType("al")
        pkg.__path__ = [str(ROOT / "al")]
        sys.modules["al"] = pkg
    return importlib.import_module("al.store")


def _wait_for(go: Path, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not go.exists():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"barrier {go} never opened")
        time.sleep(0.01)


def worker_rounds(url: str, run: str, rounds: int, barrier: str, idx: int) -> None:
    """Write ``rounds`` complete rounds of run ``run``: query, labels in two parts, a read, metrics."""
    import numpy as np

    store = _store_module()
    s = store.Store(url)
    st = s.open_run(run, {"dataset": "digits", "strategy": "entropy", "seed": idx, "model": "mlp"})
    s.claim(st.run_id)
    Path(barrier, f"ready-{idx}").touch()
    _wait_for(Path(barrier, "go"))
    t0 = time.perf_counter()
    for r in range(rounds):
        ids = np.arange(r * IDS_PER_ROUND, (r + 1) * IDS_PER_ROUND)
        s.record_query(st.run_id, r, ids, np.linspace(1.0, 0.0, IDS_PER_ROUND), pool_scores=np.ones(10))
        pending = s.pending(st.run_id, r)
        s.record_labels(st.run_id, r, {int(pending[0]): r % 10}, "worker")
        left = s.record_labels(st.run_id, r, {int(i): (r + int(i)) % 10 for i in pending[1:]}, "worker")
        assert left == 0
        assert len(s.state(run).labels) == (r + 1) * IDS_PER_ROUND
        s.record_metrics(st.run_id, r, n_labelled=(r + 1) * IDS_PER_ROUND, accuracy=r / rounds, nll=1.0)
        s.curves()  # a reader among the writers
    s.set_status(st.run_id, "finished")
    print(json.dumps({"worker": idx, "seconds": time.perf_counter() - t0}))


def worker_claim(url: str, run: str, barrier: str, idx: int) -> None:
    """Claim one run at the same instant as the other workers; stay alive so that the claim stays valid."""
    store = _store_module()
    s = store.Store(url)
    st = s.open_run(run, {"dataset": "digits", "strategy": "entropy", "seed": 0, "model": "mlp"})
    Path(barrier, f"ready-{idx}").touch()
    _wait_for(Path(barrier, "go"))
    try:
        s.claim(st.run_id)
        print("claimed", flush=True)
        claimed = True
    except store.StoreError as e:
        print(f"refused: {e}", flush=True)
        claimed = False
    Path(barrier, f"tried-{idx}").touch()
    if claimed:  # stay alive (a dead claimant may be taken over) until every worker has tried
        t0 = time.monotonic()
        while (
            len(list(Path(barrier).glob("tried-*"))) < len(list(Path(barrier).glob("ready-*")))
            and time.monotonic() - t0 < 60
        ):
            time.sleep(0.01)


WORKERS = {
    "rounds": lambda url, run, rounds, barrier, idx: worker_rounds(
        url, run.replace("IDX", str(idx)), int(rounds), barrier, idx
    ),
    "claim": lambda url, run, barrier, idx: worker_claim(url, run, barrier, idx),
}


def launch(kind: str, url: str, n: int, barrier: Path, *extra: str) -> list[subprocess.CompletedProcess]:
    """Start n worker processes, open the barrier once all are ready, wait for all; returns their results.

    Workers are forked from this process (al is already imported, so they start at once and really overlap);
    ``python tests/test_concurrency.py <kind> ...`` runs the same worker as a fresh interpreter."""
    if not hasattr(os, "fork"):
        pytest.skip("the concurrency workers are forked; this platform has no os.fork")
    barrier.mkdir(parents=True, exist_ok=True)
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            code = 1
            try:
                with open(barrier / f"out-{i}", "w") as out, open(barrier / f"err-{i}", "w") as err:
                    sys.stdout, sys.stderr = out, err
                    try:
                        WORKERS[kind](url, *extra, str(barrier), i)
                        code = 0
                    except BaseException:  # noqa: BLE001
                        import traceback

                        traceback.print_exc(file=err)
                    out.flush()
                    err.flush()
            finally:
                os._exit(code)
        pids.append(pid)
    t0 = time.monotonic()
    while sum(1 for i in range(n) if (barrier / f"ready-{i}").exists()) < n and time.monotonic() - t0 < 120:
        time.sleep(0.005)
    (barrier / "go").touch()
    out = []
    for i, pid in enumerate(pids):
        _, status = os.waitpid(pid, 0)
        rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        out.append(
            subprocess.CompletedProcess(
                [kind, url, i], rc, (barrier / f"out-{i}").read_text(), (barrier / f"err-{i}").read_text()
            )
        )
    return out


def check_rounds(url: str, n: int, rounds: int, results: list[subprocess.CompletedProcess]) -> None:
    """Every worker succeeded without a lock error, and the store holds exactly what each wrote."""
    for r in results:
        assert r.returncode == 0 and "locked" not in r.stderr, r.stderr[-3000:]
    store = _store_module()
    s = store.Store(url)
    runs = s.runs()
    assert sorted(runs["run"]) == sorted(f"run-{i}" for i in range(n))
    assert set(runs["status"]) == {"finished"}
    curves = s.curves()
    for i in range(n):
        c = curves[curves["run"] == f"run-{i}"]
        assert c["round_idx"].tolist() == list(range(rounds))
        assert c["n_labelled"].tolist() == [(r + 1) * IDS_PER_ROUND for r in range(rounds)]
        lab = s.labels(f"run-{i}")
        assert len(lab) == rounds * IDS_PER_ROUND and lab["sample_id"].is_unique
        expected = {r * IDS_PER_ROUND + k: r for r in range(rounds) for k in range(IDS_PER_ROUND)}
        assert dict(zip(lab["sample_id"], lab["round_idx"], strict=True)) == expected
        q = s.queries(f"run-{i}")
        assert len(q) == rounds * IDS_PER_ROUND and q["sample_id"].is_unique
    s.close()


def check_one_claim(results: list[subprocess.CompletedProcess]) -> None:
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    outs = [r.stdout.strip() for r in results]
    assert sum(o == "claimed" for o in outs) == 1, outs
    assert all("being written by another process" in o for o in outs if o != "claimed"), outs


@pytest.mark.parametrize("n", [2, 4])
def test_processes_writing_different_runs_into_one_sqlite_file(tmp_path, n):
    url = f"sqlite:///{tmp_path / 's.db'}"
    rounds = 20
    results = launch("rounds", url, n, tmp_path / "barrier", "run-IDX", str(rounds))
    check_rounds(url, n, rounds, results)
    import sqlite3

    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    con.close()


def test_same_run_claimed_by_four_processes_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    check_one_claim(launch("claim", url, 4, tmp_path / "barrier", "the-run"))


def test_same_run_started_twice_at_once(tmp_path, digits):
    """Two processes start the same run at the same instant: one writes it, the other refuses before writing
    anything; the store holds one copy, identical to a single run."""
    from conftest import fast_config

    from al.errors import StoreError
    from al.loop import Experiment
    from al.store import Store

    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    url = f"sqlite:///{tmp_path / 's.db'}"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    pids = []
    for i in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                exp = Experiment(fast_config(), url, dataset=digits)
                (barrier / f"ready-{i}").touch()
                _wait_for(barrier / "go")
                try:
                    exp.run()
                    code = 0
                except StoreError as e:
                    code = 3 if "being written by another process" in str(e) else 1
            finally:
                os._exit(code)
        pids.append(pid)
    t0 = time.monotonic()
    while not all((barrier / f"ready-{i}").exists() for i in range(2)) and time.monotonic() - t0 < 60:
        time.sleep(0.005)
    (barrier / "go").touch()
    codes = sorted(os.WEXITSTATUS(os.waitpid(pid, 0)[1]) for pid in pids)
    # 3: refused. [0, 0] happens only if the second started after the first finished (it then found it finished).
    assert codes in ([0, 3], [0, 0]), codes
    ref = f"sqlite:///{tmp_path / 'ref.db'}"
    Experiment(fast_config(), ref, dataset=digits).run()
    a, b = Store(url), Store(ref)
    run = "digits-entropy-seed0"
    assert len(a.runs()) == 1 and a.state(run).status == "finished"
    cols = ["sample_id", "round_idx", "label"]
    assert a.labels(run)[cols].equals(b.labels(run)[cols])
    assert a.curves()["accuracy"].tolist() == b.curves()["accuracy"].tolist()
    assert a.curves()["round_idx"].tolist() == [0, 1, 2, 3]


@pytest.mark.slow  # two full CLI processes: ~15 s on 2 shared cores
def test_same_cli_run_started_twice_at_once(tmp_path, digits):
    """Two `python -m al.bench` with the same settings at the same time: one runs it, the other refuses (or,
    if it came second, finds it finished); the store holds one copy, identical to a single run."""
    from conftest import fast_config

    from al.loop import Experiment
    from al.store import Store

    url = f"sqlite:///{tmp_path / 's.db'}"
    cmd = [
        sys.executable,
        "-m",
        "al.bench",
        "--dataset",
        "digits",
        "--budget",
        "80",
        "--init-size",
        "20",
        "--query-size",
        "20",
        "--epochs",
        "5",
        "--min-steps",
        "30",
        "--no-progress",
        "--store",
        url,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(rc for _, _, rc in results)
    assert codes in ([0, 0], [0, 1]), results
    for out, err, rc in results:
        if rc == 1:
            assert "is being written by another process" in err
        if rc == 0 and "already finished" not in out:
            assert "finished in" in out
    ref = f"sqlite:///{tmp_path / 'ref.db'}"
    Experiment(fast_config(), ref, dataset=digits).run()
    a, b = Store(url), Store(ref)
    run = "digits-entropy-seed0"
    assert len(a.runs()) == 1 and a.state(run).status == "finished"
    assert a.labels(run)[["sample_id", "round_idx", "label"]].equals(b.labels(run)[["sample_id", "round_idx", "label"]])
    assert a.curves()["accuracy"].tolist() == b.curves()["accuracy"].tolist()


def test_a_process_whose_claim_was_taken_over_stops_writing(tmp_path):
    """A claimant that looked dead (say, a host paused for minutes) and was taken over must not write again:
    its next transition fails and its status update leaves the new owner's run alone."""
    import sqlite3

    import numpy as np

    from al.errors import StoreError
    from al.store import Store

    path = tmp_path / "s.db"
    old = Store(f"sqlite:///{path}")
    st = old.open_run("r", {"seed": 0})
    old.claim(st.run_id)
    old.record_query(st.run_id, 0, np.array([1, 2]), None)
    con = sqlite3.connect(path)  # another host takes the run over
    con.execute("UPDATE al_runs SET owner = 'otherhost:4242', status = 'running'")
    con.commit()
    con.close()
    for write in (lambda: old.record_labels(st.run_id, 0, {1: 0, 2: 1}, "x"), lambda: old.heartbeat(st.run_id)):
        with pytest.raises(StoreError, match="was taken over by otherhost:4242"):
            write()
    old.set_status(st.run_id, "stopped", "the old owner gives up")
    new = Store(f"sqlite:///{path}")
    runs = new.runs()
    assert runs["status"].tolist() == ["running"] and runs["message"].isna().all()
    assert new.state("r").labels == {} and new.pending(st.run_id, 0).tolist() == [1, 2]
    # an unclaimed Store (direct API use) is not fenced
    assert new.record_labels(st.run_id, 0, {1: 0, 2: 1}, "x") == 0


def test_heartbeat_thread_beats_during_a_run_and_stops_after(digits, tmp_path):
    """The claimant's heartbeat is written from a second thread while the loop writes from the first: no lock
    error, the run is unchanged, and the thread stops with the run."""
    import threading

    from conftest import fast_config

    from al.loop import Experiment
    from al.store import Store

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    beats = []
    real = store.heartbeat
    store.heartbeat = lambda run_id: (beats.append(time.monotonic()), real(run_id))
    exp = Experiment(fast_config(budget=100), store, dataset=digits)
    exp.heartbeat_s = 0.01
    assert exp.run().status == "finished"
    assert len(beats) >= 3
    time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name.startswith("al-heartbeat")]
    n = len(beats)
    time.sleep(0.1)
    assert len(beats) == n


@pytest.mark.slow  # four full CLI runs: ~30 s on 2 shared cores
def test_cli_runs_in_parallel_same_seed_same_result(tmp_path):
    """Four CLI processes on one SQLite file; two share a seed (under different run names) and must agree
    exactly: the same labelled set per round and the same metrics, computed in two processes."""
    from al.store import Store

    url = f"sqlite:///{tmp_path / 's.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    base = [
        sys.executable,
        "-m",
        "al.bench",
        "--dataset",
        "digits",
        "--budget",
        "80",
        "--init-size",
        "20",
        "--query-size",
        "20",
        "--epochs",
        "5",
        "--min-steps",
        "30",
        "--no-progress",
        "--store",
        url,
    ]
    runs = [("a", 0), ("b", 0), ("c", 1), ("d", 2)]
    procs = [
        subprocess.Popen(
            base + ["--seed", str(seed), "--run-name", name],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, seed in runs
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "locked" not in err, err[-3000:]
    s = Store(url)
    c = s.curves()
    for name, _ in runs:
        assert c[c["run"] == name]["n_labelled"].tolist() == [20, 40, 60, 80]
        lab = s.labels(name)
        assert len(lab) == 80 and lab["sample_id"].is_unique
    cols = ["sample_id", "round_idx", "label"]
    assert s.labels("a")[cols].equals(s.labels("b")[cols])
    assert c[c["run"] == "a"]["accuracy"].tolist() == c[c["run"] == "b"]["accuracy"].tolist()
    assert c[c["run"] == "a"]["nll"].tolist() == c[c["run"] == "b"]["nll"].tolist()
    assert not s.labels("a")[cols].equals(s.labels("c")[cols])


if __name__ == "__main__":
    kind, url, *rest = sys.argv[1:]
    if kind == "rounds":
        run, rounds, barrier, idx = rest
        worker_rounds(url, run.replace("IDX", idx), int(rounds), barrier, int(idx))
    elif kind == "claim":
        run, barrier, idx = rest
        worker_claim(url, run, barrier, int(idx))
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
