"""The store's contract on a real PostgreSQL server, started by the tests on loopback (see tests/pg.py).

The contract tests are the ones of tests/test_store.py that take only ``store_url``: they run here unchanged
with a fresh PostgreSQL database each, so a new contract test is picked up without touching this file. Then a
whole experiment, a crash inside a commit, concurrent writers, one claimant per run, and the CLI.
"""

from __future__ import annotations

import inspect
import itertools
import os
import time

import numpy as np
import pytest
import test_store
from pg import PgUnavailable, start_server

pytestmark = pytest.mark.postgres

_counter = itertools.count()


@pytest.fixture(scope="module")
def pg_server():
    try:
        server = start_server()
    except PgUnavailable as e:
        pytest.skip(f"no PostgreSQL server for the tests: {e}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.create_database(f"t{os.getpid()}_{next(_counter)}")


CONTRACT = [
    f
    for name, f in sorted(vars(test_store).items())
    if name.startswith("test_") and callable(f) and list(inspect.signature(f).parameters) == ["store_url"]
]


def test_contract_tests_were_found():
    assert len(CONTRACT) >= 4, [f.__name__ for f in CONTRACT]


@pytest.mark.parametrize("contract", CONTRACT, ids=lambda f: f.__name__)
def test_store_contract_on_postgres(contract, pg_url):
    if contract.__name__ == "test_sqlite_pragmas":
        pytest.skip("SQLite-only pragmas")
    contract(pg_url)


def test_newer_schema_refused_on_postgres(pg_url):
    import sqlalchemy as sa

    from al.errors import StoreError
    from al.store import SCHEMA_VERSION, Store

    Store(pg_url).close()
    eng = sa.create_engine(Store(pg_url).engine.url)
    with eng.begin() as c:
        c.exec_driver_sql(f"UPDATE al_meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    eng.dispose()
    with pytest.raises(StoreError, match="newer al"):
        Store(pg_url)


def test_experiment_with_a_crash_inside_a_commit_on_postgres(pg_url, digits, tmp_path):
    """A whole run on PostgreSQL, killed (SIGKILL) inside the labels transaction of round 1 and resumed:
    the same labels and accuracies as the same run on SQLite."""
    from conftest import fast_config
    from test_crash import run_forked

    from al.loop import Experiment
    from al.store import Store

    ref = f"sqlite:///{tmp_path / 'ref.db'}"
    Experiment(fast_config(budget=100), ref, dataset=digits).run()
    import signal

    assert run_forked(digits, pg_url, "in-labels-commit:1") == -signal.SIGKILL
    st = Store(pg_url).state("digits-entropy-seed0")
    assert [r.state for r in st.rounds] == ["complete", "queried"] and len(st.labels) == 20
    assert run_forked(digits, pg_url, None) == 0
    a, b = Store(pg_url), Store(ref)
    run = "digits-entropy-seed0"
    cols = ["sample_id", "round_idx", "label"]
    assert a.labels(run)[cols].equals(b.labels(run)[cols])
    np.testing.assert_allclose(a.curves()["accuracy"], b.curves()["accuracy"], rtol=0, atol=1e-12)


@pytest.mark.slow  # several CLI processes: ~40 s on 2 shared cores
def test_cli_killed_at_random_times_on_postgres(pg_url, digits, tmp_path):
    """The CLI on PostgreSQL, SIGKILLed at random times and resumed: the same run as on SQLite uninterrupted."""
    from conftest import fast_config
    from test_crash import kill_at_random_times

    from al.loop import Experiment
    from al.store import Store

    ref = f"sqlite:///{tmp_path / 'ref.db'}"
    t0 = time.perf_counter()
    Experiment(fast_config(budget=100), ref, dataset=digits).run()
    assert kill_at_random_times(pg_url, 100, n_kills=5, seed=3, run_seconds=time.perf_counter() - t0) >= 2
    a, b = Store(pg_url), Store(ref)
    run = "digits-entropy-seed0"
    cols = ["sample_id", "round_idx", "label"]
    assert a.labels(run)[cols].equals(b.labels(run)[cols])
    np.testing.assert_allclose(a.curves()["accuracy"], b.curves()["accuracy"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [4])
def test_processes_writing_different_runs_on_postgres(pg_url, tmp_path, n):
    from test_concurrency import check_rounds, launch

    rounds = 20
    check_rounds(pg_url, n, rounds, launch("rounds", pg_url, n, tmp_path / "barrier", "run-IDX", str(rounds)))


def test_same_run_claimed_by_four_processes_at_once_on_postgres(pg_url, tmp_path):
    from test_concurrency import check_one_claim, launch

    check_one_claim(launch("claim", pg_url, 4, tmp_path / "barrier", "the-run"))


def test_cli_with_postgres_store(pg_url, capsys):
    from al.bench import main
    from al.store import Store

    args = [
        "--dataset",
        "digits",
        "--budget",
        "60",
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
        pg_url,
    ]
    assert main(args) == 0
    assert Store(pg_url).curves()["n_labelled"].tolist() == [20, 40, 60]
    assert main(args) == 0
    assert "already finished" in capsys.readouterr().out


def test_unreachable_server_is_a_clear_error(capsys):
    from al.bench import main

    port = __import__("pg").free_port()  # nothing listens there
    assert main(["--dataset", "digits", "--budget", "40", "--store", f"postgresql://al:secret@127.0.0.1:{port}/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot connect to store postgresql+") and f"127.0.0.1:{port}/x" in err
    assert "Connection refused" in err and "Check that the server is running" in err
    assert "secret" not in err and "\n" not in err
