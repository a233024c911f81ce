"""Schema 3 of the store: each sample id's key (and why a sample is excluded), named values per round, metrics
without a test set, and the upgrade of a schema-2 store.

The tests that take only ``store_url`` are the contract: tests/test_postgres.py runs them again on PostgreSQL.
"""

import hashlib
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from old_stores import store_package

from al.errors import StoreError
from al.store import SCHEMA_VERSION, Store, StoreUpgradedWarning

CFG = {"dataset": "my-photos", "strategy": "entropy", "seed": 1, "model": "mlp", "budget": 10}
KEYS = {0: "cats/001.png", 1: "cats/002.png", 2: "dogs/001.png", 3: "dogs/sub dir/ü.png"}


def _run(url: str) -> tuple[Store, int]:
    s = Store(url)
    return s, s.open_run("r", CFG).run_id


# --- sample keys --------------------------------------------------------------------------------------------------
def test_sample_keys_round_trip(store_url):
    s, run = _run(store_url)
    assert s.sample_keys(run) == {} and s.excluded_samples(run) == {}
    assert s.record_sample_keys(run, KEYS) == 4
    assert s.sample_keys(run) == KEYS
    assert s.record_sample_keys(run, KEYS) == 0  # a resumed run records its whole pool again: nothing changes
    assert s.record_sample_keys(run, {**KEYS, 7: "birds/001.png"}) == 1  # new files join under new ids
    assert s.sample_keys(run) == {**KEYS, 7: "birds/001.png"}
    other = s.open_run("other", {**CFG, "seed": 2}).run_id  # keys belong to one run: another may number them anew
    assert s.record_sample_keys(other, {0: "dogs/001.png"}) == 1 and s.sample_keys(other) == {0: "dogs/001.png"}
    s.close()


def test_conflicting_sample_keys_are_refused_and_nothing_is_written(store_url):
    s, run = _run(store_url)
    s.record_sample_keys(run, KEYS)
    with pytest.raises(
        StoreError, match=r"sample 1 is recorded as 'cats/002.png', not 'cats/999.png'.*never renumbered"
    ):
        s.record_sample_keys(run, {9: "new.png", 1: "cats/999.png"})
    with pytest.raises(StoreError, match=r"key 'dogs/001.png' is recorded as sample 2, not 5"):
        s.record_sample_keys(run, {5: "dogs/001.png"})
    with pytest.raises(StoreError, match=r"key 'a.png' is given to both sample 10 and sample 11"):
        s.record_sample_keys(run, {10: "a.png", 11: "a.png"})
    assert s.sample_keys(run) == KEYS  # the refused calls wrote nothing, not even their new ids
    for bad, msg in (({1.5: "x"}, "whole number"), ({12: ""}, "non-empty"), ({12: "x" * 1025}, "at most 1024")):
        with pytest.raises(StoreError, match=msg):
            s.record_sample_keys(run, bad)
    s.close()


def test_sample_keys_in_bulk(store_url):
    s, run = _run(store_url)
    keys = {i: f"class{i % 10}/img_{i:05d}.png" for i in range(60_000)}
    t = time.perf_counter()
    assert s.record_sample_keys(run, keys) == 60_000
    took = time.perf_counter() - t
    assert s.record_sample_keys(run, keys) == 0
    assert s.sample_keys(run) == keys
    if store_url.startswith("sqlite"):
        assert took < 2.0, f"60,000 keys took {took:.2f} s"
    s.close()


def test_excluded_samples(store_url):
    s, run = _run(store_url)
    s.record_sample_keys(run, KEYS)
    s.exclude_samples(run, {2: "unreadable: OSError: truncated file"})
    s.exclude_samples(run, {3: "unreadable: UnidentifiedImageError", 2: "unreadable: OSError: truncated file"})
    assert s.excluded_samples(run) == {
        2: "unreadable: OSError: truncated file",
        3: "unreadable: UnidentifiedImageError",
    }
    assert s.sample_keys(run) == KEYS  # an excluded sample keeps its id and key
    with pytest.raises(StoreError, match=r"cannot exclude samples \[8\]: their keys are not recorded"):
        s.exclude_samples(run, {0: "x", 8: "y"})
    assert 0 not in s.excluded_samples(run)
    with pytest.raises(StoreError, match="non-empty"):
        s.exclude_samples(run, {0: ""})
    s.close()


def test_claimed_runs_fence_the_new_writes(store_url):
    s, run = _run(store_url)
    s.claim(run)
    s.record_sample_keys(run, KEYS)
    s.record_round_values(run, 0, {"v": 1.0})
    thief = Store(store_url)
    thief._claims[run] = "elsewhere:1"  # as if another process had taken the run over since
    with thief._write() as t:
        from al.store._tables import Run

        t.get(Run, run).owner = "elsewhere:1"
    for write in (
        lambda: s.record_sample_keys(run, {9: "late.png"}),
        lambda: s.exclude_samples(run, {0: "x"}),
        lambda: s.record_round_values(run, 1, {"v": 0.5}),
    ):
        with pytest.raises(StoreError, match="taken over"):
            write()
    assert s.sample_keys(run) == KEYS and s.round_values(run) == {0: {"v": 1.0}}
    s.close()
    thief.close()


# --- round values -------------------------------------------------------------------------------------------------
def test_round_values_round_trip_and_readers(store_url):
    s, run = _run(store_url)
    other = s.open_run("other", {**CFG, "seed": 2}).run_id
    assert (
        s.round_values(run) == {}
        and s.round_values().empty
        and list(s.round_values())
        == [
            "run",
            "round_idx",
            "name",
            "value",
        ]
    )
    s.record_round_values(run, 0, {"stabilising-predictions": None, "stabilising-predictions:threshold": 0.99})
    s.record_round_values(run, 1, {"stabilising-predictions": np.float64(0.5)})
    s.record_round_values(other, 0, {"max-uncertainty": 0.25})
    assert s.round_values(run) == {
        0: {"stabilising-predictions": None, "stabilising-predictions:threshold": 0.99},
        1: {"stabilising-predictions": 0.5},
    }
    one = s.round_values("r")
    assert one["run"].tolist() == ["r"] * 3 and one["round_idx"].tolist() == [0, 0, 1]
    assert one["name"].tolist() == [
        "stabilising-predictions",
        "stabilising-predictions:threshold",
        "stabilising-predictions",
    ]
    assert np.isnan(one["value"].iloc[0]) and one["value"].iloc[1:].tolist() == [0.99, 0.5]
    every = s.round_values()
    assert every["run"].tolist() == ["r", "r", "r", "other"] and every["value"].iloc[-1] == 0.25
    s.close()


def test_round_values_are_written_once(store_url):
    s, run = _run(store_url)
    s.record_round_values(run, 3, {"kappa": 0.9, "none": None})
    s.record_round_values(run, 3, {"kappa": 0.9, "none": None})  # a resumed round writes them again: no-op
    with pytest.raises(StoreError, match=r"round 3 already has kappa = 0.9, not 0.8; .*never changed"):
        s.record_round_values(run, 3, {"new": 1.0, "kappa": 0.8})
    with pytest.raises(StoreError, match=r"already has none = None, not 1.0"):
        s.record_round_values(run, 3, {"none": 1.0})
    assert s.round_values(run) == {3: {"kappa": 0.9, "none": None}}  # the refused call's "new" was not written
    for bad, msg in (
        ({"x": float("nan")}, "finite number or None"),
        ({"x": float("inf")}, "finite number or None"),
        ({"x": True}, "finite number or None"),
        ({"x": "0.5"}, "finite number or None"),
        ({"": 1.0}, "1 to 64 characters"),
        ({"x" * 65: 1.0}, "1 to 64 characters"),
    ):
        with pytest.raises(StoreError, match=msg):
            s.record_round_values(run, 4, bad)
    s.close()


def test_metrics_without_a_test_set(store_url):
    """A pool without a test set records rounds without accuracy or NLL; readers give them as missing."""
    s, run = _run(store_url)
    s.record_query(run, 0, np.array([0, 1]), None)
    s.record_labels(run, 0, {0: 1, 1: 0}, "ground-truth")
    s.record_metrics(run, 0, n_labelled=2, train_seconds=0.5)
    rnd = s.state("r").rounds[0]
    assert rnd.state == "complete" and rnd.accuracy is None and rnd.nll is None and rnd.n_labelled == 2
    cur = s.curves()
    assert len(cur) == 1 and cur["accuracy"].isna().all()
    s.close()


def test_deleting_a_run_deletes_its_keys_and_values(store_url):
    s, run = _run(store_url)
    s.record_sample_keys(run, KEYS)
    s.record_round_values(run, 0, {"v": 1.0})
    with s._write() as w:
        w.execute(sa.text("DELETE FROM al_runs WHERE id = :i"), {"i": run})
    with s._read() as r:
        assert r.execute(sa.text("SELECT COUNT(*) FROM al_samples")).scalar() == 0
        assert r.execute(sa.text("SELECT COUNT(*) FROM al_round_values")).scalar() == 0
    s.close()


# --- upgrading a schema-2 store -----------------------------------------------------------------------------------
#: The last commit whose store wrote schema 2: the upgrade tests build their old stores with that very code.
V2_COMMIT = "31c2d22"


def _store_v2():
    """The schema-2 ``al.store`` package, loaded from git (skips if git cannot give it)."""
    return store_package(V2_COMMIT, 2)


def _write_v2_run(url: str) -> None:
    """A schema-2 store holding one run: round 0 complete, round 1 queried with one of its two labels."""
    old = _store_v2().Store(url)
    st = old.open_run("r", CFG, data_fingerprint="my-photos:4:abcd")
    old.record_query(st.run_id, 0, np.array([0, 2]), np.array([0.9, 0.5]), pool_scores=np.array([0.9, 0.5, 0.1]))
    old.record_labels(st.run_id, 0, {0: 0, 2: 1}, "ground-truth")
    old.record_metrics(st.run_id, 0, n_labelled=2, accuracy=0.5, nll=1.2, train_seconds=1.0)
    old.record_query(st.run_id, 1, np.array([1, 3]), np.array([0.8, 0.7]))
    old.record_labels(st.run_id, 1, {1: 1}, "ground-truth")
    old.close()


def _tables(url: str) -> set[str]:
    eng = sa.create_engine(Store(url, must_exist=True, upgrade=False).engine.url)
    try:
        return set(sa.inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_schema_2_store_is_upgraded_on_write(store_url):
    _write_v2_run(store_url)
    assert "al_samples" not in _tables(store_url)
    before = _store_v2().Store(store_url)
    curves, labels, queries, run = before.curves(), before.labels("r"), before.queries("r"), before.run("r")
    before.close()
    upgraded = "from schema 2 to 5 .*al_samples.*al_round_values.*al_guesses.*al_labels.target"
    with pytest.warns(StoreUpgradedWarning, match=upgraded) as caught:
        s = Store(store_url)
    assert s.schema_version == SCHEMA_VERSION == 5
    assert {"al_samples", "al_round_values"} <= _tables(store_url)
    sqlite_file = sa.engine.make_url(store_url).database if store_url.startswith("sqlite") else None
    if sqlite_file:  # a backup copy of the old file, named in the message, itself a schema-2 store
        backup = f"{sqlite_file}.v2.bak"
        assert backup in str(caught[0].message) and Path(backup).exists()
        assert _store_v2().Store(f"sqlite:///{backup}").labels("r").equals(labels)
    assert s.curves().drop(columns="rmse").equals(curves)  # the old code's curves have no rmse column
    assert s.labels("r").equals(labels) and s.queries("r").equals(queries)
    assert s.run("r").data_fingerprint == run.data_fingerprint == "my-photos:4:abcd"
    st = s.state("r")
    assert [(r.round_idx, r.state) for r in st.rounds] == [(0, "complete"), (1, "queried")]
    assert s.sample_keys(st.run_id) == {} and s.round_values(st.run_id) == {}
    # The run carries on, now with the new tables.
    assert s.record_sample_keys(st.run_id, KEYS) == 4
    s.record_round_values(st.run_id, 0, {"v": 0.5})
    assert s.record_labels(st.run_id, 1, {3: 0}, "ground-truth") == 0
    s.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # upgraded once: opening it again says nothing
        again = Store(store_url)
    assert again.sample_keys(st.run_id) == KEYS and again.round_values(st.run_id) == {0: {"v": 0.5}}
    again.close()


def test_reader_leaves_a_schema_2_store_as_it_is(tmp_path):
    """``Store(url, must_exist=True)`` (al.report) reads a schema-2 store without upgrading it: no keys, no values."""
    path = tmp_path / "old.db"
    _write_v2_run(f"sqlite:///{path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = Store(f"sqlite:///{path}", must_exist=True)
    assert s.schema_version == 2
    run = s.state("r").run_id
    assert s.sample_keys(run) == {} and s.excluded_samples(run) == {} and s.round_values(run) == {}
    assert s.round_values().empty and list(s.round_values("r")) == ["run", "round_idx", "name", "value"]
    with pytest.raises(StoreError, match="opened for reading only"):
        s.record_sample_keys(run, KEYS)
    s.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and not list(tmp_path.glob("*.bak"))
