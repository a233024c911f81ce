"""The base of the strategy contract (al.strategy): where a Context's randomness comes from, settings that every
strategy must store under their own names, and the typed errors a strategy breaking its contract raises."""

from __future__ import annotations

import re

import numpy as np
import pytest

from al.errors import StrategyError
from al.learner import TorchLearner
from al.registry import STRATEGIES, build_strategy
from al.seeding import mc_dropout_seed, round_rng
from al.strategy import Context, Selection, Strategy


@pytest.fixture(scope="module")
def mlp(digits):
    return TorchLearner("mlp", 10, (1, 8, 8), epochs=2, min_steps=20).fit(digits.train_x[:40], digits.train_y[:40])


def _ctx(mlp, digits, **kw) -> Context:
    return Context(
        np.arange(40, 70),
        np.arange(40),
        learner=mlp,
        inputs_of=lambda ids: digits.train_x[ids],
        mc_samples=4,
        n_classes=10,
        **kw,
    )


# --- the MC-dropout seed reaches the context through rng_for, from the round's "mc" generator --------------------
def test_mc_probs_are_seeded_from_the_rounds_mc_generator_exactly_as_the_loop_always_did(mlp, digits):
    seed, r = 7, 3
    ctx = _ctx(mlp, digits, rng_for=lambda purpose: round_rng(seed, r, purpose))
    # The integer the loop used to put on Context as ``seed``: stored BALD/BatchBALD masks depend on it.
    before = int(round_rng(seed, r, "mc").integers(2**31))
    assert mc_dropout_seed(round_rng(seed, r, "mc")) == before
    np.testing.assert_array_equal(ctx.mc_probs, mlp.mc_predict_proba(digits.train_x[40:70], 4, seed=before))


def test_a_context_built_by_hand_draws_from_round_0_of_seed_0(mlp, digits):
    ctx = _ctx(mlp, digits)
    assert ctx.rng_for("select").integers(2**40) == round_rng(0, 0, "select").integers(2**40)
    np.testing.assert_array_equal(ctx.mc_probs, _ctx(mlp, digits, rng_for=lambda p: round_rng(0, 0, p)).mc_probs)


def test_context_has_no_second_seed():
    with pytest.raises(TypeError, match="seed"):
        Context(np.arange(3), seed=3)  # type: ignore[call-arg]


# --- params(): every constructor setting stored under its own name -----------------------------------------------
class Misstored(Strategy):
    name = "misstored"

    def __init__(self, temperature: float = 1.0, top: int = 3) -> None:
        self.temperature = temperature
        self._top = top  # stored under another name: params() would drop it and a changed value could resume

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        ids = ctx.candidates[:n]
        return Selection(ids, np.zeros(n))


class TakesKwargs(Strategy):
    name = "takes-kwargs"

    def __init__(self, alpha: int = 1, **extra: object) -> None:
        self.alpha = alpha

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        return Selection(ctx.candidates[:n], np.zeros(n))


def test_a_setting_not_stored_under_its_name_is_an_error_naming_class_and_attribute():
    s = Misstored(top=5)
    with pytest.raises(
        StrategyError,
        match=r"Misstored takes 'top' .*store each constructor setting as "
        r"self\.<name> \(self\.top = top\)",
    ):
        s.params()
    with pytest.raises(StrategyError, match="self.top"):  # raised before select() runs
        s(Context(np.arange(10)), 2, np.random.default_rng(0))
    assert "top=<not stored>" in repr(s)  # repr never raises: it is printed inside other errors


def test_var_keyword_parameters_are_not_settings():
    assert TakesKwargs(alpha=2).params() == {"alpha": 2}


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_registered_strategy_stores_its_settings(name):
    s = build_strategy(name)
    params = s.params()
    # REGrad leaves its regression-only settings out at their defaults: tests/test_regrad_regression_strategy.py
    assert set(params) == set(s._setting_names()) - s.regression_settings


# --- a strategy breaking its contract gets a StrategyError, not an AssertionError --------------------------------
class ReturnsDuplicates(Strategy):
    name = "returns-duplicates"

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        return Selection(np.repeat(ctx.candidates[:1], n), np.zeros(n))


class ReturnsTooFew(Strategy):
    name = "returns-too-few"

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        return Selection(ctx.candidates[: n - 1], np.zeros(n - 1))


@pytest.mark.parametrize("cls,got", [(ReturnsDuplicates, "3 ids (1 unique)"), (ReturnsTooFew, "2 ids (2 unique)")])
def test_wrong_ids_are_a_strategy_error(cls, got):
    with pytest.raises(StrategyError, match=re.escape(f"{cls.name!r} returned {got}, expected 3 unique ids")):
        cls()(Context(np.arange(10)), 3, np.random.default_rng(0))
