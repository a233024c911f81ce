"""BADGE's k-means++ seeding as Ash et al. (ICLR 2020) wrote it (issue 16, part 1): the largest-norm embedding first,
then one D^2-weighted draw per centre; scikit-learn's greedy seeding kept as ``seeding="greedy"`` for stored runs."""

from __future__ import annotations

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
from strategies.diversity import BADGE, gradient_embeddings, kmeans_pp_published, kmeans_pp_unique

PROTOCOLS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "protocols.sqlite"

# seven distinct 2-d points; row 6 has the largest norm
POINTS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [-1.0, -1.0], [2.0, 2.0], [-4.0, 3.0]])


def _d2(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return ((x - c) ** 2).sum(axis=1)


def test_the_first_pick_is_the_largest_norm_and_ties_go_to_the_smaller_id():
    assert kmeans_pp_published(POINTS, 1, np.random.default_rng(0))[0] == 6
    # two rows of exactly the same largest norm (25): the smaller id wins, wherever it sits in the pool
    x = np.array([[1.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 1.0, 1.0], [0.0, 4.0, 3.0]])
    for ids, want in (([10, 20, 30, 40], 1), ([10, 40, 30, 20], 3)):
        for seed in range(5):
            pos = kmeans_pp_published(x, 2, np.random.default_rng(seed), ids=np.array(ids))
            assert pos[0] == want
    # the strategy: the first id is the candidate with the largest gradient-embedding norm
    rng = np.random.default_rng(1)
    probs, emb = rng.dirichlet(np.ones(4), size=50), rng.normal(size=(50, 6)).astype(np.float32)
    g = gradient_embeddings(probs, emb)
    ids = rng.permutation(500)[:50]
    sel = build_strategy("badge")(Context(ids, probs=probs, embeddings=emb), 5, np.random.default_rng(0))
    assert sel.ids[0] == ids[np.argmax((g.astype(np.float64) ** 2).sum(axis=1))]
    assert sel.scores[0] == pytest.approx(np.sqrt((g.astype(np.float64) ** 2).sum(axis=1)).max())


def test_the_next_centres_follow_the_d2_law():
    """Second and third picks of 20,000 seeded draws against the exact law: P(i, j) = D0^2(i) / sum D0^2 *
    min(D0^2, Di^2)(j) / sum over the unpicked rows (one candidate per step, no best-of-several)."""
    first = 6
    d0 = _d2(POINTS, POINTS[first])
    expected: dict[tuple[int, int], float] = {}
    for i in range(7):
        if i == first:
            continue
        d = np.minimum(d0, _d2(POINTS, POINTS[i]))
        d[[first, i]] = 0
        for j in range(7):
            if d[j] > 0:
                expected[(i, j)] = d0[i] / d0.sum() * d[j] / d.sum()
    assert sum(expected.values()) == pytest.approx(1.0)
    draws = 20_000
    rng = np.random.default_rng(2024)
    ids = np.array([70, 10, 60, 20, 50, 30, 40])  # ids in another order than the rows: the law is the same
    counts: dict[tuple[int, int], int] = dict.fromkeys(expected, 0)
    for _ in range(draws):
        pos = kmeans_pp_published(POINTS, 3, rng, ids=ids)
        assert pos[0] == first
        counts[(int(pos[1]), int(pos[2]))] += 1  # a pair outside the law's support raises KeyError
    keys = sorted(expected)
    obs = np.array([counts[k] for k in keys])
    exp = np.array([expected[k] for k in keys]) * draws
    assert chisquare(obs, exp).pvalue > 1e-3
    # and each single probability within 4 standard errors
    se = np.sqrt(exp * (1 - exp / draws))
    assert (np.abs(obs - exp) < 4 * se + 1).all()


def test_published_seeding_is_reproducible_under_the_seeded_rng_and_independent_of_pool_order():
    rng = np.random.default_rng(3)
    g = gradient_embeddings(rng.dirichlet(np.ones(5), size=300), rng.normal(size=(300, 8)).astype(np.float32))
    ids = rng.permutation(10_000)[:300]
    a = kmeans_pp_published(g, 15, np.random.default_rng(7), ids=ids)
    b = kmeans_pp_published(g, 15, np.random.default_rng(7), ids=ids)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 15
    others = {tuple(kmeans_pp_published(g, 15, np.random.default_rng(s), ids=ids)) for s in range(8, 13)}
    assert len(others) > 1  # the draws are random, not a fixed order
    perm = rng.permutation(300)  # the same pool in another order: the same generator picks the same ids
    c = kmeans_pp_published(g[perm], 15, np.random.default_rng(7), ids=ids[perm])
    np.testing.assert_array_equal(ids[perm][c], ids[a])
    # through the strategy: same ids for the same generator
    probs, emb = rng.dirichlet(np.ones(4), size=80), rng.normal(size=(80, 6)).astype(np.float32)
    ctx_ids = np.arange(100, 180)
    s1 = build_strategy("badge")(Context(ctx_ids, probs=probs, embeddings=emb), 10, np.random.default_rng(5))
    s2 = build_strategy("badge")(Context(ctx_ids, probs=probs, embeddings=emb), 10, np.random.default_rng(5))
    np.testing.assert_array_equal(s1.ids, s2.ids)


def test_copies_of_a_centre_are_never_drawn_and_repeated_pools_fall_back_to_norms():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 8))
    x = np.repeat(base, 10, axis=0)  # 4 distinct points, 10 copies each
    ids = rng.permutation(1000)[:40]
    for seed in range(20):
        pos = kmeans_pp_published(x, 4, np.random.default_rng(seed), ids=ids)
        assert len({tuple(r) for r in x[pos]}) == 4  # a copy of a centre has D^2 exactly 0
    # past the 4 distinct points: the unpicked rows of largest norm, ties (copies) by the smaller id
    pos = kmeans_pp_published(x, 12, np.random.default_rng(0), ids=ids)
    assert len(set(pos.tolist())) == 12
    rest = pos[4:]
    norms = (x**2).sum(axis=1)
    keyed = sorted((-norms[i], ids[i]) for i in set(range(40)) - set(pos[:4].tolist()))
    assert [(-norms[i], ids[i]) for i in rest] == keyed[:8]


def test_greedy_seeding_is_the_old_behaviour_bit_for_bit():
    rng = np.random.default_rng(4)
    probs, emb = rng.dirichlet(np.ones(4), size=120), rng.normal(size=(120, 6)).astype(np.float32)
    ids = rng.permutation(1000)[:120]
    ctx = Context(ids, probs=probs, embeddings=emb)
    sel = build_strategy("badge", seeding="greedy")(ctx, 9, np.random.default_rng(3))
    pos = kmeans_pp_unique(gradient_embeddings(probs, emb), 9, np.random.default_rng(3), ids=ids)
    np.testing.assert_array_equal(sel.ids, ids[pos])
    new = build_strategy("badge")(Context(ids, probs=probs, embeddings=emb), 9, np.random.default_rng(3))
    assert not np.array_equal(new.ids, sel.ids)


def test_seeding_setting_is_checked():
    assert BADGE().params() == {"seeding": "published"}
    assert build_strategy("badge", seeding="greedy").params() == {"seeding": "greedy"}
    with pytest.raises(ConfigError, match=r"strategy 'badge': seeding must be one of \('published', 'greedy'\)"):
        build_strategy("badge", seeding="sklearn")


# ------------------------------------------------------------------------------------------------ stored runs
def _resume(url: str, stored_params: dict, strategy: BADGE) -> None:
    """Store a run as older code wrote it, then reopen it the way Experiment.open_run does."""
    base = {"strategy": "badge", "dataset": "digits", "model": "mlp", "seed": 0}
    store = Store(url)
    store.open_run("r", {**base, "strategy_params": stored_params})
    store.open_run(
        "r", {**base, "strategy_params": strategy.params()}, absent_means={"strategy_params": strategy.params_added}
    )


def test_a_run_stored_without_the_setting_reads_as_greedy(tmp_path):
    assert BADGE.params_added == {"seeding": "greedy"}
    _resume(f"sqlite:///{tmp_path / 'a.db'}", {}, BADGE(seeding="greedy"))  # what the old code recorded
    with pytest.raises(ConfigMismatchError, match="'seeding': 'greedy'.*'seeding': 'published'"):
        _resume(f"sqlite:///{tmp_path / 'b.db'}", {}, BADGE())
    _resume(f"sqlite:///{tmp_path / 'c.db'}", BADGE().params(), BADGE())  # a run recorded by this code


@pytest.mark.skipif(not PROTOCOLS.exists(), reason="the committed protocol store is not in this checkout")
def test_every_committed_badge_run_resumes_as_greedy_and_is_refused_under_the_new_default(tmp_path):
    with sqlite3.connect(f"file:{PROTOCOLS}?mode=ro", uri=True) as conn:  # read only: never touch the result
        configs = [json.loads(c) for (c,) in conn.execute("SELECT config FROM al_runs")]
    runs = [c for c in configs if c["strategy"] == "badge"]
    assert runs
    store = Store(f"sqlite:///{tmp_path / 'copy.db'}")
    for i, cfg in enumerate(runs):
        assert "seeding" not in cfg["strategy_params"]
        store.open_run(f"r{i}", cfg)
        old = build_strategy("badge", **{**BADGE.params_added, **cfg["strategy_params"]})
        store.open_run(
            f"r{i}", {**cfg, "strategy_params": old.params()}, absent_means={"strategy_params": old.params_added}
        )
        new = build_strategy("badge", **cfg["strategy_params"])
        with pytest.raises(ConfigMismatchError):
            store.open_run(
                f"r{i}", {**cfg, "strategy_params": new.params()}, absent_means={"strategy_params": new.params_added}
            )


def test_the_benchmark_script_runs_at_toy_size(tmp_path):
    """benchmarks/badge_seeding.py end to end (1 pool, 1 digits model, 1 draw): the tables it promises."""
    out = tmp_path / "badge.md"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "badge_seeding.py"
    args = ["--out", str(out), "--synthetic-pools", "1", "--digits-seeds", "1", "--draws", "1"]
    p = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    text = out.read_text()
    assert "### Synthetic pool" in text and "### Digits" in text
    for rule in ("published (new default)", "greedy (old)", "random"):
        assert text.count(f"| {rule} |") == 2
