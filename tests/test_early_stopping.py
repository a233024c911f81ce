"""Training that converges (issue 16, part 4): early stopping on a validation split carved from the labelled set,
and the BatchBALD paper's MNIST model with consistent MC dropout."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import fast_config

from al.config import config_record
from al.errors import ConfigError
from al.learner import TorchLearner
from al.loop import Experiment
from al.models import ConsistentDropout, ConsistentDropout2d, build_model
from al.registry import build_strategy
from al.store import Store


def _digits_xy(digits, n):
    x = digits.inputs(np.arange(n))
    y = digits.train_y.numpy()[:n]
    return x, y


def _learner(**kw):
    base = dict(
        model="mlp", n_classes=10, input_shape=(1, 8, 8), early_stopping=True, val_size=0.25, patience=2, max_epochs=30
    )
    base.update(kw)
    return TorchLearner(**base)


def test_the_validation_split_is_carved_from_the_labelled_set_by_the_seed():
    lrn = _learner(val_size=0.25)
    tr, va = lrn.validation_split(40, seed=3)
    assert len(va) == 10 and len(tr) == 30 and set(tr.tolist()) | set(va.tolist()) == set(range(40))
    assert not set(tr.tolist()) & set(va.tolist())
    assert torch.equal(lrn.validation_split(40, seed=3)[1], va) and not torch.equal(lrn.validation_split(40, 4)[1], va)
    assert len(_learner(val_size=7).validation_split(40, 0)[1]) == 7  # a count
    assert len(_learner(val_size=0.01).validation_split(40, 0)[1]) == 1  # at least one held out
    assert len(_learner(val_size=99).validation_split(40, 0)[0]) == 1  # at least one left to train on
    with pytest.raises(ConfigError, match="at least 2 labelled samples"):
        _learner().validation_split(1, 0)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience(digits):
    x, y = _digits_xy(digits, 120)
    lrn = _learner(patience=2, max_epochs=40).fit(x, y, seed=5)
    hist = lrn.val_history_
    assert len(hist) == lrn.epochs_run_ <= 40 and 1 <= lrn.best_epoch_ <= lrn.epochs_run_
    best = max(range(len(hist)), key=lambda e: (hist[e][0], -hist[e][1]))
    assert lrn.best_epoch_ == best + 1
    if lrn.epochs_run_ < 40:  # stopped by patience: exactly `patience` epochs after the best
        assert lrn.epochs_run_ == lrn.best_epoch_ + 2
    # The restored weights are the best epoch's: the split scores exactly what that epoch scored.
    _, va = lrn.validation_split(120, 5)
    logits = lrn.logits(x[va]).double()
    acc = float((logits.argmax(1) == torch.as_tensor(y[va.numpy()])).double().mean())
    assert acc == hist[best][0]
    nll = float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(y[va.numpy()])))
    assert nll == pytest.approx(hist[best][1], rel=1e-9, abs=1e-12)
    # Seeded: the same fit again is the same model.
    again = _learner(patience=2, max_epochs=40).fit(x, y, seed=5)
    assert again.val_history_ == hist
    pairs = zip(again.network.state_dict().values(), lrn.network.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_max_epochs_bounds_training(digits):
    x, y = _digits_xy(digits, 60)
    lrn = _learner(patience=100, max_epochs=3).fit(x, y, seed=0)
    assert lrn.epochs_run_ == 3 and len(lrn.val_history_) == 3


def test_config_declares_early_stopping_for_stored_runs():
    strat = build_strategy("entropy")
    rec = config_record(fast_config(), strat)
    assert not {"early_stopping", "val_size", "patience", "max_epochs"} & set(rec)  # stored runs unchanged
    rec = config_record(fast_config(early_stopping=True, patience=5), strat)
    assert rec["early_stopping"] is True and rec["patience"] == 5 and "val_size" not in rec
    with pytest.raises(ConfigError, match="neither a fraction"):
        fast_config(val_size=2.5).check()
    with pytest.raises(ConfigError, match="--val-size must be a fraction"):
        fast_config(val_size=0)


def test_a_loop_with_early_stopping_records_its_config_and_runs(digits, store_url):
    cfg = fast_config(budget=60, early_stopping=True, patience=1, max_epochs=5)
    st = Experiment(cfg, store_url, dataset=digits, name="es").run()
    assert st.status == "finished" and len(st.labels) == 60
    rec = json.loads(Store(store_url).runs().set_index("run").loc["es", "config"])
    assert rec["early_stopping"] is True and rec["max_epochs"] == 5


def test_the_cli_takes_the_early_stopping_flags(tmp_path):
    url = f"sqlite:///{tmp_path / 'es.db'}"
    args = ["--dataset", "digits", "--strategy", "random", "--budget", "40", "--init-size", "20", "--query-size", "20"]
    args += ["--early-stopping", "--val-size", "5", "--patience", "1", "--max-epochs", "2", "--no-progress"]
    args += ["--val-held-out", "30", "--eval-mc-samples", "3"]
    out = subprocess.run([sys.executable, "-m", "al.bench", *args, "--store", url], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rec = json.loads(Store(url).runs().iloc[0]["config"])
    assert rec["early_stopping"] is True and rec["val_size"] == 5 and rec["patience"] == 1
    assert rec["val_held_out"] == 30 and rec["eval_mc_samples"] == 3
    bad = [a for a in args if a != "--early-stopping"]
    out = subprocess.run([sys.executable, "-m", "al.bench", *bad, "--store", url + "2"], capture_output=True, text=True)
    assert out.returncode == 2 and "add --early-stopping or drop --val-held-out" in out.stderr, out.stderr


# --- the paper's protocol devices: a validation set held out of the pool, MC-averaged test metrics ----------------
def test_a_given_validation_set_replaces_the_carved_split_and_every_label_trains(digits):
    x, y = _digits_xy(digits, 60)
    xv, yv = digits.inputs(np.arange(1000, 1200)), digits.train_y.numpy()[1000:1200]
    lrn = _learner(patience=2, max_epochs=20).fit(x, y, seed=5, val=(xv, yv))
    best = lrn.val_history_[lrn.best_epoch_ - 1]
    logits = lrn.logits(xv).double()
    assert float((logits.argmax(1) == torch.as_tensor(yv)).double().mean()) == best[0]  # scored on the given set
    carved = _learner(patience=2, max_epochs=20).fit(x, y, seed=5)
    assert carved.val_history_ != lrn.val_history_
    with pytest.raises(ConfigError, match="validation set has 200 inputs and 3 labels"):
        _learner().fit(x, y, seed=5, val=(xv, yv[:3]))


def test_held_out_validation_ids_are_set_aside_never_queried_and_the_same_on_every_resume(digits, store_url):
    cfg = fast_config(budget=60, early_stopping=True, patience=1, max_epochs=4, val_held_out=150)
    exp = Experiment(cfg, store_url, dataset=digits, name="vh")
    val = exp.val_ids
    assert len(val) == 150 and len(np.unique(val)) == 150
    st = exp.run()
    assert st.status == "finished" and len(st.labels) == 60  # the budget counts only the labelled set
    assert not set(st.labels) & set(val.tolist())
    assert not set(Store(store_url).queries("vh")["sample_id"]) & set(val.tolist())
    assert np.array_equal(Experiment(cfg, store_url, dataset=digits, name="vh").val_ids, val)
    # The last round's model stopped on the held-out set: its best epoch scores exactly what was recorded.
    lrn = exp.learner
    xv, yv = digits.inputs(val), digits.train_y.numpy()[val]
    assert (
        float((lrn.logits(xv).argmax(1) == torch.as_tensor(yv)).double().mean())
        == (lrn.val_history_[lrn.best_epoch_ - 1][0])
    )
    rec = json.loads(Store(store_url).runs().set_index("run").loc["vh", "config"])
    assert rec["val_held_out"] == 150 and "eval_mc_samples" not in rec


def test_held_out_validation_and_mc_test_metrics_are_refused_where_they_cannot_work(digits, store_url, tmp_path):
    assert not {"val_held_out", "eval_mc_samples"} & set(config_record(fast_config(), build_strategy("entropy")))
    with pytest.raises(ConfigError, match="add --early-stopping or drop --val-held-out"):
        fast_config(val_held_out=100).check()
    with pytest.raises(ConfigError, match="together exceed the pool of 1000"):
        fast_config(early_stopping=True, val_held_out=950).check(1000)
    with pytest.raises(ConfigError, match="--val-held-out must be 0"):
        fast_config(val_held_out=-1)
    cfg = fast_config(early_stopping=True, val_held_out=50, oracle="csv")
    with pytest.raises(ConfigError, match="needs a fully labelled pool and a simulated oracle"):
        Experiment(cfg, store_url, dataset=digits, name="x", oracle_dir=str(tmp_path))
    assert Store(store_url).runs().empty  # nothing written


def test_mc_test_metrics_are_those_of_the_mean_of_the_mc_passes(digits):
    x, y = _digits_xy(digits, 80)
    xt, yt = digits.inputs(np.arange(1000, 1300)), digits.train_y.numpy()[1000:1300]
    plain = _learner(early_stopping=False, epochs=5).fit(x, y, seed=1)
    mc = _learner(early_stopping=False, epochs=5, eval_mc_samples=7).fit(x, y, seed=1)
    probs = mc.mc_predict_proba(xt, n_samples=7, seed=1).mean(0)
    m = mc.evaluate(xt, yt)
    assert m["accuracy"] == float((probs.argmax(1) == yt).mean())
    assert m["nll"] == pytest.approx(float(-np.log(probs[np.arange(len(yt)), yt]).mean()), rel=1e-12)
    assert m != plain.evaluate(xt, yt)  # dropout on: another predictive distribution than the plain model's
    assert mc.evaluate(xt, yt) == m  # seeded by the fit


# --- the BatchBALD paper's model and consistent MC dropout ------------------------------------------------------
def test_batchbald_cnn_is_the_papers_model():
    net = build_model("batchbald-cnn", 10, (1, 28, 28))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    dense = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (5, 5)), (32, 64, (5, 5))]
    assert [(d.in_features, d.out_features) for d in dense] == [(1024, 128), (128, 10)]
    drop = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drop) == 1 and isinstance(drop[0], ConsistentDropout) and drop[0].p == 0.5
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_batchbald_cnn_paper_has_dropout_in_both_conv_blocks_and_between_the_dense_layers():
    net = build_model("batchbald-cnn-paper", 10, (1, 28, 28))
    kinds = [type(m).__name__ for m in net]
    assert kinds == [
        "Conv2d", "ConsistentDropout2d", "MaxPool2d", "ReLU", "Conv2d", "ConsistentDropout2d", "MaxPool2d", "ReLU",
        "Flatten", "Linear", "ConsistentDropout", "ReLU", "Linear",
    ]  # fmt: skip
    assert all(m.p == 0.5 for m in net.modules() if isinstance(m, ConsistentDropout))
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    # Channel dropout: a training pass zeroes whole feature maps; an MC pass drops the same channels for every input.
    drop = net[1]
    assert isinstance(drop, ConsistentDropout2d)
    drop.train()
    out = drop(torch.ones(4, 32, 5, 5))
    per_map = out.flatten(2)
    assert ((per_map == 0).all(-1) | (per_map == 2).all(-1)).all() and not torch.equal(out[0], out[1])
    drop.pass_seed = 7
    out = drop(torch.randn(4, 32, 5, 5))
    dropped = (out.flatten(2) == 0).all(-1)
    assert dropped.any() and (dropped == dropped[:1]).all()


@pytest.mark.parametrize("model", ["batchbald-cnn", "batchbald-cnn-paper"])
def test_consistent_dropout_uses_one_mask_per_pass_for_every_candidate(model):
    lrn = TorchLearner(model, 10, (1, 28, 28), seed=0).reset()
    x = torch.randn(1, 1, 28, 28).repeat(6, 1, 1, 1)  # six copies of one input
    p = lrn.mc_predict_proba(x, n_samples=5, seed=11)  # (T, n, C)
    assert np.array_equal(p, np.repeat(p[:, :1], 6, axis=1))  # the same model for every candidate of a pass
    assert not np.allclose(p[0], p[1])  # another mask in another pass
    # Read in any batching and order, the passes are the same sampled models: batch-major equals pass-major.
    xs = torch.randn(10, 1, 28, 28)
    lrn.eval_batch_size = 4
    pass_major = lrn.mc_predict_proba(xs, n_samples=4, seed=2)
    batch_major = lrn.mc_predict_proba([xs[:3], xs[3:7], xs[7:]], n_samples=4, seed=2)
    # float32 convolutions may round differently for other batch sizes on some CPUs (1.7e-8 seen on an AMD EPYC);
    # another mask would move these probabilities by 1e-2
    np.testing.assert_allclose(batch_major, pass_major, rtol=0, atol=1e-6)
    # Training still drops out per sample (ordinary dropout), and the seeds are cleared after scoring.
    drop = next(m for m in lrn.network.modules() if type(m) is ConsistentDropout)
    assert drop.pass_seed is None
    drop.train()
    h = torch.ones(2, 1000)
    out = drop(h)
    assert not torch.equal(out[0], out[1])
