"""The store's contract on SQLite: round trip, state machine, resume, config check, schema version."""
import sqlite3

import numpy as np
import pytest
import sqlalchemy as sa

from al.errors import ConfigMismatchError, StoreError
from al.store import SCHEMA_VERSION, Store, score_summary

CFG = {"dataset": "digits", "strategy": "entropy", "seed": 1, "model": "mlp", "budget": 10}


def test_round_trip(store_url):
    s = Store(store_url)
    st = s.open_run("r", CFG)
    assert st.status == "running" and st.labels == {} and st.rounds == []
    s.record_query(st.run_id, 0, np.array([5, 2, 9]), np.array([0.9, 0.5, 0.1]),
                   pool_scores=np.array([0.9, 0.5, 0.1, 0.0]), select_seconds=0.25)
    assert s.pending(st.run_id, 0).tolist() == [5, 2, 9]
    assert s.record_labels(st.run_id, 0, {2: 1}, "ground-truth") == 2
    assert s.pending(st.run_id, 0).tolist() == [5, 9]
    assert s.record_labels(st.run_id, 0, {5: 0, 9: 3}, "ground-truth") == 0
    s.record_metrics(st.run_id, 0, n_labelled=3, accuracy=0.5, nll=1.2, train_seconds=1.0, eval_seconds=0.1,
                     store_seconds=0.01)
    s.close()
    # a fresh process sees the same
    s2 = Store(store_url)
    st2 = s2.state("r")
    assert st2.labels == {5: 0, 2: 1, 9: 3}
    assert st2.rounds[0]["state"] == "complete" and st2.rounds[0]["select_seconds"] == 0.25
    c = s2.curves()
    for col in ["run", "strategy", "dataset", "seed", "round_idx", "n_labelled", "accuracy"]:
        assert col in c.columns
    row = c.iloc[0]
    assert (row["run"], row["strategy"], row["dataset"], row["seed"], row["n_labelled"]) == \
        ("r", "entropy", "digits", 1, 3)
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


@pytest.mark.parametrize("make,msg", [
    (lambda p: p.write_bytes(b"this is not a database at all" * 10), "not an SQLite database"),
    (lambda p: None, "does not exist"),
])
def test_unusable_store_file(tmp_path, make, msg):
    path = tmp_path / "s.db"
    make(path)
    before = path.read_bytes() if path.exists() else None
    url = f"sqlite:///{path}" if before is not None else f"sqlite:///{tmp_path / 'missing' / 's.db'}"
    with pytest.raises(StoreError, match=msg):
        Store(url)
    if before is not None:
        assert path.read_bytes() == before  # never replaced


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
