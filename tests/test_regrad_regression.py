"""Regression REGrad (strategies.regrad.regression) against naive per-sample autograd loops written here.

The naive loops take one autograd call per sample, output dimension, term and copy, with the model's parameters
grouped into layers by hand; the Gaussian-NLL target is also checked against its definition (the expectation over
y ~ N(mu, s^2) of the squared gradient norm of the actual log-likelihood, by Gauss-Hermite quadrature, exact for
this polynomial in z); the kfac-laplace metric against a dense Kronecker posterior built here from hooked layer
inputs and output gradients and inverted by torch.linalg. Compared to 1e-4 relative.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from al.errors import ConfigError, IncompatibleStrategyError
from strategies.regrad import (
    RegressionREGradSettings,
    parameter_noise,
    perturbation_noise,
    regression_gradient_norms,
    regression_regrad_scores,
)

RTOL = 1e-4


# ------------------------------------------------------------------------------------------------ test models
class Squeeze(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(-1)


class Scale(nn.Module):
    """Owns a parameter used directly in forward: only the engine's autograd fallback can handle it."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


class Het(nn.Module):
    """A mean head and a log-variance head on one trunk, returned as a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 8)
        self.mean = nn.Linear(8, 2)
        self.log_var = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.trunk(x))
        return self.mean(h), self.log_var(h)


def mlp1() -> nn.Module:  # (N,) output: D = 1
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 1), Squeeze())


def mlp2() -> nn.Module:  # (N, 2) mean
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2, bias=False))


def het() -> nn.Module:  # (mean, log_var), D = 2
    torch.manual_seed(2)
    return Het()


def half() -> nn.Module:  # [mean | log_var] in one (N, 2) tensor, D = 1
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))


def conv() -> nn.Module:  # Conv1d layers on (N, 2, 6), [mean | log_var] (N, 2), D = 1
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv1d(3, 2, 2, stride=2), nn.Flatten(), nn.Linear(6, 2)
    )


def fallback() -> nn.Module:  # a fallback layer, a LayerNorm and BatchNorm (eval) between Linears, (N, 2) mean
    torch.manual_seed(5)
    m = nn.Sequential(nn.Linear(3, 6), Scale(6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 4), nn.BatchNorm1d(4))
    m.append(nn.Linear(4, 2))
    m[5].running_mean.uniform_(-0.5, 0.5)
    m[5].running_var.uniform_(0.5, 2.0)
    m[5].weight.data.uniform_(0.5, 1.5)
    return m


MODELS = {"mlp1": mlp1, "mlp2": mlp2, "het": het, "half": half, "conv": conv, "fallback": fallback}
HEADS = {"mlp1": "none", "mlp2": "none", "het": "log-var-half", "half": "log-var-half", "conv": "log-var-half"}
HEADS["fallback"] = "none"


def inputs(name: str, n: int = 4, seed: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 6, generator=g) if name == "conv" else torch.randn(n, 3, generator=g)


def layer_modules(model: nn.Module) -> list[nn.Module]:
    """The naive layers of the models above: leaf modules owning parameters, in registration (= forward) order."""
    return [m for m in model.modules() if not list(m.children()) and list(m.parameters(recurse=False))]


def split(out, head: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if head == "none":
        return out.reshape(len(out), -1), None
    if isinstance(out, tuple):
        return out
    d = out.shape[1] // 2
    return out[:, :d], out[:, d:]


# ------------------------------------------------------------------------------------------------ naive loops
def layer_grad(module: nn.Module, grads: dict[int, torch.Tensor]) -> torch.Tensor:
    """One layer's gradient as a flat vector: [W (o, -1) | b] row-major for Linear/Conv (the Kronecker layout)."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        w = grads[id(module.weight)].reshape(module.weight.shape[0], -1)
        if module.bias is not None:
            w = torch.cat([w, grads[id(module.bias)][:, None]], 1)
        return w.reshape(-1).double()
    return torch.cat([grads[id(p)].reshape(-1) for p in module.parameters(recurse=False)]).double()


def term_grads(model: nn.Module, xc: torch.Tensor, head: str, target: str, noise_var: float, fisher: bool = False):
    """Per output dimension d: the terms' per-layer gradient vectors [[t1_l...], [t2_l...]] of one input row."""
    mods = layer_modules(model)
    params = [p for m in mods for p in m.parameters(recurse=False)]
    mu, v = split(model(xc[None]), head)
    out = []
    for d in range(mu.shape[1]):
        scalars = []
        if target == "mean" and not fisher:
            scalars.append(mu[0, d])
        else:
            s = math.sqrt(noise_var) if v is None else float(torch.exp(0.5 * v[0, d].detach()))
            scalars.append(mu[0, d] / s)
            if v is not None:
                scalars.append(v[0, d] / math.sqrt(2))
        terms = []
        for sc in scalars:
            gs = torch.autograd.grad(sc, params, retain_graph=True, allow_unused=True)
            gd = {id(p): torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)}
            terms.append([layer_grad(m, gd) for m in mods])
        out.append(terms)
    return out


def naive_norms(
    model, x, head, target, m=0, sigma=0.0, aggregate="mean-grad", noise_var=1.0, metric=None
) -> np.ndarray:
    """(N, D, L): G_{d,l} by the definition, one autograd call per sample, dimension, term and copy."""
    model.eval()
    noise = perturbation_noise(x.shape[1:], range(len(x)), m, 0) if m else None
    rows = []
    for i in range(len(x)):
        xs = [x[i]] + [x[i] + sigma * noise[i, j] for j in range(m)]
        per_copy = [term_grads(model, xc, head, target, noise_var) for xc in xs]
        dims, n_terms, n_layers = len(per_copy[0]), len(per_copy[0][0]), len(per_copy[0][0][0])

        def sq(g: torch.Tensor, li: int) -> float:
            return float(g @ g) if metric is None else float(g @ metric[li] @ g)

        out = np.zeros((dims, n_layers))
        for d, li in itertools.product(range(dims), range(n_layers)):
            if aggregate == "mean-grad":
                out[d, li] = math.sqrt(
                    sum(sq(torch.stack([c[d][t][li] for c in per_copy]).mean(0), li) for t in range(n_terms))
                )
            else:
                out[d, li] = np.mean([math.sqrt(sum(sq(c[d][t][li], li) for t in range(n_terms))) for c in per_copy])
        rows.append(out)
    return np.stack(rows)


def naive_score(norms, var, weighting, alpha, combine) -> np.ndarray:
    n, dims, L = norms.shape
    c = np.full((n, dims), 1.0 / dims) if weighting == "uniform" else var / var.sum(1, keepdims=True)
    w = np.exp(alpha * np.arange(L) / max(L - 1, 1))
    w = w / w.sum()
    if combine == "squared":
        return np.sqrt(sum(c[:, d] * sum(w[j] * norms[:, d, j] ** 2 for j in range(L)) for d in range(dims)))
    return sum(c[:, d] * sum(w[j] * norms[:, d, j] for j in range(L)) for d in range(dims))


def predicted_var(model, x, head, noise_var=1.0) -> np.ndarray:
    with torch.no_grad():
        mu, v = split(model.eval()(x), head)
    return np.full(tuple(mu.shape), noise_var) if v is None else v.double().exp().numpy()


def dense_kfac_posteriors(model, ref, head, noise_var, lam) -> list[torch.Tensor]:
    """Sigma_l = [(sqrt(n) B + sqrt(lam) I) kron (sqrt(n) A + sqrt(lam) I)]^-1 per layer, dense, in the row-major
    [W | b] layout of :func:`layer_grad`, with A and B from hooked inputs and output gradients of each row."""
    mods = layer_modules(model)
    n = len(ref)
    a_sum = [0.0] * len(mods)
    b_sum = [0.0] * len(mods)
    model.eval()
    for i in range(n):
        seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = [
            mod.register_forward_hook(lambda mod, a, o, j=j, seen=seen: seen.__setitem__(j, (a[0].detach(), o)))
            for j, mod in enumerate(mods)
        ]
        try:
            mu, v = split(model(ref[i : i + 1]), head)
        finally:
            for h in hooks:
                h.remove()
        scalars = []
        for d in range(mu.shape[1]):
            s = math.sqrt(noise_var) if v is None else float(torch.exp(0.5 * v[0, d].detach()))
            scalars.append(mu[0, d] / s)
            if v is not None:
                scalars.append(v[0, d] / math.sqrt(2))
        for j, mod in enumerate(mods):
            a, o = seen[j]
            if isinstance(mod, nn.Conv1d):
                a = F.unfold(
                    a.unsqueeze(2), (1, mod.kernel_size[0]), padding=(0, mod.padding[0]), stride=(1, mod.stride[0])
                )[0]
            else:
                a = a.reshape(-1, 1)  # (d_in, Q = 1)
            if mod.bias is not None:
                a = torch.cat([a, torch.ones(1, a.shape[1])])
            a = a.double()
            a_sum[j] = a_sum[j] + a @ a.T / a.shape[1]
            for sc in scalars:
                (g,) = torch.autograd.grad(sc, [o], retain_graph=True, allow_unused=True)
                g = torch.zeros_like(o) if g is None else g  # a head the term does not use
                g = g[0].reshape(g.shape[1], -1).double()  # (d_out, Q)
                b_sum[j] = b_sum[j] + g @ g.T
    out = []
    for j in range(len(mods)):
        a_, b_ = a_sum[j] / n, b_sum[j] / n
        pa = math.sqrt(n) * a_ + math.sqrt(lam) * torch.eye(len(a_), dtype=torch.float64)
        pb = math.sqrt(n) * b_ + math.sqrt(lam) * torch.eye(len(b_), dtype=torch.float64)
        out.append(torch.linalg.inv(torch.kron(pb, pa)))
    return out


# ------------------------------------------------------------------------------------------------ exactness
CASES = [(0, 0.0, "mean-grad"), (2, 0.3, "mean-grad"), (2, 0.3, "mean-norm")]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("target", ["mean", "gaussian-nll"])
@pytest.mark.parametrize("m,sigma,aggregate", CASES)
def test_targets_match_the_naive_loop(name: str, target: str, m: int, sigma: float, aggregate: str) -> None:
    model, x, head = MODELS[name](), inputs(name), HEADS[name]
    nv = 0.5  # a variance other than 1, so that its use under gaussian-nll without a head is checked
    want = naive_norms(model, x, head, target, m, sigma, aggregate, noise_var=nv)
    kw = dict(target=target, variance_head=head, noise_var=nv, n_perturbations=m, sigma=sigma, aggregate=aggregate)
    gn = regression_gradient_norms(model, x, batch_size=5, **kw)  # chunks of 1 or 5 samples with their copies
    assert gn.norms.shape == want.shape == (len(x), want.shape[1], len(layer_modules(model)))
    np.testing.assert_allclose(gn.norms, want, rtol=RTOL, atol=1e-9)
    var = predicted_var(model, x, head, nv)
    np.testing.assert_allclose(gn.var, var, rtol=1e-6)
    for weighting, alpha, combine in itertools.product(["uniform", "variance"], [0.0, -2.0], ["linear", "squared"]):
        np.testing.assert_allclose(
            gn.score(weighting, alpha, combine), naive_score(want, var, weighting, alpha, combine), rtol=RTOL
        )
    got = regression_regrad_scores(model, x, output_weighting="variance", layer_alpha=1.5, combine="squared", **kw)
    assert got.dtype == np.float64 and got.shape == (len(x),)
    np.testing.assert_allclose(got, naive_score(want, var, "variance", 1.5, "squared"), rtol=RTOL)


@pytest.mark.parametrize("name,m", [("het", 0), ("conv", 2)])
def test_gaussian_nll_is_the_expected_squared_gradient_of_the_log_likelihood(name: str, m: int) -> None:
    """By the definition: E_z ||grad_theta mean_m log N(mu_m + z s_m; mu(x_m), s^2(x_m))||^2 per layer, with the
    log-likelihood written out, y held fixed, and the expectation by 5-point Gauss-Hermite quadrature."""
    model, x, head = MODELS[name](), inputs(name, 3), HEADS[name]
    model.eval()
    mods = layer_modules(model)
    params = [p for mod in mods for p in mod.parameters(recurse=False)]
    z_nodes, z_weights = np.polynomial.hermite_e.hermegauss(5)
    z_weights = z_weights / z_weights.sum()
    noise = perturbation_noise(x.shape[1:], range(len(x)), m, 0) if m else None
    want = np.zeros((len(x), 1 if name == "conv" else 2, len(mods)))
    for i in range(len(x)):
        xs = [x[i]] + [x[i] + 0.3 * noise[i, j] for j in range(m)]
        for d in range(want.shape[1]):
            for z, wz in zip(z_nodes, z_weights, strict=True):
                per_copy = []
                for xc in xs:
                    mu, v = split(model(xc[None]), head)
                    y = (mu[0, d] + z * torch.exp(0.5 * v[0, d])).detach()
                    lp = -0.5 * math.log(2 * math.pi) - 0.5 * v[0, d] - (y - mu[0, d]) ** 2 / (2 * torch.exp(v[0, d]))
                    gs = torch.autograd.grad(lp, params, allow_unused=True)
                    gd = {id(p): torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)}
                    per_copy.append([layer_grad(mod, gd) for mod in mods])
                for li in range(len(mods)):
                    g = torch.stack([c[li] for c in per_copy]).mean(0)
                    want[i, d, li] += wz * float(g @ g)
    gn = regression_gradient_norms(
        model, x, target="gaussian-nll", variance_head=head, n_perturbations=m, sigma=0.3, aggregate="mean-grad"
    )
    np.testing.assert_allclose(gn.norms, np.sqrt(want), rtol=RTOL)


@pytest.mark.parametrize("name", ["mlp1", "het", "conv"])
@pytest.mark.parametrize("target", ["mean", "gaussian-nll"])
def test_kfac_laplace_matches_a_dense_kronecker_posterior(name: str, target: str) -> None:
    model, head = MODELS[name](), HEADS[name]
    x, ref = inputs(name, 3), inputs(name, 7, seed=11)
    lam = 0.7
    sigmas = dense_kfac_posteriors(model, ref, head, 0.5, lam)
    kw = dict(target=target, variance_head=head, noise_var=0.5, metric="kfac-laplace", prior_precision=lam)
    for m, aggregate in [(0, "mean-grad"), (2, "mean-grad"), (2, "mean-norm")]:
        want = naive_norms(model, x, head, target, m, 0.3, aggregate, noise_var=0.5, metric=sigmas)
        got = regression_gradient_norms(
            model, x, reference=ref, n_perturbations=m, sigma=0.3, aggregate=aggregate, batch_size=4, **kw
        )
        np.testing.assert_allclose(got.norms, want, rtol=RTOL, err_msg=f"M={m} {aggregate}")
    # the linearised Laplace predictive variance of the mean: L U^2 = sum_l g_l^T Sigma_l g_l (combine squared, D = 1)
    if name == "mlp1" and target == "mean":
        u = regression_regrad_scores(model, x, reference=ref, combine="squared", layer_alpha=0.0, **kw)
        mods = layer_modules(model)
        params = [p for mod in mods for p in mod.parameters(recurse=False)]
        for i in range(len(x)):
            gs = torch.autograd.grad(model(x[i : i + 1])[0], params)
            gd = {id(p): g for p, g in zip(params, gs, strict=True)}
            pv = sum(float(layer_grad(mod, gd) @ s @ layer_grad(mod, gd)) for mod, s in zip(mods, sigmas, strict=True))
            np.testing.assert_allclose(len(mods) * u[i] ** 2, pv, rtol=RTOL)
    # the last layer alone: the metric is fitted to that layer only
    last = regression_gradient_norms(model, x, reference=ref, last_layer_only=True, **kw)
    want = naive_norms(model, x, head, target, noise_var=0.5, metric=sigmas)[:, :, -1:]
    np.testing.assert_allclose(last.norms, want, rtol=RTOL)


def test_parameter_noise_matches_a_naive_perturbed_copy() -> None:
    model, x, head = het(), inputs("het"), "log-var-half"
    m, sigma = 2, 0.2
    trainable = [p for p in model.parameters() if p.requires_grad]
    noise = parameter_noise([p.shape for p in trainable], m, 3)
    norms = naive_norms(model, x, head, "gaussian-nll")
    for eps in noise:
        pert = copy.deepcopy(model)
        with torch.no_grad():
            for p, e in zip([p for p in pert.parameters() if p.requires_grad], eps, strict=True):
                p.add_(sigma * float(p.std(correction=0)) * e)
        norms = norms + naive_norms(pert, x, head, "gaussian-nll")  # each model with its own s(x)
    norms = norms / (m + 1)
    var = predicted_var(model, x, head)  # the output weights come from the clean model
    got = regression_regrad_scores(
        model,
        x,
        target="gaussian-nll",
        variance_head=head,
        perturb="params",
        n_perturbations=m,
        sigma=sigma,
        aggregate="mean-norm",
        output_weighting="variance",
        seed=3,
    )
    np.testing.assert_allclose(got, naive_score(norms, var, "variance", 0.0, "linear"), rtol=RTOL)


def test_nll_without_a_variance_head_is_the_mean_target_scaled() -> None:
    model, x = mlp2(), inputs("mlp2", 9)
    mean = regression_regrad_scores(model, x, output_weighting="variance")
    nll = regression_regrad_scores(model, x, target="gaussian-nll", noise_var=4.0)
    np.testing.assert_allclose(nll, mean / 2.0, rtol=1e-10)  # 1 / sqrt(noise_var); variance weighting is uniform
    assert not np.allclose(regression_regrad_scores(model, x, layer_alpha=3.0), mean)


# ------------------------------------------------------------------------------------------------ conventions
def test_chunking_iterables_and_numpy_do_not_change_scores() -> None:
    model, x, ref = het(), inputs("het", 11), inputs("het", 9, seed=3)
    kw = dict(target="gaussian-nll", variance_head="log-var-half", n_perturbations=2, sigma=0.2, seed=5)
    whole = regression_regrad_scores(model, x, batch_size=1000, **kw)
    np.testing.assert_allclose(regression_regrad_scores(model, x, batch_size=3, **kw), whole, rtol=1e-6)
    loader = [(x[i : i + 4], torch.zeros(4)) for i in range(0, 11, 4)]
    np.testing.assert_allclose(regression_regrad_scores(model, loader, **kw), whole, rtol=1e-6)
    np.testing.assert_allclose(regression_regrad_scores(model, x.numpy(), **kw), whole, rtol=1e-6)
    assert not np.allclose(regression_regrad_scores(model, x, **{**kw, "seed": 6}), whole)
    kf = dict(kw, metric="kfac-laplace")
    lap = regression_regrad_scores(model, x, reference=ref, batch_size=1000, **kf)
    ref_loader = (r for r in (ref[:5], ref[5:]))  # a one-shot iterable is read once
    np.testing.assert_allclose(regression_regrad_scores(model, x, reference=ref_loader, batch_size=2, **kf), lap)


def test_model_is_left_exactly_as_found() -> None:
    model, x = fallback(), inputs("fallback")
    model.train()
    model[2].eval()  # a mixed set of flags must come back as it was
    model[0].requires_grad_(False)  # frozen: not a layer, not perturbed, stays frozen
    model[4].weight.grad = torch.ones_like(model[4].weight)  # a caller's gradient stays as it was
    flags = [mod.training for mod in model.modules()]
    req = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = [
        dict(n_perturbations=2, sigma=0.1, target="gaussian-nll"),
        dict(n_perturbations=2, sigma=0.1, perturb="params"),
        dict(metric="kfac-laplace", last_layer_only=True, reference=inputs("fallback", 5, seed=2)),
    ]
    for kw in runs:
        assert np.isfinite(regression_regrad_scores(model, x, **kw)).all()
        assert [mod.training for mod in model.modules()] == flags
        assert [p.requires_grad for p in model.parameters()] == req
        assert torch.equal(model[4].weight.grad, torch.ones_like(model[4].weight))
        assert all(p.grad is None for n, p in model.named_parameters() if n != "4.weight")
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k  # includes BatchNorm running stats
    # dropout off while scoring, from train mode: the same call twice gives the same answer
    m2 = mlp2().train()
    np.testing.assert_array_equal(regression_regrad_scores(m2, x), regression_regrad_scores(m2, x))


def test_works_under_no_grad_and_on_empty_inputs() -> None:
    model, x = half(), inputs("half")
    kw = dict(variance_head="log-var-half", target="gaussian-nll")
    want = regression_regrad_scores(model, x, **kw)
    with torch.no_grad():
        np.testing.assert_allclose(regression_regrad_scores(model, x, **kw), want, rtol=1e-6)
        lap = regression_regrad_scores(model, x, metric="kfac-laplace", reference=inputs("half", 6, 1), **kw)
        assert np.isfinite(lap).all()
    assert regression_regrad_scores(model, x[:0], **kw).shape == (0,)
    assert regression_regrad_scores(model, x[:0], metric="kfac-laplace", reference=x, **kw).shape == (0,)
    with torch.inference_mode(), pytest.raises(ConfigError, match="inference_mode"):
        regression_regrad_scores(model, x)


def test_bad_settings_and_models_are_refused_with_the_fix() -> None:
    model, x = mlp2(), inputs("mlp2")
    for kw, match in [
        (dict(target="nll"), r"target must be one of \('mean', 'gaussian-nll'\)"),
        (dict(variance_head="log-var"), r"variance_head must be one of \('none', 'log-var-half'\)"),
        (dict(output_weighting="root"), r"output_weighting must be one of \('uniform', 'variance'\)"),
        (dict(metric="laplace"), r"metric must be one of \('euclidean', 'kfac-laplace'\)"),
        (dict(aggregate="median"), r"aggregate must be one of \('mean-grad', 'mean-norm'\)"),
        (dict(combine="sum"), r"combine must be one of \('linear', 'squared'\)"),
        (dict(perturb="weights"), r"perturb must be one of \('input', 'params'\)"),
        (dict(noise_var=0.0), "noise_var"),
        (dict(prior_precision=-1.0), "prior_precision"),
        (dict(sigma=-1), "sigma"),
        (dict(n_perturbations=1.5), "n_perturbations"),
        (dict(layer_alpha=float("nan")), "layer_alpha"),
        (dict(last_layer_only=1), "last_layer_only must be true or false"),
        (dict(perturb="params", n_perturbations=2, sigma=0.1, aggregate="mean-grad"), 'aggregate="mean-norm"'),
        (dict(metric="kfac-laplace"), "needs reference inputs"),
        (dict(reference=x), "metric='kfac-laplace' only"),
    ]:
        with pytest.raises(ConfigError, match=match):
            regression_regrad_scores(model, x, **kw)
    with pytest.raises(ConfigError, match="target must be one of"):
        RegressionREGradSettings(target="median")  # type: ignore[arg-type]
    with pytest.raises(IncompatibleStrategyError, match="variance_head='log-var-half'"):
        regression_regrad_scores(het(), x)  # a tuple without a declared head
    with pytest.raises(IncompatibleStrategyError, match=r"not \(batch, 2D\)"):
        regression_regrad_scores(mlp1(), x, variance_head="log-var-half")  # (n,) has no variance half
    odd = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(IncompatibleStrategyError, match=r"not \(batch, 2D\)"):
        regression_regrad_scores(odd, x, variance_head="log-var-half")
    with pytest.raises(ConfigError, match="Linear and Conv layers only.*last_layer_only=True"):
        regression_regrad_scores(fallback(), x, metric="kfac-laplace", reference=x)
    with pytest.raises(ConfigError, match="at least one reference input"):
        regression_regrad_scores(model, x, metric="kfac-laplace", reference=x[:0])


def test_every_keyword_is_a_setting() -> None:
    kw = set(inspect.signature(regression_regrad_scores).parameters) - {
        "model",
        "inputs",
        "reference",
        "ids",
        "rng",
        "pair_rule",
    }
    assert kw == set(inspect.signature(RegressionREGradSettings).parameters)
    s = RegressionREGradSettings(layer_alpha=-1, n_perturbations=4.0)  # type: ignore[arg-type]
    assert s.layer_alpha == -1.0 and type(s.n_perturbations) is int


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model, x, ref = conv(), inputs("conv", 6), inputs("conv", 8, seed=1)
    kw = dict(target="gaussian-nll", variance_head="log-var-half", n_perturbations=2, sigma=0.2)
    for extra in ({}, {"metric": "kfac-laplace", "reference": ref}):
        cpu = regression_regrad_scores(model, x, **kw, **extra)
        gpu = regression_regrad_scores(copy.deepcopy(model).cuda(), x, **kw, **extra)
        np.testing.assert_allclose(gpu, cpu, rtol=1e-4)
