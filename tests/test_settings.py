"""Issue 12 item 5: every strategy setting and every ExperimentConfig field is checked by its declared type and
range before anything runs (one mechanism, al.settings), with messages in the user's terms; valid settings keep
the params() a stored run was recorded with, so it still resumes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from al.bench import main
from al.errors import ConfigError
from al.loop import Experiment, ExperimentConfig
from al.registry import STRATEGIES, build_strategy
from al.store import Store

DIGITS = [
    "--dataset",
    "digits",
    "--budget",
    "40",
    "--init-size",
    "20",
    "--query-size",
    "10",
    "--epochs",
    "1",
    "--min-steps",
    "5",
    "--no-progress",
]


def _refused(tmp_path, capsys, args: list[str]) -> str:
    """Run al.bench with ``args``; assert exit 2, one line on stderr, and no store file; return the line."""
    db = tmp_path / "X.db"
    assert main(DIGITS + ["--store", f"sqlite:///{db}"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert not db.exists()  # checked before the store was opened: nothing written
    return err


@pytest.mark.parametrize(
    "strategy,kwargs,msg",
    [
        ("regrad", '{"layer_alpha": "abc"}', "error: strategy 'regrad': layer_alpha must be a number, got 'abc'"),
        ("regrad", '{"layer_alpha": Infinity}', "strategy 'regrad': layer_alpha must be a finite number, got inf"),
        ("regrad", '{"sigma": NaN, "n_perturbations": 2}', "strategy 'regrad': sigma must be a finite number"),
        ("regrad", '{"n_perturbations": 1.7}', "strategy 'regrad': n_perturbations must be a whole number, got 1.7"),
        ("regrad", '{"n_perturbations": true}', "strategy 'regrad': n_perturbations must be a whole number, got True"),
        ("exgrad", '{"top_k": 0}', "strategy 'exgrad': top_k must be >= 1, got 0"),
        ("gradnorm", '{"temperature": "hot"}', "strategy 'gradnorm': temperature must be a number, got 'hot'"),
        ("gradnorm", '{"temperature": 0}', "strategy 'gradnorm': temperature must be > 0, got 0"),
        ("gradnorm", '{"batch_size": true}', "strategy 'gradnorm': batch_size must be a whole number, got True"),
        ("batchbald", '{"num_samples": 2.5}', "strategy 'batchbald': num_samples must be a whole number, got 2.5"),
        ("batchbald", '{"num_samples": true}', "strategy 'batchbald': num_samples must be a whole number, got True"),
        ("batchbald", '{"max_exact_configs": "many"}', "strategy 'batchbald': max_exact_configs must be a whole"),
        ("batchbald", '{"max_exact_configs": 0}', "strategy 'batchbald': max_exact_configs must be >= 1, got 0"),
    ],
)
def test_bad_strategy_setting_is_one_line_exit_2(tmp_path, capsys, strategy, kwargs, msg):
    err = _refused(tmp_path, capsys, ["--strategy", strategy, "--strategy-kwargs", kwargs])
    assert msg in err
    assert "supported between" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "flags,msg",
    [
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--lr", "-1"], "--lr must be positive, got -1.0"),
        (["--mc-samples", "0"], "--mc-samples must be at least 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--pool-subset", "-1"], "--pool-subset must be 0 (whole pool) or positive, got -1"),
    ],
)
def test_bad_config_flag_is_one_line_exit_2(tmp_path, capsys, flags, msg):
    assert msg in _refused(tmp_path, capsys, flags)


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("budget", "10", "--budget must be a whole number, got '10' (str); write it without quotes"),
        ("budget", 0, "--budget must be a positive number of labels, got 0"),
        ("lr", float("nan"), "--lr must be a finite number, got nan"),
        ("lr", math.inf, "--lr must be a finite number, got inf"),
        ("lr", "0.01", "--lr must be a number, got '0.01'"),
        ("seed", True, "--seed must be a whole number, got True"),
        ("seed", -1, "--seed must be 0 or positive"),
        ("epochs", 2.5, "--epochs must be a whole number (or None for the dataset's default), got 2.5; round it"),
        ("init_size", 0, "--init-size must be at least 1"),
        ("query_size", 1.5, "--query-size must be a whole number (or None for the dataset's default), got 1.5"),
        ("min_steps", "many", "--min-steps must be a whole number (or None for the dataset's default), got 'many'"),
        ("mc_samples", 0, "--mc-samples must be at least 1, got 0"),
        ("warm_start", 1, "--warm-start must be true or false, got 1"),
        ("init_balanced", "yes", "--init-balanced must be true or false, got 'yes'"),
        ("dataset", 5, "--dataset must be a non-empty text, got 5"),
        ("strategy", None, "--strategy must be a non-empty text, got None"),
        ("model", 3, "--model must be a non-empty text, got 3"),
        ("oracle", "", "--oracle must be a non-empty text"),
        ("strategy_kwargs", [1, 2], "--strategy-kwargs must be a JSON object"),
        ("pool_subset", -1, "--pool-subset must be 0 (whole pool) or positive, got -1"),
    ],
)
def test_config_fields_checked_when_made_and_before_a_run(tmp_path, field, value, msg):
    base = dict(dataset="digits", strategy="entropy", budget=40, init_size=20, query_size=10, epochs=1, min_steps=5)
    with pytest.raises(ConfigError) as e:
        ExperimentConfig(**{**base, field: value})
    assert msg in str(e.value)
    # a field changed after the config was made is checked again before anything is written
    c = ExperimentConfig(**base)
    setattr(c, field, value)
    db = tmp_path / "s.db"
    with pytest.raises(ConfigError, match="must be"):
        Experiment(c, f"sqlite:///{db}")
    assert not db.exists()


def test_config_numbers_are_normalised_so_the_record_does_not_depend_on_spelling():
    c = ExperimentConfig(
        dataset="digits", budget=np.int64(40), epochs=30.0, seed=np.int32(1), mc_samples=20.0, warm_start=np.bool_(True)
    )
    assert (c.budget, c.epochs, c.seed, c.mc_samples, c.warm_start) == (40, 30, 1, 20, True)
    assert all(type(v) is int for v in (c.budget, c.epochs, c.seed, c.mc_samples)) and type(c.warm_start) is bool
    assert ExperimentConfig(lr=1).lr == 1 and type(ExperimentConfig(lr=1).lr) is int  # stored as it always was
    assert ExperimentConfig() == ExperimentConfig()  # defaults pass unchanged


def test_python_strategy_construction_is_checked_the_same_way():
    from strategies.bayesian import BatchBALD
    from strategies.regrad import GradNorm, REGrad

    with pytest.raises(ConfigError, match="^strategy 'regrad': layer_alpha must be a number, got 'abc'"):
        REGrad(layer_alpha="abc")
    with pytest.raises(ConfigError, match="^strategy 'batchbald': num_samples must be a whole number, got True"):
        BatchBALD(num_samples=True)
    with pytest.raises(ConfigError, match="^strategy 'gradnorm': temperature must be a finite number"):
        build_strategy("gradnorm", temperature=float("nan"))
    b = BatchBALD(max_exact_configs=4096.0, num_samples=np.int64(1000))
    assert b.params() == {"max_exact_configs": 4096, "num_samples": 1000, "sampling": "stratified"}
    assert all(type(v) is int for k, v in b.params().items() if k != "sampling")
    assert GradNorm(temperature=2).params() == {"temperature": 2.0, "batch_size": 1024}


#: params() of every built-in strategy with default settings, as stored runs recorded them before this change.
DEFAULT_PARAMS = {
    "badge": {},
    "bald": {},
    "batchbald": {"max_exact_configs": 4096, "num_samples": 1000},
    "coreset": {},
    "entropy": {},
    "exgrad": {
        "class_weighting": "expected",
        "layer_alpha": 0.0,
        "n_perturbations": 0,
        "sigma": 0.0,
        "aggregate": "mean-grad",
        "combine": "linear",
        "top_k": None,
        "seed": 0,
        "batch_size": 256,
        "last_layer_only": False,
        "perturb": "input",
    },
    "gradnorm": {"temperature": 1.0, "batch_size": 1024},
    "least-confidence": {},
    "margin": {},
    "random": {},
    "regrad": {
        "class_weighting": "root",  # "predicted" before issue 17 (declared in REGrad.previous_defaults)
        "layer_alpha": 0.0,  # -10.0 before issue 17
        "n_perturbations": 0,
        "sigma": 0.5,
        "aggregate": "mean-norm",
        "combine": "linear",
        "top_k": None,
        "seed": 0,
        "batch_size": 256,
        "last_layer_only": False,
        "perturb": "input",
    },
}


#: Settings added since with a new default (issue 16): each is declared in the strategy's ``params_added`` with the
#: value that stored runs used, so such a run resumes only under that value (never silently under the new one).
ADDED_DEFAULTS = {"badge": {"seeding": "published"}, "batchbald": {"sampling": "stratified"}}
#: Settings whose default changed (issue 17), each with its previous default: declared in the strategy's
#: ``previous_defaults``, so a run stored under them continues under them (tests/test_changed_defaults.py).
CHANGED_DEFAULTS = {"regrad": {"class_weighting": "predicted", "layer_alpha": -10.0}}


@pytest.mark.parametrize("name", sorted(DEFAULT_PARAMS))
def test_default_params_unchanged_so_stored_runs_resume(name):
    strategy = build_strategy(name)
    p = strategy.params()
    added = ADDED_DEFAULTS.get(name, {})
    assert set(added) <= set(strategy.params_added), "a changed default must be declared in params_added"
    assert dict(strategy.previous_defaults) == CHANGED_DEFAULTS.get(name, {}), "declare a changed default"
    assert p == {**DEFAULT_PARAMS[name], **added}
    assert [type(v) for v in p.values()] == [type(v) for v in {**DEFAULT_PARAMS[name], **added}.values()]
    old = {**DEFAULT_PARAMS[name], **{k: strategy.params_added[k] for k in added}}
    assert build_strategy(name, **old).params() == old  # the stored behaviour is still there to resume under


def test_every_builtin_strategy_declares_each_constructor_setting():
    """A strategy's settings are all declared, so none escapes the check (the ones without settings declare none)."""
    for name in STRATEGIES.names():
        cls = STRATEGIES.get(name)
        if cls.__module__.split(".")[0] != "strategies":
            continue  # a test's or a third party's strategy
        # REGrad's regression-only settings are in params() only away from their defaults (stored runs keep their
        # record): tests/test_regrad_regression_strategy.py
        reported = set(build_strategy(name).params()) - {"noise_key"}
        assert set(cls.settings_spec) == reported | cls.regression_settings, name


def test_a_valid_run_still_resumes_under_the_same_command(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'X.db'}"
    args = DIGITS + ["--store", url, "--strategy", "regrad", "--strategy-kwargs", '{"layer_alpha": -10, "top_k": 2.0}']
    assert main(args) == 0
    before = Store(url).curves()
    assert main(args) == 0 and "already finished" in capsys.readouterr().out
    assert Store(url).curves().equals(before)


# --- the mechanism itself ---------------------------------------------------------------------------------------
def test_setting_declarations():
    from al.settings import Setting, check_settings, settings_of

    spec = {
        "n": Setting("int", minimum=0),
        "x": Setting("float", minimum=0.0, strict=True),
        "k": Setting("int", minimum=1, optional=True),
        "on": Setting("bool"),
        "how": Setting("choice", choices=("a", "b")),
        "name": Setting("str"),
        "kw": Setting("dict"),
    }
    good = dict(n=4.0, x=1, k=None, on=np.bool_(False), how="a", name="z", kw={"a": 1}, other=object)
    out = check_settings(good, spec)
    assert out == {**good, "n": 4, "x": 1.0, "on": False}
    assert type(out["n"]) is int and type(out["x"]) is float and type(out["on"]) is bool
    for bad, msg in [
        (dict(n=-1), "n must be >= 0, got -1"),
        (dict(n=True), "n must be a whole number, got True (bool)"),
        (dict(n=float("inf")), "n must be a whole number, got inf"),
        (dict(x=0), "x must be > 0, got 0"),
        (dict(x=float("nan")), "x must be a finite number, got nan"),
        (dict(k=0.5), "k must be a whole number (or None), got 0.5"),
        (dict(on="true"), "on must be true or false, got 'true'"),
        (dict(how="c"), "how must be one of ('a', 'b'), got 'c'"),
        (dict(name=""), "name must be a non-empty text"),
        (dict(kw={1: 2}), "kw must be a JSON object"),
    ]:
        with pytest.raises(ConfigError) as e:
            check_settings(bad, spec)
        assert msg in str(e.value), (bad, str(e.value))
    with pytest.raises(ConfigError, match=r"^--n must be >= 0"):
        check_settings(dict(n=-1), spec, label=lambda k: f"--{k}")
    with pytest.raises(ConfigError, match=r"^owner: n must be >= 0, got -1$"):
        with settings_of("owner"), settings_of("owner"):  # named once, however nested
            check_settings(dict(n=-1), spec)
    with pytest.raises(TypeError):
        Setting("integer")  # type: ignore[arg-type]
