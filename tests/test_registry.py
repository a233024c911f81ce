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


def test_readme_custom_strategy_example_runs(digits, store_url):
    """The README's "Your own strategy" code, as written there, registers and drives a run."""
    import pathlib
    import re

    from al.loop import Experiment
    from al.store import Store
    from conftest import fast_config

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Your own strategy", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    definition = code.split("\nExperiment(", 1)[0]  # the run line uses the README's default budget
    try:
        exec(compile(definition, "README.md", "exec"), {})
        assert "top-two-ratio" in STRATEGIES
        st = Experiment(fast_config(strategy="top-two-ratio", strategy_kwargs={"power": 2.0}), store_url,
                        dataset=digits).run()
        assert st.status == "finished" and len(st.labels) == 80
        q = Store(store_url).queries("digits-top-two-ratio-seed0")
        q = q[q["round_idx"] > 0]  # round 0 is the random initial set, unscored
        # the recorded scores are the strategy's: a squared ratio of probabilities, in [0, 1], best first
        assert len(q) == 60 and q["score"].between(0, 1).all()
        for _, grp in q.groupby("round_idx"):
            assert grp.sort_values("rank")["score"].is_monotonic_decreasing
        assert st.config["strategy_params"] == {"power": 2.0}
    finally:
        STRATEGIES.unregister("top-two-ratio")
