"""al strategies driving modAL's ActiveLearner with a TorchLearner."""

from __future__ import annotations

import numpy as np
import pytest

from al.errors import IncompatibleStrategyError
from al.interop.modal import query_strategy
from al.learner import TorchLearner
from strategies import STRATEGIES
from strategies.diversity import kcenter_greedy
from strategies.uncertainty import entropy_score

ActiveLearner = pytest.importorskip("modAL.models").ActiveLearner  # modAL.dropout needs pkg_resources: not used


@pytest.fixture(scope="module")
def digits_np(digits):
    x, y = digits.train_x.numpy(), digits.train_y.numpy()
    init = np.random.default_rng(0).permutation(len(y))[:20]
    rest = np.setdiff1d(np.arange(len(y)), init)[:300]
    return x[init], y[init], x[rest], y[rest]


def make_learner(strategy, x0, y0, **kw):
    est = TorchLearner("mlp", 10, (1, 8, 8), epochs=3, min_steps=30, seed=0)
    return ActiveLearner(estimator=est, X_training=x0, y_training=y0, query_strategy=query_strategy(strategy, **kw))


@pytest.mark.parametrize("name", ["entropy", "bald", "coreset", "badge", "regrad", "batchbald"])
def test_modal_active_learner_runs_each_strategy(name, digits_np):
    if name not in STRATEGIES.names():
        pytest.skip(f"strategy {name!r} is not registered (strategies/{name}.py not committed yet)")
    x0, y0, xp, yp = digits_np
    learner = make_learner(name, x0, y0, mc_samples=5)
    pool_x, pool_y, seen = xp.copy(), yp.copy(), []
    for n in (5, 2, 1):  # 2: modAL unpacks a bare 2-element result into (index, metrics); ours returns a pair
        idx, inst = learner.query(pool_x, n_instances=n)
        idx = np.asarray(idx)
        assert idx.shape == (n,) and len(set(idx)) == n and idx.min() >= 0 and idx.max() < len(pool_x)
        np.testing.assert_array_equal(inst, pool_x[idx])
        seen.extend(map(tuple, pool_x[idx].reshape(n, -1)))
        learner.teach(pool_x[idx], pool_y[idx])
        pool_x, pool_y = np.delete(pool_x, idx, axis=0), np.delete(pool_y, idx, axis=0)
    assert len(learner.X_training) == 20 + 8
    assert len(set(seen)) == 8  # positions were mapped into the shrinking pool correctly: nothing taken twice


def test_modal_positions_match_the_strategy_computed_by_hand(digits_np):
    x0, y0, xp, _ = digits_np
    learner = make_learner("entropy", x0, y0)
    idx, _ = learner.query(xp, n_instances=7)
    expected = np.lexsort((np.arange(len(xp)), -entropy_score(learner.estimator.predict_proba(xp))))[:7]
    np.testing.assert_array_equal(idx, expected)
    # core-set sees modAL's labelled rows as its initial centres
    learner = make_learner("coreset", x0, y0)
    idx, _ = learner.query(xp, n_instances=6)
    est = learner.estimator
    pos, _ = kcenter_greedy(est.embed(xp), est.embed(x0), 6)
    np.testing.assert_array_equal(idx, pos)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_modal_adapter_is_deterministic_and_refuses_foreign_estimators(digits_np):
    x0, y0, xp, _ = digits_np
    a = make_learner("badge", x0, y0, seed=3).query(xp, n_instances=8)[0]
    b = make_learner("badge", x0, y0, seed=3).query(xp, n_instances=8)[0]
    np.testing.assert_array_equal(a, b)
    from sklearn.linear_model import LogisticRegression

    lr = ActiveLearner(
        estimator=LogisticRegression(max_iter=50),
        X_training=x0.reshape(20, -1),
        y_training=y0,
        query_strategy=query_strategy("entropy"),
    )
    with pytest.raises(IncompatibleStrategyError, match="TorchLearner"):
        query_strategy("entropy")(lr, xp.reshape(len(xp), -1), 3)
