"""The scores: per-sample gradient norms (:func:`gradient_norms`), REGrad (:func:`regrad_scores`) and GradNorm
(:func:`gradnorm_scores`), each a plain function of (model, inputs) usable on any pre-trained classifier.

References: Wang & Ji, "Gradient-based Uncertainty Quantification for Pre-trained Classifiers" (REGrad), CVPR
2024, arXiv 2404.10124; Igoe et al., "How Useful are Gradients for OOD Detection?" (ExGrad), arXiv 2205.10439;
Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts in the Wild" (GradNorm),
NeurIPS 2021.

Devices: every score runs on the model's device (that of its first parameter). Chunks are read on the CPU (input
noise is drawn and added there, so the perturbed inputs are the same numbers on every device), moved to the device
one at a time, and the results come back as CPU NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from al.devices import model_device, to_device
from al.errors import ConfigError, IncompatibleStrategyError
from al.inputs import Inputs as Inputs  # what every score accepts; importable from here as before
from al.inputs import iter_batches
from al.learner import eval_mode, last_linear

from .engine import Engine
from .layers import Layer, discover_layers
from .noise import noise_key, parameter_noise, parameter_scales, perturbation_noise, trainable_parameters
from .pairs import PairRule, check_pair_rule
from .settings import (
    COMBINES,
    DEFAULT_AGGREGATE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLASS_WEIGHTING,
    DEFAULT_COMBINE,
    DEFAULT_LAYER_ALPHA,
    DEFAULT_N_PERTURBATIONS,
    DEFAULT_PERTURB,
    DEFAULT_SIGMA,
    Aggregate,
    ClassWeighting,
    Combine,
    Perturb,
    REGradSettings,
    count,
    real,
)
from .weighting import RANKS_NEEDED, class_weights, layer_weights


@dataclass
class GradientNorms:
    """Per-sample, per-class-rank, per-layer gradient norms, the raw material of every REGrad-family score.

    norms: (N, R, L) float64, ||gbar_{k,l}|| (``mean-grad``) or mean_m ||g_{k,l}(x_m)|| (``mean-norm``; with
    ``perturb="params"`` the mean is over the perturbed weights theta_m instead) for the class k of rank r
    (``classes[:, r]``, the r-th most probable class of the clean input under the clean model).
    probs: (N, C) float64 clean-input probabilities. classes: (N, R) int64. layers: L layer names.
    """

    norms: np.ndarray
    probs: np.ndarray
    classes: np.ndarray
    layers: list[str]

    def score(
        self,
        class_weighting: str = DEFAULT_CLASS_WEIGHTING,
        layer_alpha: float = DEFAULT_LAYER_ALPHA,
        combine: str = DEFAULT_COMBINE,
        top_k: int | None = None,
        last_layer_only: bool = False,
    ) -> np.ndarray:
        """U: (N,) float64 from these norms (no gradient is recomputed)."""
        norms = self.norms
        if last_layer_only:
            norms = norms[:, :, -1:]
        if top_k is not None:
            norms = norms[:, :top_k]
        r = norms.shape[1]
        # columns in rank order, so "predicted" (the argmax) is column 0 even when only rank 0 was computed
        p_kept = np.take_along_axis(self.probs, self.classes[:, :r], axis=1)
        c = class_weights(p_kept, class_weighting)
        w = layer_weights(norms.shape[2], layer_alpha)
        if combine == "linear":
            return np.einsum("nr,nrl,l->n", c, norms, w)
        if combine == "squared":
            return np.sqrt(np.einsum("nr,nrl,l->n", c, norms**2, w))
        raise ConfigError(f"combine must be one of {COMBINES}, got {combine!r}")


def _sample_ids(ids: Sequence[int] | np.ndarray | None) -> np.ndarray | None:
    if ids is None:
        return None
    a = np.asarray(ids)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)) or (a.size and a.min() < 0):
        raise ConfigError(
            f"ids must be a 1-d sequence of non-negative integer sample ids, one per input row; got "
            f"an array of shape {a.shape} and dtype {a.dtype}"
        )
    return a.astype(np.int64)


class DriveSettings(Protocol):
    """What :func:`drive` reads from a validated settings object (REGradSettings and the regression settings)."""

    @property
    def sigma(self) -> float: ...

    @property
    def aggregate(self) -> str: ...

    @property
    def seed(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def last_layer_only(self) -> bool: ...

    @property
    def perturb(self) -> str: ...

    @property
    def effective_perturbations(self) -> int: ...


#: (engine, rows on the model's device, the clean run's info or None) -> (squared norms, info). Called once per
#: chunk, and with ``perturb="params"`` once more per perturbed model with the clean run's info.
RunChunk = Callable[[Engine, torch.Tensor, Any], tuple[np.ndarray, Any]]
#: (model, a probe batch of at most 2 rows on the model's device, the layers) -> the engine for every chunk.
StartEngine = Callable[[nn.Module, torch.Tensor, list[Layer], int], Engine]


def drive(
    model: nn.Module,
    inputs: Inputs,
    s: DriveSettings,
    ids: np.ndarray | None,
    rng: np.random.Generator | None,
    start_engine: StartEngine,
    run_chunk: RunChunk,
) -> tuple[list[str], list[tuple[np.ndarray, Any]]]:
    """The chunk loop shared by the classifier and the regression scores: noise (on the inputs, folded into the
    batch, or on the parameters, restored after each perturbed run), eval mode, the model left as found.

    ``start_engine(model, probe, layers, group)`` builds the engine on the first chunk; ``run_chunk`` computes one
    chunk's squared norms. Returns the layer names (empty for empty inputs) and, per chunk, (norms, info): norms
    ``(n, R, L)``, the square roots averaged over the copies (``mean-norm``) or the perturbed models, and the info
    of the clean run.
    """
    if torch.is_inference_mode_enabled():
        raise ConfigError("REGrad needs autograd; call it outside torch.inference_mode()")
    m = s.effective_perturbations
    key = noise_key(rng) if m else None  # one draw, and none at all when no noise is used
    on_params = s.perturb == "params" and m > 0
    group = 1 if on_params else m + 1
    chunk = max(1, s.batch_size // group)
    engine: Engine | None = None
    parts: list[tuple[np.ndarray, Any]] = []
    start = 0
    grad_flags = [(p, p.grad) for p in model.parameters()]
    dev = model_device(model)
    perturbed: list[nn.Parameter] = []
    clean: list[torch.Tensor] = []
    noise: list[list[torch.Tensor]] = []
    if on_params:
        perturbed = [p for _, p in trainable_parameters(model)]
        with torch.no_grad():
            clean = [p.detach().clone() for p in perturbed]
        scales = parameter_scales(clean)
        draws = parameter_noise([p.shape for p in clean], m, s.seed, key=key)
        noise = [
            [
                (s.sigma * sc * e).to(device=p.device, dtype=p.dtype)
                for e, sc, p in zip(eps_m, scales, clean, strict=True)
            ]
            for eps_m in draws
        ]
    try:
        with eval_mode(model), torch.enable_grad():
            for xb in iter_batches(inputs, chunk):
                if ids is not None and start + len(xb) > len(ids):
                    raise ConfigError(f"ids has {len(ids)} entries but inputs have more rows; pass one id per row")
                if engine is None:
                    probe = to_device(xb[:2], dev)
                    layers = discover_layers(model, probe)
                    if s.last_layer_only:
                        layers = layers[-1:]
                    engine = start_engine(model, probe, layers, group)
                if on_params:
                    xd = to_device(xb, dev)
                    sq, info = run_chunk(engine, xd, None)  # the clean model ranks the classes
                    norms = np.sqrt(np.clip(sq, 0, None))
                    for noise_m in noise:
                        with torch.no_grad():
                            for p, c, e in zip(perturbed, clean, noise_m, strict=True):
                                p.copy_(c).add_(e)
                        try:
                            sq_m, _ = run_chunk(engine, xd, info)
                        finally:
                            with torch.no_grad():
                                for p, c in zip(perturbed, clean, strict=True):
                                    p.copy_(c)
                        norms = norms + np.sqrt(np.clip(sq_m, 0, None))
                    norms = norms / (m + 1)
                    parts.append((norms, info))
                    start += len(xb)
                    continue
                if m:
                    keys = ids[start : start + len(xb)] if ids is not None else range(start, start + len(xb))
                    # drawn on the CPU (the same numbers on every device); added where the chunk is (the CPU for
                    # inputs read in batches, a GPU for a caller's CUDA tensor)
                    eps = perturbation_noise(xb.shape[1:], keys, m, s.seed, xb.dtype, key=key).to(xb.device)
                    rows = torch.cat([xb.unsqueeze(1), xb.unsqueeze(1) + s.sigma * eps], 1)
                    rows = rows.reshape(len(xb) * group, *xb.shape[1:])
                else:
                    rows = xb
                sq, info = run_chunk(engine, to_device(rows, dev), None)
                norms = np.sqrt(np.clip(sq, 0, None))
                if s.aggregate == "mean-norm" and group > 1:
                    norms = norms.reshape(len(xb), group, *norms.shape[1:]).mean(1)
                parts.append((norms, info))
                start += len(xb)
    finally:
        if engine is not None:
            engine.close()
        with torch.no_grad():  # already restored after every perturbed run; this guards any other exit path
            for p, c in zip(perturbed, clean, strict=True):
                p.copy_(c)
        for p, g in grad_flags:  # autograd.grad never accumulates, but a fallback module might
            p.grad = g
    if ids is not None and start != len(ids):
        raise ConfigError(f"ids has {len(ids)} entries but inputs have {start} rows; pass one id per row")
    return ([L.name for L in engine.layers] if engine is not None else []), parts


def _gradient_norms(
    model: nn.Module,
    inputs: Inputs,
    s: REGradSettings,
    top_k: int | None,
    ids: np.ndarray | None,
    rng: np.random.Generator | None,
    pair_rule: PairRule,
) -> GradientNorms:
    """:func:`gradient_norms` for settings already validated; ``top_k`` overrides ``s.top_k``."""

    def start_engine(model: nn.Module, probe: torch.Tensor, layers: list[Layer], group: int) -> Engine:
        with torch.no_grad():
            n_cls = model(probe[:1]).shape[-1]
        n_ranks = n_cls if top_k is None else min(top_k, n_cls)
        return Engine(model, layers, n_ranks, group, s.aggregate, pair_rule)

    def run_chunk(engine: Engine, x: torch.Tensor, clean: Any) -> tuple[np.ndarray, Any]:
        # a perturbed model scores the classes of the clean one, in the clean model's rank order
        sq, probs, classes = engine.run(x, None if clean is None else torch.from_numpy(clean[1]))
        return sq, (probs, classes)

    layers, parts = drive(model, inputs, s, ids, rng, start_engine, run_chunk)
    if not layers:
        return GradientNorms(np.zeros((0, 0, 0)), np.zeros((0, 0)), np.zeros((0, 0), np.int64), [])
    return GradientNorms(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1][0] for p in parts]),
        np.concatenate([p[1][1] for p in parts]).astype(np.int64),
        layers,
    )


_KEYING_DOC = """ids: optional ``(N,)`` non-negative sample ids, one per input row; a row's input noise is
    keyed by its id instead of its index in ``inputs``. rng: optional ``np.random.Generator``; when noise is drawn,
    ONE integer is drawn from it and salted into every noise seed (``REGrad.select`` passes the round's generator).
    So the noise of a row is seeded by ``[seed, i]`` without an rng, ``[key, seed, i]`` with one, where ``i`` is
    its id, or its index in the full ``inputs`` sequence when no ids are given (stable across ``batch_size``); it
    never depends on the other rows scored with it. Parameter noise is seeded per model m and tensor j by
    ``[seed, m, j]`` or ``[key, seed, m, j]``. pair_rule: "auto" (default), "gram" or "direct" for Linear/Conv
    layers; it changes speed only (results agree to rounding), so it is an argument of the call, not a strategy
    setting."""


def gradient_norms(
    model: nn.Module,
    inputs: Inputs,
    *,
    n_perturbations: int = 0,
    sigma: float = DEFAULT_SIGMA,
    aggregate: Aggregate = DEFAULT_AGGREGATE,
    top_k: int | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    last_layer_only: bool = False,
    perturb: Perturb = DEFAULT_PERTURB,
    ids: Sequence[int] | np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    pair_rule: PairRule = "auto",
) -> GradientNorms:
    """Per-sample, per-class-rank, per-layer gradient norms of log p(k|x) (see :class:`GradientNorms`).

    inputs: a tensor ``(N, ...)`` or an iterable of batches (tensors, or ``(x, y)`` pairs as a DataLoader gives).
    top_k: only the k most probable classes of each sample (k backward passes instead of C).
    last_layer_only: only the last layer (the backward passes then stop there: an approximation, nearly free).
    perturb: where the M = ``n_perturbations`` perturbations go.

    * ``"input"`` (default): x_m = x + sigma * eps_m, sigma in the model's (normalised) input units; the M + 1
      copies are folded into the batch.
    * ``"params"``: theta_m = theta + sigma * std(theta_j) * eps_{m,j} for every trainable parameter tensor theta_j
      (``requires_grad``; buffers such as BatchNorm running statistics are not touched), eps standard normal from
      :func:`parameter_noise`. sigma is therefore RELATIVE to each tensor's own spread (population std of its
      entries; a single-entry tensor gets no noise): tensors differ in scale by orders of magnitude (conv weights vs
      BatchNorm gains vs biases), so one absolute sigma would wreck some layers and leave others untouched; and with
      a relative unit, a rescaling that leaves the network's function unchanged (one ReLU layer scaled up by c, the
      next down by c) leaves every perturbed model's function unchanged too. The noise is drawn once per m before
      any batch, so it depends on ``seed`` (and the rng's key) alone, not on batching. For each batch and each m
      the noise is added in place (under ``torch.no_grad``), the norms are computed at the perturbed weights exactly
      as with M = 0, and the original parameters are copied back (in a ``finally``: bit-identical even if scoring
      raises). The class ranking, hence the class weights, always comes from the clean model (m = 0). Only
      ``aggregate="mean-norm"`` (mean over m = 0..M of each per-layer norm) is supported: ``"mean-grad"`` would
      need the per-sample gradients of different models summed before the norm, which this engine does not do, so
      it is refused with a ConfigError (only when the noise is used, i.e. M > 0 and sigma > 0). Cost: M + 1
      forward/backward sweeps per batch of ``batch_size`` samples (the same as input noise); extra memory: M copies
      of the parameters' noise plus one clean copy.

    {keying}

    The model is left exactly as found: parameters, buffers, train/eval flags, ``requires_grad``, no ``.grad``.
    References: Wang & Ji, CVPR 2024 (arXiv 2404.10124).
    """
    s = REGradSettings(
        n_perturbations=n_perturbations,
        sigma=sigma,
        aggregate=aggregate,
        top_k=top_k,
        seed=seed,
        batch_size=batch_size,
        last_layer_only=last_layer_only,
        perturb=perturb,
    )
    return _gradient_norms(model, inputs, s, s.top_k, _sample_ids(ids), rng, check_pair_rule(pair_rule))


def score_with(
    settings: REGradSettings,
    model: nn.Module,
    inputs: Inputs,
    *,
    ids: Sequence[int] | np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    pair_rule: PairRule = "auto",
) -> np.ndarray:
    """:func:`regrad_scores` for settings validated already (the strategy's own): ``(N,)`` float64."""
    # a weighting that puts weight on fewer ranks needs fewer backward passes ("predicted": one)
    needed = RANKS_NEEDED.get(settings.class_weighting)
    top_k = settings.top_k if needed is None else needed
    gn = _gradient_norms(model, inputs, settings, top_k, _sample_ids(ids), rng, check_pair_rule(pair_rule))
    if len(gn.norms) == 0:
        return np.zeros(0)
    return gn.score(settings.class_weighting, settings.layer_alpha, settings.combine)


def regrad_scores(
    model: nn.Module,
    inputs: Inputs,
    *,
    class_weighting: ClassWeighting = DEFAULT_CLASS_WEIGHTING,
    layer_alpha: float = DEFAULT_LAYER_ALPHA,
    n_perturbations: int = DEFAULT_N_PERTURBATIONS,
    sigma: float = DEFAULT_SIGMA,
    aggregate: Aggregate = DEFAULT_AGGREGATE,
    combine: Combine = DEFAULT_COMBINE,
    top_k: int | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    last_layer_only: bool = False,
    perturb: Perturb = DEFAULT_PERTURB,
    ids: Sequence[int] | np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    pair_rule: PairRule = "auto",
) -> np.ndarray:
    """REGrad epistemic uncertainty U(x), ``(N,)`` float64; higher = more uncertain.

    model: any ``nn.Module`` mapping a batch to logits ``(n, C)``. inputs: tensor ``(N, ...)`` or iterable of
    batches. class_weighting: "root" (sqrt(p_k)/sum_j sqrt(p_j)), "expected" (p_k, ExGrad), "predicted" (argmax
    only), "uniform" (1/C). layer_alpha: layer weights softmax(alpha (l-1)/(L-1)). n_perturbations (M), sigma:
    x_m = x + sigma * eps_m, sigma in the model's (normalised) input units. aggregate: "mean-grad" averages the M+1
    gradients before the norm, "mean-norm" averages their norms. combine: "linear" sum_k c_k sum_l w_l ||g||, or
    "squared" sqrt(sum_k c_k sum_l w_l ||g||^2) (the second-order Bayesian form). top_k: keep the k most probable
    classes (weights renormalised). seed: noise salt (a whole number >= 0). batch_size: rows (copies included) per
    chunk. last_layer_only: the last layer's gradient alone (an approximation; the backward passes stop there).
    perturb: "input" (default, x_m as above) or "params": theta_m = theta + sigma * std(theta_j) * eps per
    trainable parameter tensor theta_j, sigma relative to each tensor's own std, ``aggregate="mean-norm"`` only
    (details in :func:`gradient_norms`). Every setting is checked by :class:`REGradSettings`.

    {keying}

    References: Wang & Ji, "Gradient-based Uncertainty Quantification for Pre-trained Classifiers", CVPR 2024
    (arXiv 2404.10124); Igoe et al. 2022 (arXiv 2205.10439) for class_weighting="expected".
    """
    s = REGradSettings(
        class_weighting,
        layer_alpha,
        n_perturbations,
        sigma,
        aggregate,
        combine,
        top_k,
        seed,
        batch_size,
        last_layer_only,
        perturb,
    )
    return score_with(s, model, inputs, ids=ids, rng=rng, pair_rule=pair_rule)


for _f in (gradient_norms, regrad_scores):
    _f.__doc__ = (_f.__doc__ or "").replace("{keying}", _KEYING_DOC)


@torch.no_grad()
def gradnorm_scores(
    model: nn.Module, inputs: Inputs, *, temperature: float = 1.0, batch_size: int = 1024
) -> np.ndarray:
    """GradNorm, ``(N,)`` float64: ||d KL(u || softmax(z/T)) / d W||_1 for the last linear layer's weight W.

    HIGHER means more familiar (in-distribution). The gradient with respect to the logits is (p - u)/T, so the
    weight gradient is the outer product (p - u)/T a^T and its L1 norm is ||p - u||_1 ||a||_1 / T, computed in
    closed form from the penultimate features a.
    References: Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts in the Wild",
    NeurIPS 2021.
    """
    temperature = real("temperature", temperature, minimum=0.0, strict=True)
    batch_size = count("batch_size", batch_size, minimum=1)
    head = last_linear(model, "GradNorm")
    dev = model_device(model)
    feats: list[torch.Tensor] = []
    h = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach()))
    out = []
    try:
        with eval_mode(model):
            for xb in iter_batches(inputs, batch_size):
                feats.clear()
                logits = model(to_device(xb, dev)).double()
                a = feats[-1].double()
                if a.dim() != 2:
                    raise IncompatibleStrategyError(
                        f"GradNorm needs the last Linear layer to see (batch, features), got {tuple(a.shape)}"
                    )
                p = torch.softmax(logits / temperature, 1)
                u = 1.0 / p.shape[1]
                out.append(((p - u).abs().sum(1) * a.abs().sum(1) / temperature).cpu().numpy())
    finally:
        h.remove()
    return np.concatenate(out) if out else np.zeros(0)
