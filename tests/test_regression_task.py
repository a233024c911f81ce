"""Active learning for regression (``task="regression"``): runs end to end on the diabetes data and on a CSV table,
a run killed mid-way resumes to exactly the uninterrupted result, every bad input is a clear error before anything
is written, and the strategies declare their tasks. The store's schema 5 is tested in test_regression_store.py,
the report's RMSE table in test_regression_report.py.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_forked

from al.bench import main as bench
from al.data import load_dataset
from al.errors import ConfigError, DataError
from al.loop import Experiment, ExperimentConfig
from al.pool import from_table
from al.registry import STRATEGIES, check_strategy_task, strategies_for
from al.regression import TorchRegressor
from al.seeding import round_rng
from al.store import Store
from al.strategy import Context
from strategies import build_strategy
from strategies.bayesian import predictive_variance

FAST = dict(epochs=3, min_steps=20)


@pytest.fixture(scope="module")
def diabetes():
    return load_dataset("diabetes")


def regression_config(**kw) -> ExperimentConfig:
    base = dict(dataset="diabetes", task="regression", strategy="random", budget=40, init_size=20, query_size=10)
    return ExperimentConfig(**{**base, **FAST, **kw})


# --- end to end ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["random", "mc-variance", "coreset"])
def test_a_regression_run_on_diabetes_records_rmse_and_nll(diabetes, store_url, strategy):
    exp = Experiment(regression_config(strategy=strategy), store_url, dataset=diabetes)
    st = exp.run()
    assert st.status == "finished" and len(st.targets) == 40 and set(st.labels.values()) == {-1}
    assert all(st.targets[i] == diabetes.labels[i] for i in st.targets)  # the oracle answered the true targets
    c = exp.store.curves()
    assert c["n_labelled"].tolist() == [20, 30, 40] and c["accuracy"].isna().all()
    assert (c["rmse"] > 20).all() and (c["rmse"] < 200).all()  # the target's units: 25..346
    assert np.isfinite(c["nll"].astype(float)).all()
    assert exp.store.run(exp.name).config["task"] == "regression"


def test_classification_runs_record_no_task_so_stored_runs_resume_unchanged(digits, store_url):
    from conftest import fast_config

    exp = Experiment(fast_config(budget=40), store_url, dataset=digits)
    assert "task" not in exp.config_record()
    exp.run()
    assert exp.store.curves()["rmse"].isna().all()


def _write_tables(tmp_path: Path, *, bad_cell: str | None = None) -> tuple[Path, Path]:
    g = np.random.default_rng(0)

    def table(n: int) -> pd.DataFrame:
        x = g.normal(size=(n, 3))
        y = 2.0 * x[:, 0] - x[:, 1] ** 2 + 0.1 * g.normal(size=n)
        return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})

    pool, test = table(120), table(60)
    test["id"] = [f"t{i}" for i in range(60)]
    if bad_cell is not None:
        pool["y"] = pool["y"].astype(object)
        pool.loc[7, "y"] = bad_cell
    pool.to_csv(tmp_path / "pool.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    return tmp_path / "pool.csv", tmp_path / "test.csv"


def test_a_regression_run_on_a_csv_table_through_the_command_line(tmp_path, capsys):
    pool, test = _write_tables(tmp_path)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["--pool", str(pool), "--test", str(test), "--label-column", "y", "--id-column", "id", "--task"]
    args += ["regression", "--strategy", "mc-variance", "--budget", "30", "--init-size", "10", "--query-size", "10"]
    args += ["--epochs", "3", "--min-steps", "20", "--store", url, "--no-progress"]
    assert bench(args) == 0
    out = capsys.readouterr().out
    assert "rmse " in out and "test RMSE (lower is better) by number of labels" in out
    st = Store(url).state("pool-mc-variance-seed0")
    assert st.status == "finished" and len(st.targets) == 30
    keys = Store(url).sample_keys(st.run_id)
    assert all(keys[i].startswith("r") for i in st.targets)  # ids are the table's rows, keyed by its id column
    assert not (Path.cwd() / "al-checkpoints" / "pool-mc-variance-seed0").exists()  # no regression checkpoints


def test_al_export_writes_a_regression_runs_targets(diabetes, store_url, tmp_path):
    from al.export import main as export

    st = Experiment(regression_config(budget=30), store_url, dataset=diabetes).run()
    out = tmp_path / "labels.csv"
    assert export(["--store", store_url, "--run", st.name, "--labels", str(out)]) == 0
    got = pd.read_csv(out)
    assert list(got.columns) == ["sample_id", "key", "target", "round_idx", "oracle"] and len(got) == 30
    assert all(got["target"] == diabetes.labels[got["sample_id"]])


def test_a_table_with_some_targets_gives_them_as_round_0_to_a_python_oracle(tmp_path, store_url):
    pool, test = _write_tables(tmp_path)
    df = pd.read_csv(pool)
    truth = dict(zip(range(len(df)), df["y"], strict=True))
    df.loc[15:, "y"] = np.nan  # 15 rows come with their target; the oracle answers the rest
    p = from_table(df, label_column="y", id_column="id", test=test, task="regression")
    asked: list[int] = []

    def oracle(ids):
        asked.extend(int(i) for i in ids)
        return {int(i): float(truth[int(i)]) for i in ids}

    cfg = regression_config(dataset="pool", budget=35, oracle="mine")
    st = Experiment(cfg, store_url, dataset=p, oracle=oracle).run()
    assert sorted(i for i, r in st.label_round.items() if r == 0) == list(range(15))
    assert len(asked) == 20 and all(i >= 15 for i in asked)
    assert Store(store_url).targets(st.name).query("round_idx == 0")["oracle"].unique().tolist() == ["pool"]


# --- resume after a kill -------------------------------------------------------------------------------------------
KILLED = dict(dataset="synthetic-gap", strategy="mc-variance", budget=40, init_size=10, mc_samples=5)


def _run_forked(url: str, crash_at: str | None) -> int:
    """The run in a forked child with AL_CRASH_AT set there only: its exit status, or -signal when it was killed."""
    return run_forked(lambda: Experiment(regression_config(**KILLED), url).run(), crash_at)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_regression_run_killed_mid_way_resumes_to_the_uninterrupted_result(tmp_path):
    ref, killed = f"sqlite:///{tmp_path / 'ref.db'}", f"sqlite:///{tmp_path / 'killed.db'}"
    name = "synthetic-gap-mc-variance-seed0"
    Experiment(regression_config(**KILLED), ref).run()
    assert _run_forked(killed, "in-labels-commit:1") == -signal.SIGKILL  # the targets' transaction rolled back
    st = Store(killed).state(name)
    assert [r.state for r in st.rounds] == ["complete", "queried"] and len(st.targets) == 10
    assert _run_forked(killed, "after-train:2") == -signal.SIGKILL  # round 2 trained, its metrics never written
    st = Store(killed).state(name)
    assert [r.state for r in st.rounds] == ["complete", "complete", "labelled"] and len(st.targets) == 30
    assert _run_forked(killed, None) == 0
    a, b = Store(ref), Store(killed)
    cols = ["sample_id", "target", "round_idx"]
    assert a.targets(name)[cols].equals(b.targets(name)[cols])
    cols = ["round_idx", "rank", "sample_id"]
    assert a.queries(name)[cols].equals(b.queries(name)[cols])
    ca, cb = a.curves(), b.curves()
    np.testing.assert_array_equal(ca["rmse"], cb["rmse"])
    np.testing.assert_array_equal(ca["nll"].astype(float), cb["nll"].astype(float))


# --- bad input: a clear error, nothing written -----------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["entropy", "bald", "batchbald", "badge"])
def test_a_classification_strategy_on_a_regression_task_is_refused_naming_those_that_apply(
    diabetes, tmp_path, strategy
):
    path = tmp_path / "none.db"
    with pytest.raises(ConfigError) as e:
        Experiment(regression_config(strategy=strategy), f"sqlite:///{path}", dataset=diabetes)
    msg = str(e.value)
    assert f"strategy {strategy!r} does not apply to a regression task" in msg
    assert "strategies for a regression task: " in msg and all(s in msg for s in ("random", "coreset", "mc-variance"))
    assert not path.exists()


def test_the_command_line_refuses_it_with_exit_2_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "none.db"
    args = ["--dataset", "diabetes", "--task", "regression", "--strategy", "entropy", "--budget", "100"]
    code = bench([*args, "--store", f"sqlite:///{path}"])
    assert code == 2 and "does not apply to a regression task" in capsys.readouterr().err and not path.exists()


def test_a_regression_strategy_on_a_classification_task_is_refused(digits, tmp_path):
    from conftest import fast_config

    path = tmp_path / "none.db"
    with pytest.raises(ConfigError, match=r"'mc-variance' does not apply to a classification task.*entropy"):
        Experiment(fast_config(strategy="mc-variance"), f"sqlite:///{path}", dataset=digits)
    assert not path.exists()


def test_a_regression_dataset_without_task_regression_is_refused(diabetes, tmp_path):
    with pytest.raises(ConfigError, match="holds numeric targets .* pass --task regression"):
        Experiment(regression_config(task="classification"), f"sqlite:///{tmp_path / 'x.db'}", dataset=diabetes)


@pytest.fixture
def regrad_for_regression(monkeypatch):
    """REGrad for regression as a stand-in function that records how it is called (the real one lives in
    strategies/regrad/regression.py, maintained apart)."""
    import strategies.regrad.strategy as regrad

    calls: list[dict] = []

    def regression_regrad_scores(model, inputs, *, layer_alpha=0.0, sigma=0.5, seed=0, ids=None, rng=None):
        calls.append(dict(layer_alpha=layer_alpha, sigma=sigma, seed=seed, ids=ids, rng=rng))
        with torch.no_grad():
            return model(torch.as_tensor(inputs)).reshape(len(inputs)).abs().double().numpy()

    monkeypatch.setattr(regrad, "regression_scores_function", lambda: regression_regrad_scores)
    return calls


@pytest.mark.parametrize(
    "setting", [{"class_weighting": "root"}, {"top_k": 2}, {"class_weighting": "root", "top_k": 2}]
)
def test_classifier_regrad_settings_on_a_regression_task_are_refused_by_name(
    diabetes, tmp_path, regrad_for_regression, setting
):
    with pytest.raises(ConfigError) as e:
        Experiment(regression_config(strategy="regrad", strategy_kwargs=setting), f"sqlite:///{tmp_path / 'x.db'}")
    msg = str(e.value)
    assert all(k in msg for k in setting) and "classifiers only" in msg and "drop" in msg
    assert not (tmp_path / "x.db").exists()


def test_regrad_on_a_regression_task_calls_the_regression_function_with_the_settings_it_shares(
    diabetes, store_url, regrad_for_regression
):
    cfg = regression_config(strategy="regrad", strategy_kwargs={"layer_alpha": 2})
    st = Experiment(cfg, store_url, dataset=diabetes).run()
    assert st.status == "finished" and len(regrad_for_regression) == 2  # rounds 1 and 2 chose with it
    call = regrad_for_regression[0]
    assert call["layer_alpha"] == 2.0 and call["sigma"] == 0.5 and call["seed"] == 0  # changed / its own defaults
    assert call["ids"] is not None and len(call["ids"]) == diabetes.n_pool - 20 and call["rng"] is not None


def test_regrad_without_its_regression_function_refuses_a_regression_task_with_not_yet(diabetes, tmp_path, monkeypatch):
    import strategies.regrad.strategy as regrad

    monkeypatch.setattr(regrad, "regression_scores_function", lambda: None)
    with pytest.raises(ConfigError, match=r"'regrad' on a regression task: not yet: .*regression_regrad_scores"):
        Experiment(regression_config(strategy="regrad"), f"sqlite:///{tmp_path / 'x.db'}", dataset=diabetes)
    assert "regrad" not in strategies_for("regression") and "regrad" in strategies_for("classification")


def test_exgrad_is_a_class_weighting_and_applies_to_classification_only():
    with pytest.raises(ConfigError, match="'exgrad' does not apply to a regression task"):
        check_strategy_task("exgrad", "regression")


def test_a_target_column_that_is_not_numeric_is_refused_naming_the_cell(tmp_path, capsys):
    pool, test = _write_tables(tmp_path, bad_cell="high")
    with pytest.raises(DataError, match=r"column 'y', row 8: 'high' is not a number"):
        from_table(pool, label_column="y", id_column="id", test=test, task="regression")
    url = f"sqlite:///{tmp_path / 'none.db'}"
    code = bench(
        ["--pool", str(pool), "--label-column", "y", "--id-column", "id", "--task", "regression", "--store", url]
    )
    assert code == 2 and "is not a number" in capsys.readouterr().err and not (tmp_path / "none.db").exists()


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--init-balanced"], "has no classes"),
        (["--stop", "max-uncertainty"], "use --stop budget"),
        (["--oracle", "noisy:0.1"], "needs numbers"),
        (["--oracle", "csv", "--oracle-dir", "x"], "not supported yet"),
        (["--checkpoints", "{tmp}/ck"], "not supported yet"),
    ],
)
def test_what_a_regression_run_cannot_do_yet_is_refused_before_anything_is_written(tmp_path, capsys, flags, expected):
    url = f"sqlite:///{tmp_path / 'none.db'}"
    flags = [f.format(tmp=tmp_path) for f in flags]
    args = ["--dataset", "diabetes", "--task", "regression", "--strategy", "random", "--budget", "100"]
    args += ["--store", url, *flags]
    assert bench(args) == 2
    assert expected in capsys.readouterr().err and not (tmp_path / "none.db").exists()
    assert not (tmp_path / "ck").exists()


def test_a_regression_table_needs_its_target_column_and_no_classes(tmp_path):
    pool, _ = _write_tables(tmp_path)
    with pytest.raises(DataError, match="needs --label-column"):
        from_table(pool, id_column="id", task="regression")
    with pytest.raises(DataError, match="--classes names the classes"):
        from_table(pool, "a,b", label_column="y", task="regression")


# --- strategies and the learner ---------------------------------------------------------------------------------------
def test_strategies_declare_their_tasks():
    assert {"random", "coreset", "mc-variance"} <= set(strategies_for("regression"))
    for name in ("entropy", "margin", "least-confidence", "bald", "batchbald", "badge", "gradnorm", "exgrad"):
        assert STRATEGIES.get(name).tasks == frozenset({"classification"}), name
    assert STRATEGIES.get("mc-variance").tasks == frozenset({"regression"})


def test_predictive_variance_is_the_variance_over_passes_and_exactly_0_where_they_agree():
    mc = np.array([[1.0, 5.0, 0.1], [3.0, 5.0, 0.1], [2.0, 5.0, 0.1]])
    np.testing.assert_array_equal(predictive_variance(mc), [2.0 / 3.0, 0.0, 0.0])
    with pytest.raises(ConfigError, match=r"shape \(T, n\)"):
        predictive_variance(np.zeros(3))


@pytest.fixture(scope="module")
def regressor(diabetes):
    g = np.random.default_rng(0)
    order = g.permutation(diabetes.n_pool)
    labelled, cand = np.sort(order[:30]), np.sort(order[30:130])
    learner = TorchRegressor("mlp-regressor", 1, diabetes.input_shape, epochs=3, min_steps=30, seed=0, mc_samples=5)
    learner.fit(diabetes.train_x[labelled], diabetes.labels[labelled], seed=1)
    return learner, diabetes.train_x, labelled, cand


@pytest.mark.parametrize("name", strategies_for("regression"))
def test_regression_strategy_contract(name, regressor):
    """The shared contract (tests/test_contract.py) on a regression model: n unique candidate ids, the same for
    the same generator, the model left as found."""
    learner, x, labelled, cand = regressor

    def ctx() -> Context:
        return Context(
            cand,
            labelled,
            learner=learner,
            inputs_of=lambda ids: x[torch.from_numpy(ids)],
            mc_samples=5,
            rng_for=lambda purpose: round_rng(3, 1, purpose),
            n_classes=1,
            task="regression",
        )

    strategy = build_strategy(name)
    strategy.check_learner(learner)
    before = {k: v.clone() for k, v in learner.module_.state_dict().items()}
    a, b = strategy(ctx(), 10, np.random.default_rng(5)), strategy(ctx(), 10, np.random.default_rng(5))
    assert len(np.unique(a.ids)) == 10 and np.isin(a.ids, cand).all() and not np.isin(a.ids, labelled).any()
    np.testing.assert_array_equal(a.ids, b.ids)
    assert all(torch.equal(v, before[k]) for k, v in learner.module_.state_dict().items())
    assert not learner.module_.training


def test_the_regressor_trains_on_standardised_targets_and_predicts_in_their_units(diabetes):
    x, y = diabetes.train_x[:80], diabetes.labels[:80]
    m = TorchRegressor("mlp-regressor", 1, diabetes.input_shape, epochs=3, min_steps=60, mc_samples=5).fit(x, y, seed=3)
    assert m.y_mean_ == pytest.approx(y.mean()) and m.y_std_ == pytest.approx(y.std())
    pred = m.predict(diabetes.test_x)
    assert pred.shape == (len(diabetes.test_x),) and 25 < pred.mean() < 346
    r1, r2 = m.evaluate(diabetes.test_x, diabetes.test_y.numpy()), m.evaluate(diabetes.test_x, diabetes.test_y.numpy())
    assert r1 == r2 and set(r1) == {"rmse", "nll"}  # the MC passes behind the NLL are seeded by the fit
    assert m.mc_predict(diabetes.test_x, 4, seed=1).shape == (4, len(diabetes.test_x))
    early = TorchRegressor("mlp-regressor", 1, diabetes.input_shape, early_stopping=True, patience=2, max_epochs=6)
    early.fit(x, y, seed=3)
    assert 1 <= early.best_epoch_ <= early.epochs_run_ <= 6 and len(early.val_history_[0]) == 2
