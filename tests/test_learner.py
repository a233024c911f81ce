"""TorchLearner and the model zoo."""

import numpy as np
import pytest
import torch
from torch import nn

from al.errors import ConfigError, IncompatibleStrategyError
from al.learner import TorchLearner, eval_mode
from al.models import MODELS, build_model


@pytest.mark.parametrize(
    "name,shape",
    [
        ("cnn", (1, 28, 28)),
        ("lenet5", (1, 28, 28)),
        ("mlp", (1, 8, 8)),
        ("resnet18", (3, 32, 32)),
        ("patch-transformer", (1, 28, 28)),
    ],
)
def test_models_output_logits(name, shape):
    m = build_model(name, 7, shape).eval()
    with torch.no_grad():
        assert m(torch.randn(2, *shape)).shape == (2, 7)


def test_model_errors():
    with pytest.raises(ConfigError, match="use --model mlp"):
        build_model("cnn", 10, (1, 8, 8))
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        build_model("builtins:dict", 10, (1,))  # a factory that returns something else


def test_fit_is_seeded_and_learns(digits):
    x, y = digits.train_x[:300], digits.train_y[:300]
    a = TorchLearner("mlp", 10, (1, 8, 8), epochs=5, min_steps=100).fit(x, y, seed=1)
    b = TorchLearner("mlp", 10, (1, 8, 8), epochs=5, min_steps=100).fit(x, y, seed=1)
    pa, pb = a.predict_proba(digits.test_x), b.predict_proba(digits.test_x)
    np.testing.assert_array_equal(pa, pb)
    assert pa.shape == (360, 10) and np.allclose(pa.sum(1), 1)
    assert a.evaluate(digits.test_x, digits.test_y)["accuracy"] > 0.8
    assert a.score(digits.test_x.numpy(), digits.test_y.numpy()) > 0.8  # scikit-learn's ClassifierMixin


def test_sklearn_api_on_numpy(digits):
    from sklearn.base import clone

    est = TorchLearner("mlp", 10, (1, 8, 8), epochs=2, min_steps=20)
    est.fit(digits.train_x[:100].numpy(), digits.train_y[:100].numpy())
    assert est.predict(digits.test_x[:5].numpy()).shape == (5,)
    assert list(est.classes_) == list(range(10))
    c = clone(est)
    assert c.get_params()["min_steps"] == 20 and not c.is_fitted


def test_warm_start_continues_from_previous_weights(digits):
    est = TorchLearner("mlp", 10, (1, 8, 8), epochs=1, min_steps=1, warm_start=True, lr=1e-9)
    est.fit(digits.train_x[:50], digits.train_y[:50], seed=0)
    w0 = est.module_[1].weight.detach().clone()
    est.fit(digits.train_x[:50], digits.train_y[:50], seed=5)  # a cold start with seed 5 would re-initialise
    assert torch.allclose(est.module_[1].weight, w0, atol=1e-6)


def test_bad_fit_inputs(digits):
    est = TorchLearner("mlp", 10, (1, 8, 8))
    with pytest.raises(ConfigError, match="labels must lie"):
        est.fit(digits.train_x[:4], np.array([0, 1, 2, 12]))
    with pytest.raises(ConfigError, match="empty labelled set"):
        est.fit(digits.train_x[:0], np.array([], dtype=int))
    with pytest.raises(ConfigError, match="call fit"):
        TorchLearner("mlp", 10, (1, 8, 8)).predict_proba(digits.test_x[:2])


class BNDropNet(nn.Module):
    def __init__(self, dropout=True):
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.bn = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.5) if dropout else nn.Identity()
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.bn(self.fc(x.flatten(1))))))


def test_mc_dropout_only_dropout_is_stochastic(digits):
    est = TorchLearner(lambda n_classes, input_shape: BNDropNet(), 10, (1, 8, 8), epochs=1, min_steps=5)
    est.fit(digits.train_x[:64], digits.train_y[:64])
    bn = est.module_.bn
    stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    est.module_.train()  # the caller's mode must come back as it was
    mc = est.mc_predict_proba(digits.test_x[:20], n_samples=4, seed=0)
    assert mc.shape == (4, 20, 10) and not np.allclose(mc[0], mc[1])
    assert est.module_.training and est.module_.bn.training
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert int(bn.num_batches_tracked) == stats[2]
    np.testing.assert_array_equal(mc, est.mc_predict_proba(digits.test_x[:20], n_samples=4, seed=0))


def test_mc_dropout_refused_without_dropout(digits):
    est = TorchLearner(lambda n_classes, input_shape: BNDropNet(dropout=False), 10, (1, 8, 8), epochs=1, min_steps=2)
    est.fit(digits.train_x[:16], digits.train_y[:16])
    with pytest.raises(IncompatibleStrategyError, match="no dropout layer|has none"):
        est.mc_predict_proba(digits.test_x[:4], 2)


def test_embed_is_input_of_last_linear(digits):
    est = TorchLearner("mlp", 10, (1, 8, 8), epochs=1, min_steps=2).fit(digits.train_x[:16], digits.train_y[:16])
    e = est.embed(digits.test_x[:5])
    assert e.shape == (5, 128)
    with torch.no_grad():
        logits = est.module_[-1](torch.from_numpy(e))
    np.testing.assert_allclose(logits.numpy(), est.logits(digits.test_x[:5]).numpy(), rtol=1e-5, atol=1e-5)


def test_eval_mode_restores_flags():
    m = BNDropNet().train()
    m.bn.eval()
    with eval_mode(m, dropout=True):
        assert not m.bn.training and m.drop.training and not m.training
    assert m.training and not m.bn.training and m.drop.training


def test_models_registry_lists_builtins():
    assert {"cnn", "lenet5", "mlp", "resnet18", "patch-transformer"} <= set(MODELS.names())


class Scaled(nn.Module):
    """A user's own module: MC-dropout cannot know it is deterministic, so it must run in every pass."""

    def forward(self, x):
        return 2 * x


def _mc_whole_passes(est: TorchLearner, x: torch.Tensor, n: int, seed: int) -> np.ndarray:
    """Reference: every pass runs the whole model, batch by batch, from one seeded RNG stream."""
    net = est.module_
    out = np.empty((n, len(x), est.n_classes))
    with torch.no_grad(), torch.random.fork_rng(devices=[]), eval_mode(net, dropout=True):
        torch.manual_seed(seed)
        for t in range(n):
            out[t] = torch.cat(
                [
                    torch.softmax(net(x[i : i + est.eval_batch_size]).double(), 1)
                    for i in range(0, len(x), est.eval_batch_size)
                ]
            )
    return out


@pytest.mark.parametrize(
    "build,shape,trunk",
    [
        ("cnn", (1, 28, 28), 7),  # conv stack + Flatten run once: only the dense tail repeats
        ("mlp", (1, 8, 8), 3),  # Flatten, Linear, ReLU
        (
            lambda n_classes, input_shape: nn.Sequential(
                nn.Flatten(), Scaled(), nn.Linear(64, 32), nn.Dropout(0.5), nn.Linear(32, n_classes)
            ),
            (1, 8, 8),
            1,
        ),
        (lambda n_classes, input_shape: BNDropNet(), (1, 8, 8), 0),  # not a Sequential: whole passes
    ],
)
def test_mc_dropout_shares_the_deterministic_trunk_and_matches_whole_passes(build, shape, trunk):
    from al.learner import deterministic_trunk

    g = torch.Generator().manual_seed(0)
    x = torch.randn(70, *shape, generator=g)
    y = torch.arange(70) % 10
    est = TorchLearner(build, 10, shape, epochs=1, min_steps=3, eval_batch_size=32).fit(x, y)
    assert deterministic_trunk(est.module_) == trunk
    mc = est.mc_predict_proba(x, n_samples=5, seed=3)
    np.testing.assert_array_equal(mc, _mc_whole_passes(est, x, 5, 3))  # same masks, same order: identical
    assert not np.allclose(mc[0], mc[1])


# --- torch's global RNG is the caller's: seeded only inside the learner's calls -----------------------------------
def test_reset_fit_and_mc_dropout_leave_the_global_torch_rng_alone(digits):
    est = TorchLearner("mlp", 10, (1, 8, 8), epochs=2, min_steps=20)
    x, y = digits.train_x[:60], digits.train_y[:60]
    for call in (
        lambda: est.reset(3),
        lambda: est.fit(x, y, seed=4),
        lambda: est.mc_predict_proba(digits.test_x[:10], 3, seed=5),
    ):
        torch.manual_seed(1234)
        state = torch.get_rng_state()
        call()
        assert torch.equal(torch.get_rng_state(), state)


def test_results_do_not_depend_on_the_callers_rng_and_match_seeding_it_for_good(digits):
    """The weights of reset(s) are those of torch.manual_seed(s) then building the model, as before the learner
    stopped seeding the global RNG for good; fit and MC dropout give the same numbers whatever the caller drew."""
    x, y, xt = digits.train_x[:80], digits.train_y[:80], digits.test_x[:30]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        ref = build_model("mlp", 10, (1, 8, 8)).state_dict()
    out = []
    for caller_seed in (0, 1):
        torch.manual_seed(caller_seed)
        est = TorchLearner("mlp", 10, (1, 8, 8), epochs=2, min_steps=20).reset(9)
        assert all(torch.equal(v, ref[k]) for k, v in est.network.state_dict().items())
        torch.rand(5)  # the caller draws in between
        est.fit(x, y, seed=2)
        out.append((est.predict_proba(xt), est.mc_predict_proba(xt, 4, seed=6)))
    for a, b in zip(*out, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mc_trunk_bytes_is_a_setting_and_only_changes_memory_not_results(digits):
    x = digits.test_x[:50]
    base = TorchLearner("mlp", 10, (1, 8, 8), epochs=1, min_steps=5).fit(digits.train_x[:30], digits.train_y[:30])
    assert base.get_params()["mc_trunk_bytes"] == 1 << 30
    # 0 bytes: the shared trunk never fits, so every pass runs the whole model
    whole = TorchLearner("mlp", 10, (1, 8, 8), epochs=1, min_steps=5, mc_trunk_bytes=0)
    whole.fit(digits.train_x[:30], digits.train_y[:30])
    np.testing.assert_array_equal(base.mc_predict_proba(x, 4, seed=1), whole.mc_predict_proba(x, 4, seed=1))
    np.testing.assert_array_equal(whole.mc_predict_proba(x, 4, seed=1), _mc_whole_passes(whole, x, 4, 1))
