"""Known-answer tests for bald, batchbald, coreset and badge, and the pool-subset id mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fast_config
from torch import nn

from al.errors import ConfigError, IncompatibleStrategyError
from al.learner import TorchLearner
from al.loop import Experiment
from al.store import Store
from al.strategy import Context, Selection, Strategy, top_n
from strategies import build_strategy
from strategies.bayesian import batchbald_select, conditional_entropy, mutual_information
from strategies.diversity import gradient_embeddings, kcenter_greedy, kmeans_pp_unique


def sharp_mc(rng: np.random.Generator, T: int, N: int, C: int, scale: float = 30.0) -> np.ndarray:
    """MC probabilities that are nearly one-hot per sample but disagree across samples: (T, N, C)."""
    z = rng.normal(size=(T, N, C)) * scale
    e = np.exp(z - z.max(axis=2, keepdims=True))
    return e / e.sum(axis=2, keepdims=True)


# --- BALD -----------------------------------------------------------------------------------------------------
def test_bald_is_zero_when_all_mc_samples_agree():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=7)
    mc = np.broadcast_to(p, (12, 7, 4)).copy()
    np.testing.assert_allclose(mutual_information(mc), 0.0, atol=1e-12)
    assert (mutual_information(mc) >= 0).all()


def test_bald_matches_hand_computed_two_class_value():
    # Two passes: p(y=1) = 0.9 and 0.5. Predictive mean 0.7.
    mc = np.array([[[0.1, 0.9]], [[0.5, 0.5]]])
    h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))  # noqa: E731
    expected = h(0.7) - 0.5 * (h(0.9) + h(0.5))
    assert expected == pytest.approx(0.1017, abs=1e-4)  # 0.6109 - 0.5 * (0.3251 + 0.6931)
    assert mutual_information(mc)[0] == pytest.approx(expected, rel=1e-12)
    assert conditional_entropy(mc)[0] == pytest.approx(0.5 * (h(0.9) + h(0.5)), rel=1e-12)


def test_bald_is_log_c_for_confident_disagreeing_passes():
    C = 4
    mc = np.eye(C)[:, None, :]  # pass t is certain of class t
    assert mutual_information(mc)[0] == pytest.approx(np.log(C))


def test_bald_strategy_ranks_by_mutual_information_and_refuses_models_without_dropout():
    rng = np.random.default_rng(1)
    mc = rng.dirichlet(np.ones(3) * 0.5, size=(10, 30))
    ids = np.arange(100, 130)
    sel = build_strategy("bald")(Context(ids, mc_probs=mc), 5, rng)
    mi = mutual_information(mc)
    np.testing.assert_array_equal(sel.ids, ids[np.argsort(-mi)[:5]])
    no_dropout = TorchLearner(
        lambda n_classes, input_shape: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 10, (1, 8, 8)
    ).reset()
    for name in ("bald", "batchbald"):
        with pytest.raises(IncompatibleStrategyError, match="dropout"):
            build_strategy(name).check_learner(no_dropout)


def test_mc_samples_keep_batchnorm_in_eval_and_only_dropout_stochastic():
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)
    )
    lr = TorchLearner(lambda n_classes, input_shape: net, 10, (1, 8, 8)).reset()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(16, 1, 8, 8)
    mc = lr.mc_predict_proba(x, 8, seed=0)
    assert mutual_information(mc).max() > 0  # dropout makes the passes differ
    for k, v in net.state_dict().items():  # BatchNorm running statistics untouched
        assert torch.equal(v, before[k]), k
    net[4].p = 0.0  # no active dropout left: every pass identical, so BALD is exactly zero
    np.testing.assert_allclose(mutual_information(lr.mc_predict_proba(x, 5, seed=0)), 0.0, atol=1e-12)


# --- BatchBALD ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_batchbald_batch_of_one_is_balds_top_pick(seed):
    rng = np.random.default_rng(seed)
    mc = rng.dirichlet(np.ones(5) * 0.4, size=(16, 200))
    ids = rng.permutation(1000)[:200]
    ctx = Context(ids, mc_probs=mc)
    bb = build_strategy("batchbald")(ctx, 1, np.random.default_rng(0))
    bald = build_strategy("bald")(ctx, 1, np.random.default_rng(0))
    assert bb.ids[0] == bald.ids[0]
    assert bb.scores[0] == pytest.approx(mutual_information(mc).max())


def test_batchbald_ties_go_to_the_smaller_id_like_bald():
    mc = np.broadcast_to(np.array([[0.5, 0.5]]), (4, 6, 2)).copy()  # every BALD score 0
    ids = np.array([50, 7, 31, 2, 90, 11])
    sel = build_strategy("batchbald")(Context(ids, mc_probs=mc), 3, np.random.default_rng(0))
    np.testing.assert_array_equal(sel.ids, [2, 7, 11])


@pytest.mark.parametrize("sharp", [True, False])
def test_batchbald_never_picks_a_copy_on_a_pool_of_exact_duplicates(sharp):
    rng = np.random.default_rng(3)
    T, K, C, R = 20, 6, 4, 3
    base = sharp_mc(rng, T, K, C) if sharp else rng.dirichlet(np.ones(C) * 0.5, size=(T, K))
    mc = np.concatenate([base] * R, axis=1)  # candidate j is a copy of j % K
    perm = rng.permutation(K * R)  # copies interleaved at random positions and ids
    mc, group = mc[:, perm], (np.arange(K * R) % K)[perm]
    ids = rng.permutation(10_000)[: K * R]
    for n in range(1, K + 1):
        pos, gains = batchbald_select(mc, n, np.random.default_rng(0), ids=ids)
        assert len(set(group[pos])) == n, f"copy picked at n={n}: groups {group[pos]}"
        assert len(set(pos)) == n
    # past K picks only copies are left: still no repeated position
    pos, _ = batchbald_select(mc, K * R, np.random.default_rng(0), ids=ids)
    assert sorted(pos) == list(range(K * R))


def test_batchbald_prefers_a_different_sample_over_a_near_copy():
    # Candidate 1 is candidate 0 plus tiny noise; candidate 2 is informative about other MC samples.
    rng = np.random.default_rng(0)
    T, C = 20, 2
    a = sharp_mc(rng, T, 1, C)
    near = np.clip(a + rng.normal(scale=1e-4, size=a.shape), 1e-9, None)
    near /= near.sum(axis=2, keepdims=True)
    other = sharp_mc(rng, T, 1, C)
    mc = np.concatenate([a, near, other], axis=1)
    pos, gains = batchbald_select(mc, 2, np.random.default_rng(0))
    assert 2 in pos and not {0, 1} <= set(pos)
    assert gains[1] <= gains[0] + 1e-12  # greedy gains never grow (submodularity)


def test_batchbald_exact_gains_match_brute_force_joint_entropy():
    rng = np.random.default_rng(5)
    T, N, C = 8, 6, 3
    mc = rng.dirichlet(np.ones(C), size=(T, N))
    pos, gains = batchbald_select(mc, 3, rng, max_exact_configs=10_000)

    def joint_mi(idx):
        # I(y_idx; w) = H(y_idx) - sum_j E_w H(y_j | w), by enumerating all C^b configurations
        configs = np.stack(np.meshgrid(*[np.arange(C)] * len(idx), indexing="ij"), -1).reshape(-1, len(idx))
        pj = np.array(
            [np.mean(np.prod([mc[:, j, c] for j, c in zip(idx, cfg, strict=True)], axis=0)) for cfg in configs]
        )
        return -(pj * np.log(pj)).sum() - conditional_entropy(mc)[list(idx)].sum()

    for b in range(1, 4):
        assert joint_mi(pos[:b]) - (joint_mi(pos[: b - 1]) if b > 1 else 0.0) == pytest.approx(gains[b - 1], abs=1e-10)
    best3 = max(joint_mi([pos[0], pos[1], j]) for j in range(N) if j not in pos[:2])
    assert joint_mi(pos) == pytest.approx(best3, abs=1e-10)  # the greedy third pick is the best third pick


def test_batchbald_sampled_configurations_estimate_the_exact_gain():
    rng = np.random.default_rng(2)
    mc = rng.dirichlet(np.ones(4) * 0.5, size=(20, 80))
    pos_x, g_x = batchbald_select(mc, 5, np.random.default_rng(0), max_exact_configs=10**6)
    pos_s, g_s = batchbald_select(mc, 5, np.random.default_rng(0), max_exact_configs=4, num_samples=4000)
    np.testing.assert_array_equal(pos_x[:2], pos_s[:2])  # exact until 4 configurations are exceeded
    # the estimate at the third pick (sampled from then on) is close to the exact value
    assert g_s[2] == pytest.approx(g_x[2], abs=0.03)
    # and it is deterministic for a fixed generator
    pos_s2, g_s2 = batchbald_select(mc, 5, np.random.default_rng(0), max_exact_configs=4, num_samples=4000)
    np.testing.assert_array_equal(pos_s, pos_s2)
    np.testing.assert_array_equal(g_s, g_s2)


def test_batchbald_large_batch_does_not_underflow():
    rng = np.random.default_rng(0)
    mc = rng.dirichlet(np.ones(10), size=(10, 300))
    pos, gains = batchbald_select(mc, 120, rng, num_samples=200)
    assert len(set(pos)) == 120 and np.isfinite(gains).all()


def test_batchbald_rejects_bad_settings():
    with pytest.raises(ConfigError):
        build_strategy("batchbald", num_samples=0)


# --- core-set -------------------------------------------------------------------------------------------------
def test_coreset_on_a_line_picks_the_farthest_first_order():
    x = np.arange(1, 17, dtype=np.float32)[:, None]  # points 1..16, labelled centre at 0
    ctx = Context(np.arange(1, 17), np.array([0]), embeddings=x, labelled_embeddings=np.zeros((1, 1), np.float32))
    sel = build_strategy("coreset")(ctx, 8, np.random.default_rng(0))
    np.testing.assert_array_equal(sel.ids, [16, 8, 4, 12, 2, 6, 10, 14])  # ties (4 vs 12...) to the smaller id
    np.testing.assert_allclose(sel.scores, [16, 8, 4, 4, 2, 2, 2, 2])


def test_coreset_matches_a_brute_force_k_center_and_never_repeats():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    centres = rng.normal(size=(20, 5)).astype(np.float32)
    pos, _ = kcenter_greedy(x, centres, 10, chunk_bytes=300 * 4 * 3)  # 3 centres per block
    chosen, expected = list(centres.astype(np.float64)), []
    for _ in range(10):
        d = np.min(((x[:, None, :].astype(np.float64) - np.array(chosen)[None]) ** 2).sum(-1), axis=1)
        d[expected] = -1
        expected.append(int(np.argmax(d)))
        chosen.append(x[expected[-1]])
    np.testing.assert_array_equal(pos, expected)
    # a pool of 3 distinct points repeated: all distances hit 0 after 3 picks, yet no id repeats
    rep = np.repeat(x[:3], 4, axis=0)
    pos, dist = kcenter_greedy(rep, np.empty((0, 5), np.float32), 12, rng=np.random.default_rng(1))
    assert sorted(pos) == list(range(12))
    assert (dist[1:3] > 0.1).all() and (dist[3:] == 0).all()  # copies of a centre: exactly 0 (tests/test_ties.py)


def test_coreset_without_labelled_set_needs_and_uses_rng():
    x = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(ConfigError, match="rng"):
        kcenter_greedy(x, np.empty((0, 3)), 3)
    a, _ = kcenter_greedy(x, np.empty((0, 3)), 5, rng=np.random.default_rng(4))
    b, _ = kcenter_greedy(x, np.empty((0, 3)), 5, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)


# --- BADGE ----------------------------------------------------------------------------------------------------
def test_gradient_embedding_equals_autograd_of_last_layer():
    torch.manual_seed(0)
    head = nn.Linear(6, 4)
    h = torch.randn(5, 6)
    logits = head(h)
    p = torch.softmax(logits, 1)
    g = gradient_embeddings(p.detach().numpy(), h.numpy())
    for i in range(5):
        head.zero_grad()
        nn.functional.cross_entropy(head(h[i : i + 1]), logits[i : i + 1].argmax(1)).backward()
        np.testing.assert_allclose(g[i], head.weight.grad.numpy().reshape(-1), rtol=1e-5, atol=1e-6)


def test_badge_returns_unique_ids_on_repeated_points():
    rng = np.random.default_rng(0)
    probs = np.repeat(rng.dirichlet(np.ones(3), size=4), 10, axis=0)
    emb = np.repeat(rng.normal(size=(4, 8)).astype(np.float32), 10, axis=0)
    ids = rng.permutation(1000)[:40]
    for n in (1, 3, 4, 10, 40):
        for seed in range(3):
            sel = build_strategy("badge")(Context(ids, probs=probs, embeddings=emb), n, np.random.default_rng(seed))
            assert len(np.unique(sel.ids)) == n and set(sel.ids) <= set(ids)
    # with 4 distinct points and n = 4, k-means++ covers all four (D^2 > 0 for any uncovered point)
    g = gradient_embeddings(probs, emb)
    pos = kmeans_pp_unique(g, 4, np.random.default_rng(0))
    assert len({tuple(r) for r in g[pos]}) == 4


def test_badge_refuses_a_model_whose_output_is_not_the_last_linear():
    bad = TorchLearner(
        lambda n_classes, input_shape: nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Dropout(0.1), nn.Tanh()),
        10,
        (1, 8, 8),
    ).reset()
    with pytest.raises(IncompatibleStrategyError, match="last nn.Linear"):
        build_strategy("badge").check_learner(bad)
    good = TorchLearner("mlp", 10, (1, 8, 8)).reset()
    modes = [m.training for m in good.module_.modules()]
    build_strategy("badge").check_learner(good)
    assert [m.training for m in good.module_.modules()] == modes  # the check leaves the model's modes alone


# --- pool subset: picks map back to the right global ids ------------------------------------------------------
class PixelSum(Strategy):
    """Scores each candidate by the sum of its own input: a score tied to the id, so a mix-up shows."""

    name = "pixel-sum-test"
    needs = frozenset({"inputs"})

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        s = ctx.inputs.flatten(1).sum(1).double().numpy()
        return top_n(s, ctx.candidates, n)


@pytest.mark.parametrize("strategy", ["pixel", "bald"])
def test_pool_subset_picks_map_back_to_global_ids(digits, store_url, strategy):
    cfg = fast_config(strategy="bald", pool_subset=100, budget=80, query_size=15, init_size=20)
    store = Store(store_url)
    strat = PixelSum() if strategy == "pixel" else None
    Experiment(cfg, store, name="sub", dataset=digits, strategy=strat).run()
    q = store.queries("sub")
    labels = store.labels("sub")
    first_round = labels.groupby("sample_id")["round_idx"].min()
    pixel = digits.train_x.flatten(1).sum(1).double().numpy()
    for r, grp in q[q.round_idx > 0].groupby("round_idx"):
        ids = grp.sort_values("rank")["sample_id"].to_numpy()
        assert len(set(ids)) == len(ids) == 15
        assert (first_round.loc[ids] == r).all()  # unlabelled before this round, labelled in it
        if strategy == "pixel":
            np.testing.assert_allclose(grp.sort_values("rank")["score"].to_numpy(), pixel[ids], rtol=1e-5)
            # the picks are the top of a 100-sample subset, not of the whole pool: some better ids were skipped
            unl = np.setdiff1d(np.arange(digits.n_pool), first_round[first_round < r].index.to_numpy())
            assert pixel[ids].min() < np.sort(pixel[unl])[-15]


# --- Repeated-MNIST construction ------------------------------------------------------------------------------
def test_repeat_with_noise_has_stable_copy_major_ids(digits):
    from al.data import DATASETS, repeat_with_noise

    assert "repeated-mnist" in DATASETS.names()
    rep = repeat_with_noise(digits, copies=3, noise=0.1)
    n = digits.n_pool
    assert rep.n_pool == 3 * n
    for k in range(3):
        assert torch.equal(rep.train_y[k * n : (k + 1) * n], digits.train_y)  # id k*n + i is a copy of image i
        diff = rep.train_x[k * n : (k + 1) * n] - digits.train_x
        assert 0.09 < float(diff.std()) < 0.11 and abs(float(diff.mean())) < 0.01
    assert not torch.equal(rep.train_x[:n], rep.train_x[n : 2 * n])  # each copy has its own noise
    assert torch.equal(rep.train_x, repeat_with_noise(digits).train_x)  # the same pool in every process
    assert torch.equal(rep.test_x, digits.test_x) and torch.equal(rep.test_y, digits.test_y)
