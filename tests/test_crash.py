"""Crash and resume: a process running an experiment is killed with SIGKILL at each named point of a round
(and at random times), then resumed; the result must be exactly that of a run that was never killed.

SIGKILL runs no ``finally`` and no ``except``: the process dies as under the OOM killer. The named points are
``al.store.crash_point`` hooks, armed by the ``AL_CRASH_AT`` environment variable of the killed process only.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_config
from conftest import run_forked as run_forked_child

from al.loop import Experiment
from al.store import Store

RUN = "digits-entropy-seed0"
CFG = dict(budget=100)  # 5 rounds of 20 labels: 0 (random) .. 4


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('ref') / 'ref.db'}"
    t0 = time.perf_counter()
    Experiment(fast_config(**CFG), url, dataset=digits).run()
    REF_SECONDS.append(time.perf_counter() - t0)
    s = Store(url)
    return s.labels(RUN), s.curves(), s.queries(RUN)


#: how long the reference run's loop took in this process: the span over which random kills are drawn
REF_SECONDS: list[float] = []


def assert_same_as_reference(url: str, reference) -> None:
    labels, curves, queries = reference
    s = Store(url)
    got = s.labels(RUN)
    assert got[["sample_id", "round_idx", "label"]].equals(labels[["sample_id", "round_idx", "label"]])
    assert s.queries(RUN)[["round_idx", "rank", "sample_id"]].equals(queries[["round_idx", "rank", "sample_id"]])
    c = s.curves()
    assert c["n_labelled"].tolist() == curves["n_labelled"].tolist()
    np.testing.assert_allclose(c["accuracy"], curves["accuracy"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(c["nll"], curves["nll"], rtol=1e-9)


def integrity_ok(path: Path) -> None:
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()


def run_forked(digits, url: str, crash_at: str | None) -> int:
    """The experiment in a forked child with AL_CRASH_AT set there only: its exit status, or -signal."""
    return run_forked_child(lambda: Experiment(fast_config(**CFG), url, dataset=digits).run(), crash_at)


# (crash point, what the store must hold afterwards: round states, number of labels)
CHAIN = [
    ("in-query-commit:0", [], 0),  # the query's transaction was rolled back: as if never started
    ("after-query:1", ["complete", "queried"], 20),
    ("in-labels-commit:1", ["complete", "queried"], 20),  # labels rolled back, query kept
    ("after-labels:2", ["complete", "complete", "labelled"], 60),
    ("after-train:2", ["complete", "complete", "labelled"], 60),  # trained, killed before the metrics
    ("in-metrics-commit:3", ["complete"] * 3 + ["labelled"], 80),  # metrics rolled back, labels kept
    ("after-metrics:3", ["complete"] * 4, 80),
]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_killed_at_every_named_point_then_resumed_equals_uninterrupted(digits, tmp_path, reference):
    path = tmp_path / "s.db"
    url = f"sqlite:///{path}"
    queries_seen: dict[int, list[int]] = {}
    for point, states, n_labels in CHAIN:
        assert run_forked(digits, url, point) == -signal.SIGKILL, point
        integrity_ok(path)
        s = Store(url)
        st = s.state(RUN)  # the run row itself was committed before the first round began
        assert [r.state for r in st.rounds] == states, point
        assert len(st.labels) == n_labels, point
        for r, grp in s.queries(RUN).groupby("round_idx"):  # a stored query is never recomputed on resume
            ids = grp["sample_id"].tolist()
            assert queries_seen.setdefault(int(r), ids) == ids, f"round {r} query changed after {point}"
        s.close()
    assert run_forked(digits, url, None) == 0
    integrity_ok(path)
    assert Store(url).state(RUN).status == "finished"
    assert_same_as_reference(url, reference)


def cli(url: str, budget: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "al.bench",
        "--dataset",
        "digits",
        "--strategy",
        "entropy",
        "--budget",
        str(budget),
        "--init-size",
        "20",
        "--query-size",
        "20",
        "--epochs",
        "5",
        "--min-steps",
        "30",
        "--seed",
        "0",
        "--no-progress",
        "--store",
        url,
    ]


def cli_env() -> dict[str, str]:
    # One thread, as the in-process reference (tests/conftest.py), so that the float sums are done in the same order.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def kill_at_random_times(url: str, budget: int, n_kills: int, seed: int, run_seconds: float = 1.5) -> int:
    """Start the CLI, SIGKILL it after a random delay, repeat n_kills times, then let it finish.

    The delay, counted from when the process is past its imports, is drawn uniformly over ``run_seconds`` (about
    how long the run's loop takes here, so that kills spread over its rounds on a fast or a slow machine).
    Returns how many kills landed while the process was still running."""
    rng = np.random.default_rng(seed)
    sqlite = url.startswith("sqlite:///")
    path = Path(url.removeprefix("sqlite:///"))
    landed = 0

    def started() -> bool:  # past its imports: the store exists (SQLite) or holds the run (PostgreSQL)
        if sqlite:
            return path.exists()
        s = Store(url)
        try:
            return len(s.runs()) > 0
        finally:
            s.close()

    for _ in range(n_kills):
        p = subprocess.Popen(cli(url, budget), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        while not started() and p.poll() is None and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, run_seconds)))  # then a random part of a run
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            landed += 1
        p.wait()
        p.stderr.close()
        if sqlite and path.exists():
            integrity_ok(path)
    r = subprocess.run(cli(url, budget), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    if sqlite:
        integrity_ok(path)
    return landed


def test_cli_killed_at_random_times_then_resumed_equals_uninterrupted(tmp_path, reference):
    url = f"sqlite:///{tmp_path / 's.db'}"
    landed = kill_at_random_times(url, 100, n_kills=2, seed=1, run_seconds=REF_SECONDS[-1])
    assert landed >= 1  # at least one kill hit a running process
    assert_same_as_reference(url, reference)


@pytest.mark.slow
def test_cli_killed_many_times(tmp_path, reference):
    url = f"sqlite:///{tmp_path / 's.db'}"
    landed = kill_at_random_times(url, 100, n_kills=10, seed=2, run_seconds=REF_SECONDS[-1])
    assert landed >= 5
    assert_same_as_reference(url, reference)
