"""Schema 5: regression runs' numeric answers (``al_labels.target``) and test RMSE (``al_rounds.rmse``), and the
upgrade of a real schema-4 store, written by the schema-4 code itself (see ``old_stores.py``)."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from old_stores import store_package

from al.errors import StoreError
from al.store import SCHEMA_VERSION, Store, StoreUpgradedWarning

CFG = {"dataset": "digits", "strategy": "entropy", "seed": 0, "model": "mlp", "budget": 10}
REG = {"dataset": "diabetes", "task": "regression", "strategy": "random", "seed": 0, "model": "mlp-regressor"}
#: The last commit whose store wrote schema 4.
V4_COMMIT = "d8fe3ed"


def _regression_round(s: Store, name: str = "reg") -> int:
    run = s.open_run(name, REG).run_id
    s.record_query(run, 0, np.array([5, 7, 9]), None)
    assert s.record_targets(run, 0, {5: 151.0, 7: -2.25}, "ground-truth") == 1
    assert s.record_targets(run, 0, {9: np.float64(75.5)}, "ground-truth") == 0
    s.record_metrics(run, 0, n_labelled=3, nll=4.5, rmse=55.0, train_seconds=0.1)
    return run


def test_targets_and_rmse_round_trip(store_url):
    s = Store(store_url)
    run = _regression_round(s)
    st = s.state("reg")
    assert st.targets == {5: 151.0, 7: -2.25, 9: 75.5} and all(isinstance(v, float) for v in st.targets.values())
    assert st.labels == {5: -1, 7: -1, 9: -1}  # NO_CLASS: a regression sample's answer is its target
    assert st.rounds[0].rmse == 55.0 and st.rounds[0].accuracy is None and st.rounds[0].nll == 4.5
    t = s.targets("reg")
    assert t["sample_id"].tolist() == [5, 7, 9] and t["target"].tolist() == [151.0, -2.25, 75.5]
    c = s.curves()
    assert c["rmse"].tolist() == [55.0] and c["accuracy"].isna().all()
    assert s.labels("reg")["label"].tolist() == [-1, -1, -1]  # no class: the answer is the target
    # a classification run beside it keeps int labels and no rmse
    cls_run = s.open_run("cls", CFG).run_id
    s.record_query(cls_run, 0, np.array([0, 1]), None)
    s.record_labels(cls_run, 0, {0: 3, 1: 4}, "ground-truth")
    s.record_metrics(cls_run, 0, n_labelled=2, accuracy=0.5, nll=1.0)
    assert s.state("cls").labels == {0: 3, 1: 4} and s.state("cls").targets == {} and s.targets("cls").empty
    assert math.isnan(s.curves().set_index("run").loc["cls", "rmse"])
    assert run != cls_run


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.5", True, None])
def test_a_target_that_is_no_finite_number_is_refused_and_nothing_written(store_url, bad):
    s = Store(store_url)
    run = s.open_run("reg", REG).run_id
    s.record_query(run, 0, np.array([1, 2]), None)
    with pytest.raises(StoreError, match="sample 2: a regression target must be a finite number"):
        s.record_targets(run, 0, {1: 0.5, 2: bad}, "ground-truth")
    assert s.state("reg").targets == {} and s.pending(run, 0).tolist() == [1, 2]


def test_schema_4_store_is_upgraded_and_then_holds_regression_runs(tmp_path):
    path = tmp_path / "v4.db"
    url = f"sqlite:///{path}"
    old = store_package(V4_COMMIT, 4).Store(url)
    run = old.open_run("r", CFG).run_id
    old.record_query(run, 0, np.array([0, 1]), None)
    old.record_labels(run, 0, {0: 0, 1: 1}, "ground-truth")
    old.record_metrics(run, 0, n_labelled=2, accuracy=0.5, nll=1.0, train_seconds=0.1)
    old.record_query(run, 1, np.array([2, 3]), np.array([0.9, 0.8]), guesses={2: [(1, 0.7)]})
    curves, labels = old.curves(), old.labels("r")
    old.close()
    reader = Store(url, must_exist=True)  # a reader leaves it as it is, and reads it without the new columns
    assert reader.schema_version == 4 and reader.targets("r").empty
    assert reader.state("r").labels == {0: 0, 1: 1} and reader.state("r").targets == {}
    assert reader.state("r").rounds[0].rmse is None
    assert reader.curves().drop(columns="rmse").equals(curves) and reader.curves()["rmse"].isna().all()
    with pytest.raises(StoreError, match="opened for reading only"):
        reader.record_targets(run, 1, {2: 1.0}, "ground-truth")
    reader.close()
    with pytest.warns(StoreUpgradedWarning, match=r"from schema 4 to 5 \(al_labels.target and al_rounds.rmse"):
        s = Store(url)
    assert s.schema_version == SCHEMA_VERSION == 5 and Path(f"{path}.v4.bak").exists()
    # everything stored reads back the same, and the classification run carries on
    assert s.curves().drop(columns="rmse").equals(curves) and s.labels("r").equals(labels)
    assert s.guesses(run, 1) == {2: ((1, 0.7),)} and s.pending(run, 1).tolist() == [2, 3]
    assert s.record_labels(run, 1, {2: 1, 3: 0}, "ground-truth") == 0
    s.record_metrics(run, 1, n_labelled=4, accuracy=0.75, nll=0.9, train_seconds=0.1)
    # the upgraded store takes a regression run
    _regression_round(s)
    assert s.state("reg").targets == {5: 151.0, 7: -2.25, 9: 75.5}
    assert s.curves().set_index("run").loc["reg", "rmse"] == 55.0
    s.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # upgraded once: opening it again says nothing
        Store(url).close()
    # the backup is the schema-4 store as it was, readable by the code that wrote it
    backup = store_package(V4_COMMIT, 4).Store(f"sqlite:///{path}.v4.bak")
    assert backup.labels("r").equals(labels) and backup.pending(run, 1).tolist() == [2, 3]
    backup.close()
