import pytest

from al.errors import ConfigError, DuplicateNameError, UnknownNameError
from al.registry import Registry
from strategies import STRATEGIES, build_strategy


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

    from conftest import fast_config

    from al.loop import Experiment
    from al.store import Store

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Your own strategy", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    definition = code.split("\nExperiment(", 1)[0]  # the run line uses the README's default budget
    try:
        exec(compile(definition, "README.md", "exec"), {})
        assert "top-two-ratio" in STRATEGIES
        st = Experiment(
            fast_config(strategy="top-two-ratio", strategy_kwargs={"power": 2.0}), store_url, dataset=digits
        ).run()
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


def test_builtins_come_through_the_entry_point_group_like_a_third_party():
    """Every built-in strategy is declared in pyproject.toml's ``al.strategies`` group under its own name."""
    from importlib import metadata

    eps = {ep.name: ep for ep in metadata.entry_points(group="al.strategies")}
    for name in STRATEGIES.names():
        cls = STRATEGIES.get(name)
        if cls.__module__.startswith("strategies."):
            assert name in eps, f"built-in {name!r} is not declared in the al.strategies entry-point group"
            assert eps[name].load() is cls and cls.name == name


def test_al_never_imports_the_strategies_package(tmp_path):
    """Importing the framework (and building its CLI parser) imports nothing from ``strategies`` by name."""
    import subprocess
    import sys

    code = (
        "import sys, al, al.bench, al.loop, al.report, al.interop.modal; "
        "print(sorted(m for m in sys.modules if m == 'strategies' or m.startswith('strategies.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_entry_point_colliding_with_a_builtin_is_an_error(tmp_path, monkeypatch):
    """A third-party package declaring ``entropy`` for its own class is refused by name, not silently ignored."""
    pkg = tmp_path / "clashing_strategy.py"
    pkg.write_text("from al.strategy import Strategy\n\nclass Clash(Strategy):\n    name = 'entropy'\n")
    dist = tmp_path / "clashing_strategy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clashing-strategy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[al.strategies]\nentropy = clashing_strategy:Clash\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh: Registry[object] = Registry("strategy", entry_point_group="al.strategies")
    with pytest.raises(DuplicateNameError, match="'entropy'.*collides") as e:
        fresh.names()
    assert "clashing" in str(e.value) and "rename the entry point" in str(e.value)
