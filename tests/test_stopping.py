"""al.stopping: label-free stopping criteria on hand-made predictions: kappa streaks, the degenerate constant
case, uncertainty thresholds, decisions rebuilt from the recorded values, settings and names."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from al.errors import ConfigError, UnknownNameError
from al.stopping import (
    STOPPING,
    CriterionValue,
    agreement,
    make_stopping,
    normalised_entropy,
    round_value_names,
    stop_set_ids,
)

BASE = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def _flip(p: np.ndarray, k: int) -> np.ndarray:
    """``p`` with its first ``k`` predictions moved to the next class."""
    q = p.copy()
    q[:k] = (q[:k] + 1) % 3
    return q


def test_registered_names_and_needs():
    assert STOPPING.names() == ["budget", "max-uncertainty", "overall-uncertainty", "stabilising-predictions"]
    assert make_stopping("stabilising-predictions").needs == {"stop_set_predictions"}
    assert make_stopping("max-uncertainty").needs == {"pool_probs"}
    assert make_stopping("overall-uncertainty").needs == {"pool_probs"}
    assert make_stopping("budget").needs == frozenset()
    for name in STOPPING.names():  # each documents its reference
        assert "References:" in (STOPPING.get(name).__doc__ or ""), name


def test_kappa_stops_exactly_after_the_window():
    c = make_stopping("stabilising-predictions", threshold=0.99, window=3)
    rounds = [_flip(BASE, 5), _flip(BASE, 2), BASE, BASE, BASE, BASE]
    got = [c.update(r, stop_set_predictions=p) for r, p in enumerate(rounds)]
    assert got[0].value is None and not got[0].stop  # nothing to compare with yet
    assert got[1].value < 0.99 and got[2].value < 0.99
    assert [g.value for g in got[3:]] == [1.0, 1.0, 1.0]
    assert [g.stop for g in got] == [False, False, False, False, False, True]  # 3rd agreement in a row
    assert "stabilising-predictions 1.0000 (threshold 0.99): stop, 3/3 in a row" in got[5].message


def test_kappa_streak_is_broken_by_a_change():
    c = make_stopping("stabilising-predictions", threshold=0.9, window=2)
    seq = [BASE, BASE, _flip(BASE, 4), _flip(BASE, 4), _flip(BASE, 4)]
    assert [c.update(r, stop_set_predictions=p).stop for r, p in enumerate(seq)] == [False, False, False, False, True]
    assert c.streak == 2


def test_kappa_values_match_sklearn_and_the_degenerate_case_is_agreement():
    from sklearn.metrics import cohen_kappa_score

    a, b = BASE, _flip(BASE, 3)
    assert agreement(a, b) == pytest.approx(cohen_kappa_score(a, b))
    const = np.zeros(10, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns 0/0, in words that vary with its version
        assert np.isnan(cohen_kappa_score(const, const))
    assert agreement(const, const) == 1.0  # both constant and equal: full agreement, by definition
    assert agreement(const, const + 1) == 0.0  # both constant but different: no agreement beyond chance
    c = make_stopping("stabilising-predictions", window=2)
    assert [c.update(r, stop_set_predictions=const).stop for r in range(3)] == [False, False, True]
    with pytest.raises(ValueError, match="differ in length"):
        agreement(const, const[:5])


def test_uncertainty_thresholds():
    certain = np.tile([0.99, 0.005, 0.005], (5, 1))
    unsure = np.vstack([certain, [[1 / 3, 1 / 3, 1 / 3]]])
    h = normalised_entropy(unsure)
    assert h[-1] == pytest.approx(1.0) and 0 < h[0] < 0.1 and normalised_entropy(np.ones((3, 1))).tolist() == [0, 0, 0]
    mx = make_stopping("max-uncertainty", threshold=0.2)
    assert mx.update(0, pool_probs=unsure) == CriterionValue(pytest.approx(1.0), False, mx.last.message)
    assert mx.update(1, pool_probs=certain).stop and mx.last.value == pytest.approx(h[0])
    ov = make_stopping("overall-uncertainty", threshold=0.25)
    v = ov.update(0, pool_probs=unsure)
    assert v.value == pytest.approx(h.mean()) and v.stop  # one unsure sample in six: the mean is low
    assert not make_stopping("overall-uncertainty", threshold=0.2).update(0, pool_probs=unsure).stop
    empty = mx.update(2, pool_probs=np.zeros((0, 3)))
    assert empty.value is None and not empty.stop
    assert not make_stopping("max-uncertainty", threshold=h[0]).update(0, pool_probs=certain).stop  # strictly below
    with pytest.raises(ValueError, match="needs pool_probs"):
        mx.update(3, stop_set_predictions=BASE)


def test_budget_never_stops():
    b = make_stopping("budget")
    v = b.update(0)
    assert v.value is None and not v.stop and b.round_values(v) == {"budget": None}


def test_from_history_reproduces_the_decisions():
    rounds = [_flip(BASE, 5), BASE, BASE, _flip(BASE, 1), _flip(BASE, 1), _flip(BASE, 1), _flip(BASE, 1)]
    whole = make_stopping("stabilising-predictions", threshold=0.8, window=2)
    expected = [whole.update(r, stop_set_predictions=p) for r, p in enumerate(rounds)]
    for cut in range(1, len(rounds)):
        resumed = make_stopping("stabilising-predictions", threshold=0.8, window=2).from_history(
            [v.value for v in expected[:cut]], previous_predictions=rounds[cut - 1]
        )
        assert resumed.last.stop == expected[cut - 1].stop
        rest = [resumed.update(r, stop_set_predictions=rounds[r]) for r in range(cut, len(rounds))]
        assert [(v.value, v.stop) for v in rest] == [(v.value, v.stop) for v in expected[cut:]], cut
    # Without the previous predictions, the first comparison after the resume has no value.
    blind = make_stopping("stabilising-predictions", threshold=0.8, window=2).from_history([None, 0.5, 1.0])
    assert blind.streak == 1 and blind.update(3, stop_set_predictions=BASE).value is None and blind.streak == 0
    mx = make_stopping("max-uncertainty", threshold=0.5).from_history([0.9, 0.4])
    assert mx.last.stop and mx.last.value == 0.4


def test_round_values_name_the_threshold():
    c = make_stopping("stabilising-predictions", threshold=0.95)
    v = c.update(0, stop_set_predictions=BASE)
    assert c.round_values(v) == {"stabilising-predictions": None, "stabilising-predictions:threshold": 0.95}
    assert round_value_names("max-uncertainty") == ("max-uncertainty", "max-uncertainty:threshold")


@pytest.mark.parametrize(
    "name, settings, msg",
    [
        ("stabilising-predictions", {"threshold": 1.5}, "must be <= 1"),
        ("stabilising-predictions", {"threshold": -2}, "must be >= -1"),
        ("stabilising-predictions", {"threshold": "0.9"}, "must be a number"),
        ("stabilising-predictions", {"window": 0}, "window must be >= 1"),
        ("stabilising-predictions", {"window": 2.5}, "window must be a whole number"),
        ("stabilising-predictions", {"stop_set_size": 0}, "stop_set_size must be >= 1"),
        ("stabilising-predictions", {"windw": 3}, "has no setting 'windw' \\(did you mean 'window'\\?\\)"),
        ("max-uncertainty", {"threshold": 0}, "must be > 0"),
        ("max-uncertainty", {"threshold": 2.0}, "must be <= 1"),
        ("overall-uncertainty", {"threshold": float("nan")}, "finite number"),
        ("budget", {"threshold": 0.5}, "has no setting 'threshold'; it accepts: no settings"),
    ],
)
def test_bad_settings_are_one_line_config_errors(name, settings, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        make_stopping(name, **settings)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"stopping criterion {name!r}")


def test_unknown_name_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'stabilising-predictions'"):
        make_stopping("stabilizing-predictions")
    assert type(make_stopping("Max_Uncertainty")).__name__ == "MaxUncertainty"  # registry spelling rules


def test_stop_set_ids_are_fixed_and_seeded():
    a = stop_set_ids(5000, 1000, 7)
    assert len(a) == 1000 and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 5000
    assert np.array_equal(a, stop_set_ids(5000, 1000, np.random.default_rng(7)))
    assert not np.array_equal(a, stop_set_ids(5000, 1000, 8))
    ids = np.array([10, 3, 99, 42])
    assert stop_set_ids(ids, 1000).tolist() == [3, 10, 42, 99]  # a small pool: all of it
    assert set(stop_set_ids(ids, 2, 0)) <= set(ids.tolist())
    with pytest.raises(ConfigError, match="stop_set_size must be >= 1"):
        stop_set_ids(10, 0)
