"""The classic scores on hand-built probabilities with known answers."""

import numpy as np
import pytest

from al.errors import ConfigError, ModelError, StrategyError
from al.strategy import Context, top_n
from strategies import build_strategy
from strategies.uncertainty import entropy_score, least_confidence_score, margin_score

P = np.array(
    [
        [1.0, 0.0, 0.0],  # id 10: certain
        [1 / 3, 1 / 3, 1 / 3],  # id 11: uniform
        [0.5, 0.5, 0.0],  # id 12: coin flip between two
        [0.6, 0.3, 0.1],  # id 13
    ]
)
IDS = np.array([10, 11, 12, 13])


def test_entropy_values():
    np.testing.assert_allclose(
        entropy_score(P), [0.0, np.log(3), np.log(2), -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1))]
    )


def test_margin_and_least_confidence_values():
    np.testing.assert_allclose(margin_score(P), [-1.0, 0.0, 0.0, -0.3])
    np.testing.assert_allclose(least_confidence_score(P), [0.0, 2 / 3, 0.5, 0.4])


@pytest.mark.parametrize(
    "name,expected",
    [
        ("entropy", [11, 13]),  # H(.6,.3,.1)=0.90 > log 2
        ("least-confidence", [11, 12]),
        ("margin", [11, 12]),  # tie at 0 broken by the smaller id
    ],
)
def test_strategy_picks(name, expected):
    sel = build_strategy(name)(Context(IDS, probs=P), 2, np.random.default_rng(0))
    assert sel.ids.tolist() == expected
    assert len(sel.pool_scores) == len(IDS)


def test_ties_broken_by_id_not_position():
    scores = np.array([1.0, 2.0, 2.0, 2.0])
    ids = np.array([9, 7, 3, 5])
    assert top_n(scores, ids, 2).ids.tolist() == [3, 5]


def test_nan_scores_refused_as_a_model_problem():
    with pytest.raises(ModelError, match="NaN .*model's outputs"):
        top_n(np.array([np.nan, 1.0]), np.array([0, 1]), 1)


def test_scores_and_ids_of_different_shapes_are_a_strategy_bug():
    with pytest.raises(StrategyError, match=r"scores \(3,\) and ids \(2,\) differ"):
        top_n(np.array([0.1, 0.2, 0.3]), np.array([0, 1]), 1)


def test_random_is_seeded_and_unique():
    s = build_strategy("random")
    ctx = Context(np.arange(100, 200))
    a = s(ctx, 30, np.random.default_rng(1)).ids
    b = s(ctx, 30, np.random.default_rng(1)).ids
    assert a.tolist() == b.tolist() and len(set(a)) == 30 and set(a) <= set(range(100, 200))


def test_n_larger_than_candidates_refused():
    with pytest.raises(ConfigError, match="cannot select 5"):
        build_strategy("entropy")(Context(IDS, probs=P), 5, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="at least 1"):
        build_strategy("entropy")(Context(IDS, probs=P), 0, np.random.default_rng(0))
