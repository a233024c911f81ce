"""REGrad for regression: gradient-based epistemic uncertainty for any pre-trained PyTorch regression model.

A regression model has no classes to weight; its outputs are a mean mu(x) in R^D (an ``(N,)`` output is D = 1) and,
with ``variance_head="log-var-half"``, a log-variance v(x) = log s^2(x) in R^D (the model returns ``(mu, v)``, or
one ``(N, 2D)`` tensor ``[mu | v]``); without a variance head s_d^2(x) = ``noise_var`` for every x and d. For each
output dimension d and layer l (theta_l: the parameters a module owns directly, as in the classifier family)::

    target="mean":          G_{d,l}(x)^2 = ||grad_{theta_l} mu_d(x)||^2
    target="gaussian-nll":  G_{d,l}(x)^2 = E_{y ~ N(mu_d, s_d^2)} ||grad_{theta_l} log N(y; mu_d(x), s_d^2(x))||^2
                                         = ||grad_{theta_l} mu_d||^2 / s_d^2  +  1/2 ||grad_{theta_l} v_d||^2

The closed form: with y = mu + z s, z ~ N(0, 1), grad log N = (z / s) grad mu + (z^2 - 1)/2 grad v, and E z^2 = 1,
E (z^2 - 1)^2 = 2, E z (z^2 - 1) = 0. It is the trace of layer l's block of the per-sample Fisher information of
the model's own Gaussian likelihood: deterministic (no y is drawn) and computed by two backward passes per output
dimension (one for grad mu / s, one for grad v / sqrt 2). Without a variance head it is ||grad mu_d||^2 / noise_var:
target "mean" scaled by a constant, so the two rank inputs identically there.

Perturbations, as in the classifier family (:mod:`strategies.regrad`): x_m = x + sigma eps_m, m = 0..M, eps_0 = 0.
``aggregate="mean-grad"`` takes the norm of the gradient averaged over the M + 1 copies (for gaussian-nll one z is
shared by the copies and y_m = mu(x_m) + z s(x_m), so G^2 = ||mean_m grad mu_d(x_m) / s_d(x_m)||^2
+ 1/2 ||mean_m grad v_d(x_m)||^2); ``"mean-norm"`` averages G over the copies; ``perturb="params"`` averages G over
perturbed weights theta_m = theta + sigma std(theta_j) eps (mean-norm only), each model with its own s(x).

``metric="kfac-laplace"`` (the gap-aware variant) measures each layer's gradient g_l with the layer's block of a
Kronecker-factored Laplace posterior covariance built from ``reference`` inputs (the training inputs) instead of
the Euclidean norm::

    G_{d,l}^2 = g_l^T Sigma_l g_l,   Sigma_l = [(sqrt(n) A_l + sqrt(lambda) I) (x) (sqrt(n) B_l + sqrt(lambda) I)]^-1
    A_l = mean_i (1/Q) sum_q abar_iq abar_iq^T,   B_l = mean_i sum_t sum_q delta_itq delta_itq^T

over the n reference rows i: abar the layer's input (a Conv's patch at output position q; Q positions) with a 1
appended for the bias, delta_t the gradient with respect to the layer's output of the Gaussian likelihood's Fisher
terms t (mu_d / s_d for every d, and v_d / sqrt 2 with a variance head: the same terms as gaussian-nll, whatever the
target), lambda = ``prior_precision``. With combine "squared", layer_alpha 0 and D = 1, L U(x)^2 = sum_l
g_l^T Sigma_l g_l is the linearised Laplace predictive variance of mu(x) under the block-diagonal K-FAC posterior
(target "mean"); the Euclidean metric is the prior-only posterior (no data). Why it exists: on a ReLU network the
plain gradient norm grows with the scale of the hidden activations, so it flags inputs far from the data but ranks
inputs inside a gap between two training clusters BELOW the training inputs (``benchmarks/results/
regrad_regression_uq.md``); whitening by the training gradients' second moment removes the directions the data
already pin down, which is what a gap lacks. Linear and Conv layers only (``last_layer_only=True`` for other
networks with a Linear head).

The score, with c the output weights and w the layer weights (:func:`~strategies.regrad.layer_weights`)::

    combine="linear":   U(x) = sum_d c_d sum_l w_l G_{d,l}(x)
    combine="squared":  U(x) = sqrt(sum_d c_d sum_l w_l G_{d,l}(x)^2)
    w = softmax(alpha (l-1)/(L-1));   output_weighting "uniform": c_d = 1/D, "variance": c_d = s_d^2 / sum_e s_e^2

(s^2 of the clean input under the clean model). Per-sample norms come from the classifier's engine
(:class:`~strategies.regrad.Engine`, closed forms for Linear/Conv/BatchNorm/LayerNorm/Embedding and the exact
autograd fallback), driven by :func:`~strategies.regrad.scores.drive`: one backward pass per term per chunk.

References: Wang & Ji, "Gradient-based Uncertainty Quantification for Pre-trained Classifiers" (REGrad), CVPR 2024,
arXiv 2404.10124 (the classifier form this generalises); Nix & Weigend, "Estimating the mean and variance of the
target probability distribution", ICNN 1994 (the variance head); Martens & Grosse, "Optimizing Neural Networks with
Kronecker-factored Approximate Curvature", ICML 2015, and Grosse & Martens, ICML 2016 (K-FAC, convolutions); Ritter,
Botev & Barber, "A Scalable Laplace Approximation for Neural Networks", ICLR 2018 (the damped Kronecker posterior);
Foong et al., "'In-Between' Uncertainty in Bayesian Neural Networks", arXiv 1906.11537 (2019), and Immer, Korzepa &
Bauer, AISTATS 2021 (the linearised predictive).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from al.devices import model_device, to_device
from al.errors import ConfigError, IncompatibleStrategyError
from al.inputs import Inputs, iter_batches
from al.settings import Setting, choice

from .engine import Engine, Metric
from .layers import Layer
from .pairs import PairRule, check_pair_rule
from .scores import _sample_ids, drive
from .settings import (
    COMBINES,
    DEFAULT_AGGREGATE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMBINE,
    DEFAULT_N_PERTURBATIONS,
    DEFAULT_PERTURB,
    DEFAULT_SIGMA,
    REGRAD_SETTINGS,
    Aggregate,
    Combine,
    Perturb,
    PerturbedSettings,
)
from .weighting import layer_weights

Target = Literal["mean", "gaussian-nll"]
VarianceHead = Literal["none", "log-var-half"]
OutputWeighting = Literal["uniform", "variance"]
RegressionMetric = Literal["euclidean", "kfac-laplace"]

TARGETS = ("mean", "gaussian-nll")
VARIANCE_HEADS = ("none", "log-var-half")
OUTPUT_WEIGHTINGS = ("uniform", "variance")
METRICS = ("euclidean", "kfac-laplace")

# Defaults: the plain family (no data needed). layer_alpha 0 (every layer alike; the classifier's default too since
# issue 17, which was -10 before, picked by benchmarks/regrad_ood.py on one MNIST CNN): on the small regression MLPs of
# benchmarks/regrad_regression_uq.py alpha -10 / 0 / +3 differ little and none fixes the gap (AUROC gap 0.00-0.39),
# -10 lowers the far AUROC on sine-1d (0.84 vs 0.97). prior_precision 1 (a unit Gaussian prior); 0.1 separated the
# gap better on both synthetic sets there (0.86 / 0.99 vs 0.68 / 0.87), a choice made on that benchmark alone.
DEFAULT_TARGET: Target = "mean"
DEFAULT_VARIANCE_HEAD: VarianceHead = "none"
DEFAULT_NOISE_VAR = 1.0
DEFAULT_OUTPUT_WEIGHTING: OutputWeighting = "uniform"
DEFAULT_METRIC: RegressionMetric = "euclidean"
DEFAULT_PRIOR_PRECISION = 1.0
DEFAULT_REGRESSION_LAYER_ALPHA = 0.0

#: The declared type and range of each setting (:mod:`al.settings`), checked in this order; the settings shared
#: with the classifier family are declared once, in :data:`~strategies.regrad.settings.REGRAD_SETTINGS`.
REGRESSION_SETTINGS: dict[str, Setting] = {
    "target": Setting("choice", choices=TARGETS, hint=" (the gradient of the mean, or of the Gaussian likelihood)"),
    "variance_head": Setting(
        "choice", choices=VARIANCE_HEADS, hint=" ('log-var-half': the model returns (mean, log_var) or [mean, log_var])"
    ),
    "noise_var": Setting("float", minimum=0.0, strict=True, hint=" (the variance of a model without a variance head)"),
    "output_weighting": Setting("choice", choices=OUTPUT_WEIGHTINGS),
    "metric": Setting("choice", choices=METRICS, hint=" ('kfac-laplace' needs reference inputs)"),
    "prior_precision": Setting("float", minimum=0.0, strict=True, hint=" (the Laplace prior's precision)"),
    **{k: REGRAD_SETTINGS[k] for k in ("aggregate", "combine", "perturb", "layer_alpha", "n_perturbations")},
    **{k: REGRAD_SETTINGS[k] for k in ("sigma", "seed", "batch_size", "last_layer_only")},
}


@dataclass(frozen=True)
class RegressionREGradSettings(PerturbedSettings):
    """Every setting of the regression REGrad family (the module docstring defines each); checked and normalised
    once, in ``__post_init__``, with the same checks and messages as :class:`~strategies.regrad.REGradSettings`.

    target: "mean" or "gaussian-nll". variance_head: "none" (the output is the mean, ``(N,)`` or ``(N, D)``) or
    "log-var-half" (``(mean, log_var)`` or an ``(N, 2D)`` tensor whose second half is log s^2). noise_var: s^2 > 0 of
    a model without a variance head (unused with one). output_weighting: "uniform" or "variance". metric:
    "euclidean" or "kfac-laplace" (needs ``reference`` inputs). prior_precision: lambda > 0 of kfac-laplace (unused
    by euclidean). layer_alpha, n_perturbations, sigma, aggregate, combine, seed, batch_size, last_layer_only,
    perturb: as for the classifier family.
    """

    target: Target = DEFAULT_TARGET
    variance_head: VarianceHead = DEFAULT_VARIANCE_HEAD
    noise_var: float = DEFAULT_NOISE_VAR
    output_weighting: OutputWeighting = DEFAULT_OUTPUT_WEIGHTING
    metric: RegressionMetric = DEFAULT_METRIC
    prior_precision: float = DEFAULT_PRIOR_PRECISION
    layer_alpha: float = DEFAULT_REGRESSION_LAYER_ALPHA
    n_perturbations: int = DEFAULT_N_PERTURBATIONS
    sigma: float = DEFAULT_SIGMA
    aggregate: Aggregate = DEFAULT_AGGREGATE
    combine: Combine = DEFAULT_COMBINE
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    last_layer_only: bool = False
    perturb: Perturb = DEFAULT_PERTURB

    def __post_init__(self) -> None:
        self._check_fields(REGRESSION_SETTINGS, " in the model's input units")


def output_weights(var: np.ndarray, weighting: str) -> np.ndarray:
    """c: ``(N, D)`` output weights from the predicted variances ``var`` ``(N, D)`` (each row sums to 1)."""
    weighting = choice("output_weighting", weighting, OUTPUT_WEIGHTINGS)
    var = np.asarray(var, dtype=np.float64)
    if weighting == "uniform":
        return np.full_like(var, 1.0 / var.shape[1])
    return var / var.sum(1, keepdims=True)


@dataclass
class RegressionGradientNorms:
    """Per-sample, per-output-dimension, per-layer gradient norms G_{d,l} (see the module docstring).

    norms: (N, D, L) float64. mean, var: (N, D) float64, mu and s^2 of the clean input under the clean model (s^2 =
    noise_var without a variance head). layers: L layer names.
    """

    norms: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    layers: list[str]

    def score(
        self,
        output_weighting: str = DEFAULT_OUTPUT_WEIGHTING,
        layer_alpha: float = DEFAULT_REGRESSION_LAYER_ALPHA,
        combine: str = DEFAULT_COMBINE,
        last_layer_only: bool = False,
    ) -> np.ndarray:
        """U: (N,) float64 from these norms (no gradient is recomputed)."""
        norms = self.norms[:, :, -1:] if last_layer_only else self.norms
        c = output_weights(self.var, output_weighting)
        w = layer_weights(norms.shape[2], layer_alpha)
        if combine == "linear":
            return np.einsum("nd,ndl,l->n", c, norms, w)
        if combine == "squared":
            return np.sqrt(np.einsum("nd,ndl,l->n", c, norms**2, w))
        raise ConfigError(f"combine must be one of {COMBINES}, got {combine!r}")


# --------------------------------------------------------------------------------------------------------------
# the model's output: (mean, log variance)
# --------------------------------------------------------------------------------------------------------------
def split_output(output: Any, variance_head: str, n_rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mu ``(n, D)``, log s^2 ``(n, D)`` or None) from a model's output, checked against ``variance_head``."""
    head = "a tensor (batch,) or (batch, D)" if variance_head == "none" else "(mean, log_var) or (batch, 2D)"

    def bad(why: str) -> IncompatibleStrategyError:
        return IncompatibleStrategyError(
            f"regression REGrad with variance_head={variance_head!r} needs a model returning {head}; {why}"
        )

    def as_2d(t: Any, what: str) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise bad(f"its {what} is {type(t).__name__}{'' if not isinstance(t, torch.Tensor) else f' {t.dtype}'}")
        if t.dim() not in (1, 2) or t.shape[0] != n_rows:
            raise bad(f"its {what} has shape {tuple(t.shape)} for a batch of {n_rows}")
        return t.reshape(n_rows, -1)

    if variance_head == "none":
        if isinstance(output, (tuple, list)):
            raise bad(
                f"it returned a {type(output).__name__} of {len(output)}; for (mean, log_var) pass "
                "variance_head='log-var-half'"
            )
        return as_2d(output, "output"), None
    if isinstance(output, (tuple, list)):
        if len(output) != 2:
            raise bad(f"it returned a {type(output).__name__} of {len(output)}")
        mu, v = as_2d(output[0], "mean"), as_2d(output[1], "log variance")
        if mu.shape != v.shape:
            raise bad(f"its mean {tuple(mu.shape)} and log variance {tuple(v.shape)} differ in shape")
        return mu, v
    out = as_2d(output, "output")
    if output.dim() != 2 or out.shape[1] % 2:
        raise bad(f"its output has shape {tuple(output.shape)}: not (batch, 2D)")
    d = out.shape[1] // 2
    return out[:, :d], out[:, d:]


def _terms(
    mu: torch.Tensor, v: torch.Tensor | None, target: str, noise_var: float, fisher: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(out, cotangents): per output dimension d, its terms t (``terms_per_dim`` of them) as cotangents of ``out``.

    ``fisher`` (or target "gaussian-nll"): the Gaussian likelihood's terms mu_d / s_d and, with a variance head,
    v_d / sqrt 2; else target "mean": mu_d alone.
    """
    n, dims = mu.shape
    if not fisher and target == "mean":
        out = mu
        cots = []
        for d in range(dims):
            c = torch.zeros_like(mu)
            c[:, d] = 1.0
            cots.append(c)
        return out, cots
    inv_s = (-0.5 * v.detach()).exp() if v is not None else torch.full_like(mu, 1.0 / math.sqrt(noise_var))
    out = mu if v is None else torch.cat([mu, v], 1)
    cots = []
    for d in range(dims):
        c = torch.zeros_like(out)
        c[:, d] = inv_s[:, d]
        cots.append(c)
        if v is not None:
            c = torch.zeros_like(out)
            c[:, dims + d] = math.sqrt(0.5)
            cots.append(c)
    return out, cots


def _terms_per_dim(s: RegressionREGradSettings) -> int:
    return 2 if s.target == "gaussian-nll" and s.variance_head != "none" else 1


# --------------------------------------------------------------------------------------------------------------
# the K-FAC Laplace metric
# --------------------------------------------------------------------------------------------------------------
def _inverse_sqrt(m: torch.Tensor) -> torch.Tensor:
    """P^{-1/2} of a symmetric positive-definite matrix (float64)."""
    evals, evecs = torch.linalg.eigh(m)
    return (evecs * evals.clamp_min(torch.finfo(m.dtype).tiny).rsqrt()) @ evecs.T


def kfac_metric(
    model: nn.Module,
    layers: list[Layer],
    reference: Inputs,
    dims: int,
    s: RegressionREGradSettings,
    pair_rule: PairRule = "auto",
) -> Metric:
    """The whitening matrices of ``metric="kfac-laplace"`` from the reference inputs (see the module docstring):
    layer index -> ((sqrt(n) A + sqrt(lambda) I)^{-1/2}, (sqrt(n) B + sqrt(lambda) I)^{-1/2}). dims: D, the model's
    output dimensions. Call it in eval mode with gradients enabled (:func:`drive` does); ``reference`` is read once,
    in batches of ``s.batch_size``, on the model's device."""
    bad = [L for L in layers if L.kind not in ("linear", "conv")]
    if bad:
        raise ConfigError(
            f"metric='kfac-laplace' handles Linear and Conv layers only; "
            f"{', '.join(f'{L.name!r} is {L.kind}' for L in bad)}: pass last_layer_only=True (the head alone, when "
            f"it is Linear) or metric='euclidean'"
        )
    dev = model_device(model)
    n_terms = dims * (2 if s.variance_head != "none" else 1)
    engine = Engine(model, layers, n_terms, 1, "mean-grad", pair_rule)
    sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    n = 0
    try:
        for xb in iter_batches(reference, s.batch_size):

            def head(output: Any, rows: int = len(xb)) -> tuple[torch.Tensor, list[torch.Tensor], None]:
                mu, v = split_output(output, s.variance_head, rows)
                out, cots = _terms(mu, v, s.target, s.noise_var, fisher=True)
                return out, cots, None

            part = engine.kfac_factors(to_device(xb, dev), head)
            for i, (a_sum, b_sum) in part.items():
                if i in sums:
                    sums[i] = (sums[i][0] + a_sum, sums[i][1] + b_sum)
                else:
                    sums[i] = (a_sum, b_sum)
            n += len(xb)
    finally:
        engine.close()
    if n == 0:
        raise ConfigError("metric='kfac-laplace' needs at least one reference input (the training inputs); got none")
    root_n, root_lam = math.sqrt(n), math.sqrt(s.prior_precision)
    metric: Metric = {}
    for i, (a_sum, b_sum) in sums.items():
        eye_a = torch.eye(len(a_sum), dtype=a_sum.dtype, device=a_sum.device)
        eye_b = torch.eye(len(b_sum), dtype=b_sum.dtype, device=b_sum.device)
        metric[i] = (
            _inverse_sqrt(root_n * a_sum / n + root_lam * eye_a),
            _inverse_sqrt(root_n * b_sum / n + root_lam * eye_b),
        )
    missing = [layers[i].name for i in range(len(layers)) if i not in metric]
    if missing:  # a layer the reference inputs never reach: it has no data term, only the prior
        raise ConfigError(f"metric='kfac-laplace': the reference inputs never reach layer(s) {missing}")
    return metric


# --------------------------------------------------------------------------------------------------------------
# the scores
# --------------------------------------------------------------------------------------------------------------
def _regression_gradient_norms(
    model: nn.Module,
    inputs: Inputs,
    s: RegressionREGradSettings,
    reference: Inputs | None,
    ids: np.ndarray | None,
    rng: np.random.Generator | None,
    pair_rule: PairRule,
) -> RegressionGradientNorms:
    if s.metric == "kfac-laplace" and reference is None:
        raise ConfigError(
            "metric='kfac-laplace' needs reference inputs (the training inputs the Laplace posterior is fitted "
            "to): pass reference=..., or use metric='euclidean'"
        )
    if s.metric == "euclidean" and reference is not None:
        raise ConfigError("reference inputs are used by metric='kfac-laplace' only; drop reference or set the metric")
    per_dim = _terms_per_dim(s)

    def start_engine(model: nn.Module, probe: torch.Tensor, layers: list[Layer], group: int) -> Engine:
        with torch.no_grad():
            mu, _ = split_output(model(probe[:1]), s.variance_head, 1)
        dims = mu.shape[1]
        metric = kfac_metric(model, layers, reference, dims, s, pair_rule) if reference is not None else None
        return Engine(model, layers, dims * per_dim, group, s.aggregate, pair_rule, metric)

    def run_chunk(engine: Engine, x: torch.Tensor, clean: Any) -> tuple[np.ndarray, Any]:
        # a perturbed model (clean is not None) uses its own s(x) in the cotangents; its info is not kept
        group = engine.group

        def head(output: Any) -> tuple[torch.Tensor, list[torch.Tensor], tuple[np.ndarray, np.ndarray]]:
            mu, v = split_output(output, s.variance_head, len(x))
            out, cots = _terms(mu, v, s.target, s.noise_var, fisher=False)
            mu0 = mu.detach()[::group].double()
            var0 = v.detach()[::group].double().exp() if v is not None else torch.full_like(mu0, s.noise_var)
            return out, cots, (mu0.cpu().numpy(), var0.cpu().numpy())

        sq, info = engine.run_outputs(x, head)
        # the terms of one output dimension are summed as squares: E_z ||grad log N||^2 (module docstring)
        sq = sq.reshape(sq.shape[0], -1, per_dim, sq.shape[2]).sum(2)
        return sq, info

    layers, parts = drive(model, inputs, s, ids, rng, start_engine, run_chunk)
    if not layers:
        return RegressionGradientNorms(np.zeros((0, 0, 0)), np.zeros((0, 0)), np.zeros((0, 0)), [])
    return RegressionGradientNorms(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1][0] for p in parts]),
        np.concatenate([p[1][1] for p in parts]),
        layers,
    )


def regression_gradient_norms(
    model: nn.Module,
    inputs: Inputs,
    *,
    target: Target = DEFAULT_TARGET,
    variance_head: VarianceHead = DEFAULT_VARIANCE_HEAD,
    noise_var: float = DEFAULT_NOISE_VAR,
    metric: RegressionMetric = DEFAULT_METRIC,
    prior_precision: float = DEFAULT_PRIOR_PRECISION,
    n_perturbations: int = 0,
    sigma: float = DEFAULT_SIGMA,
    aggregate: Aggregate = DEFAULT_AGGREGATE,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    last_layer_only: bool = False,
    perturb: Perturb = DEFAULT_PERTURB,
    reference: Inputs | None = None,
    ids: Sequence[int] | np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    pair_rule: PairRule = "auto",
) -> RegressionGradientNorms:
    """The norms G_{d,l} of every sample (see :class:`RegressionGradientNorms` and the module docstring), from
    which :meth:`RegressionGradientNorms.score` gives U for any output weighting, layer alpha and combine without
    recomputing a gradient. Arguments as for :func:`regression_regrad_scores`."""
    s = RegressionREGradSettings(
        target=target,
        variance_head=variance_head,
        noise_var=noise_var,
        metric=metric,
        prior_precision=prior_precision,
        n_perturbations=n_perturbations,
        sigma=sigma,
        aggregate=aggregate,
        seed=seed,
        batch_size=batch_size,
        last_layer_only=last_layer_only,
        perturb=perturb,
    )
    return _regression_gradient_norms(model, inputs, s, reference, _sample_ids(ids), rng, check_pair_rule(pair_rule))


def regression_score_with(
    settings: RegressionREGradSettings,
    model: nn.Module,
    inputs: Inputs,
    *,
    reference: Inputs | None = None,
    ids: Sequence[int] | np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    pair_rule: PairRule = "auto",
) -> np.ndarray:
    """:func:`regression_regrad_scores` for settings validated already: ``(N,)`` float64."""
    gn = _regression_gradient_norms(
        model, inputs, settings, reference, _sample_ids(ids), rng, check_pair_rule(pair_rule)
    )
    if len(gn.norms) == 0:
        return np.zeros(0)
    return gn.score(settings.output_weighting, settings.layer_alpha, settings.combine)


def regression_regrad_scores(
    model: nn.Module,
    inputs: Inputs,
    *,
    target: Target = DEFAULT_TARGET,
    variance_head: VarianceHead = DEFAULT_VARIANCE_HEAD,
    noise_var: float = DEFAULT_NOISE_VAR,
    output_weighting: OutputWeighting = DEFAULT_OUTPUT_WEIGHTING,
    metric: RegressionMetric = DEFAULT_METRIC,
    prior_precision: float = DEFAULT_PRIOR_PRECISION,
    layer_alpha: float = DEFAULT_REGRESSION_LAYER_ALPHA,
    n_perturbations: int = DEFAULT_N_PERTURBATIONS,
    sigma: float = DEFAULT_SIGMA,
    aggregate: Aggregate = DEFAULT_AGGREGATE,
    combine: Combine = DEFAULT_COMBINE,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    last_layer_only: bool = False,
    perturb: Perturb = DEFAULT_PERTURB,
    reference: Inputs | None = None,
    ids: Sequence[int] | np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    pair_rule: PairRule = "auto",
) -> np.ndarray:
    """Regression REGrad epistemic uncertainty U(x), ``(N,)`` float64 on the CPU; higher = more uncertain.

    model: any ``nn.Module`` mapping a batch ``(n, ...)`` to the mean ``(n,)`` / ``(n, D)``, or with
    ``variance_head="log-var-half"`` to ``(mean, log_var)`` or ``(n, 2D)`` ``[mean | log_var]``. inputs: a tensor
    ``(N, ...)``, an array, or an iterable of batches (or ``(x, y)`` pairs), as :mod:`al.inputs` reads them.
    target: "mean" (grad of mu) or "gaussian-nll" (the closed-form expected squared gradient of log N(y; mu, s^2)
    under the model's own predictive, y ~ N(mu, s^2); s^2 = noise_var without a variance head). output_weighting:
    "uniform" (1/D) or "variance" (s_d^2 / sum s^2). metric: "euclidean" or "kfac-laplace" (the gap-aware variant:
    each layer's gradient measured with its K-FAC Laplace posterior covariance fitted to ``reference``, the training
    inputs; prior_precision is the Laplace prior's lambda; Linear and Conv layers only). layer_alpha: layer weights
    softmax(alpha (l-1)/(L-1)). n_perturbations (M), sigma, aggregate ("mean-grad" / "mean-norm"), perturb
    ("input" / "params", mean-norm only), combine ("linear" / "squared"), seed, batch_size, last_layer_only: as for
    :func:`~strategies.regrad.regrad_scores`. Every setting is checked by :class:`RegressionREGradSettings`;
    the formulas are in the module docstring.

    reference: the inputs the kfac-laplace posterior is fitted to (as ``inputs``; only with that metric). ids, rng,
    pair_rule: per call, exactly as for :func:`~strategies.regrad.regrad_scores` (the noise of a row is keyed by its
    id or index and the one draw from rng; pair_rule changes speed only).

    Runs on the model's device; the model is left exactly as found (parameters, buffers, train/eval flags,
    ``requires_grad``, ``.grad``); works under a caller's ``torch.no_grad()`` (not under ``inference_mode``);
    empty inputs give an empty array. Dropout is off and BatchNorm uses its running statistics while scoring.
    References: Wang & Ji, CVPR 2024 (arXiv 2404.10124); Ritter, Botev & Barber, ICLR 2018 (kfac-laplace).
    """
    s = RegressionREGradSettings(
        target,
        variance_head,
        noise_var,
        output_weighting,
        metric,
        prior_precision,
        layer_alpha,
        n_perturbations,
        sigma,
        aggregate,
        combine,
        seed,
        batch_size,
        last_layer_only,
        perturb,
    )
    return regression_score_with(s, model, inputs, reference=reference, ids=ids, rng=rng, pair_rule=pair_rule)


__all__ = [
    "RegressionREGradSettings",
    "RegressionGradientNorms",
    "REGRESSION_SETTINGS",
    "regression_regrad_scores",
    "regression_gradient_norms",
    "regression_score_with",
    "kfac_metric",
    "split_output",
    "output_weights",
    "TARGETS",
    "VARIANCE_HEADS",
    "OUTPUT_WEIGHTINGS",
    "METRICS",
]
