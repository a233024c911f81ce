"""The ``regrad`` strategy's regression-only settings (target, variance_head, noise_var, output_weighting, metric,
prior_precision): each reaches ``regression_regrad_scores`` (the strategy's scores equal a direct call, and differ
from the call without that setting), they are refused by name on a classification task, a run recorded before them
keeps its record and its report name, and ``metric="kfac-laplace"`` in a run fits its posterior to the round's
labelled inputs: the scores the run records are those of a direct call on the same round's model.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from al.bench import main as bench
from al.config import config_record
from al.data import load_dataset
from al.errors import ConfigError, ConfigMismatchError, IncompatibleStrategyError
from al.loop import Experiment, ExperimentConfig
from al.registry import check_strategy_task
from al.report import variant_labels
from al.store import Store
from al.strategy import NEEDS, Context, top_n
from strategies import build_strategy
from strategies.regrad import ExGrad, REGrad, RegressionREGradSettings, regression_regrad_scores
from strategies.regrad.settings import PREVIOUS_DEFAULTS
from strategies.regrad.strategy import REGRESSOR_DEFAULTS, REGRESSOR_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(epochs=3, min_steps=20)

#: REGrad's params() at its defaults as every run recorded before the regression-only settings existed.
OLD_DEFAULT = {
    "class_weighting": "predicted",
    "layer_alpha": -10.0,
    "n_perturbations": 0,
    "sigma": 0.5,
    "aggregate": "mean-norm",
    "combine": "linear",
    "top_k": None,
    "seed": 0,
    "batch_size": 256,
    "last_layer_only": False,
    "perturb": "input",
}
#: The same record at the defaults since issue 17 (root class weighting, uniform layers).
CURRENT_DEFAULT = {**OLD_DEFAULT, "class_weighting": "root", "layer_alpha": 0.0}


# ------------------------------------------------------------------------------------------------ test models
class MeanAndLogVar(nn.Module):
    """A trunk with a mean head and a log-variance head, returned as one (N, 2D) tensor [mean | log_var]."""

    def __init__(self, d_out: int = 2) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 8)
        self.mean = nn.Linear(8, d_out)
        self.log_var = nn.Linear(8, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.trunk(x))
        return torch.cat([self.mean(h), self.log_var(h)], 1)


def mlp() -> nn.Module:  # the shape of mlp-regressor: ReLU layers, dropout, one output
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))


def two_heads() -> nn.Module:
    torch.manual_seed(1)
    return MeanAndLogVar()


MODELS = {"mlp": mlp, "two-heads": two_heads}
X = torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
LABELLED = np.arange(0, 60, 3)  # 20 labelled rows: the reference of kfac-laplace
CANDIDATES = np.setdiff1d(np.arange(60), LABELLED)


def strategy_scores(model: nn.Module, **settings) -> np.ndarray:
    """Every candidate's score as REGrad's select computes it on a regression round (through a Context)."""
    ctx = Context(
        CANDIDATES,
        LABELLED,
        learner=SimpleNamespace(network=model),  # type: ignore[arg-type]  # only .network is read
        inputs_of=lambda ids: X[torch.from_numpy(ids)],
        task="regression",
    )
    sel = REGrad(**settings).select(ctx, 5, np.random.default_rng(0))
    assert sel.pool_scores is not None
    return sel.pool_scores


def direct_scores(model: nn.Module, **settings) -> np.ndarray:
    reference = X[LABELLED] if settings.get("metric") == "kfac-laplace" else None
    return regression_regrad_scores(model, X[CANDIDATES], reference=reference, ids=CANDIDATES, **settings)


# ------------------------------------------------------------------------------------------------ the settings reach
# (model, the settings, the same without the setting under test): the scores must equal a direct call with the
# settings and differ from one without the setting
CASES = {
    "target": (
        "two-heads",
        {"variance_head": "log-var-half", "target": "gaussian-nll"},
        {"variance_head": "log-var-half"},
    ),
    "variance_head": ("two-heads", {"variance_head": "log-var-half"}, {}),
    "noise_var": ("mlp", {"target": "gaussian-nll", "noise_var": 4.0}, {"target": "gaussian-nll"}),
    "output_weighting": (
        "two-heads",
        {"variance_head": "log-var-half", "output_weighting": "variance"},
        {"variance_head": "log-var-half"},
    ),
    "metric": ("mlp", {"metric": "kfac-laplace"}, {}),
    "prior_precision": ("mlp", {"metric": "kfac-laplace", "prior_precision": 0.1}, {"metric": "kfac-laplace"}),
    "with shared settings": (
        "mlp",
        {"metric": "kfac-laplace", "target": "gaussian-nll", "layer_alpha": 2.0, "combine": "squared"},
        {"layer_alpha": 2.0, "combine": "squared"},
    ),
}


def test_every_regression_only_setting_is_a_case():
    assert set(REGRESSOR_SETTINGS) <= set(CASES) and REGRESSOR_SETTINGS == set(REGRESSOR_DEFAULTS)
    assert set(REGRESSOR_SETTINGS) <= set(REGrad.settings_spec) and "labelled_inputs" in NEEDS


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_regression_setting_reaches_the_function(case):
    name, settings, without = CASES[case]
    model = MODELS[name]()
    got = strategy_scores(model, **settings)
    np.testing.assert_array_equal(got, direct_scores(model, **settings))
    assert not np.allclose(got, direct_scores(model, **without), rtol=1e-3)


def test_the_strategy_reads_its_settings_back_as_given_and_normalised():
    s = REGrad(metric="kfac-laplace", prior_precision=1, noise_var=2, layer_alpha=3)
    assert (s.metric, s.prior_precision, s.noise_var) == ("kfac-laplace", 1.0, 2.0)
    assert type(s.prior_precision) is float and type(s.noise_var) is float
    # what a regression round scores with: the shared settings where changed, else the regression family's own
    assert s.for_regression == RegressionREGradSettings(metric="kfac-laplace", noise_var=2.0, layer_alpha=3.0)
    assert REGrad().for_regression == RegressionREGradSettings()
    with pytest.raises(AttributeError, match="fixed at construction"):
        s.metric = "euclidean"


@pytest.mark.parametrize(
    "settings", [{"metric": "kfac"}, {"target": "nll"}, {"noise_var": 0}, {"prior_precision": -1.0}, {"noise_var": "1"}]
)
def test_bad_values_are_refused_by_the_regression_familys_own_checks(settings):
    with pytest.raises(ConfigError) as direct:
        RegressionREGradSettings(**settings)
    with pytest.raises(ConfigError) as strategy:
        build_strategy("regrad", **settings)
    assert str(strategy.value) == f"strategy 'regrad': {direct.value}"


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("name", ["regrad", "exgrad"])
@pytest.mark.parametrize(
    "settings",
    [{"metric": "kfac-laplace"}, {"target": "gaussian-nll", "noise_var": 2.0}, {"prior_precision": 1.0}],
)
def test_regression_settings_on_a_classification_task_are_refused_by_name(digits, tmp_path, name, settings):
    from conftest import fast_config

    path = tmp_path / "none.db"
    with pytest.raises(ConfigError) as e:
        Experiment(fast_config(strategy=name, strategy_kwargs=settings), f"sqlite:///{path}", dataset=digits)
    msg = str(e.value)
    assert f"strategy {name!r}: {', '.join(sorted(settings))}" in msg
    assert "regression models only" in msg and "classification task" in msg and "drop" in msg
    assert not path.exists()
    check_strategy_task(name, "classification", {"layer_alpha": 2.0})  # the shared ones are fine


def test_the_command_line_refuses_them_with_exit_2(tmp_path, capsys):
    path = tmp_path / "none.db"
    args = ["--dataset", "digits", "--strategy", "regrad", "--strategy-kwargs", '{"metric": "kfac-laplace"}']
    assert bench([*args, "--budget", "40", "--store", f"sqlite:///{path}"]) == 2
    err = capsys.readouterr().err
    assert "metric applies to regression models only" in err and not path.exists()


def test_a_strategy_object_with_them_is_refused_by_a_classifier_and_a_variance_head_by_a_regression_run(
    digits, tmp_path
):
    from conftest import fast_config

    path = tmp_path / "none.db"
    with pytest.raises(IncompatibleStrategyError, match="metric applies to regression models only.*classifier"):
        Experiment(
            fast_config(strategy="regrad"), f"sqlite:///{path}", dataset=digits, strategy=REGrad(metric="kfac-laplace")
        )
    cfg = ExperimentConfig(
        dataset="diabetes",
        task="regression",
        strategy="regrad",
        strategy_kwargs={"variance_head": "log-var-half"},
        budget=40,
        **FAST,
    )
    with pytest.raises(IncompatibleStrategyError, match="variance_head='log-var-half' needs a model .* one number"):
        Experiment(cfg, f"sqlite:///{path}")
    assert not path.exists()


# ------------------------------------------------------------------------------------------------ stored runs
def test_params_and_records_at_the_defaults_are_those_made_before_the_settings():
    explicit = dict(REGRESSOR_DEFAULTS)
    assert REGrad().params() == REGrad(**explicit).params() == CURRENT_DEFAULT
    assert REGrad(**PREVIOUS_DEFAULTS).params() == REGrad(**PREVIOUS_DEFAULTS, **explicit).params() == OLD_DEFAULT
    assert ExGrad().params() == ExGrad(**explicit).params() and not set(ExGrad().params()) & REGRESSOR_SETTINGS
    cfg = ExperimentConfig(dataset="diabetes", task="regression", strategy="regrad", budget=40, **FAST)
    assert config_record(cfg, REGrad()) == config_record(cfg, REGrad(**explicit))
    assert config_record(cfg, REGrad())["strategy_params"] == CURRENT_DEFAULT
    # away from its default a setting is recorded, and a strategy rebuilt from the record records the same
    changed = REGrad(metric="kfac-laplace", prior_precision=0.1).params()
    assert changed == {**CURRENT_DEFAULT, "metric": "kfac-laplace", "prior_precision": 0.1}
    assert build_strategy("regrad", **changed).params() == changed


def _reopen(url: str, run: str, stored: dict, strategy: REGrad) -> None:
    """Store a run's record, then reopen it under ``strategy`` the way Experiment.open_run does."""
    base = {"strategy": "regrad", "dataset": "synthetic-gap", "task": "regression", "seed": 0}
    store = Store(url)
    store.open_run(run, {**base, "strategy_params": stored})
    store.open_run(
        run, {**base, "strategy_params": strategy.params()}, absent_means={"strategy_params": strategy.params_added}
    )


def test_a_run_recorded_before_resumes_at_the_defaults_only(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    old = REGrad(**PREVIOUS_DEFAULTS)  # the defaults it was recorded under (before issue 17)
    _reopen(url, "old", OLD_DEFAULT, old)
    _reopen(url, "old", OLD_DEFAULT, REGrad(**PREVIOUS_DEFAULTS, metric="euclidean", target="mean"))
    with pytest.raises(ConfigMismatchError, match="metric"):
        _reopen(url, "old", OLD_DEFAULT, REGrad(**PREVIOUS_DEFAULTS, metric="kfac-laplace"))
    # a regression run's scores never read the classifier defaults issue 17 changed, and the loop does not rebuild
    # one under them (al.loop.Experiment._keep_stored_defaults): under the new defaults it is refused by name
    with pytest.raises(ConfigMismatchError, match="class_weighting"):
        _reopen(url, "old", OLD_DEFAULT, REGrad())
    _reopen(url, "now", CURRENT_DEFAULT, REGrad())
    kfac = REGrad(metric="kfac-laplace").params()
    _reopen(url, "kfac", kfac, REGrad(metric="kfac-laplace"))
    with pytest.raises(ConfigMismatchError, match="kfac-laplace"):
        _reopen(url, "kfac", kfac, REGrad())


def test_report_variant_names_stay_the_same():
    def runs(*params: dict) -> pd.DataFrame:
        return pd.DataFrame(
            [dict(protocol="p", strategy="regrad", config={"strategy": "regrad", "strategy_params": p}) for p in params]
        )

    new_default = json.loads(json.dumps(REGrad().params()))
    kfac = json.loads(json.dumps(REGrad(metric="kfac-laplace", prior_precision=0.1).params()))
    alpha = json.loads(json.dumps(REGrad(layer_alpha=3.0).params()))
    assert variant_labels(runs(CURRENT_DEFAULT, new_default)).tolist() == ["regrad", "regrad"]
    assert variant_labels(runs(CURRENT_DEFAULT, alpha, new_default)).tolist() == [
        "regrad",
        "regrad(layer_alpha=3)",
        "regrad",
    ]
    assert variant_labels(runs(CURRENT_DEFAULT, kfac, new_default)).tolist() == [
        "regrad",
        "regrad(metric=kfac-laplace, prior_precision=0.1)",
        "regrad",
    ]
    # a run made under the defaults before issue 17 is labelled by what it used
    assert variant_labels(runs(OLD_DEFAULT, new_default)).tolist() == [
        "regrad(class_weighting=predicted, layer_alpha=-10)",
        "regrad",
    ]


# ------------------------------------------------------------------------------------------------ kfac-laplace in a run
@pytest.fixture(scope="module")
def synthetic_gap():
    return load_dataset("synthetic-gap")


def test_a_kfac_laplace_run_records_the_scores_of_a_direct_call_on_the_rounds_model(synthetic_gap, store_url):
    cfg = ExperimentConfig(
        dataset="synthetic-gap",
        task="regression",
        strategy="regrad",
        strategy_kwargs={"metric": "kfac-laplace"},
        budget=30,
        init_size=10,
        query_size=10,
        **FAST,
    )
    models: dict[int, nn.Module] = {}
    exp = Experiment(
        cfg,
        store_url,
        dataset=synthetic_gap,
        on_round=lambda rep: models.__setitem__(rep.round_idx, copy.deepcopy(exp.learner.network)),
    )
    st = exp.run()
    assert st.status == "finished" and sorted(models) == [0, 1, 2]
    assert exp.store.run(exp.name).config["strategy_params"]["metric"] == "kfac-laplace"
    queries = exp.store.queries(exp.name)
    x = synthetic_gap.train_x
    for r in (1, 2):
        labelled = st.labelled_ids(up_to_round=r - 1)  # what round r-1's model was trained on
        cand = np.setdiff1d(np.arange(synthetic_gap.n_pool), labelled)
        expected = regression_regrad_scores(
            models[r - 1], x[cand], reference=x[labelled], metric="kfac-laplace", ids=cand
        )
        pick = top_n(expected, cand, 10)
        q = queries[queries["round_idx"] == r].sort_values("rank")
        np.testing.assert_array_equal(q["sample_id"].to_numpy(), pick.ids)
        np.testing.assert_allclose(q["score"].to_numpy(), pick.scores, rtol=1e-12)
    # the reference is the labelled set of that round: round 0's labels alone give round 2 other scores
    labelled0 = st.labelled_ids(up_to_round=0)
    cand = np.setdiff1d(np.arange(synthetic_gap.n_pool), st.labelled_ids(up_to_round=1))
    stale = regression_regrad_scores(models[1], x[cand], reference=x[labelled0], metric="kfac-laplace", ids=cand)
    assert not np.allclose(top_n(stale, cand, 10).scores, q["score"].to_numpy(), rtol=1e-6)


def test_al_bench_runs_kfac_laplace_on_synthetic_gap_end_to_end(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    cmd = [sys.executable, "-m", "al.bench", "--task", "regression", "--dataset", "synthetic-gap"]
    cmd += ["--strategy", "regrad", "--strategy-kwargs", '{"metric": "kfac-laplace"}', "--budget", "30"]
    cmd += ["--epochs", "2", "--min-steps", "10", "--store", url, "--data-dir", str(tmp_path), "--no-progress"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    store = Store(url)
    (name,) = store.runs()["run"].tolist()
    assert store.run(name).status == "finished"
    assert store.run(name).config["strategy_params"]["metric"] == "kfac-laplace"
    c = store.curves()
    assert c["n_labelled"].tolist() == [10, 20, 30] and np.isfinite(c["rmse"].astype(float)).all()
