import pytest

from al.errors import DuplicateNameError, UnknownNameError
from al.registry import Registry
from strategies import STRATEGIES, build_strategy
from al.errors import ConfigError


def test_duplicate_registration_is_refused():
    reg: Registry[object] = Registry("thing")
    a, b = object(), object()
    reg.register("alpha", a)
    reg.register("alpha", a)  # the same object again is harmless (module re-import)
    with pytest.raises(DuplicateNameError, match="already registered"):
        reg.register("Alpha", b)


def test_typo_gets_suggestions():
    with pytest.raises(UnknownNameError) as e:
        STRATEGIES.get("entropi")
    assert "did you mean 'entropy'" in str(e.value)
    with pytest.raises(UnknownNameError) as e:
        STRATEGIES.get("zzzzzz")
    assert "did you mean" not in str(e.value) and "known:" in str(e.value)


def test_names_are_normalised():
    assert STRATEGIES.get("least_confidence") is STRATEGIES.get("LEAST-CONFIDENCE")


def test_unknown_strategy_kwarg_names_valid_ones():
    with pytest.raises(ConfigError, match="no parameter 'foo'"):
        build_strategy("entropy", foo=1)


def test_builtin_strategies_registered():
    assert {"random", "entropy", "margin", "least-confidence"} <= set(STRATEGIES.names())
