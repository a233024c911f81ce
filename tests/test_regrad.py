"""REGrad, ExGrad and GradNorm against naive per-sample, per-class autograd loops written here.

Every fast-path kind (Linear on vectors and tokens, Conv1d/Conv2d, BatchNorm, LayerNorm, Embedding) and the
autograd fallback (a module's own nn.Parameter, GroupNorm, nn.MultiheadAttention) is compared to 1e-4 relative.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from al.errors import ConfigError
from al.learner import TorchLearner
from al.strategy import Context
from strategies import STRATEGIES, build_strategy
from strategies.regrad import discover_layers, gradient_norms, gradnorm_scores, perturbation_noise, regrad_scores

RTOL = 1e-4


# ------------------------------------------------------------------------------------------------ test models
class Scale(nn.Module):
    """Owns a parameter used directly in forward: only the fallback can handle it."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.5), nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 4)
    )


def cnn_bn() -> nn.Module:
    torch.manual_seed(1)
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, stride=2, padding=1, dilation=1, bias=False),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Conv2d(5, 3, 1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(3 * 2 * 2, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 4),
    )
    # non-trivial running statistics, so that eval-mode BatchNorm is not the identity
    for bn in (m[1], m[5], m[11]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return m


class TokenNet(nn.Module):
    """Embedding, Linear on token sequences, LayerNorm, Conv1d, a repeated (shared) Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.emb = nn.Embedding(7, 6, padding_idx=0)
        self.proj = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.conv = nn.Conv1d(6, 5, 2, padding=1, dilation=2)
        self.head = nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.relu(self.proj(self.emb(ids))))
        h = torch.tanh(self.proj(h))  # the same Linear used twice: its gradient sums both uses
        h = self.conv(h.transpose(1, 2)).mean(2)
        return self.head(h)


class FallbackNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.inp = nn.Linear(4, 8)
        self.scale = Scale(8)
        self.gn = nn.GroupNorm(2, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.bias = nn.Parameter(torch.randn(3) * 0.1)  # owned by the top module itself
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (n, T=3, 4)
        h = self.scale(self.inp(x))
        h = self.gn(h.transpose(1, 2)).transpose(1, 2)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.head(torch.tanh(h).mean(1)) + self.bias


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """The naive definition of layers for the models above: modules owning params, in registration order,
    except that MultiheadAttention's out_proj belongs to the attention block and the top module's own bias
    comes first (its forward is entered first)."""
    groups: list[list[nn.Parameter]] = []
    own = [p for p in model.parameters(recurse=False) if p.requires_grad]
    if own:
        groups.append(own)
    for m in model.modules():
        if m is model or isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear):
            continue
        ps = [p for p in m.parameters(recurse=isinstance(m, nn.MultiheadAttention)) if p.requires_grad]
        if isinstance(m, nn.MultiheadAttention) or not list(m.children()):
            if ps:
                groups.append(ps)
    return groups


# ------------------------------------------------------------------------------------------------ naive loop
def naive_norms(
    model: nn.Module,
    x: torch.Tensor,
    groups: list[list[nn.Parameter]],
    m: int,
    sigma: float,
    aggregate: str,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """norms (N, C, L) by one autograd call per sample, class and copy; probs (N, C)."""
    model.eval()  # dropout off, BatchNorm on its running statistics
    params = [p for g in groups for p in g]
    idx = {id(p): i for i, p in enumerate(params)}
    noise = perturbation_noise(x.shape[1:], range(len(x)), m, seed) if m else None
    n_cls = model(x[:1]).shape[1]
    out = np.zeros((len(x), n_cls, len(groups)))
    probs = torch.softmax(model(x).double(), 1).detach().numpy()
    for i in range(len(x)):
        xs = [x[i]] + [x[i] + sigma * noise[i, j].to(x.dtype) for j in range(m)]
        for k in range(n_cls):
            per_copy = []
            for xc in xs:
                lp = torch.log_softmax(model(xc[None]), 1)[0, k]
                gs = torch.autograd.grad(lp, params, allow_unused=True)
                gs = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params, strict=True)]
                per_copy.append([torch.cat([gs[idx[id(p)]].reshape(-1).double() for p in g]) for g in groups])
            for li in range(len(groups)):
                stack = torch.stack([c[li] for c in per_copy])
                if aggregate == "mean-grad":
                    out[i, k, li] = float(stack.mean(0).norm())
                else:
                    out[i, k, li] = float(stack.norm(dim=1).mean())
    return out, probs


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
        return np.sqrt(sum(cw[:, k] * sum(w[j] * norms[:, k, j] ** 2 for j in range(L)) for k in range(c)))
    return sum(cw[:, k] * sum(w[j] * norms[:, k, j] for j in range(L)) for k in range(c))


# ------------------------------------------------------------------------------------------------ fixtures
def _inputs(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(10)
    if name == "mlp":
        return torch.randn(5, 1, 4, 4, generator=g)
    if name == "cnn":
        return torch.randn(4, 2, 8, 8, generator=g)
    if name == "tokens":
        return torch.randint(0, 7, (4, 5), generator=g)
    return torch.randn(4, 3, 4, generator=g)


MODELS = {"mlp": mlp, "cnn": cnn_bn, "tokens": TokenNet, "fallback": FallbackNet}
_NAIVE_CACHE: dict = {}


def _naive(name: str, m: int, sigma: float, aggregate: str):
    key = (name, m, sigma, aggregate)
    if key not in _NAIVE_CACHE:
        model = MODELS[name]()
        _NAIVE_CACHE[key] = naive_norms(model, _inputs(name), layer_groups(model), m, sigma, aggregate)
    return _NAIVE_CACHE[key]


# ------------------------------------------------------------------------------------------------ exactness
def test_layers_are_discovered_in_forward_order_with_the_right_kinds() -> None:
    kinds = [(L.name, L.kind) for L in discover_layers(cnn_bn(), _inputs("cnn"))]
    assert kinds == [
        ("0", "conv"),
        ("1", "batchnorm"),
        ("4", "conv"),
        ("5", "batchnorm"),
        ("7", "conv"),
        ("10", "linear"),
        ("11", "batchnorm"),
        ("13", "linear"),
    ]
    fb = [(L.name, L.kind, [n for n, _ in L.params]) for L in discover_layers(FallbackNet(), _inputs("fallback"))]
    assert fb == [
        ("FallbackNet", "fallback", ["bias"]),
        ("inp", "linear", ["weight", "bias"]),
        ("scale", "fallback", ["s"]),
        ("gn", "fallback", ["weight", "bias"]),
        ("attn", "fallback", ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]),
        ("head", "linear", ["weight", "bias"]),
    ]
    tok = [(L.name, L.kind) for L in discover_layers(TokenNet(), _inputs("tokens"))]
    assert tok == [
        ("emb", "embedding"),
        ("proj", "linear"),
        ("norm", "layernorm"),
        ("conv", "conv"),
        ("head", "linear"),
    ]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("m,sigma,aggregate", [(0, 0.0, "mean-grad"), (2, 0.3, "mean-grad"), (2, 0.3, "mean-norm")])
def test_scores_match_the_naive_loop(name: str, m: int, sigma: float, aggregate: str) -> None:
    if name == "tokens" and m:
        pytest.skip("token ids cannot be perturbed with Gaussian noise")
    model, x = MODELS[name](), _inputs(name)
    norms, probs = _naive(name, m, sigma, aggregate)
    fast = gradient_norms(model, x, n_perturbations=m, sigma=sigma, aggregate=aggregate, batch_size=6)
    assert fast.norms.shape == (len(x), probs.shape[1], len(layer_groups(model)))
    for weighting, alpha in itertools.product(["root", "expected", "predicted", "uniform"], [0.0, 3.0]):
        want = naive_score(norms, probs, weighting, alpha)
        got = regrad_scores(
            model,
            x,
            class_weighting=weighting,
            layer_alpha=alpha,
            n_perturbations=m,
            sigma=sigma,
            aggregate=aggregate,
            batch_size=6,
        )
        assert got.dtype == np.float64 and got.shape == (len(x),)
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=f"{weighting} alpha={alpha}")
    got = regrad_scores(
        model,
        x,
        class_weighting="expected",
        layer_alpha=3.0,
        combine="squared",
        n_perturbations=m,
        sigma=sigma,
        aggregate=aggregate,
    )
    np.testing.assert_allclose(got, naive_score(norms, probs, "expected", 3.0, "squared"), rtol=RTOL)


@pytest.mark.parametrize("rule", ["direct", "gram"])
@pytest.mark.parametrize("name", ["cnn", "tokens", "mlp"])
def test_direct_and_gram_forms_agree_with_the_naive_loop(rule: str, name: str) -> None:
    m, sigma = (0, 0.0) if name == "tokens" else (2, 0.3)
    model, x = MODELS[name](), _inputs(name)
    norms, probs = _naive(name, m, sigma, "mean-grad")
    got = regrad_scores(
        model,
        x,
        class_weighting="uniform",
        layer_alpha=0.0,
        n_perturbations=m,
        sigma=sigma,
        aggregate="mean-grad",
        pair_rule=rule,
    )
    np.testing.assert_allclose(got, naive_score(norms, probs, "uniform", 0.0), rtol=RTOL)


def test_per_layer_norms_match_the_naive_loop_class_by_class() -> None:
    model, x = cnn_bn(), _inputs("cnn")
    norms, probs = _naive("cnn", 2, 0.3, "mean-grad")
    # chunks of 1 sample + 2 copies
    fast = gradient_norms(model, x, n_perturbations=2, sigma=0.3, aggregate="mean-grad", batch_size=5)
    by_class = np.zeros_like(norms)
    for r in range(fast.classes.shape[1]):
        by_class[np.arange(len(x)), fast.classes[:, r]] = fast.norms[:, r]
    np.testing.assert_allclose(by_class, norms, rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(fast.probs, probs, rtol=1e-6)


def test_sigma_zero_with_copies_equals_no_copies_and_top_k_all_equals_full() -> None:
    model, x = cnn_bn(), _inputs("cnn")
    kw = dict(class_weighting="root", layer_alpha=1.0)
    base = regrad_scores(model, x, n_perturbations=0, **kw)
    np.testing.assert_allclose(regrad_scores(model, x, n_perturbations=3, sigma=0.0, **kw), base, rtol=1e-10)
    np.testing.assert_allclose(regrad_scores(model, x, top_k=4, **kw), base, rtol=1e-10)
    assert not np.allclose(regrad_scores(model, x, top_k=2, **kw), base, rtol=1e-4)  # top-2 drops real terms
    norms, probs = _naive("cnn", 0, 0.0, "mean-grad")
    last = regrad_scores(model, x, class_weighting="expected", last_layer_only=True)
    np.testing.assert_allclose(last, naive_score(norms[:, :, -1:], probs, "expected", 0.0), rtol=RTOL)


def test_chunking_and_batch_iterables_do_not_change_scores() -> None:
    model, x = mlp(), torch.randn(11, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    kw = dict(n_perturbations=2, sigma=0.2, seed=5)
    whole = regrad_scores(model, x, batch_size=1000, **kw)
    np.testing.assert_allclose(regrad_scores(model, x, batch_size=3, **kw), whole, rtol=1e-5)
    loader = [(x[i : i + 4], torch.zeros(4)) for i in range(0, 11, 4)]
    np.testing.assert_allclose(regrad_scores(model, loader, **kw), whole, rtol=1e-5)
    assert not np.allclose(regrad_scores(model, x, batch_size=1000, n_perturbations=2, sigma=0.2, seed=6), whole)


def test_model_is_left_exactly_as_found() -> None:
    model, x = cnn_bn(), _inputs("cnn")
    model.train()
    model[1].eval()  # a mixed set of flags must come back as it was
    model[0].requires_grad_(False)  # a frozen layer is not a layer, and stays frozen
    flags = [mod.training for mod in model.modules()]
    req = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    s = regrad_scores(model, x, n_perturbations=2, sigma=0.1)
    assert np.isfinite(s).all()
    assert [mod.training for mod in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == req
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # includes BatchNorm running stats and num_batches_tracked
    assert [L.name for L in discover_layers(model, x)][0] == "1"
    # dropout is off while scoring: the same call twice gives the same answer even from train mode
    np.testing.assert_array_equal(regrad_scores(model, x), regrad_scores(model, x))


def test_fallback_leaves_no_grad_and_transformer_matches_naive() -> None:
    from al.models import PatchTransformer

    torch.manual_seed(0)
    model = PatchTransformer(n_classes=3, input_shape=(1, 8, 8), patch=4, dim=8, depth=1, heads=2)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    layers = discover_layers(model, x)
    kinds = {L.kind for L in layers}
    assert {"fallback", "linear", "layernorm"} <= kinds
    groups = [[p for _, p in L.params] for L in layers]
    norms, probs = naive_norms(model, x, groups, 0, 0.0, "mean-grad")
    got = regrad_scores(model, x, class_weighting="root", layer_alpha=3.0)
    np.testing.assert_allclose(got, naive_score(norms, probs, "root", 3.0), rtol=RTOL)
    assert all(p.grad is None for p in model.parameters())


def test_resnet18_runs_and_matches_naive_on_top_classes() -> None:
    from al.models import resnet18

    torch.manual_seed(0)
    model = resnet18(n_classes=3, input_shape=(3, 8, 8))
    model.eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    layers = discover_layers(model, x)
    assert layers[0].name == "conv1" and layers[-1].name == "fc.1" and len(layers) == 41
    groups = [[p for _, p in L.params] for L in layers]
    norms, probs = naive_norms(model, x, groups, 0, 0.0, "mean-grad")
    got = regrad_scores(model, x, class_weighting="uniform", layer_alpha=0.0)
    np.testing.assert_allclose(got, naive_score(norms, probs, "uniform", 0.0), rtol=RTOL)


# ------------------------------------------------------------------------------------------------ GradNorm
def test_gradnorm_closed_form_matches_autograd_of_the_kl() -> None:
    model, x = mlp(), _inputs("mlp")
    head = model[-1]
    want = []
    for i in range(len(x)):
        logp = torch.log_softmax(model.eval()(x[i : i + 1]), 1)
        kl = -(logp.mean())  # KL(u || p) up to a constant
        (g,) = torch.autograd.grad(kl, [head.weight])
        want.append(float(g.abs().sum()))
    np.testing.assert_allclose(gradnorm_scores(model, x), want, rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------------ strategies
def test_strategies_are_registered_and_select_through_a_context(digits) -> None:
    for name in ("regrad", "exgrad", "gradnorm"):
        assert name in STRATEGIES
    learner = TorchLearner("mlp", 10, (1, 8, 8), epochs=2, min_steps=20).fit(digits.train_x[:60], digits.train_y[:60])
    cand = np.arange(60, 160)

    def ctx() -> Context:
        return Context(cand, np.arange(60), learner=learner, inputs_of=lambda ids: digits.train_x[ids])

    for name, kw in (
        ("regrad", {"layer_alpha": 2, "n_perturbations": 2, "sigma": 0.1, "top_k": 3}),
        ("exgrad", {}),
        ("gradnorm", {}),
    ):
        strat = build_strategy(name, **kw)
        strat.check_learner(learner)
        a = strat(ctx(), 10, np.random.default_rng(0))
        b = strat(ctx(), 10, np.random.default_rng(0))  # the same rng gives the same picks
        assert len(set(a.ids)) == 10 and set(a.ids) <= set(cand)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.pool_scores, b.pool_scores)
        if not kw:  # no noise: nothing is drawn from the rng, so any rng gives the same scores
            np.testing.assert_array_equal(strat(ctx(), 10, np.random.default_rng(1)).pool_scores, a.pool_scores)
        assert a.pool_scores.shape == (100,)
        assert np.all(a.scores[:-1] >= a.scores[1:])
    ex = build_strategy("exgrad")
    ref = regrad_scores(
        learner.network, digits.train_x[cand], class_weighting="expected", layer_alpha=0, n_perturbations=0
    )
    np.testing.assert_allclose(ex(ctx(), 5, np.random.default_rng(0)).pool_scores, ref)
    gn = build_strategy("gradnorm")(ctx(), 5, np.random.default_rng(0))
    np.testing.assert_allclose(gn.pool_scores, -gradnorm_scores(learner.network, digits.train_x[cand]))


def test_bad_settings_are_refused_with_the_valid_choices() -> None:
    with pytest.raises(ConfigError, match="class_weighting must be one of"):
        build_strategy("regrad", class_weighting="sqrt")
    with pytest.raises(ConfigError, match="aggregate"):
        regrad_scores(mlp(), _inputs("mlp"), aggregate="median")
    with pytest.raises(ConfigError, match="sigma"):
        regrad_scores(mlp(), _inputs("mlp"), sigma=-1)
    with pytest.raises(ConfigError, match="no parameter"):
        build_strategy("regrad", alpha=2)


def test_every_keyword_of_regrad_scores_is_a_strategy_setting() -> None:
    import inspect

    # ids, rng and pair_rule are per call (which rows, which round, which speed path), not settings
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
    for name in ("regrad", "exgrad"):  # noise is drawn here, so params() also says how it is keyed
        assert build_strategy(name, **settings).params() == {**settings, "noise_key": "sample-id"}


def test_works_under_no_grad_on_numpy_and_empty_inputs() -> None:
    model, x = mlp(), _inputs("mlp")
    want = regrad_scores(model, x, class_weighting="root")
    with torch.no_grad():
        np.testing.assert_allclose(regrad_scores(model, x, class_weighting="root"), want, rtol=1e-6)
    np.testing.assert_allclose(regrad_scores(model, x.numpy(), class_weighting="root"), want, rtol=1e-6)
    assert regrad_scores(model, x[:0]).shape == (0,)
