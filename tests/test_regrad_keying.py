"""REGrad's perturbation noise is keyed by sample id, so a sample's score never depends on what is scored beside it;
and the change of keying is declared, so stored perturbed runs are refused while unperturbed ones resume."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from al.errors import ConfigError, ConfigMismatchError
from al.models import build_model
from al.store import Store
from al.strategy import Context
from strategies import build_strategy
from strategies.regrad import REGrad, REGradSettings, regrad_scores

N = 24
NOISY = {
    "input": dict(class_weighting="root", n_perturbations=3, sigma=0.3, aggregate="mean-norm", seed=5),
    "input-mean-grad": dict(class_weighting="expected", n_perturbations=2, sigma=0.2, aggregate="mean-grad"),
    "params": dict(class_weighting="root", n_perturbations=2, sigma=0.1, aggregate="mean-norm", perturb="params"),
}
PROTOCOLS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "protocols.sqlite"


class _Learner:
    """Just what a Context needs to hand a model-based strategy its model."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network


@pytest.fixture(scope="module")
def pool() -> tuple[torch.nn.Module, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    model = build_model("mlp", 10, (1, 8, 8))
    ids = np.arange(100, 100 + 3 * N, 3)  # global ids that are not positions
    return model, torch.randn(N, 1, 8, 8), ids


def _select_scores(
    strat: REGrad, model: torch.nn.Module, x: torch.Tensor, ids: np.ndarray, cand: np.ndarray, seed: int = 11
) -> dict[int, float]:
    """{id: score} of ``cand`` scored as one round's candidates through ``REGrad.select``."""
    row = {int(i): j for j, i in enumerate(ids)}
    ctx = Context(cand, learner=_Learner(model), inputs_of=lambda c: x[[row[int(i)] for i in c]])
    sel = strat(ctx, 1, np.random.default_rng(seed))
    return dict(zip(cand.tolist(), sel.pool_scores.tolist(), strict=True))


@pytest.mark.parametrize("noise", sorted(NOISY))
def test_a_samples_perturbed_score_does_not_depend_on_its_batch(pool, noise: str) -> None:
    model, x, ids = pool
    kw = NOISY[noise]
    whole = _select_scores(REGrad(**kw, batch_size=256), model, x, ids, ids)
    picks = {
        "alone": ids[[7]],
        "another batch": ids[[7, 3, 20, 11]],
        "another order": ids[::-1].copy(),
        "a shuffled subset": np.random.default_rng(3).permutation(ids)[:9],
    }
    for how, cand in picks.items():
        got = _select_scores(REGrad(**kw, batch_size=256), model, x, ids, cand)
        np.testing.assert_allclose([got[i] for i in cand], [whole[i] for i in cand], rtol=1e-6, err_msg=how)
    for bs in (1, 4, 7):  # another batch_size: other chunks (the setting differs, the scores must not)
        got = _select_scores(REGrad(**kw, batch_size=bs), model, x, ids, ids)
        np.testing.assert_allclose([got[i] for i in ids], [whole[i] for i in ids], rtol=1e-6, err_msg=f"bs={bs}")
    # the standalone function with the same ids and the same rng gives the same numbers as select
    direct = regrad_scores(model, x, ids=ids, rng=np.random.default_rng(11), **kw)
    np.testing.assert_allclose(direct, [whole[i] for i in ids], rtol=1e-6)
    # ... and keyed by ids without an rng, a sample's score is equally independent of its neighbours
    alone = regrad_scores(model, x, ids=ids, batch_size=3, **kw)
    perm = np.random.default_rng(4).permutation(N)[:10]
    np.testing.assert_allclose(
        regrad_scores(model, x[perm], ids=ids[perm], batch_size=256, **kw), alone[perm], rtol=1e-6
    )


def test_the_same_rng_gives_the_same_picks_and_another_rng_other_noise(pool) -> None:
    model, x, ids = pool
    strat = REGrad(**NOISY["input"])
    a, b = (_select_scores(strat, model, x, ids, ids, seed=11) for _ in range(2))
    assert a == b
    ctx = Context(ids, learner=_Learner(model), inputs_of=lambda c: x[torch.as_tensor((c - 100) // 3)])
    s1, s2 = (strat(ctx, 5, np.random.default_rng(11)) for _ in range(2))
    np.testing.assert_array_equal(s1.ids, s2.ids)
    other = _select_scores(strat, model, x, ids, ids, seed=12)
    assert not np.allclose(list(other.values()), list(a.values()), rtol=1e-4)
    # select draws exactly one number from the rng when it perturbs, and none when it does not
    for kw, draws in ((NOISY["input"], 1), (NOISY["params"], 1), ({}, 0), (dict(n_perturbations=3, sigma=0.0), 0)):
        rng, ref = np.random.default_rng(7), np.random.default_rng(7)
        REGrad(**kw)(ctx, 2, rng)
        ref.integers(2**63, size=draws)
        assert rng.integers(2**32) == ref.integers(2**32), kw


def test_without_ids_noise_is_keyed_by_the_index_in_the_full_inputs(pool) -> None:
    model, x, ids = pool
    kw = NOISY["input"]
    whole = regrad_scores(model, x, batch_size=256, **kw)
    np.testing.assert_allclose(regrad_scores(model, x, batch_size=4, **kw), whole, rtol=1e-6)
    np.testing.assert_allclose(regrad_scores(model, x, ids=np.arange(N), **kw), whole, rtol=1e-6)
    with pytest.raises(ConfigError, match="one id per row"):
        regrad_scores(model, x, ids=ids[:-1], **kw)
    with pytest.raises(ConfigError, match="non-negative integer"):
        regrad_scores(model, x, ids=ids - 200, **kw)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(n_perturbations=1.7), "n_perturbations must be a whole number"),
        (dict(n_perturbations=True), "n_perturbations must be a whole number"),
        (dict(n_perturbations="2"), "without quotes"),
        (dict(n_perturbations=-1), "n_perturbations must be >= 0"),
        (dict(sigma=float("nan")), "sigma must be a finite number"),
        (dict(sigma=float("inf")), "sigma must be a finite number"),
        (dict(sigma="0.5"), "sigma must be a number"),
        (dict(sigma=False), "sigma must be a number"),
        (dict(layer_alpha=float("nan")), "layer_alpha must be a finite number"),
        (dict(layer_alpha="-10"), "layer_alpha must be a number"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(top_k=2.5), "top_k must be None"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(batch_size=True), "batch_size must be a whole number"),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(seed=0.5), "seed must be a whole number"),
        (dict(last_layer_only=1), "last_layer_only must be true or false"),
        (dict(class_weighting=None), "class_weighting must be one of"),
        (dict(combine="cubic"), "combine must be one of"),
    ],
)
def test_settings_are_checked_once_for_every_entry_point(pool, bad: dict, match: str) -> None:
    model, x, _ = pool
    for make in (
        lambda: REGradSettings(**bad),
        lambda: build_strategy("regrad", **bad),
        lambda: build_strategy("exgrad", **bad),
        lambda: regrad_scores(model, x[:2], **bad),
    ):
        with pytest.raises(ConfigError, match=match):
            make()


def test_counts_spelt_as_integral_floats_are_normalised() -> None:
    s = REGradSettings(n_perturbations=4.0, top_k=np.int64(2), batch_size=64.0, layer_alpha=-10, seed=np.int32(3))
    assert (s.n_perturbations, s.top_k, s.batch_size, s.layer_alpha, s.seed) == (4, 2, 64, -10.0, 3)
    assert all(
        type(v) is t
        for v, t in (
            (s.n_perturbations, int),
            (s.top_k, int),
            (s.batch_size, int),
            (s.layer_alpha, float),
            (s.seed, int),
        )
    )
    with pytest.raises(AttributeError, match="fixed at construction"):
        REGrad().sigma = 0.1


def test_exgrad_is_a_preset_of_regrad_with_the_same_keywords() -> None:
    import inspect

    from strategies.regrad import ExGrad

    rg, ex = inspect.signature(REGrad.__init__), inspect.signature(ExGrad.__init__)
    assert list(rg.parameters) == list(ex.parameters)
    assert {k: p.default for k, p in ex.parameters.items() if p.default is not p.empty} == {
        **{k: p.default for k, p in rg.parameters.items() if p.default is not p.empty},
        **ExGrad.preset,
    }
    assert ExGrad().params() == {
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
    }
    with pytest.raises(ConfigError, match="no parameter 'noise_key'"):
        build_strategy("exgrad", noise_key="sample-id")


# ------------------------------------------------------------------------------------------------ stored runs
def _resume(url: str, stored_params: dict, strategy: REGrad) -> None:
    """Store a run as older code wrote it, then reopen it the way Experiment.open_run does."""
    base = {"strategy": strategy.name, "dataset": "digits", "model": "mlp", "seed": 0}
    store = Store(url)
    store.open_run("r", {**base, "strategy_params": stored_params})
    store.open_run(
        "r", {**base, "strategy_params": strategy.params()}, absent_means={"strategy_params": strategy.params_added}
    )


def test_stored_unperturbed_runs_resume_and_stored_perturbed_runs_are_refused(tmp_path) -> None:
    # what the code before sample-id keying recorded (no "noise_key"; the oldest runs lack "perturb" too)
    old_default = {k: v for k, v in REGrad().params().items()}
    assert "noise_key" not in old_default
    _resume(f"sqlite:///{tmp_path / 'a.db'}", old_default, REGrad())
    _resume(f"sqlite:///{tmp_path / 'b.db'}", {k: v for k, v in old_default.items() if k != "perturb"}, REGrad())
    no_sigma = dict(n_perturbations=3, sigma=0.0)  # copies drawn with sigma 0 never changed a score
    _resume(f"sqlite:///{tmp_path / 'c.db'}", {**old_default, **no_sigma}, REGrad(**no_sigma))

    for name, kw in NOISY.items():
        strat = REGrad(**kw)
        stored = {k: v for k, v in strat.params().items() if k != "noise_key"}  # keyed by batch position
        with pytest.raises(ConfigMismatchError, match="'noise_key': 'batch-position'.*'noise_key': 'sample-id'"):
            _resume(f"sqlite:///{tmp_path / f'{name}.db'}", stored, strat)
    # a run recorded by this code resumes
    _resume(f"sqlite:///{tmp_path / 'new.db'}", REGrad(**NOISY["input"]).params(), REGrad(**NOISY["input"]))


@pytest.mark.skipif(not PROTOCOLS.exists(), reason="the committed protocol store is not in this checkout")
def test_every_committed_regrad_family_run_resumes_under_this_code(tmp_path) -> None:
    with sqlite3.connect(f"file:{PROTOCOLS}?mode=ro", uri=True) as conn:  # read only: never touch the result
        configs = [json.loads(c) for (c,) in conn.execute("SELECT config FROM al_runs")]
    runs = [c for c in configs if c["strategy"] in ("regrad", "exgrad", "gradnorm")]
    assert runs
    store = Store(f"sqlite:///{tmp_path / 'copy.db'}")
    for i, cfg in enumerate(runs):
        strat = build_strategy(cfg["strategy"], **cfg["strategy_params"])
        assert strat.params() == cfg["strategy_params"], cfg["strategy"]
        store.open_run(f"r{i}", cfg)
        store.open_run(
            f"r{i}", {**cfg, "strategy_params": strat.params()}, absent_means={"strategy_params": strat.params_added}
        )


def test_the_noise_itself_is_bit_identical_whatever_is_drawn_beside_it() -> None:
    """Scores agree to float rounding across batch sizes (BLAS kernels change with the batch shape); the noise that
    makes them is exactly the same."""
    from strategies.regrad import parameter_noise, perturbation_noise

    ids = [40, 7, 123, 9]
    for key in (None, 2**40 + 3):
        both = perturbation_noise((2, 3), ids, 4, seed=1, key=key)
        for j, i in enumerate(ids):
            torch.testing.assert_close(perturbation_noise((2, 3), [i], 4, seed=1, key=key)[0], both[j], rtol=0, atol=0)
        assert not torch.equal(both[0], perturbation_noise((2, 3), [ids[0]], 4, seed=2, key=key)[0])  # seed salts
    assert not torch.equal(perturbation_noise((5,), [3], 2, key=1), perturbation_noise((5,), [3], 2, key=2))
    a, b = parameter_noise([(3, 2), (4,)], 2, seed=1, key=5), parameter_noise([(3, 2), (4,)], 2, seed=1, key=5)
    assert all(torch.equal(u, v) for ma, mb in zip(a, b, strict=True) for u, v in zip(ma, mb, strict=True))
