"""The shared contract, run over EVERY registered strategy (built-in and entry-point ones alike).

A strategy must return n unique ids, all from the candidates (so all unlabelled), the same ids for the same
generator, leave the context's arrays, the pool inputs and the model unchanged, and refuse n > pool. The
context is built the way the loop builds it (a trained TorchLearner plus ``inputs_of``), so model-based
strategies are covered without special cases.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from al.errors import ConfigError
from al.learner import TorchLearner
from al.seeding import round_rng
from al.strategy import Context
from strategies import STRATEGIES, build_strategy

N_LABELLED, N_CAND = 30, 150
#: The contract is run here on a classifier, for every strategy that applies to classification (the regression
#: ones run it on a regressor in test_regression_task.py).
CLASSIFIERS = [n for n in STRATEGIES.names() if "classification" in STRATEGIES.get(n).tasks]


@pytest.fixture(scope="module")
def trained(digits):
    """A small MLP trained on 30 digits, the pool inputs, the labelled ids and the candidate ids."""
    g = np.random.default_rng(0)
    order = g.permutation(digits.n_pool)
    labelled, cand = np.sort(order[:N_LABELLED]), np.sort(order[N_LABELLED : N_LABELLED + N_CAND])
    learner = TorchLearner("mlp", digits.n_classes, digits.input_shape, epochs=5, min_steps=40, seed=0)
    learner.fit(digits.train_x[labelled], digits.train_y[labelled])
    return learner, digits.train_x, labelled, cand


def make_ctx(trained, candidates=None) -> Context:
    learner, x, labelled, cand = trained
    cand = cand if candidates is None else candidates
    # inputs_of hands out a copy each call, as the loop does; the test also checks the source is untouched.
    return Context(
        cand,
        labelled,
        learner=learner,
        inputs_of=lambda ids: x[torch.from_numpy(ids)],
        mc_samples=5,
        rng_for=lambda purpose: round_rng(3, 1, purpose),
        n_classes=10,
    )


def model_snapshot(model: torch.nn.Module):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_strategy_contract(name, trained):
    learner, x, labelled, cand = trained
    strategy = build_strategy(name)
    strategy.check_learner(learner)
    x_before = x.clone()
    model_before = model_snapshot(learner.module_)

    for n in (1, 7, 25):
        ctx = make_ctx(trained)
        sel = strategy(ctx, n, np.random.default_rng(11))
        ids = np.asarray(sel.ids)
        assert ids.dtype.kind == "i" and ids.shape == (n,)
        assert len(np.unique(ids)) == n, f"{name} returned duplicate ids"
        assert np.isin(ids, cand).all(), f"{name} returned ids outside the candidates"
        assert not np.isin(ids, labelled).any(), f"{name} returned labelled ids"
        assert np.asarray(sel.scores).shape == (n,)
        if sel.pool_scores is not None:
            assert np.asarray(sel.pool_scores).shape == (len(cand),)

    # determinism: a fresh context and the same generator seed give the same picks and scores
    ctx_a, ctx_b = make_ctx(trained), make_ctx(trained)
    a = strategy(ctx_a, 10, np.random.default_rng(5))
    b = strategy(ctx_b, 10, np.random.default_rng(5))
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)

    # no mutation: the context's cached arrays, the pool inputs, the model (weights, modes, grads, flags)
    cached = {
        k: copy.deepcopy(v)
        for k, v in vars(ctx_a).items()
        if k in ("probs", "mc_probs", "embeddings", "labelled_embeddings", "inputs")
    }
    strategy(ctx_a, 10, np.random.default_rng(6))
    for k, v in cached.items():
        now = vars(ctx_a)[k]
        assert torch.equal(now, v) if isinstance(v, torch.Tensor) else np.array_equal(now, v), f"{name} changed {k}"
    assert torch.equal(x, x_before), f"{name} changed the pool inputs"
    state, modes, flags = model_snapshot(learner.module_)
    for k, v in state.items():
        assert torch.equal(v, model_before[0][k]), f"{name} changed model tensor {k}"
    assert modes == model_before[1], f"{name} left a module in another train/eval mode"
    assert flags == model_before[2], f"{name} flipped requires_grad"
    assert all(p.grad is None or not p.grad.any() for p in learner.module_.parameters()), (
        f"{name} left gradients in .grad"
    )


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_strategy_refuses_more_than_the_pool(name, trained):
    strategy = build_strategy(name)
    small = trained[3][:6]
    with pytest.raises(ConfigError, match="cannot select 7"):
        strategy(make_ctx(trained, small), 7, np.random.default_rng(0))
    sel = strategy(make_ctx(trained, small), 6, np.random.default_rng(0))  # the whole pool is fine
    assert sorted(sel.ids) == sorted(small)


def test_every_builtin_family_is_registered():
    names = set(STRATEGIES.names())
    assert {"random", "entropy", "margin", "least-confidence", "bald", "batchbald", "coreset", "badge"} <= names
