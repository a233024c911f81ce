"""The loop: budget stop, pool exhaustion, ids never repeated, resume, determinism."""

import json

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import fast_config
from factories import failing_after

from al.data import Dataset
from al.errors import ConfigError, ConfigMismatchError
from al.loop import Experiment
from al.store import Store


def tiny(digits: Dataset, n_pool: int) -> Dataset:
    return digits.subset(n_pool=n_pool, n_test=100, seed=0)


def test_runs_to_budget_with_rising_accuracy(digits, store_url):
    rounds = []
    exp = Experiment(
        fast_config(budget=200, init_size=20, query_size=30, min_steps=100),
        store_url,
        dataset=digits,
        on_round=rounds.append,
    )
    st = exp.run()
    assert st.status == "finished"
    assert len(st.labels) == 200
    curves = Store(store_url).curves()
    assert curves["n_labelled"].tolist() == [20, 50, 80, 110, 140, 170, 200]
    assert curves["accuracy"].iloc[-1] > curves["accuracy"].iloc[0] + 0.1
    assert [r.n_labelled for r in rounds] == curves["n_labelled"].tolist()
    # every queried id was unlabelled when it was queried, and labelled exactly once
    q = Store(store_url).queries(exp.name)
    assert q["sample_id"].is_unique
    labels = Store(store_url).labels(exp.name)
    assert labels["sample_id"].is_unique and set(labels["sample_id"]) == set(q["sample_id"])
    for r, grp in q.groupby("round_idx"):
        earlier = set(labels.loc[labels["round_idx"] < r, "sample_id"])
        assert not earlier & set(grp["sample_id"])


def test_last_query_is_trimmed_to_budget(digits, store_url):
    Experiment(fast_config(budget=75, init_size=20, query_size=20), store_url, dataset=digits).run()
    assert Store(store_url).curves()["n_labelled"].tolist() == [20, 40, 60, 75]


def test_pool_exhaustion_stops(digits, store_url):
    ds = tiny(digits, 50)
    st = Experiment(fast_config(budget=50, init_size=20, query_size=20), store_url, dataset=ds).run()
    assert st.status == "finished" and sorted(st.labels) == list(range(50))
    assert Store(store_url).curves()["n_labelled"].tolist() == [20, 40, 50]


def test_labels_come_from_the_oracle(digits, store_url):
    exp = Experiment(fast_config(budget=40), store_url, dataset=digits)
    st = exp.run()
    y = digits.train_y.numpy()
    assert all(y[i] == lab for i, lab in st.labels.items())


def test_rerun_adds_nothing(digits, store_url):
    Experiment(fast_config(), store_url, dataset=digits).run()
    before = Store(store_url).curves()
    st = Experiment(fast_config(), store_url, dataset=digits).run()
    assert st.status == "finished"
    assert Store(store_url).curves().equals(before)


def test_resume_after_partial_run_matches_uninterrupted(digits, tmp_path):
    """Stop after two rounds (budget reached), then continue with a fresh Experiment: same curve as one run.

    The continuation changes nothing but the process; stopping is simulated by an oracle that fails once.
    """
    full_url = f"sqlite:///{tmp_path / 'full.db'}"
    Experiment(fast_config(), full_url, dataset=digits).run()

    url = f"sqlite:///{tmp_path / 'resumed.db'}"
    calls = {"n": 0}

    class FlakyOracle:
        name = "ground-truth"

        def label(self, ids):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("network down")
            return {int(i): int(digits.train_y[i]) for i in ids}

    with pytest.raises(Exception, match="network down"):
        Experiment(fast_config(), url, dataset=digits, oracle=FlakyOracle()).run()
    st = Store(url).state("digits-entropy-seed0")
    assert st.status == "stopped" and st.last_round.state == "queried"
    Experiment(fast_config(), url, dataset=digits, oracle=FlakyOracle()).run()
    a, b = Store(full_url).curves(), Store(url).curves()
    assert a["n_labelled"].tolist() == b["n_labelled"].tolist()
    np.testing.assert_allclose(a["accuracy"], b["accuracy"])
    la = Store(full_url).labels("digits-entropy-seed0")
    lb = Store(url).labels("digits-entropy-seed0")
    assert la[["sample_id", "round_idx"]].equals(lb[["sample_id", "round_idx"]])


def test_same_seed_same_run_different_seed_different(digits, tmp_path):
    runs = []
    for i, seed in enumerate([3, 3, 4]):
        url = f"sqlite:///{tmp_path / f'{i}.db'}"
        Experiment(fast_config(seed=seed), url, dataset=digits).run()
        runs.append(Store(url).labels(f"digits-entropy-seed{seed}")["sample_id"].tolist())
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_pool_subset_picks_only_unlabelled_ids(digits, store_url):
    exp = Experiment(fast_config(pool_subset=60, query_size=20, budget=100), store_url, dataset=digits)
    exp.run()
    q = Store(store_url).queries(exp.name)
    assert q["sample_id"].is_unique and len(q) == 100
    curves = Store(store_url).curves()
    assert (curves["n_scored"].dropna() == 60).all()


def test_scores_recorded_match_strategy(digits, store_url):
    """The stored score of each queried id is the entropy of the model that picked it (recomputed here)."""
    exp = Experiment(fast_config(budget=40, init_size=20, query_size=20), store_url, dataset=digits)
    exp.run()
    q = Store(store_url).queries(exp.name)
    r1 = q[q["round_idx"] == 1]
    st = Store(store_url).state(exp.name)
    exp._train(st, 0)  # the round-0 model, rebuilt from the same labels and seed
    p = exp.learner.predict_proba(exp.inputs_of(r1["sample_id"].to_numpy()))
    from strategies.uncertainty import entropy_score

    np.testing.assert_allclose(r1["score"].to_numpy(), entropy_score(p), rtol=1e-5)
    assert (np.diff(r1["score"].to_numpy()) <= 1e-12).all()  # rank order = descending score


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(budget=0), "--budget must be a positive"),
        (dict(budget=-5), "--budget must be a positive"),
        (dict(budget=10, init_size=20), "below --init-size"),
        (dict(query_size=0), "--query-size must be at least 1"),
        (dict(budget=5000), "exceeds the pool"),
        (dict(query_size=5000, budget=100), "exceeds the pool"),
        (dict(pool_subset=10, query_size=20), "exceeds --pool-subset"),
        (dict(init_size=0), "--init-size must be at least 1"),
    ],
)
def test_bad_config_refused_before_anything_is_written(digits, tmp_path, kw, msg):
    path = tmp_path / "s.db"
    with pytest.raises(ConfigError, match=msg):
        Experiment(fast_config(**kw), f"sqlite:///{path}", dataset=digits)
    assert not path.exists()


def test_model_with_wrong_output_size_refused(digits, tmp_path):
    path = tmp_path / "s.db"
    with pytest.raises(ConfigError, match="outputs 3 classes"):
        Experiment(fast_config(model="tests.factories:three_class_mlp"), f"sqlite:///{path}", dataset=digits)
    assert not path.exists()


def test_user_model_factory(digits, store_url):
    st = Experiment(fast_config(model="tests.factories:linear", budget=40), store_url, dataset=digits).run()
    assert st.status == "finished"


def test_warm_start_runs(digits, store_url):
    st = Experiment(fast_config(warm_start=True, budget=60), store_url, dataset=digits).run()
    assert st.status == "finished" and len(st.labels) == 60


def test_balanced_init(digits, store_url):
    exp = Experiment(fast_config(init_balanced=True, budget=20), store_url, dataset=digits)
    st = exp.run()
    ys = [st.labels[i] for i in st.labelled_ids()]
    assert sorted(ys) == sorted(list(range(10)) * 2)


def test_run_recorded_before_a_strategy_setting_existed_resumes(digits, tmp_path):
    """A REGrad run stored without ``perturb`` (older code) continues; asking for other noise is refused."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = fast_config(strategy="regrad")
    exp = Experiment(cfg, url, dataset=digits)
    with pytest.raises(Exception, match="stop here"):
        Experiment(cfg, url, dataset=digits, oracle=failing_after(digits.train_y, 1)).run()
    with Store(url).engine.begin() as conn:  # rewrite the record as the older code wrote it
        (text,) = conn.execute(sa.text("SELECT config FROM al_runs WHERE name = :n"), {"n": exp.name}).one()
        old = json.loads(text)
        del old["strategy_params"]["perturb"]
        conn.execute(
            sa.text("UPDATE al_runs SET config = :c WHERE name = :n"),
            {"c": json.dumps(old, sort_keys=True, separators=(",", ":")), "n": exp.name},
        )
    with pytest.raises(ConfigMismatchError, match="perturb"):
        Experiment(
            fast_config(strategy="regrad", strategy_kwargs={"perturb": "params", "aggregate": "mean-norm"}),
            url,
            dataset=digits,
            name=exp.name,
        ).run()
    st = Experiment(cfg, url, dataset=digits).run()
    assert st.status == "finished" and len(st.labels) == cfg.budget
    assert "perturb" not in Store(url).state(exp.name).config["strategy_params"]


class _Interrupting:
    """An oracle that answers ``n_ok`` calls, then behaves as ``how``: half an answer, an error, or Ctrl-C."""

    name = "ground-truth"

    def __init__(self, labels, how: str, n_ok: int = 1) -> None:
        self.labels, self.how, self.n_ok, self.calls = labels, how, n_ok, 0

    def label(self, ids):
        self.calls += 1
        if self.calls > self.n_ok and self.how != "done":
            if self.how == "error":
                raise RuntimeError("labeller gone")
            if self.how == "interrupt":
                raise KeyboardInterrupt
            ids = ids[: len(ids) // 2]  # "waiting"
        return {int(i): int(self.labels[i]) for i in ids}


@pytest.mark.parametrize(
    "how,exc",
    [("done", None), ("waiting", "LabelsPending"), ("error", "OracleError"), ("interrupt", "KeyboardInterrupt")],
)
def test_heartbeat_thread_is_joined_on_every_exit(digits, store_url, how, exc):
    """After ``run`` returns or raises, no heartbeat thread is left: one still alive at interpreter shutdown can
    abort the process (exit 134) instead of its exit code (issue 12 item 1)."""
    import threading

    labels = digits.train_y.numpy()
    exp = Experiment(fast_config(budget=60), store_url, dataset=digits, oracle=_Interrupting(labels, how))
    exp.heartbeat_s = 0.005  # beating all the time, so a thread left behind would be caught in the act
    if exc is None:
        assert exp.run().status == "finished"
    else:
        with pytest.raises(BaseException) as caught:
            exp.run()
        assert type(caught.value).__name__ == exc
    assert [t.name for t in threading.enumerate() if t.name.startswith("al-heartbeat-")] == []
    expected = {"done": "finished", "waiting": "waiting", "error": "stopped", "interrupt": "stopped"}[how]
    assert Store(store_url).state(exp.name).status == expected
