"""REGrad with noise on the PARAMETERS (``perturb="params"``) against a naive reference written here.

The reference copies the model, adds sigma * std(tensor) * eps to every trainable tensor by an explicit loop,
takes one autograd call per sample, class and perturbed model, and averages the per-layer gradient norms
("mean-norm"), with class weights from the clean model. Also: sigma = 0 is the M = 0 score, the model comes back
bit-identical (also when scoring raises, including while the weights are perturbed), the noise does not depend on
batching, and the strategy takes ``perturb`` through its kwargs.
"""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from al.errors import ConfigError
from al.learner import TorchLearner
from al.strategy import Context
from strategies import build_strategy
from strategies.regrad import gradient_norms, parameter_noise, regrad_scores

RTOL = 1e-4
WEIGHTINGS = ["root", "expected", "predicted", "uniform"]


# ------------------------------------------------------------------------------------------------ test models
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.5), nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 4)
    )


def cnn_bn() -> nn.Sequential:
    torch.manual_seed(1)
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(5 * 2 * 2, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 4),
    )
    # non-trivial running statistics and affine parameters, so that eval-mode BatchNorm is not the identity and
    # its weight tensors have a non-zero std (all-ones gains would get no noise)
    for bn in (m[1], m[5], m[10]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return m


def cnn_frozen() -> nn.Sequential:
    """The CNN with its first conv frozen: not a layer, and not perturbed."""
    m = cnn_bn()
    m[0].requires_grad_(False)
    return m


MODELS = {"mlp": mlp, "cnn": cnn_bn, "cnn-frozen": cnn_frozen}


def inputs(name: str, n: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(10)
    if name == "mlp":
        return torch.randn(n or 5, 1, 4, 4, generator=g)
    return torch.randn(n or 4, 2, 8, 8, generator=g)


# ------------------------------------------------------------------------------------------------ naive reference
def naive_param_noise_norms(
    model: nn.Module, x: torch.Tensor, m: int, sigma: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """norms (N, C, L): mean over the clean and m perturbed copies of ||d log p(k|x_i) / d theta_l||; probs (N, C)
    of the clean model. Layers: modules owning trainable parameters, in registration order (= forward order for
    the Sequential models above)."""
    clean = copy.deepcopy(model).eval()
    trainable = [p for p in clean.parameters() if p.requires_grad]
    eps = parameter_noise([p.shape for p in trainable], m, seed)
    models = [clean]
    for j in range(m):
        mj = copy.deepcopy(clean)
        with torch.no_grad():
            for i, (p, p0) in enumerate(zip([p for p in mj.parameters() if p.requires_grad], trainable, strict=True)):
                std = torch.sqrt(((p0.double() - p0.double().mean()) ** 2).mean())
                p += (sigma * std * eps[j][i].double()).to(p.dtype)
        models.append(mj)
    probs = torch.softmax(clean(x).double(), 1).detach().numpy()
    n_cls = probs.shape[1]
    per_model = []
    for mj in models:
        groups = [[p for p in mod.parameters(recurse=False) if p.requires_grad] for mod in mj.modules()]
        groups = [g for g in groups if g]
        flat = [p for g in groups for p in g]
        out = np.zeros((len(x), n_cls, len(groups)))
        for i, k in itertools.product(range(len(x)), range(n_cls)):
            lp = torch.log_softmax(mj(x[i : i + 1]), 1)[0, k]
            gs = dict(zip(map(id, flat), torch.autograd.grad(lp, flat), strict=True))
            for li, g in enumerate(groups):
                out[i, k, li] = float(torch.cat([gs[id(p)].reshape(-1).double() for p in g]).norm())
        per_model.append(out)
    return np.mean(per_model, 0), probs


def naive_score(
    norms: np.ndarray, probs: np.ndarray, weighting: str, alpha: float, combine: str = "linear"
) -> np.ndarray:
    n, c, L = norms.shape
    if weighting == "root":
        cw = np.sqrt(probs) / np.sqrt(probs).sum(1, keepdims=True)
    elif weighting == "expected":
        cw = probs
    elif weighting == "predicted":
        cw = np.eye(c)[probs.argmax(1)]
    else:
        cw = np.full((n, c), 1.0 / c)
    w = np.exp(alpha * np.arange(L) / max(L - 1, 1))
    w = w / w.sum()
    if combine == "squared":
        return np.sqrt(np.einsum("nk,nkl,l->n", cw, norms**2, w))
    return np.einsum("nk,nkl,l->n", cw, norms, w)


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "flags": [mod.training for mod in model.modules()],
        "req": [p.requires_grad for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, snap: dict) -> None:
    assert [mod.training for mod in model.modules()] == snap["flags"]
    assert [p.requires_grad for p in model.parameters()] == snap["req"]
    assert all(p.grad is None for p in model.parameters())
    state = model.state_dict()
    assert state.keys() == snap["state"].keys()
    for k, v in state.items():
        assert torch.equal(v, snap["state"][k]), k  # bit-identical, buffers included


# ------------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("name", list(MODELS))
def test_param_noise_scores_match_the_naive_reference(name: str) -> None:
    model, x = MODELS[name](), inputs(name)
    m, sigma = 2, 0.3
    norms, probs = naive_param_noise_norms(model, x, m, sigma, seed=3)
    fast = gradient_norms(
        model, x, n_perturbations=m, sigma=sigma, aggregate="mean-norm", seed=3, perturb="params", batch_size=3
    )
    assert fast.norms.shape == (len(x), probs.shape[1], norms.shape[2])
    np.testing.assert_allclose(fast.probs, probs, rtol=1e-6)  # class weights come from the clean model
    for weighting, alpha in itertools.product(WEIGHTINGS, [0.0, 3.0]):
        got = regrad_scores(
            model,
            x,
            class_weighting=weighting,
            layer_alpha=alpha,
            n_perturbations=m,
            sigma=sigma,
            aggregate="mean-norm",
            seed=3,
            perturb="params",
            batch_size=3,
        )
        assert got.dtype == np.float64 and got.shape == (len(x),)
        np.testing.assert_allclose(
            got, naive_score(norms, probs, weighting, alpha), rtol=RTOL, err_msg=f"{weighting} alpha={alpha}"
        )
    got = regrad_scores(
        model,
        x,
        class_weighting="root",
        layer_alpha=-2.0,
        combine="squared",
        n_perturbations=m,
        sigma=sigma,
        aggregate="mean-norm",
        seed=3,
        perturb="params",
    )
    np.testing.assert_allclose(got, naive_score(norms, probs, "root", -2.0, "squared"), rtol=RTOL)
    # the noise matters: the clean-model (M = 0) norms are clearly different, so this comparison can fail
    clean, _ = naive_param_noise_norms(model, x, 0, 0.0)
    assert not np.allclose(naive_score(clean, probs, "root", 0.0), naive_score(norms, probs, "root", 0.0), rtol=1e-3)


def test_noise_is_relative_to_each_tensors_std() -> None:
    """Rescaling a ReLU net (first layer x2, last layer /2) leaves its function unchanged; with noise relative to
    each tensor's std, every perturbed model is rescaled the same way, so the perturbed functions are unchanged
    too and the per-layer gradient norms rescale exactly (first layer /2, last layer x2). With an absolute noise
    scale this would not hold."""
    torch.manual_seed(4)
    a = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[1].weight *= 2.0
        b[1].bias *= 2.0
        b[3].weight /= 2.0
    x = inputs("mlp")
    kw = dict(n_perturbations=3, sigma=0.2, aggregate="mean-norm", perturb="params", seed=1)
    gna, gnb = gradient_norms(a, x, **kw), gradient_norms(b, x, **kw)
    np.testing.assert_allclose(gnb.probs, gna.probs, rtol=1e-5)
    np.testing.assert_allclose(gnb.norms[:, :, 0], gna.norms[:, :, 0] / 2, rtol=1e-4)
    np.testing.assert_allclose(gnb.norms[:, :, 1], gna.norms[:, :, 1] * 2, rtol=1e-4)
    clean = gradient_norms(a, x)
    assert not np.allclose(gna.norms, clean.norms, rtol=1e-3)  # the noise did something


def test_sigma_zero_or_no_copies_give_the_clean_score() -> None:
    model, x = cnn_bn(), inputs("cnn")
    for weighting in ("root", "predicted"):
        kw = dict(class_weighting=weighting, layer_alpha=1.0, aggregate="mean-norm")
        base = regrad_scores(model, x, n_perturbations=0, **kw)
        np.testing.assert_array_equal(
            regrad_scores(model, x, n_perturbations=3, sigma=0.0, perturb="params", **kw), base
        )
        np.testing.assert_array_equal(
            regrad_scores(model, x, n_perturbations=0, sigma=0.5, perturb="params", **kw), base
        )
        assert not np.allclose(
            regrad_scores(model, x, n_perturbations=3, sigma=0.2, perturb="params", **kw), base, rtol=1e-4
        )
    # mean-grad with parameter noise is refused only when the noise is actually used
    regrad_scores(model, x, n_perturbations=0, aggregate="mean-grad", perturb="params")
    regrad_scores(model, x, n_perturbations=2, sigma=0.0, aggregate="mean-grad", perturb="params")


# ------------------------------------------------------------------------------------------------ model contract
def test_model_is_left_bit_identical_after_scoring() -> None:
    model, x = cnn_bn(), inputs("cnn")
    model.train()
    model[1].eval()  # mixed flags must come back as they were
    model[4].requires_grad_(False)  # a frozen conv: not perturbed, stays frozen
    snap = snapshot(model)
    s = regrad_scores(model, x, n_perturbations=3, sigma=0.5, perturb="params", class_weighting="root", batch_size=3)
    assert np.isfinite(s).all()
    assert_unchanged(model, snap)
    # dropout is off while scoring, so the same call twice is the same answer even from train mode
    np.testing.assert_array_equal(
        regrad_scores(model, x, n_perturbations=3, sigma=0.5, perturb="params", class_weighting="root"),
        regrad_scores(model, x, n_perturbations=3, sigma=0.5, perturb="params", class_weighting="root"),
    )
    assert_unchanged(model, snap)


class Tripwire(nn.Module):
    """Identity that raises whenever the watched parameter is not at its clean value, i.e. in a perturbed pass."""

    def __init__(self, watched: nn.Parameter) -> None:
        super().__init__()
        self._watched = [watched]  # a list, so that it is not registered twice
        self._clean = watched.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.equal(self._watched[0], self._clean):
            raise RuntimeError("tripwire: the weights are perturbed")
        return x


def test_model_is_restored_when_scoring_raises() -> None:
    # (1) a later batch of the wrong shape
    model = mlp()
    model.train()
    snap = snapshot(model)
    batches = [inputs("mlp", 4), torch.randn(3, 1, 5, 5)]  # 25 features instead of 16
    with pytest.raises(RuntimeError):
        gradient_norms(model, batches, n_perturbations=2, sigma=0.3, perturb="params")
    assert_unchanged(model, snap)
    # (2) an error raised while the weights ARE perturbed (first perturbed pass of the first batch)
    model = mlp()
    model.insert(2, Tripwire(model[1].weight))
    model.train()
    snap = snapshot(model)
    gradient_norms(model, inputs("mlp"), n_perturbations=0, perturb="params")  # the clean path never trips
    with pytest.raises(RuntimeError, match="tripwire"):
        gradient_norms(model, inputs("mlp"), n_perturbations=2, sigma=0.3, perturb="params", batch_size=2)
    assert_unchanged(model, snap)


# ------------------------------------------------------------------------------------------------ determinism
def test_deterministic_and_independent_of_batch_size() -> None:
    model, x = mlp(), torch.randn(11, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    kw = dict(n_perturbations=3, sigma=0.2, seed=5, perturb="params", class_weighting="root", layer_alpha=0.0)
    whole = regrad_scores(model, x, batch_size=1000, **kw)
    np.testing.assert_array_equal(regrad_scores(model, x, batch_size=1000, **kw), whole)
    for bs in (1, 3, 4):
        np.testing.assert_allclose(regrad_scores(model, x, batch_size=bs, **kw), whole, rtol=1e-5)
    loader = [(x[i : i + 4], torch.zeros(4)) for i in range(0, 11, 4)]  # a DataLoader-like iterable of (x, y)
    np.testing.assert_allclose(regrad_scores(model, loader, **kw), whole, rtol=1e-5)
    # the first samples' scores do not depend on which other samples are scored with them
    np.testing.assert_allclose(regrad_scores(model, x[:5], batch_size=2, **kw), whole[:5], rtol=1e-5)
    other_seed = regrad_scores(model, x, batch_size=1000, **{**kw, "seed": 6})
    assert not np.allclose(other_seed, whole, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ strategy
def test_strategy_accepts_perturb_and_rejects_bad_values(digits) -> None:
    kw = json.loads('{"perturb": "params", "n_perturbations": 2, "sigma": 0.1, "class_weighting": "root"}')
    strat = build_strategy("regrad", **kw)  # what --strategy-kwargs JSON becomes
    assert strat.params()["perturb"] == "params"
    assert build_strategy("regrad").params()["perturb"] == "input"  # the default is unchanged
    assert build_strategy("exgrad", perturb="params").params()["perturb"] == "params"

    learner = TorchLearner("mlp", 10, (1, 8, 8), epochs=2, min_steps=20).fit(digits.train_x[:60], digits.train_y[:60])
    cand = np.arange(60, 120)
    ctx = Context(cand, np.arange(60), learner=learner, inputs_of=lambda ids: digits.train_x[ids])
    sel = strat(ctx, 5, np.random.default_rng(0))
    # select keys the noise by the candidates' ids and one draw from the round's rng
    want = regrad_scores(learner.network, digits.train_x[cand], ids=cand, rng=np.random.default_rng(0), **kw)
    np.testing.assert_allclose(sel.pool_scores, want)
    assert not np.allclose(
        want,
        regrad_scores(learner.network, digits.train_x[cand], class_weighting="root", n_perturbations=2, sigma=0.1),
        rtol=1e-4,
    )

    with pytest.raises(ConfigError, match=r"perturb must be one of \('input', 'params'\).*'weights'"):
        build_strategy("regrad", perturb="weights")
    with pytest.raises(ConfigError, match="perturb must be one of"):
        regrad_scores(mlp(), inputs("mlp"), perturb="both")
    with pytest.raises(ConfigError, match='aggregate="mean-norm"'):
        build_strategy("regrad", perturb="params", aggregate="mean-grad", n_perturbations=2, sigma=0.1)
    with pytest.raises(ConfigError, match="relative to each parameter tensor's std"):
        gradient_norms(mlp(), inputs("mlp"), perturb="params", sigma=-0.1)


def test_every_keyword_of_regrad_scores_including_perturb_is_a_strategy_setting() -> None:
    import inspect

    kw = {
        k
        for k in inspect.signature(regrad_scores).parameters
        if k not in ("model", "inputs", "ids", "rng", "pair_rule")
    }
    settings = dict(
        class_weighting="expected",
        layer_alpha=2.5,
        n_perturbations=3,
        sigma=0.2,
        aggregate="mean-norm",
        combine="squared",
        top_k=4,
        seed=7,
        batch_size=64,
        last_layer_only=True,
        perturb="params",
    )
    assert set(settings) == kw
    assert set(inspect.signature(gradient_norms).parameters) >= {"perturb"}
    for name in ("regrad", "exgrad"):
        assert build_strategy(name, **settings).params() == {**settings, "noise_key": "sample-id"}
