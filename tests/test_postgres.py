"""The store's contract on a real PostgreSQL server, started by the tests on loopback (see tests/pg.py).

The contract tests are the ones of tests/test_store.py and tests/test_store_keys.py that take only
``store_url``: they run here unchanged with a fresh PostgreSQL database each, so a new contract test is picked up
without touching this file. Then a whole experiment, a crash inside a commit, concurrent writers, one claimant
per run, and the CLI.
"""

from __future__ import annotations

import inspect
import itertools
import os
import time

import numpy as np
import pytest
import test_store
import test_store_keys
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
    for module in (test_store, test_store_keys)
    for name, f in sorted(vars(module).items())
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


def _admin(pg_server, database: str, *statements: str) -> None:
    import psycopg2

    con = psycopg2.connect(host="127.0.0.1", port=pg_server.port, user="al", dbname=database)
    con.autocommit = True
    with con.cursor() as cur:
        for s in statements:
            cur.execute(s)
    con.close()


def test_password_is_never_shown_or_written(pg_server, tmp_path):
    """A URL with a password, through the real CLIs: the password is in no output, report file or stored row.
    (The test server trusts loopback, so the password is not checked; what matters is where it is shown.)"""
    import subprocess
    import sys
    from pathlib import Path

    import sqlalchemy as sa

    root = Path(__file__).resolve().parent.parent
    role, password = f"alpw{os.getpid()}_{next(_counter)}", "Pw-7f3kQzX9"
    _admin(
        pg_server, "postgres", f"CREATE ROLE {role} LOGIN PASSWORD '{password}'", f"CREATE DATABASE {role} OWNER {role}"
    )
    url = f"postgresql://{role}:{password}@127.0.0.1:{pg_server.port}/{role}"
    env = {**os.environ, "PYTHONPATH": str(root)}
    bench = ["-m", "al.bench", "--dataset", "digits", "--budget", "40", "--init-size", "20", "--query-size", "20"]
    bench += ["--epochs", "2", "--min-steps", "10", "--no-progress", "--store", url]
    outputs = []
    for args in (
        bench,
        bench,  # "already finished in <url>"
        ["3" if a == "2" else a for a in bench],  # --epochs 3: a changed config, refused
        ["-m", "al.report", "--store", url, "--out", str(tmp_path / "report")],
        ["-m", "al.report", "--store", url, "--dataset", "cifar10", "--out", str(tmp_path / "r2")],
        ["benchmarks/run_protocol.py", "--list", "--store", url, "benchmarks/protocols/mnist_default.json"],
    ):
        r = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=root, env=env, timeout=300)
        outputs.append((r.returncode, r.stdout + r.stderr))
    assert [rc for rc, _ in outputs] == [0, 0, 2, 0, 2, 0], outputs
    assert "already finished in postgresql" in outputs[1][1] and f"{role}:***@" in outputs[1][1]
    for _, text in outputs:
        assert password not in text, text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "report.md" for p in files)
    assert f"--store postgresql://{role}:***@" in (tmp_path / "report" / "report.md").read_text()
    for p in files:
        assert password.encode() not in p.read_bytes(), p
    eng = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    with eng.connect() as c:
        for t in ("al_meta", "al_runs", "al_rounds", "al_queries", "al_labels"):
            for row in c.exec_driver_sql(f"SELECT * FROM {t}"):
                assert password not in repr(tuple(row)), (t, row)
    eng.dispose()


def test_user_without_privileges_on_existing_tables(pg_server, pg_url):
    """Tables created by one user, opened by another that may not use them: a one-line StoreError naming the
    missing privileges and the GRANT that fixes them; running that GRANT makes the store usable."""
    import re

    import numpy as np

    from al.errors import StoreError
    from al.store import Store

    s = Store(pg_url)
    s.open_run("r", {"dataset": "digits"})
    s.close()
    database = pg_url.rsplit("/", 1)[1]
    role = f"alro{os.getpid()}_{next(_counter)}"
    _admin(pg_server, "postgres", f"CREATE ROLE {role} LOGIN")
    url = f"postgresql://{role}@127.0.0.1:{pg_server.port}/{database}"
    for must_exist in (False, True):
        with pytest.raises(StoreError) as e:
            Store(url, must_exist=must_exist)
        msg = str(e.value)
        assert "\n" not in msg and f"user {role!r} lacks SELECT" in msg and "GRANT" in msg, msg
    _admin(pg_server, database, *[f"GRANT SELECT ON {t} TO {role}" for t in ("al_meta", "al_runs", "al_rounds")])
    with pytest.raises(StoreError) as e:
        Store(url)
    msg = str(e.value)
    assert "lacks" in msg and "INSERT" in msg and "UPDATE" in msg and "al_queries" in msg, msg
    grants = re.findall(r"GRANT [^;]+;", msg)
    assert grants, msg
    _admin(pg_server, database, *grants)  # the fix the message gives
    w = Store(url)
    st = w.open_run("r2", {"dataset": "digits"})
    w.claim(st.run_id)
    w.record_query(st.run_id, 0, np.array([3, 1]), None)
    w.record_labels(st.run_id, 0, {3: 0, 1: 1}, "ground-truth")
    assert sorted(Store(url, must_exist=True).runs()["run"]) == ["r", "r2"]
