"""The store's contract on SQLite: round trip, state machine, resume, config check, schema version and upgrades."""

import hashlib
import importlib.util
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from al.errors import ConfigMismatchError, StoreError
from al.store import SCHEMA_VERSION, Store, StoreUpgradedWarning, score_summary

CFG = {"dataset": "digits", "strategy": "entropy", "seed": 1, "model": "mlp", "budget": 10}


def test_round_trip(store_url):
    s = Store(store_url)
    st = s.open_run("r", CFG)
    assert st.status == "running" and st.labels == {} and st.rounds == ()
    s.record_query(
        st.run_id,
        0,
        np.array([5, 2, 9]),
        np.array([0.9, 0.5, 0.1]),
        pool_scores=np.array([0.9, 0.5, 0.1, 0.0]),
        select_seconds=0.25,
    )
    assert s.pending(st.run_id, 0).tolist() == [5, 2, 9]
    assert s.record_labels(st.run_id, 0, {2: 1}, "ground-truth") == 2
    assert s.pending(st.run_id, 0).tolist() == [5, 9]
    assert s.record_labels(st.run_id, 0, {5: 0, 9: 3}, "ground-truth") == 0
    s.record_metrics(
        st.run_id, 0, n_labelled=3, accuracy=0.5, nll=1.2, train_seconds=1.0, eval_seconds=0.1, store_seconds=0.01
    )
    s.close()
    # a fresh process sees the same
    s2 = Store(store_url)
    st2 = s2.state("r")
    assert st2.labels == {5: 0, 2: 1, 9: 3}
    assert st2.rounds[0].state == "complete" and st2.rounds[0].select_seconds == 0.25
    c = s2.curves()
    for col in ["run", "strategy", "dataset", "seed", "round_idx", "n_labelled", "accuracy"]:
        assert col in c.columns
    row = c.iloc[0]
    assert (row["run"], row["strategy"], row["dataset"], row["seed"], row["n_labelled"]) == (
        "r",
        "entropy",
        "digits",
        1,
        3,
    )
    assert row["score_max"] == 0.9 and row["score_min"] == 0.0 and row["n_scored"] == 4
    q = s2.queries("r")
    assert q["sample_id"].tolist() == [5, 2, 9] and q["rank"].tolist() == [0, 1, 2]
    assert q["score"].tolist() == [0.9, 0.5, 0.1]


def test_state_machine_order_enforced(store_url):
    s = Store(store_url)
    st = s.open_run("r", CFG)
    with pytest.raises(StoreError, match="not waiting for labels"):
        s.record_labels(st.run_id, 0, {1: 1}, "x")
    s.record_query(st.run_id, 0, np.array([1, 2]), None)
    with pytest.raises(StoreError, match="not labelled yet"):
        s.record_metrics(st.run_id, 0, n_labelled=2, accuracy=1, nll=0)
    with pytest.raises(StoreError, match="still 'queried'"):
        s.record_query(st.run_id, 1, np.array([3]), None)
    with pytest.raises(StoreError, match="not pending"):
        s.record_labels(st.run_id, 0, {7: 1}, "x")
    s.record_labels(st.run_id, 0, {1: 1, 2: 0}, "x")
    with pytest.raises(StoreError, match="not waiting"):
        s.record_labels(st.run_id, 0, {1: 1}, "x")


def test_schema_refuses_duplicate_label_and_query(store_url):
    s = Store(store_url)
    st = s.open_run("r", CFG)
    s.record_query(st.run_id, 0, np.array([1, 2]), None)
    s.record_labels(st.run_id, 0, {1: 1, 2: 0}, "x")
    s.record_metrics(st.run_id, 0, n_labelled=2, accuracy=1, nll=0)
    with pytest.raises(sa.exc.IntegrityError):
        s.record_query(st.run_id, 1, np.array([2]), None)  # already queried in round 0


def test_changed_config_refused_same_config_resumes(store_url):
    s = Store(store_url)
    a = s.open_run("r", CFG)
    assert s.open_run("r", dict(CFG)).run_id == a.run_id
    with pytest.raises(ConfigMismatchError, match="budget: stored 10, now 20"):
        s.open_run("r", {**CFG, "budget": 20})


def test_schema_version_checked(tmp_path):
    path = tmp_path / "s.db"
    Store(f"sqlite:///{path}").close()
    con = sqlite3.connect(path)
    con.execute("UPDATE al_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer al"):
        Store(f"sqlite:///{path}")


def test_sqlite_pragmas(store_url):
    s = Store(store_url)
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


@pytest.mark.parametrize(
    "make,msg",
    [
        (lambda p: p.write_bytes(b"this is not a database at all" * 10), "not an SQLite database"),
        (lambda p: None, "does not exist"),
    ],
)
def test_unusable_store_file(tmp_path, make, msg):
    path = tmp_path / "s.db"
    make(path)
    before = path.read_bytes() if path.exists() else None
    url = f"sqlite:///{path}" if before is not None else f"sqlite:///{tmp_path / 'missing' / 's.db'}"
    with pytest.raises(StoreError, match=msg):
        Store(url)
    if before is not None:
        assert path.read_bytes() == before  # never replaced


_HOLDER = """
import sys
from al.store import Store
first = Store(sys.argv[1])  # the loop's store: its pooled connection keeps its locks on the file
with first.engine.connect() as c:
    c.exec_driver_sql("SELECT count(*) FROM al_meta").all()
Store(sys.argv[1])  # a second store in the same process, as the web oracle opens beside the loop's
print("ready", flush=True)
sys.stdin.readline()
with first.engine.begin() as c:  # the first store still writes, and the write lands in the file
    c.exec_driver_sql("INSERT INTO al_meta (key, value) VALUES ('held', 'yes')")
first.close()
"""


def test_a_second_store_in_one_process_leaves_the_first_ones_locks(tmp_path):
    # Opening a store used to read the file's header with open()/close(), and closing any descriptor of a file
    # drops all of the process's POSIX locks on it: another process closing its last connection then took the
    # store for unused and deleted the WAL and shared-memory files under the first store (a "disk I/O error"
    # seen by a resumed bench, or writes lost to an unlinked WAL).
    path = tmp_path / "s.db"
    Store(f"sqlite:///{path}").close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, f"sqlite:///{path}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "ready"
        other = sqlite3.connect(path)  # another process (this one) reads and closes its only connection
        other.execute("SELECT count(*) FROM al_meta").fetchall()
        other.close()
        assert (tmp_path / "s.db-wal").exists() and (tmp_path / "s.db-shm").exists()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM al_meta WHERE key = 'held'").fetchall() == [("yes",)]
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    con.close()


def test_bad_url():
    with pytest.raises(StoreError, match="cannot parse store URL"):
        Store("not a url")


def test_score_summary():
    s = score_summary(np.array([1.0, 2.0, 3.0, np.nan]))
    assert s["mean"] == 2.0 and s["median"] == 2.0 and s["min"] == 1.0 and s["max"] == 3.0
    assert score_summary(np.array([]))["mean"] is None


def test_setting_added_later_keeps_old_runs_resumable_only_at_its_old_value(store_url):
    s = Store(store_url)
    old = {**CFG, "strategy_params": {"sigma": 0.5}}  # recorded before the strategy had "perturb"
    a = s.open_run("r", old)
    added = {"strategy_params": {"perturb": "input"}}
    now = {**CFG, "strategy_params": {"sigma": 0.5, "perturb": "input"}}
    assert s.open_run("r", now, absent_means=added).run_id == a.run_id
    with pytest.raises(ConfigMismatchError, match="strategy_params"):
        s.open_run("r", now)  # without the declaration the new key is a change
    with pytest.raises(ConfigMismatchError, match="'perturb': 'input'.*'perturb': 'params'"):
        s.open_run("r", {**CFG, "strategy_params": {"sigma": 0.5, "perturb": "params"}}, absent_means=added)
    with pytest.raises(ConfigMismatchError, match="'sigma': 0.5.*'sigma': 0.2"):
        s.open_run("r", {**CFG, "strategy_params": {"sigma": 0.2, "perturb": "input"}}, absent_means=added)
    assert s.state("r").config == old  # the stored record is left as written


# --- schema migrations ------------------------------------------------------------------------------------------
#: The last commit whose store wrote schema 1 (al/store.py, one module then): upgrade tests build their old
#: stores with that very code rather than with a hand-written imitation of its tables.
V1_COMMIT = "f2b2850"
ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "benchmarks" / "results" / "protocols.sqlite"  # a real schema-1 store, committed with results


def _store_v1():
    """The schema-1 ``al.store`` module, loaded from git as ``al._store_v1`` (skips if git cannot give it)."""
    if "al._store_v1" in sys.modules:
        return sys.modules["al._store_v1"]
    out = subprocess.run(["git", "-C", str(ROOT), "show", f"{V1_COMMIT}:al/store.py"], capture_output=True)
    if out.returncode != 0:
        pytest.skip(f"the schema-1 store code ({V1_COMMIT}:al/store.py) is not in this checkout's git history")
    path = Path(tempfile.mkdtemp()) / "store_v1.py"
    path.write_bytes(out.stdout)
    spec = importlib.util.spec_from_file_location("al._store_v1", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["al._store_v1"] = mod
    spec.loader.exec_module(mod)
    assert mod.SCHEMA_VERSION == 1
    return mod


def _write_v1_run(url: str) -> None:
    """A schema-1 store holding one run: round 0 complete, round 1 queried with one of its two labels."""
    old = _store_v1().Store(url)
    st = old.open_run("r", CFG)
    old.record_query(
        st.run_id,
        0,
        np.array([5, 2, 9]),
        np.array([0.9, 0.5, 0.1]),
        pool_scores=np.array([0.9, 0.5, 0.1, 0.0]),
        select_seconds=0.25,
    )
    old.record_labels(st.run_id, 0, {5: 0, 2: 1, 9: 3}, "ground-truth")
    old.record_metrics(st.run_id, 0, n_labelled=3, accuracy=0.5, nll=1.2, train_seconds=1.0)
    old.record_query(st.run_id, 1, np.array([7, 4]), np.array([0.8, 0.7]))
    old.record_labels(st.run_id, 1, {7: 2}, "ground-truth")
    old.close()


def _schema_row(url: str) -> str:
    eng = sa.create_engine(Store(url, must_exist=True, upgrade=False).engine.url)
    try:
        with eng.connect() as c:
            return c.exec_driver_sql("SELECT value FROM al_meta WHERE key = 'schema_version'").scalar()
    finally:
        eng.dispose()


def test_schema_1_store_is_upgraded_in_place(store_url):
    _write_v1_run(store_url)
    before = _store_v1().Store(store_url)
    curves, labels, queries = before.curves(), before.labels("r"), before.queries("r")
    before.close()
    upgraded = "from schema 1 to 5 .*data_fingerprint.*al_samples.*al_guesses.*al_labels.target"
    with pytest.warns(StoreUpgradedWarning, match=upgraded) as caught:
        s = Store(store_url)
    assert s.schema_version == SCHEMA_VERSION == 5 and _schema_row(store_url) == "5"
    sqlite_file = sa.engine.make_url(store_url).database if store_url.startswith("sqlite") else None
    if sqlite_file:  # SQLite: a backup copy of the old file, named in the message, itself a schema-1 store
        backup = f"{sqlite_file}.v1.bak"
        assert backup in str(caught[0].message) and Path(backup).exists()
        assert _store_v1().Store(f"sqlite:///{backup}").labels("r").equals(labels)
    # Everything stored reads back the same, and the run carries on where it stopped.
    # (the old code's curves have no rmse column: schema 5 added it)
    assert s.curves().drop(columns="rmse").equals(curves) and s.labels("r").equals(labels)
    assert s.queries("r").equals(queries)
    st = s.state("r")
    assert [(r.round_idx, r.state) for r in st.rounds] == [(0, "complete"), (1, "queried")]
    assert st.run.data_fingerprint is None and s.pending(st.run_id, 1).tolist() == [4]
    assert s.record_labels(st.run_id, 1, {4: 1}, "ground-truth") == 0
    s.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # upgraded once: opening it again says nothing
        Store(store_url).close()


def test_data_fingerprint_is_part_of_a_runs_identity(store_url):
    s = Store(store_url)
    a = s.open_run("r", CFG)
    assert a.run.data_fingerprint is None
    fp = "digits:1797:1x8x8:ab12"
    assert s.open_run("r", CFG, data_fingerprint=fp).run.data_fingerprint == fp  # a run from before schema 2
    assert s.open_run("r", CFG).run_id == a.run_id  # a caller that does not know the fingerprint still resumes
    with pytest.raises(ConfigMismatchError, match="recorded on other data"):
        s.open_run("r", CFG, data_fingerprint="mnist:60000:1x28x28:cd34")


def test_reader_leaves_an_older_store_as_it_is(tmp_path):
    """``Store(url, must_exist=True)`` (al.report, the notebook) reads a schema-1 store without upgrading it."""
    path = tmp_path / "old.db"
    _write_v1_run(f"sqlite:///{path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = Store(f"sqlite:///{path}", must_exist=True)
    assert s.schema_version == 1 and s.state("r").labels == {5: 0, 2: 1, 9: 3, 7: 2}
    assert s.run("r").data_fingerprint is None and len(s.curves()) == 1
    with pytest.raises(StoreError, match="opened for reading only.*Store\\(url\\) to upgrade"):
        s.set_status(s.state("r").run_id, "stopped")
    s.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and not list(tmp_path.glob("*.bak"))


def test_committed_results_read_unchanged_and_upgrade_identically(tmp_path):
    """The committed benchmark store (schema 1) is read without a byte changed; a copy of it upgrades with every
    stored result identical."""
    if not SNAPSHOT.exists():
        pytest.skip(f"{SNAPSHOT} is not in this checkout")
    digest = hashlib.sha256(SNAPSHOT.read_bytes()).hexdigest()
    reader = Store(f"sqlite:///{SNAPSHOT}", must_exist=True)
    curves, runs = reader.curves(), reader.runs()
    some = runs["run"].iloc[[0, -1]].tolist()
    frames = {r: (reader.labels(r), reader.queries(r), reader.state(r)) for r in some}
    reader.close()
    assert hashlib.sha256(SNAPSHOT.read_bytes()).hexdigest() == digest
    copy = tmp_path / "protocols.sqlite"
    shutil.copyfile(SNAPSHOT, copy)
    with pytest.warns(StoreUpgradedWarning, match=r"protocols\.sqlite\.v1\.bak"):
        s = Store(f"sqlite:///{copy}")
    assert s.curves().equals(curves) and s.runs().equals(runs)
    for r, (labels, queries, st) in frames.items():
        assert s.labels(r).equals(labels) and s.queries(r).equals(queries)
        new = s.state(r)
        assert new.labels == st.labels and new.rounds == st.rounds and new.run.config == st.run.config


def test_upgrade_is_all_or_nothing(tmp_path):
    """A failing step rolls back the steps before it; a process killed inside the upgrade's commit leaves the old
    schema, which the next open upgrades."""
    from al.store import migrations

    url = f"sqlite:///{tmp_path / 's.db'}"
    _write_v1_run(url)

    def boom(conn):
        conn.execute(sa.text("SELECT no_such_column FROM al_runs"))

    broken = SCHEMA_VERSION + 1
    steps = (*migrations.STEPS, migrations.Step(broken, "a broken step", boom, additive=True))
    s = Store(url, upgrade=False)
    with pytest.raises(StoreError, match=f"could not upgrade .* to schema {broken}.*Nothing was changed; a copy"):
        migrations.upgrade_store(s._writer, shown=url, sqlite_file=str(tmp_path / "s.db"), steps=steps)
    s.close()
    assert _schema_row(url) == "1"
    con = sqlite3.connect(tmp_path / "s.db")
    assert "data_fingerprint" not in [c[1] for c in con.execute("PRAGMA table_info(al_runs)")]
    con.close()
    code = "import sys; from al.store import Store; Store(sys.argv[1])"
    out = subprocess.run(
        [sys.executable, "-c", code, url],
        env={**os.environ, "AL_CRASH_AT": "in-upgrade-commit"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert _schema_row(url) == "1"
    with pytest.warns(StoreUpgradedWarning):
        assert Store(url).state("r").labels == {5: 0, 2: 1, 9: 3, 7: 2}
    assert _schema_row(url) == str(SCHEMA_VERSION)
