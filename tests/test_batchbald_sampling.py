"""BatchBALD beyond ``max_exact_configs`` (issue 16, part 2): configurations drawn as the paper and batchbald_redux
draw them, an equal number from each MC sample and fresh at every step; the old ancestral extension kept as
``sampling="ancestral"`` for stored runs."""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from al.errors import ConfigError, ConfigMismatchError
from al.store import Store
from al.strategy import Context
from strategies import build_strategy
from strategies.bayesian import (
    BatchBALD,
    batchbald_select,
    conditional_entropy,
    configuration_weights,
    stratified_configurations,
)

PROTOCOLS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "protocols.sqlite"


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)


def _joint_mi(mc: np.ndarray, pos) -> float:
    """Exact I[y_pos; w] by enumerating every configuration."""
    J = np.ones((mc.shape[0], 1))
    for j in pos:
        J = (J[:, :, None] * mc[:, j, None, :]).reshape(mc.shape[0], -1)
    return float(_entropy(J.mean(axis=0)) - conditional_entropy(mc)[list(pos)].sum())


def _redundant_pool(seed: int, n_sources: int = 20, copies: int = 3, T: int = 20, C: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(1, n_sources, C)) + rng.uniform(0.2, 3.0, size=(1, n_sources, 1)) * rng.normal(
        size=(T, n_sources, C)
    )
    z = np.repeat(z, copies, axis=1) + rng.normal(scale=0.3, size=(T, n_sources * copies, C))
    e = np.exp(z - z.max(axis=2, keepdims=True))
    return e / e.sum(axis=2, keepdims=True)


# --- the draws ----------------------------------------------------------------------------------------------------
def test_each_mc_sample_contributes_exactly_its_share_of_configurations():
    # MC sample 0 says class 0 for every batch member, MC sample 1 says class 1: drawn i.i.d. from the mixture the
    # two configurations would come in binomial numbers; stratified, exactly per_sample each.
    batch = np.zeros((2, 5, 3))
    batch[0, :, 0] = 1.0
    batch[1, :, 1] = 1.0
    for seed in range(5):
        labels, counts = stratified_configurations(batch, 37, np.random.default_rng(seed))
        np.testing.assert_array_equal(labels, [[0] * 5, [1] * 5])
        np.testing.assert_array_equal(counts, [37, 37])


def test_within_an_mc_sample_the_labels_are_independent_draws_of_its_probabilities():
    p = np.array([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]])  # one MC sample, a batch of two
    labels, counts = stratified_configurations(p, 20_000, np.random.default_rng(0))
    assert counts.sum() == 20_000 and len(labels) == 9  # all 9 configurations, each listed once
    assert [tuple(r) for r in labels] == sorted(itertools.product(range(3), repeat=2))
    exp = np.array([p[0, 0, a] * p[0, 1, b] for a, b in labels]) * 20_000
    assert chisquare(counts, exp).pvalue > 1e-3
    # a class of probability 0 is never drawn
    q = np.array([[[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]])
    labels, _ = stratified_configurations(q, 1000, np.random.default_rng(1))
    assert set(labels[:, 0]) == {1} and set(labels[:, 1]) <= {0, 2}


def test_configuration_weights_are_the_normalised_products_and_never_underflow():
    rng = np.random.default_rng(0)
    batch = rng.dirichlet(np.ones(4), size=(6, 3))  # (T=6, b=3, C=4)
    labels = np.array([[0, 1, 2], [3, 3, 0], [1, 0, 1]])
    P = configuration_weights(batch, labels)
    direct = np.stack([np.prod([batch[:, j, c] for j, c in enumerate(cfg)], axis=0) for cfg in labels], axis=1)
    np.testing.assert_allclose(P, direct / direct.mean(axis=0), rtol=1e-12)
    # 300 sharp labels: the raw products are far below the smallest double, the weights are still finite
    sharp = np.full((4, 300, 2), 1e-4)
    sharp[:, :, 0] = 1 - 1e-4
    sharp[0] = sharp[0, :, ::-1]
    W = configuration_weights(sharp, np.ones((1, 300), dtype=np.int64))
    assert np.isfinite(W).all() and W[0, 0] == pytest.approx(4.0) and W[1:, 0].max() == 0.0


def test_the_stratified_estimate_of_the_conditional_entropy_is_unbiased():
    """H[y_i | batch] estimated from the draws (what the gain loop computes) averages to the exact value."""
    rng = np.random.default_rng(5)
    T, b, C = 10, 4, 3
    batch = rng.dirichlet(np.ones(C) * 0.5, size=(T, b))
    cand = rng.dirichlet(np.ones(C) * 0.5, size=(T, 3))  # three candidates, (T, 3, C)
    configs = np.array(list(itertools.product(range(C), repeat=b)))
    P = np.stack([np.prod([batch[:, j, c] for j, c in enumerate(cfg)], axis=0) for cfg in configs], axis=1)
    pc = P.mean(axis=0)  # p(config)
    cond = np.einsum("tm,tic->mic", P / pc, cand) / T  # p(y_i | config)
    exact = pc @ _entropy(cond)  # (3,)
    est = []
    for seed in range(300):
        labels, counts = stratified_configurations(batch, 3, np.random.default_rng(seed))
        W = configuration_weights(batch, labels)
        est.append((counts / counts.sum()) @ _entropy(np.einsum("tm,tic->mic", W, cand) / T))
    est = np.asarray(est)
    se = est.std(axis=0, ddof=1) / np.sqrt(len(est))
    assert (np.abs(est.mean(axis=0) - exact) < 4 * se).all(), (est.mean(axis=0), exact, se)


# --- the selection ------------------------------------------------------------------------------------------------
def test_ancestral_sampling_is_the_old_behaviour():
    # picks and gains of the code before the setting existed (commit da37607), same inputs and generator
    mc = np.random.default_rng(11).dirichlet(np.ones(4) * 0.5, size=(12, 60))
    pos, g = batchbald_select(
        mc, 8, np.random.default_rng(3), max_exact_configs=16, num_samples=300, sampling="ancestral"
    )
    assert pos.tolist() == [55, 27, 8, 44, 58, 56, 10, 4]
    # the same picks; the gains to rounding (the BLAS kernels of another CPU round sums differently: 1.6e-8
    # relative seen on an AMD EPYC)
    assert g.tolist() == pytest.approx(
        [
            0.6581244490725298,
            0.5708864351225137,
            0.4235573900033113,
            0.29371265888617126,
            0.19191107335400936,
            0.13019074874614145,
            0.08836741144939075,
            0.06574822309009343,
        ],
        rel=1e-6,
        abs=0,
    )


def test_the_sampling_setting_changes_nothing_while_the_batch_is_exact():
    mc = np.random.default_rng(2).dirichlet(np.ones(3), size=(10, 40))
    a = batchbald_select(mc, 4, np.random.default_rng(0), max_exact_configs=81, sampling="ancestral")
    b = batchbald_select(mc, 4, np.random.default_rng(0), max_exact_configs=81, sampling="stratified")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_stratified_selection_is_deterministic_for_a_fixed_generator_and_keeps_few_samples_working():
    mc = np.random.default_rng(1).dirichlet(np.ones(5) * 0.5, size=(20, 100))
    a = batchbald_select(mc, 8, np.random.default_rng(9), max_exact_configs=25, num_samples=500)
    b = batchbald_select(mc, 8, np.random.default_rng(9), max_exact_configs=25, num_samples=500)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # fewer samples than MC samples: one configuration from each
    pos, gains = batchbald_select(mc, 8, np.random.default_rng(0), max_exact_configs=5, num_samples=3)
    assert len(set(pos.tolist())) == 8 and np.isfinite(gains).all()


def test_stratified_batches_come_closer_to_exact_greedy_than_ancestral_ones_at_the_same_cost():
    """The benchmark (benchmarks/batchbald_sampling.py) in small: 4 pools of 60 candidates with near-copies, 3
    classes, batches of 7 sampled from the 3rd pick with 200 configurations, 2 generators each."""
    loss: dict[str, list[float]] = {"ancestral": [], "stratified": []}
    bias: dict[str, list[float]] = {"ancestral": [], "stratified": []}
    for ps in range(4):
        mc = _redundant_pool(100 + ps)
        exact, _ = batchbald_select(mc, 7, np.random.default_rng(0), max_exact_configs=3**7)
        best = _joint_mi(mc, exact)
        for sampling in loss:
            for k in range(2):
                pos, g = batchbald_select(
                    mc, 7, np.random.default_rng(k), max_exact_configs=9, num_samples=200, sampling=sampling
                )
                mi = _joint_mi(mc, pos)
                loss[sampling].append(best - mi)
                bias[sampling].append(float(g.sum()) - mi)
    assert min(loss["stratified"]) > -1e-9  # greedy on exact values is not beaten here
    assert np.mean(loss["stratified"]) < 0.5 * np.mean(loss["ancestral"])
    assert np.mean(np.abs(bias["stratified"])) < 0.6 * np.mean(np.abs(bias["ancestral"]))


def test_sampling_setting_is_checked():
    assert BatchBALD().params() == {"max_exact_configs": 4096, "num_samples": 1000, "sampling": "stratified"}
    with pytest.raises(ConfigError, match=r"'batchbald': sampling must be one of \('stratified', 'ancestral'\)"):
        build_strategy("batchbald", sampling="iid")
    with pytest.raises(ConfigError, match="sampling must be one of"):
        batchbald_select(np.full((2, 3, 2), 0.5), 2, np.random.default_rng(0), sampling="iid")
    mc = np.random.default_rng(0).dirichlet(np.ones(3), size=(8, 30))
    ids = np.arange(500, 530)
    sel = build_strategy("batchbald", sampling="ancestral", max_exact_configs=3)(
        Context(ids, mc_probs=mc), 5, np.random.default_rng(1)
    )
    pos, gains = batchbald_select(mc, 5, np.random.default_rng(1), ids=ids, max_exact_configs=3, sampling="ancestral")
    np.testing.assert_array_equal(sel.ids, ids[pos])


# --- stored runs --------------------------------------------------------------------------------------------------
def _resume(url: str, stored_params: dict, strategy: BatchBALD) -> None:
    """Store a run as older code wrote it, then reopen it the way Experiment.open_run does."""
    base = {"strategy": "batchbald", "dataset": "digits", "model": "mlp", "seed": 0}
    store = Store(url)
    store.open_run("r", {**base, "strategy_params": stored_params})
    store.open_run(
        "r", {**base, "strategy_params": strategy.params()}, absent_means={"strategy_params": strategy.params_added}
    )


def test_a_run_stored_without_the_setting_reads_as_ancestral(tmp_path):
    old = {"max_exact_configs": 4096, "num_samples": 1000}  # what the old code recorded
    assert BatchBALD.params_added == {"sampling": "ancestral"}
    _resume(f"sqlite:///{tmp_path / 'a.db'}", old, BatchBALD(sampling="ancestral"))
    with pytest.raises(ConfigMismatchError, match="'sampling': 'ancestral'.*'sampling': 'stratified'"):
        _resume(f"sqlite:///{tmp_path / 'b.db'}", old, BatchBALD())
    _resume(f"sqlite:///{tmp_path / 'c.db'}", BatchBALD().params(), BatchBALD())


@pytest.mark.skipif(not PROTOCOLS.exists(), reason="the committed protocol store is not in this checkout")
def test_every_committed_batchbald_run_resumes_as_ancestral_and_is_refused_under_the_new_default(tmp_path):
    with sqlite3.connect(f"file:{PROTOCOLS}?mode=ro", uri=True) as conn:  # read only: never touch the result
        configs = [json.loads(c) for (c,) in conn.execute("SELECT config FROM al_runs")]
    runs = [c for c in configs if c["strategy"] == "batchbald"]
    assert runs
    store = Store(f"sqlite:///{tmp_path / 'copy.db'}")
    for i, cfg in enumerate(runs):
        assert "sampling" not in cfg["strategy_params"]
        store.open_run(f"r{i}", cfg)
        old = build_strategy("batchbald", **{**BatchBALD.params_added, **cfg["strategy_params"]})
        store.open_run(
            f"r{i}", {**cfg, "strategy_params": old.params()}, absent_means={"strategy_params": old.params_added}
        )
        new = build_strategy("batchbald", **cfg["strategy_params"])
        with pytest.raises(ConfigMismatchError):
            store.open_run(
                f"r{i}", {**cfg, "strategy_params": new.params()}, absent_means={"strategy_params": new.params_added}
            )


def test_the_benchmark_script_runs_at_toy_size(tmp_path):
    """benchmarks/batchbald_sampling.py end to end (1 pool, 1 seed, no timing on the large pool)."""
    out = tmp_path / "bb.md"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "batchbald_sampling.py"
    args = ["--out", str(out), "--pools", "1", "--seeds", "1", "--cost-runs", "0"]
    p = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    text = out.read_text()
    assert "summed gains equal the exact joint MI" in text
    assert text.count("| ancestral (old) |") == 3 and text.count("| stratified (new default) |") == 3
