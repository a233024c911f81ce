"""The oracle contract (al.oracles): base-class defaults, wrapping a user's object or function, the registry of
--oracle kinds, and the labelling session that asks for a round's labels."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from conftest import fast_config

from al import CallbackOracle, GroundTruthOracle, Oracle
from al.bench import main
from al.errors import DuplicateNameError, LabelsPending, OracleError
from al.labelling import LabellingSession
from al.loop import Experiment
from al.oracles import ORACLES, OracleContext, WrappedOracle, as_oracle, make_oracle, register_oracle_kind
from al.store import Store

RUN = "digits-entropy-seed0"


def truth(digits):
    y = digits.train_y.numpy()
    return lambda i: int(y[int(i)])


# --- a user's object or function: wrapped once, at the edge -----------------------------------------------------
def test_plain_object_with_only_label_runs_the_loop(digits, store_url):
    t = truth(digits)

    class Labeller:  # no base class, no name, no optional features
        def label(self, ids):
            return {int(i): t(i) for i in ids}

    exp = Experiment(fast_config(), store_url, dataset=digits, oracle=Labeller())
    assert isinstance(exp.oracle, Oracle) and isinstance(exp.oracle, WrappedOracle)
    st = exp.run()
    assert st.status == "finished" and len(st.labels) == 80
    assert all(y == t(i) for i, y in st.labels.items())
    assert set(Store(store_url).labels(RUN)["oracle"]) == {"oracle"}  # the base class's default name


def test_plain_function_runs_the_loop(digits, store_url):
    t = truth(digits)
    st = Experiment(fast_config(), store_url, dataset=digits, oracle=lambda ids: [t(i) for i in ids]).run()
    assert st.status == "finished" and all(y == t(i) for i, y in st.labels.items())
    assert set(Store(store_url).labels(RUN)["oracle"]) == {"callback"}


def test_wrapped_object_keeps_its_optional_features():
    """What the loop used to find with getattr on a duck-typed oracle is read once by the adapter."""
    seen = []

    class Duck:
        name = "duck"
        one_at_a_time = True

        def begin_round(self, info):
            seen.append(info.round_idx)

        def how_to_answer(self, round_idx):
            return f"quack {round_idx}"

        def label(self, ids):
            return {int(i): 0 for i in ids}

    o = as_oracle(Duck())
    assert (o.name, o.one_at_a_time, o.how_to_answer(3)) == ("duck", True, "quack 3")
    o.begin_round(type("Info", (), {"round_idx": 7})())
    assert seen == [7] and o.label(np.array([4, 5])) == {4: 0, 5: 0}


def test_as_oracle_passes_oracles_through_and_refuses_what_cannot_label():
    g = GroundTruthOracle(np.array([0, 1]))
    assert as_oracle(g) is g
    assert isinstance(as_oracle(lambda ids: [0] * len(ids)), CallbackOracle)
    with pytest.raises(OracleError, match="the class GroundTruthOracle, not an instance"):
        as_oracle(GroundTruthOracle)
    with pytest.raises(OracleError, match="cannot label; give an object with label"):
        as_oracle(42)


def test_an_oracle_subclass_must_implement_label():
    class Forgetful(Oracle):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Forgetful()


# --- the base class's defaults are what the session uses -----------------------------------------------------------
class Half(Oracle):
    """Answers the first half of every call; records each call's ids."""

    def __init__(self, labels):
        self.labels, self.calls = labels, []

    def label(self, ids):
        self.calls.append([int(i) for i in ids])
        return {int(i): int(self.labels[i]) for i in ids[: len(ids) // 2]}


def test_base_defaults():
    o = Half(np.zeros(3))
    assert o.name == "oracle" and o.one_at_a_time is False and o.begin_round(None) is None
    assert o.how_to_answer(0) == "answer them and run the same command again to continue"


def test_session_uses_the_defaults_and_the_overrides(digits, store_url):
    y = digits.train_y.numpy()
    o = Half(y)
    with pytest.raises(
        LabelsPending,
        match="round 0: 10 of 20 queried samples still await a label; answer them and "
        "run the same command again to continue",
    ) as e:
        Experiment(fast_config(), store_url, dataset=digits, oracle=o).run()
    assert e.value.awaited == 10 and len(o.calls) == 1 and len(o.calls[0]) == 20  # one call for the whole query

    class OneByOne(Half):
        name = "one-by-one"
        one_at_a_time = True

        def label(self, ids):  # answers every other call
            super().label(ids)
            return {int(ids[0]): int(self.labels[ids[0]])} if len(self.calls) % 2 else {}

        def how_to_answer(self, round_idx):
            return f"see round {round_idx}'s sheet"

    o2 = OneByOne(y)
    awaited = "round 0: 5 of 20 queried samples still await a label; see round 0's sheet"
    with pytest.raises(LabelsPending, match=awaited):
        Experiment(fast_config(), store_url, dataset=digits, oracle=o2).run()
    assert [len(c) for c in o2.calls] == [1] * 10  # the 10 pending samples, one id per call
    assert set(Store(store_url).labels(RUN)["oracle"]) == {"oracle", "one-by-one"}


def test_the_session_and_the_loop_do_not_probe_the_oracle():
    """Every optional feature has a default on the base class, so asking needs no getattr/hasattr."""
    for src in (inspect.getsource(LabellingSession), inspect.getsource(Experiment._label)):
        assert "getattr(" not in src and "hasattr(" not in src


# --- the registry of --oracle kinds --------------------------------------------------------------------------------
def test_a_kind_registered_twice_is_refused():
    with pytest.raises(DuplicateNameError, match="oracle 'noisy' is already registered"):
        register_oracle_kind("noisy")(lambda arg, ctx: GroundTruthOracle(ctx.labels))


def test_a_typo_gets_a_suggestion(tmp_path, capsys):
    with pytest.raises(OracleError, match="unknown oracle 'ground-truht'; did you mean 'ground-truth'"):
        make_oracle("ground-truht", np.zeros(4, dtype=np.int64), 2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["--dataset", "digits", "--budget", "40", "--store", url, "--oracle", "ground-truht"]) == 2
    assert "did you mean 'ground-truth'" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


def test_a_kind_without_an_argument_refuses_one():
    with pytest.raises(OracleError, match="--oracle ground-truth takes no argument, got 'ground-truth:0.1'"):
        make_oracle("ground-truth:0.1", np.zeros(4, dtype=np.int64), 2)


def test_a_third_registered_kind_is_built_by_make_oracle_and_runs(digits, store_url):
    seen: list[OracleContext] = []

    class Constant(Oracle):
        name = "constant"

        def __init__(self, value):
            self.value = value

        def label(self, ids):
            return {int(i): self.value for i in ids}

    @register_oracle_kind("constant", usage="constant:<class>", takes_argument=True)
    def _constant(arg: str, ctx: OracleContext) -> Oracle:
        seen.append(ctx)
        return Constant(int(arg))

    try:
        o = make_oracle("constant:3", np.zeros(5, dtype=np.int64), 10, seed=7, oracle_dir="d")
        assert isinstance(o, Constant) and o.value == 3
        assert (seen[0].n_classes, seen[0].seed, seen[0].oracle_dir, seen[0].spec) == (10, 7, "d", "constant:3")
        known = r"use constant:<class>, csv, ground-truth, label-studio, label-studio-files, noisy:<fraction>, prompt, "
        known += "web"
        with pytest.raises(OracleError, match=known):
            make_oracle("nope", np.zeros(5, dtype=np.int64), 10)
        st = Experiment(fast_config(oracle="constant:2"), store_url, dataset=digits).run()
        assert st.status == "finished" and set(st.labels.values()) == {2}
    finally:
        ORACLES.unregister("constant")
    assert "constant" not in ORACLES


def factory_object(labels, n_classes):
    class Nameless:
        def label(self, ids):
            return {int(i): int(labels[i]) for i in ids}

    return Nameless()


def test_factory_spec_and_the_explicit_import_kind():
    y = np.array([0, 1, 1, 0])
    for spec in ("test_oracles:factory_object", "import:test_oracles:factory_object"):
        o = make_oracle(spec, y, 2)
        assert o.name == "test_oracles:factory_object" and o.label(np.array([1, 3])) == {1: 1, 3: 0}
    with pytest.raises(OracleError, match="cannot import oracle 'test_oracles:nothing_here'"):
        make_oracle("test_oracles:nothing_here", y, 2)


def test_readme_oracle_examples_run(digits, tmp_path):
    """The README's "Your own oracle" code, as written there, drives a run (a function, then an Oracle subclass)."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Your own oracle", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    t = truth(digits)
    for k, code in enumerate(blocks):
        url = f"sqlite:///{tmp_path / f'readme-{k}.db'}"
        namespace = dict(Experiment=Experiment, config=fast_config(budget=40), store=url, my_labelling_tool=t)
        exec(compile(code, "README.md", "exec"), namespace)
        labels = Store(url).labels("digits-entropy-seed0")
        assert len(labels) == 40 and all(y == t(i) for i, y in zip(labels["sample_id"], labels["label"], strict=True))
        assert set(labels["oracle"]) == {"callback" if k == 0 else "my-tool"}


def test_csv_answers_may_name_the_class(tmp_path):
    """A person labelling their own photos writes 'cat', not 0; a name wins over an index ('1' is the class
    named "1"), and an unknown word is refused with both readings named."""
    from al.oracles.human import CsvOracle

    path = tmp_path / "answers-round-0.csv"
    path.write_text("id,label\n3,Dog\n4,0\n5,1\n6,bird\n")
    refused: list[str] = []
    rows = CsvOracle._read(path, 3, refused, {"cat": 0, "dog": 1, "1": 2})
    assert {sid: labels[0] for sid, (_, labels) in rows.items()} == {3: 1, 4: 0, 5: 2}
    assert len(refused) == 1 and "neither a class name nor an integer class index" in refused[0]


def test_prompt_shows_a_table_row_by_its_key_and_values():
    """A table pool has no image: the prompt shows the row's id and its values as the table holds them."""
    import io

    import pandas as pd

    from al.oracles.human import PromptOracle
    from al.pool import from_table

    df = pd.DataFrame({"id": ["a", "b"], "x": [1.5, 2.0], "y": [3.0, 7.0]})
    out = io.StringIO()
    oracle = PromptOracle(from_table(df, "cat,dog", id_column="id"), stdin=io.StringIO("dog\n"), stdout=out)
    assert oracle.label(np.array([1])) == {1: 1}
    assert "sample 1 (b): x=2, y=7" in out.getvalue()
