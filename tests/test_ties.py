"""Exact ties (issue 16, part 3): a BALD score of identical MC passes and a core-set distance to an exact copy of a
centre are exactly 0, not rounding noise, so that the documented tie rule (the smaller id first) decides."""

from __future__ import annotations

import numpy as np
import pytest

from al.strategy import Context, top_n
from strategies import build_strategy
from strategies.bayesian import _xlogx, batchbald_select, mi_tolerance, mutual_information
from strategies.diversity import kcenter_greedy, sq_dist_tolerance, sq_distances


def _raw_mi(mc: np.ndarray) -> np.ndarray:
    """The mutual information without the clip (what the code computed before)."""
    mean = mc.mean(axis=0)
    return -_xlogx(mean).sum(axis=1) + _xlogx(mc).sum(axis=2).mean(axis=0)


def _identical_passes(rng: np.random.Generator, T: int, N: int, C: int) -> np.ndarray:
    return np.broadcast_to(rng.dirichlet(np.ones(C) * 0.5, size=N), (T, N, C)).copy()


# --- BALD ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("T", "C"), [(2, 2), (5, 10), (20, 10), (50, 100), (100, 3)])
def test_bald_of_identical_passes_is_exactly_zero(T, C):
    rng = np.random.default_rng(T * 1000 + C)
    mc = _identical_passes(rng, T, 500, C)
    assert (mutual_information(mc) == 0.0).all()
    # nearly one-hot and exactly uniform passes too
    z = rng.normal(size=(200, C)) * 30
    e = np.exp(z - z.max(axis=1, keepdims=True))
    sharp = np.broadcast_to(e / e.sum(axis=1, keepdims=True), (T, 200, C)).copy()
    assert (mutual_information(sharp) == 0.0).all()
    assert (mutual_information(np.full((T, 3, C), 1.0 / C)) == 0.0).all()


def test_without_the_clip_identical_passes_score_rounding_noise():
    # the inputs of the test above are ones on which the old formula fails: the test is not vacuous
    raw = _raw_mi(_identical_passes(np.random.default_rng(20 * 1000 + 10), 20, 500, 10))
    assert (raw != 0).mean() > 0.2 and np.abs(raw).max() < 1e-14


def test_the_tolerance_is_relative_and_keeps_real_disagreement():
    assert mi_tolerance(20, 10) == pytest.approx(2 * 52 * np.finfo(float).eps)
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(10), size=50)
    # passes that differ by 1e-4 (relative) disagree for real: MI ~1e-9, far above the tolerance, is kept
    noisy = p[None] * (1 + 1e-4 * rng.normal(size=(20, 50, 10)))
    noisy /= noisy.sum(axis=2, keepdims=True)
    mi = mutual_information(noisy)
    assert (mi > 0).all() and mi.min() > 1e3 * mi_tolerance(20, 10) * (1 + np.log(10))
    np.testing.assert_allclose(mi, _raw_mi(noisy), rtol=0, atol=0)


def test_bald_ties_among_certain_candidates_go_to_the_smaller_id():
    rng = np.random.default_rng(0)
    T, C = 20, 10
    informative = rng.dirichlet(np.ones(C) * 0.5, size=(T, 3))  # passes disagree: MI > 0
    certain = _identical_passes(rng, T, 9, C)  # each candidate's passes agree: MI exactly 0
    mc = np.concatenate([informative, certain], axis=1)
    ids = rng.permutation(np.array([17, 3, 40, 12, 99, 5, 61, 28, 7, 50, 33, 71]))
    mi = mutual_information(mc)
    assert (mi[3:] == 0).all() and (mi[:3] > 0).all()
    sel = build_strategy("bald")(Context(ids, mc_probs=mc), 6, np.random.default_rng(0))
    top3 = ids[:3][np.argsort(-mi[:3])]
    np.testing.assert_array_equal(sel.ids[:3], top3)
    np.testing.assert_array_equal(sel.ids[3:], np.sort(ids[3:])[:3])
    # the unclipped scores would have ranked the certain ones by rounding noise instead
    noisy = top_n(_raw_mi(mc), ids, 6).ids
    assert not np.array_equal(noisy[3:], np.sort(ids[3:])[:3])


def test_batchbald_first_pick_and_ties_follow_the_same_exact_zeros():
    rng = np.random.default_rng(2)
    mc = _identical_passes(rng, 12, 8, 4)  # every candidate certain: all gains exactly 0
    ids = rng.permutation(100)[:8]
    pos, gains = batchbald_select(mc, 5, np.random.default_rng(0), ids=ids)
    np.testing.assert_array_equal(ids[pos], np.sort(ids)[:5])
    assert gains[0] == 0.0


# --- core-set -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [3, 64, 1280])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_coreset_copies_of_a_centre_are_at_distance_exactly_zero_and_picked_by_id(d, scale):
    rng = np.random.default_rng(d)
    centres = (rng.normal(size=(30, d)) * scale).astype(np.float32)
    fresh = (rng.normal(size=(5, d)) * scale).astype(np.float32)
    copies = centres[rng.integers(30, size=12)]  # exact copies of labelled samples
    x = np.concatenate([copies[:6], fresh, copies[6:]])
    ids = rng.permutation(1000)[: len(x)]
    pos, dist = kcenter_greedy(x, centres, len(x), ids=ids)
    assert set(pos[:5].tolist()) == set(range(6, 11))  # the 5 fresh points first
    assert (dist[:5] > 0).all()
    assert (dist[5:] == 0.0).all()  # before: up to ~1e-7 x scale, so copies were picked by noise
    copy_pos = np.r_[0:6, 11:17]
    np.testing.assert_array_equal(ids[pos[5:]], np.sort(ids[copy_pos]))


def test_sq_distances_are_exact_zeros_only_within_rounding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 128))
    x_sq = np.einsum("ij,ij->i", x, x)
    d2 = sq_distances(x, x_sq, x.copy(), x_sq.copy())  # (200, 200): the diagonal are copies
    assert (np.diag(d2) == 0).all() and (d2 >= 0).all()
    # the unclipped expansion is not exactly 0 on the diagonal
    raw = x_sq[:, None] - 2 * x @ x.T + x_sq[None]
    assert (np.diag(raw) != 0).any()
    # a near-copy at 1e-4 relative distance stays apart (1e-8 relative in D^2, far above the tolerance)
    near = x[0] + 1e-4 * np.linalg.norm(x[0]) * rng.normal(size=128) / np.sqrt(128)
    d = sq_distances(x[:1], x_sq[:1], near, float(near @ near))
    assert d[0] == pytest.approx(((x[0] - near) ** 2).sum(), rel=1e-6)
    assert sq_dist_tolerance(128) == pytest.approx(260 * np.finfo(float).eps)
