"""Diverged training and degenerate models stop the run with a ModelError (issue 12 item 4).

Before, ``--lr 1e6`` or a model that outputs NaN finished with exit 0: accuracy 0.10, NLL 1e20 or NaN, every
acquisition score 0, so the picks fell back to id order. Now the round says what went non-finite and the run
stops, keeping everything stored (status "stopped", the round's query and labels, the completed rounds).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import fast_config

from al.errors import ModelError
from al.learner import TorchLearner
from al.loop import Experiment
from al.store import Store
from al.strategy import top_n

#: Written into tmp_path and imported as ``--model faultymodels:<factory>``.
MODELS = '''
import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self, n_classes, input_shape):
        super().__init__()
        d = 1
        for s in input_shape:
            d *= s
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, n_classes))

    def forward(self, x):
        return self.net(x)


class NaNOut(Mlp):
    """Every output NaN (as a model with a broken layer gives)."""

    def forward(self, x):
        return self.net(x) * float("nan")


class NaNWhenScoring(Mlp):
    """Fine in training and on the 360 test inputs; NaN on large evaluation batches (the 1417 candidates)."""

    def forward(self, x):
        out = self.net(x)
        return out * float("nan") if not self.training and len(x) > 400 else out


class NaNInEval(Mlp):
    """Fine in training, NaN in evaluation mode (the test set)."""

    def forward(self, x):
        out = self.net(x)
        return out if self.training else out * float("nan")


class Constant(nn.Module):
    """Ignores its input: the same class probabilities for every sample."""

    def __init__(self, n_classes, input_shape):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


def nan_out(n_classes, input_shape):
    return NaNOut(n_classes, input_shape)


def nan_when_scoring(n_classes, input_shape):
    return NaNWhenScoring(n_classes, input_shape)


def nan_in_eval(n_classes, input_shape):
    return NaNInEval(n_classes, input_shape)


def constant(n_classes, input_shape):
    return Constant(n_classes, input_shape)
'''

RUN = "div"


def small(**kw):
    """Two rounds of digits, trained in a fraction of a second each."""
    return fast_config(**{"budget": 40, "query_size": 10, "epochs": 2, "min_steps": 10, **kw})


@pytest.fixture
def models(tmp_path, monkeypatch):
    (tmp_path / "faultymodels.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("faultymodels", None)
    yield tmp_path
    sys.modules.pop("faultymodels", None)


def _stopped_with(store: Store, text: str):
    st = store.state(RUN)
    assert st.status == "stopped", st.status
    assert st.run.message is not None and st.run.message.startswith("ModelError: ") and text in st.run.message
    return st


# --- the learner on its own --------------------------------------------------------------------------------------
def test_learner_refuses_an_exploded_training_loss(digits):
    est = TorchLearner("mlp", 10, (1, 8, 8), epochs=2, min_steps=10, lr=1e6)
    with pytest.raises(ModelError, match=r"training diverged: the last epoch's mean training loss is .* lower the "):
        est.fit(digits.train_x[:30], digits.train_y[:30])
    assert not any(m.training for m in est.module_.modules())  # left in eval mode without gradients
    assert all(p.grad is None for p in est.module_.parameters())


def test_a_sane_learning_rate_trains_as_before(digits):
    est = TorchLearner("mlp", 10, (1, 8, 8), epochs=2, min_steps=30).fit(digits.train_x[:40], digits.train_y[:40])
    assert est.evaluate(digits.test_x, digits.test_y)["accuracy"] > 0.3


# --- through the loop --------------------------------------------------------------------------------------------
def test_exploding_learning_rate_stops_the_run_and_keeps_the_round(digits, store_url):
    # random picks without scores: the divergence is caught in training, not only by the scores
    exp = Experiment(small(strategy="random", lr=1e6), store_url, name=RUN, dataset=digits)
    with pytest.raises(ModelError, match=r"^round 0, training on 20 labels: training diverged: .*--lr, now 1e\+06"):
        exp.run()
    st = _stopped_with(Store(store_url), "round 0, training on 20 labels")
    (r0,) = st.rounds
    assert r0.state == "labelled" and r0.accuracy is None and len(st.labels) == 20  # query and labels kept
    assert sorted(Store(store_url).queries(RUN)["sample_id"]) == sorted(st.labels)


def test_nan_on_the_candidates_stops_at_the_query_after_completed_rounds(digits, store_url, models):
    exp = Experiment(small(model="faultymodels:nan_when_scoring"), store_url, name=RUN, dataset=digits)
    with pytest.raises(
        ModelError,
        match=r"^round 1, choosing its query with the model of round 0: the model's outputs on 1024 of 1417 inputs "
        r"are not finite",
    ):
        exp.run()
    st = _stopped_with(Store(store_url), "round 1, choosing its query")
    (r0,) = st.rounds  # round 0 complete and intact; nothing of round 1 was stored
    assert r0.state == "complete" and r0.accuracy is not None and np.isfinite(r0.nll) and len(st.labels) == 20


def test_nan_on_the_test_set_records_no_metrics(digits, store_url, models):
    exp = Experiment(small(model="faultymodels:nan_in_eval"), store_url, name=RUN, dataset=digits)
    with pytest.raises(ModelError, match=r"^round 0, evaluating on the test set: .* 360 of 360 evaluation inputs"):
        exp.run()
    (r0,) = _stopped_with(Store(store_url), "evaluating on the test set").rounds
    assert r0.state == "labelled" and r0.accuracy is None


def test_constant_model_makes_entropy_scores_all_equal_an_error(digits, store_url, models):
    exp = Experiment(small(model="faultymodels:constant"), store_url, name=RUN, dataset=digits)
    with pytest.raises(
        ModelError, match=r"^round 1, choosing its query .*: all 1417 candidates have the same acquisition score"
    ):
        exp.run()
    (r0,) = _stopped_with(Store(store_url), "same acquisition score").rounds
    assert r0.state == "complete"


def test_constant_model_does_not_stop_strategies_without_scores(digits, store_url, models):
    st = Experiment(small(model="faultymodels:constant", strategy="random"), store_url, name=RUN, dataset=digits).run()
    assert st.status == "finished" and len(st.labels) == 40


# --- the CLI: exit 1 with one line -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags,message",
    [
        (["--lr", "1e6"], "error: round 0, training on 20 labels: training diverged: the last epoch's mean"),
        (["--model", "faultymodels:nan_out"], "error: round 0, training on 20 labels: training diverged: the "),
    ],
    ids=["lr-1e6", "nan-model"],
)
def test_cli_exits_1_with_one_line(tmp_path, flags, message):
    (tmp_path / "faultymodels.py").write_text(MODELS)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "al.bench", "--dataset", "digits", "--budget", "60", "--init-size", "20"]
    cmd += ["--query-size", "10", "--epochs", "2", "--min-steps", "10", "--run-name", RUN, "--store", url]
    r = subprocess.run([*cmd, "--no-progress", *flags], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr[-2000:]
    assert "lower the learning rate (--lr" in lines[0]
    st = _stopped_with(Store(url), "round 0, training on 20 labels")
    assert [rd.state for rd in st.rounds] == ["labelled"] and len(st.labels) == 20


# --- top_n: scores that cannot rank ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_top_n_refuses_non_finite_scores(bad):
    with pytest.raises(ModelError, match="acquisition scores are not finite"):
        top_n(np.array([0.3, bad, 0.1]), np.array([1, 2, 3]), 1)


def test_top_n_refuses_all_equal_scores_but_accepts_ties():
    with pytest.raises(ModelError, match=r"all 4 candidates have the same acquisition score \(0\)"):
        top_n(np.zeros(4), np.array([4, 3, 2, 1]), 2)
    assert top_n(np.array([0.0, 0.0, 0.0, 1.0]), np.array([4, 3, 2, 1]), 2).ids.tolist() == [1, 2]  # ties: by id
    # nothing to choose: one candidate, or as many picks as candidates
    assert top_n(np.zeros(1), np.array([7]), 1).ids.tolist() == [7]
    assert top_n(np.zeros(3), np.array([9, 8, 7]), 3).ids.tolist() == [7, 8, 9]
