"""The promised exit code of a real ``python -m al.bench`` process, every time (issue 12 item 1).

Only a subprocess shows these faults: they happen during interpreter shutdown, which an in-process ``main()``
call never reaches. Each process runs round 0 only (digits, no training before the first labels), so its cost is
mostly the import of torch; they run a few at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from al.store import Store

ORACLES = '''
import threading


def half(labels, n_classes):
    """Answers the first half of each query, as a person who labels part of a batch and stops."""
    def label(ids):
        return {int(i): int(labels[i]) for i in ids[: len(ids) // 2]}
    return label


def busy_torch(labels, n_classes):
    """Never answers: keeps computing with torch (native code that releases the GIL), as a hung model would."""
    import torch

    def label(ids):
        a = torch.randn(300, 300)
        while True:
            a = torch.tanh(a @ a)
    return label


def busy_python(labels, n_classes):
    def label(ids):
        x = 0
        while True:
            x += 1
    return label


def blocked(labels, n_classes):
    """Never answers: waits on a lock for ever, as a labelling service that never replies would."""
    def label(ids):
        threading.Event().wait()
    return label
'''

REPO = Path(__file__).resolve().parents[1]
QUERY = ["--budget", "40", "--init-size", "20", "--query-size", "10", "--epochs", "2", "--min-steps", "10"]


def bench(tmp_path: Path, run: str, *extra: str) -> subprocess.CompletedProcess:
    """One al.bench process on the digits dataset, its own run name, the shared store of ``tmp_path``."""
    cmd = [sys.executable, "-m", "al.bench", "--dataset", "digits", *QUERY, "--run-name", run, "--no-progress"]
    cmd += ["--store", f"sqlite:///{tmp_path / 'runs.db'}", *extra]
    # The oracles' module, then this checkout's al (not whichever al is installed: the process runs in tmp_path).
    path = [str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def run_all(tmp_path: Path, jobs: list[tuple[str, list[str]]], parallel: int = 2) -> list[subprocess.CompletedProcess]:
    (tmp_path / "exitmod.py").write_text(ORACLES)
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda job: bench(tmp_path, job[0], *job[1]), jobs))


def csv_jobs(tmp_path: Path, n: int, prefix: str = "c") -> list[tuple[str, list[str]]]:
    """``n`` CSV-oracle runs, each with its own --oracle-dir."""
    return [(f"{prefix}{k}", ["--oracle", "csv", "--oracle-dir", str(tmp_path / f"{prefix}{k}")]) for k in range(n)]


def half_fill(tmp_path: Path, jobs: list[tuple[str, list[str]]]) -> None:
    """Answer the first half of round 0 in the odd-numbered runs' answers files, with the true labels."""
    from al.data import load_dataset

    y = load_dataset("digits").train_y
    for k, (_run, args) in enumerate(jobs):
        if k % 2:
            folder = Path(args[-1])
            ids = [int(line.split(",")[0]) for line in (folder / "queries-round-0.csv").read_text().splitlines()[1:]]
            with open(folder / "answers-round-0.csv", "a") as f:
                f.write("".join(f"{i},{int(y[i])}\n" for i in ids[: len(ids) // 2]))


def assert_all_exit(results: list[subprocess.CompletedProcess], code: int) -> None:
    codes = [r.returncode for r in results]
    assert codes == [code] * len(results), (codes, [r.stderr[-600:] for r in results if r.returncode != code])


def check_csv_waiting(tmp_path: Path, n: int) -> None:
    """``n`` CSV runs with no answers file, then the odd-numbered half of them again with half an answers file:
    every process exits 3 and the store holds what was answered."""
    jobs = csv_jobs(tmp_path, n)
    first = run_all(tmp_path, jobs)  # no answers file before: all 20 awaited
    assert_all_exit(first, 3)
    assert all("20 of 20 queried samples still await a label" in r.stderr for r in first)
    half_fill(tmp_path, jobs)
    odd = [j for k, j in enumerate(jobs) if k % 2]
    second = run_all(tmp_path, odd)  # half an answers file: 10 awaited
    assert_all_exit(second, 3)
    assert all("waiting: round 0: 10 of 20 queried samples still await a label" in r.stderr for r in second)
    s = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    for k, (run, _) in enumerate(jobs):
        st = s.state(run)
        assert st.status == "waiting" and len(st.labels) == (10 if k % 2 else 0)


def test_csv_oracle_waiting_exits_3_every_time(tmp_path):
    """Four CSV-oracle runs with no answers file, then two of them with half an answers file: all six processes
    exit 3 (tests/test_cli.py does the same ten times for a Python oracle). The counts the issue asks for are in
    the slow tests below: about 10 s of CPU per process makes them minutes on two cores."""
    check_csv_waiting(tmp_path, 4)


@pytest.mark.slow
def test_csv_oracle_waiting_exits_3_twenty_times(tmp_path):
    """Issue 12 item 1 as asked: 20 runs of the CSV oracle's waiting case, 30 processes, all exit 3."""
    check_csv_waiting(tmp_path, 20)


@pytest.mark.slow
def test_python_oracle_waiting_exits_3_twenty_times(tmp_path):
    """Issue 12 item 1 as asked: 20 processes with a Python oracle answering half of each query, all exit 3."""
    results = run_all(tmp_path, [(f"h{k}", ["--oracle", "exitmod:half"]) for k in range(20)])
    assert_all_exit(results, 3)
    assert all("waiting: round 0: 10 of 20 queried samples still await a label" in r.stderr for r in results)


@pytest.mark.parametrize(
    "kind,n",
    [
        ("busy_torch", 2),  # the case that aborted
        pytest.param("busy_python", 1, marks=pytest.mark.slow),
        pytest.param("blocked", 1, marks=pytest.mark.slow),
    ],
)
def test_hung_oracle_with_timeout_exits_1_not_abort(tmp_path, kind, n):
    """A hung oracle under --oracle-timeout stops the run with exit code 1 and one line of error, every time.

    Before: the timed-out call was left running in a daemon thread; one inside torch code when the interpreter
    shut down was ended by pthread_exit, and the process aborted ("terminate called without an active
    exception", exit code 134) three times out of three. A busy or blocked oracle (slow tests) did not abort."""
    jobs = [(f"{kind}{k}", ["--oracle", f"exitmod:{kind}", "--oracle-timeout", "0.5"]) for k in range(n)]
    results = run_all(tmp_path, jobs)
    assert_all_exit(results, 1)
    for r in results:
        err = r.stderr.strip()
        assert err.startswith("error: the oracle") and "gave no answer within 0.5s on round 0" in err, err
        assert "\n" not in err and "terminate called" not in err and "Exception in thread" not in err
    s = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    for run, _ in jobs:
        st = s.state(run)
        assert st.status == "stopped" and st.last_round.state == "queried" and st.labels == {}
