"""REGrad: gradient-based epistemic uncertainty for any pre-trained PyTorch classifier, plus ExGrad and GradNorm.

The score of an input x for a classifier with softmax outputs p(k|x), k = 1..C::

    g_{k,l}(x)  = grad over theta_l of log p(k|x)              (l = 1..L: modules directly owning trainable params)
    gbar_{k,l}  = mean_{m=0..M} g_{k,l}(x + sigma * eps_m)     (eps_0 = 0; "mean-grad")
    s_k         = sum_l w_l ||gbar_{k,l}||_2,   w = softmax(alpha * (l-1)/(L-1))
    U(x)        = sum_k c_k s_k,                c = class weights from p(.|x) ("root": sqrt(p)/sum sqrt(p))

``combine="squared"`` gives the second-order Bayesian form sqrt(sum_k c_k sum_l w_l ||gbar_{k,l}||^2) instead.

How it is fast: one forward pass per chunk with hooks that record each layer's input and attach a zero "probe"
to its output; then one backward pass per class *rank* (the r-th most probable class of each sample, so one pass
serves every sample and ``top_k`` costs k passes) that returns the gradients delta with respect to every layer
output at once. Per-sample, per-layer gradient norms then follow from (input, delta) pairs without materialising
per-sample gradients where that is cheaper:

* Linear (also on token sequences) and Conv1d/Conv2d: the per-sample weight gradient is sum_q delta_q a_q^T over
  positions q (sequence positions, conv output pixels with ``unfold``ed patches). Its squared norm is either
  computed directly (materialise the (d_out, d_in) gradient per sample) or by the Gram form
  sum_{q,q'} (a_q . a_q')(delta_q . delta_q'); the input Gram is class independent, so it is paid once per chunk
  while the direct form is paid per class. Each layer takes the cheaper of the two by a flop count.
* Perturbed copies are folded into the batch. For ``mean-grad`` the M+1 copies of one sample are simply more
  (a, delta) pairs of the same sum, so gbar's norm is exact with the same two formulas.
* BatchNorm (eval), LayerNorm: per-sample gradients are small (channels) and materialised; Embedding: Gram form
  restricted to equal token ids.
* Anything else that owns trainable parameters (nn.MultiheadAttention, GroupNorm, a module using its own
  nn.Parameter in forward, ...) goes through an exact autograd fallback that re-runs that module alone per sample.

``perturb="params"`` puts the noise on the weights instead of the input (the Bayesian reading: average over
theta_m ~ N(theta, diag(sigma * std(theta_tensor))^2)); each perturbed model is scored by the same engine with
M = 0 and the per-layer norms are averaged (``mean-norm`` only). See :func:`gradient_norms`.

References: Wang & Ji, "Gradient-based Uncertainty Quantification for Pre-trained Classifiers" (REGrad), CVPR
2024, arXiv 2404.10124; Igoe et al., "How Useful are Gradients for OOD Detection?" (ExGrad), arXiv 2205.10439;
Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts in the Wild" (GradNorm),
NeurIPS 2021. The paper's exact constants are not public to us; every choice is a named parameter here and the
defaults were picked by ``benchmarks/regrad_ood.py`` (see ``benchmarks/results/regrad_ood.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from al.errors import ConfigError, IncompatibleStrategyError
from al.learner import eval_mode, last_linear
from al.strategy import Context, Selection, Strategy, top_n


ClassWeighting = Literal["root", "expected", "predicted", "uniform"]
Aggregate = Literal["mean-grad", "mean-norm"]
Combine = Literal["linear", "squared"]
Perturb = Literal["input", "params"]

CLASS_WEIGHTINGS = ("root", "expected", "predicted", "uniform")
AGGREGATES = ("mean-grad", "mean-norm")
COMBINES = ("linear", "squared")
PERTURBS = ("input", "params")

# Defaults, chosen by benchmarks/regrad_ood.py on MNIST vs Fashion-MNIST (see benchmarks/results/regrad_ood.md):
# the best Fashion AUROC was root / alpha -10 / M 4 / sigma 0.5 / mean-norm (0.9750); "predicted" / alpha -10 /
# M 0 reached 0.9699 with one backward pass instead of 50, and the rule takes the cheapest setting within 0.01.
# Negative alpha (shallow layers weigh more) is our finding on this CNN, not the paper's (deeper layers). sigma and
# aggregate are the best values for when perturbations are switched on (in normalised input units).
DEFAULT_CLASS_WEIGHTING: ClassWeighting = "predicted"
DEFAULT_LAYER_ALPHA = -10.0
DEFAULT_N_PERTURBATIONS = 0
DEFAULT_SIGMA = 0.5
DEFAULT_AGGREGATE: Aggregate = "mean-norm"
DEFAULT_COMBINE: Combine = "linear"
DEFAULT_PERTURB: Perturb = "input"
DEFAULT_BATCH_SIZE = 256

# Intermediate tensors (direct per-sample gradients, Gram matrices) are computed in row blocks of at most this
# many elements, so memory stays bounded whatever the layer width and chunk size.
_BLOCK_ELEMENTS = 1 << 24
# "auto" picks the cheaper of the direct and Gram forms per layer; "direct"/"gram" force one (tests, benchmarks).
PAIR_RULE = "auto"


# --------------------------------------------------------------------------------------------------------------
# noise, shared by the fast path and by any reference implementation
# --------------------------------------------------------------------------------------------------------------
def perturbation_noise(sample_shape: Sequence[int], indices: Iterable[int], n_perturbations: int, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard-normal input noise, ``(len(indices), n_perturbations, *sample_shape)``.

    Sample ``i`` (its position in the scored inputs) always gets the same noise for a given ``seed``, whatever the
    chunking: each sample has its own generator seeded by ``(seed, i)``.
    """
    idx = list(indices)
    out = np.empty((len(idx), n_perturbations, *sample_shape), dtype=np.float32)
    for j, i in enumerate(idx):
        out[j] = np.random.default_rng([int(seed), int(i)]).standard_normal((n_perturbations, *sample_shape),
                                                                              dtype=np.float32)
    return torch.from_numpy(out).to(dtype)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters that ``perturb="params"`` perturbs: every ``requires_grad`` parameter of ``model``, in
    ``named_parameters()`` order (shared parameters once). Frozen parameters are left alone."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def parameter_noise(shapes: Sequence[Sequence[int]], n_perturbations: int, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> list[list[torch.Tensor]]:
    """Standard-normal parameter noise: ``noise[m][j]`` has ``shapes[j]`` (m = 0..n_perturbations-1 stands for
    the perturbed models 1..M; model 0 is the clean one).

    Tensor ``j`` of model ``m`` has its own generator seeded by ``(seed, m, j)``, so the draw depends only on the
    seed and the parameter list, never on how the inputs are batched. Unscaled: :func:`gradient_norms` multiplies
    tensor j by ``sigma * std(theta_j)``.
    """
    return [[torch.from_numpy(np.random.default_rng([int(seed), m, j]).standard_normal(tuple(sh), dtype=np.float32))
             .to(dtype) for j, sh in enumerate(shapes)] for m in range(n_perturbations)]


def parameter_scales(params: Sequence[torch.Tensor]) -> list[float]:
    """std of each tensor's entries (population std, 0 for a single entry): the unit of ``sigma`` under
    ``perturb="params"``."""
    return [float(p.detach().double().std(correction=0)) if p.numel() > 1 else 0.0 for p in params]


def layer_weights(n_layers: int, alpha: float) -> np.ndarray:
    """w_l = softmax(alpha * (l-1)/(L-1)), ``(n_layers,)``; uniform for alpha = 0, the last layer as alpha grows."""
    if n_layers == 1:
        return np.ones(1)
    z = alpha * np.arange(n_layers) / (n_layers - 1)
    z = np.exp(z - z.max())
    return z / z.sum()


def class_weights(probs: np.ndarray, weighting: str) -> np.ndarray:
    """c: ``(n, C)`` from probs ``(n, C)`` (already restricted to the classes kept, if ``top_k``)."""
    p = np.asarray(probs, dtype=np.float64)
    if weighting == "root":
        r = np.sqrt(np.clip(p, 0, None))
        return r / r.sum(1, keepdims=True)
    if weighting == "expected":
        return p / p.sum(1, keepdims=True)
    if weighting == "predicted":
        c = np.zeros_like(p)
        c[np.arange(len(p)), p.argmax(1)] = 1.0
        return c
    if weighting == "uniform":
        return np.full_like(p, 1.0 / p.shape[1])
    raise ConfigError(f"class_weighting must be one of {CLASS_WEIGHTINGS}, got {weighting!r}")


# --------------------------------------------------------------------------------------------------------------
# layer discovery
# --------------------------------------------------------------------------------------------------------------
_FAST_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.Embedding)


@dataclass
class Layer:
    """One gradient block: a module and the trainable parameters it is responsible for."""

    name: str
    module: nn.Module
    params: list[tuple[str, nn.Parameter]]
    kind: str  # "linear", "conv", "batchnorm", "layernorm", "embedding" or "fallback"


def _fast_kind(module: nn.Module, params: list[tuple[str, nn.Parameter]]) -> str | None:
    names = {n for n, _ in params}
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward and names <= {"weight", "bias"}:
        return "linear"
    if (isinstance(module, (nn.Conv1d, nn.Conv2d)) and type(module).forward in (nn.Conv1d.forward, nn.Conv2d.forward)
            and module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and names <= {"weight", "bias"}):
        return "conv"
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats \
            and module.running_mean is not None and names <= {"weight", "bias"}:
        return "batchnorm"
    if isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward \
            and names <= {"weight", "bias"}:
        return "layernorm"
    if isinstance(module, nn.Embedding) and type(module).forward is nn.Embedding.forward and module.max_norm is None \
            and names == {"weight"}:
        return "embedding"
    return None


def discover_layers(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """The gradient blocks of ``model``, in the order the forward pass first enters their modules.

    A block is a module's directly owned trainable parameters. Parameters of a module whose forward never runs
    (``nn.MultiheadAttention.out_proj`` is used through its weight only) join the nearest ancestor that runs.
    example: a small batch ``(n, ...)`` used for one probing forward pass (no gradients).
    """
    names = {m: n for n, m in model.named_modules()}
    parent: dict[nn.Module, nn.Module | None] = {model: None}
    for m in model.modules():
        for c in m.children():
            parent.setdefault(c, m)
    order: dict[nn.Module, int] = {}

    def entered(mod: nn.Module, _args: Any) -> None:
        order.setdefault(mod, len(order))

    handles = [m.register_forward_pre_hook(entered) for m in model.modules()]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    finally:
        for h in handles:
            h.remove()
    owned: dict[nn.Module, list[tuple[str, nn.Parameter]]] = {}
    seen: set[int] = set()
    for m in model.modules():
        for pname, p in m.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            owner, prefix = m, pname
            while owner not in order:  # forward never ran: attribute to the nearest ancestor that ran
                up = parent.get(owner)
                if up is None:
                    break
                prefix = f"{names[owner].rsplit('.', 1)[-1]}.{prefix}"
                owner = up
            if owner not in order:
                continue  # a parameter the forward pass never touches has zero gradient
            owned.setdefault(owner, []).append((prefix, p))
    layers = []
    for m in sorted(owned, key=lambda mod: order[mod]):
        params = owned[m]
        kind = _fast_kind(m, params) or "fallback"
        layers.append(Layer(names[m] or type(m).__name__, m, params, kind))
    if not layers:
        raise IncompatibleStrategyError("the model has no trainable parameter that its forward pass uses; REGrad "
                                        "needs gradients: unfreeze at least the last layer (requires_grad=True)")
    return layers


# --------------------------------------------------------------------------------------------------------------
# the fast engine
# --------------------------------------------------------------------------------------------------------------
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

    def score(self, class_weighting: str = DEFAULT_CLASS_WEIGHTING, layer_alpha: float = DEFAULT_LAYER_ALPHA,
              combine: str = DEFAULT_COMBINE, top_k: int | None = None, last_layer_only: bool = False) -> np.ndarray:
        """U: (N,) float64 from these norms (no gradient is recomputed)."""
        norms = self.norms
        if last_layer_only:
            norms = norms[:, :, -1:]
        if top_k is not None:
            norms = norms[:, :top_k]
        r = norms.shape[1]
        p_kept = np.take_along_axis(self.probs, self.classes[:, :r], axis=1)
        if class_weighting == "predicted":
            c = np.zeros_like(p_kept)
            c[:, 0] = 1.0  # rank 0 is the argmax
        else:
            c = class_weights(p_kept, class_weighting)
        w = layer_weights(norms.shape[2], layer_alpha)
        if combine == "linear":
            return np.einsum("nr,nrl,l->n", c, norms, w)
        if combine == "squared":
            return np.sqrt(np.einsum("nr,nrl,l->n", c, norms ** 2, w))
        raise ConfigError(f"combine must be one of {COMBINES}, got {combine!r}")


class _Recorder:
    """Forward hooks that record each layer's inputs and attach a zero probe to its outputs.

    The gradient with respect to a probe is the gradient with respect to the layer output as it left the layer,
    even when a later in-place op (``ReLU(inplace=True)``) rewrites that tensor.
    """

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self.active = False
        self.calls: dict[int, list[dict[str, Any]]] = {}
        self.probes: list[torch.Tensor] = []
        self._handles = [L.module.register_forward_hook(self._hook(i), with_kwargs=True)
                         for i, L in enumerate(layers)]

    def _hook(self, i: int):
        def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            if not self.active:
                return None
            outs: list[torch.Tensor | None] = []
            probe_ids: list[int] = []

            def attach(t: torch.Tensor) -> torch.Tensor:
                if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                    return t
                probe = torch.zeros((), dtype=t.dtype, device=t.device, requires_grad=True).expand(t.shape)
                probe_ids.append(len(self.probes))
                self.probes.append(probe)
                outs.append(t)
                return t + probe

            if isinstance(out, torch.Tensor):
                new_out: Any = attach(out)
            elif isinstance(out, tuple):
                new_out = tuple(attach(t) if t is not None else t for t in out)
            else:
                raise IncompatibleStrategyError(
                    f"layer {self.layers[i].name!r} returns {type(out).__name__}; REGrad handles modules returning "
                    f"a tensor or a tuple of tensors")
            rec = {"args": args, "kwargs": kwargs, "probes": probe_ids,
                   "versions": [a._version for a in args if isinstance(a, torch.Tensor)]}
            self.calls.setdefault(i, []).append(rec)
            return new_out
        return hook

    def reset(self) -> None:
        self.calls, self.probes = {}, []

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _rows_block(n_rows: int, per_row: int) -> int:
    return max(1, min(n_rows, _BLOCK_ELEMENTS // max(per_row, 1)))


def _sqsum(t: torch.Tensor) -> torch.Tensor:
    """Per-row squared L2 norm, (n, ...) -> (n,), without a squared temporary."""
    return torch.linalg.vector_norm(t.reshape(len(t), -1), dim=1).square()


def _gram_sqnorm(a_gram: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """sum_{q,q'} G_a[q,q'] (d_q . d_q'): a_gram (n, Q, Q), d (n, k, Q) -> (n,)."""
    out = torch.empty(len(d), dtype=d.dtype, device=d.device)
    q = d.shape[2]
    bs = _rows_block(len(d), q * q)
    for s in range(0, len(d), bs):
        dd = torch.bmm(d[s:s + bs].transpose(1, 2), d[s:s + bs])
        out[s:s + bs] = (dd * a_gram[s:s + bs]).sum((1, 2))
    return out


def _direct_sqnorm(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """||d a^T||_F^2 per sample: a (n, i, Q), d (n, o, Q) -> (n,)."""
    out = torch.empty(len(d), dtype=d.dtype, device=d.device)
    bs = _rows_block(len(d), a.shape[1] * d.shape[1])
    for s in range(0, len(d), bs):
        out[s:s + bs] = _sqsum(torch.bmm(d[s:s + bs], a[s:s + bs].transpose(1, 2)))
    return out


class _PairLayer:
    """Linear / Conv: per-sample gradient = sum over pairs q of delta_q a_q^T (+ bias sum_q delta_q)."""

    def __init__(self, a: torch.Tensor, has_bias: bool, n_ranks: int) -> None:
        # a: (n, d_in, Q), the pairs of one (folded) sample, channels first so that conv patches (unfold's own
        # layout) and conv output gradients need no transposed copies. The rule is picked per layer by flop
        # count: direct costs n_ranks * Q * d_in * d_out, Gram costs Q^2 * d_in once plus n_ranks * Q^2 * d_out.
        self.a = a
        self.has_bias = has_bias
        self.n_ranks = n_ranks
        self.gram: torch.Tensor | None = None

    def sqnorm(self, d: torch.Tensor) -> torch.Tensor:
        n, d_in, q = self.a.shape
        d_out = d.shape[1]
        direct = self.n_ranks * q * d_in * d_out
        gram = q * q * d_in + self.n_ranks * q * q * (d_out + 1)
        use_gram = gram < direct and n * q * q <= 4 * _BLOCK_ELEMENTS
        if PAIR_RULE != "auto":
            use_gram = PAIR_RULE == "gram"
        if q == 1 and PAIR_RULE == "auto":
            s = _sqsum(self.a) * _sqsum(d)
        elif use_gram:
            if self.gram is None:
                bs = _rows_block(n, q * q)
                self.gram = torch.cat([torch.bmm(self.a[i:i + bs].transpose(1, 2), self.a[i:i + bs])
                                       for i in range(0, n, bs)])
            s = _gram_sqnorm(self.gram, d)
        else:
            s = _direct_sqnorm(self.a, d)
        if self.has_bias:
            s = s + _sqsum(d.sum(2))
        return s


def _fold(t: torch.Tensor, group: int) -> torch.Tensor:
    """(n*group, k, Q) -> (n, k, group*Q): the copies of one sample become more pairs of the same sum."""
    nq, k, q = t.shape
    return t.reshape(nq // group, group, k, q).transpose(1, 2).reshape(nq // group, k, group * q)


def _cat(ts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim)


def _conv_patches(mod: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Unfolded input patches, (n, C_in * prod(kernel), L_out)."""
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(2)
        k, p, s, dl = (1, mod.kernel_size[0]), (0, mod.padding[0]), (1, mod.stride[0]), (1, mod.dilation[0])
    else:
        k, p, s, dl = mod.kernel_size, mod.padding, mod.stride, mod.dilation
    return F.unfold(x, k, dilation=dl, padding=p, stride=s)


class _Engine:
    """Per-chunk computation of GradientNorms for one model."""

    def __init__(self, model: nn.Module, layers: list[Layer], n_ranks: int, group: int, aggregate: str) -> None:
        self.model = model
        self.layers = layers
        self.n_ranks = n_ranks
        self.group = group  # rows per original sample (M+1)
        self.aggregate = aggregate
        self.rec = _Recorder(layers)
        self.n_rows = 0
        self._no_vmap: dict[int, bool] = {}

    def close(self) -> None:
        self.rec.remove()

    def _batch_first(self, t: torch.Tensor, layer: Layer) -> torch.Tensor:
        # Sequence models built with batch_first=False feed layers (T, B, d); per-sample sums need B first.
        if t.dim() > 1 and t.shape[0] != self.n_rows and t.shape[1] == self.n_rows:
            return t.transpose(0, 1)
        if t.shape[0] != self.n_rows:
            raise IncompatibleStrategyError(
                f"layer {layer.name!r} sees a tensor of shape {tuple(t.shape)} whose first two dims are not the "
                f"batch ({self.n_rows}); REGrad needs per-sample inputs to every layer (no batch reshaping)")
        return t

    def _channels_first(self, t: torch.Tensor, layer: Layer) -> torch.Tensor:
        """A layer's input or output gradient as (rows, d, Q) (a view wherever possible)."""
        t = self._batch_first(t, layer)
        kind = layer.kind
        if kind in ("conv", "batchnorm"):  # (n, C, *spatial): channels already come first
            return t.reshape(len(t), t.shape[1], -1)
        if kind == "layernorm":
            nd = len(layer.module.normalized_shape)
            return t.reshape(len(t), -1, math.prod(t.shape[t.dim() - nd:])).transpose(1, 2)
        return t.reshape(len(t), -1, t.shape[-1]).transpose(1, 2)  # linear, embedding: (n, *, d)

    # --- per-layer state computed once per chunk ---------------------------------------------------------------
    def _prepare(self, i: int) -> Any:
        layer, calls = self.layers[i], self.rec.calls.get(i, [])
        if not calls:
            return None
        for c in calls:
            args = [a for a in c["args"] if isinstance(a, torch.Tensor)]
            if [a._version for a in args] != c["versions"]:
                raise IncompatibleStrategyError(
                    f"an in-place operation modified the input of layer {layer.name!r} after the layer used it; "
                    f"REGrad needs that input: make the op out-of-place (e.g. nn.ReLU(inplace=False))")
        mod, kind = layer.module, layer.kind
        fold = self.aggregate == "mean-grad" and self.group > 1
        if kind == "fallback":
            return calls
        xs = [self._batch_first(c["args"][0].detach(), layer) for c in calls]
        if kind == "linear":
            a = _cat([self._channels_first(x, layer) for x in xs], 2)
        elif kind == "conv":
            a = _cat([_conv_patches(mod, x) for x in xs], 2)
        elif kind == "batchnorm":
            sh = [1, -1] + [1] * (xs[0].dim() - 2)
            a = _cat([self._channels_first((x - mod.running_mean.view(sh)) /
                                           torch.sqrt(mod.running_var.view(sh) + mod.eps), layer) for x in xs], 2)
        elif kind == "layernorm":
            a = _cat([self._channels_first(F.layer_norm(x, mod.normalized_shape, None, None, mod.eps), layer)
                      for x in xs], 2)
        elif kind == "embedding":
            a = _cat([x.reshape(len(x), -1) for x in xs], 1)
            if fold:
                a = a.reshape(len(a) // self.group, -1)
            eq = (a.unsqueeze(2) == a.unsqueeze(1))
            if mod.padding_idx is not None:
                keep = a != mod.padding_idx
                eq = eq & keep.unsqueeze(2) & keep.unsqueeze(1)
            return eq.to(mod.weight.dtype)
        else:  # pragma: no cover - _fast_kind returns only the kinds above
            raise AssertionError(kind)
        if fold:
            a = _fold(a, self.group)
        if kind in ("linear", "conv"):
            return _PairLayer(a, "bias" in {n for n, _ in layer.params}, self.n_ranks)
        return a

    def _deltas(self, i: int, grads: list[torch.Tensor | None]) -> torch.Tensor:
        """Output gradients of layer i's calls as (rows, d_out, Q), concatenated over calls."""
        layer = self.layers[i]
        d = _cat([self._channels_first(grads[c["probes"][0]], layer) for c in self.rec.calls[i]], 2)
        if self.aggregate == "mean-grad" and self.group > 1:
            d = _fold(d, self.group) / self.group
        return d

    def _fast_sqnorm(self, i: int, state: Any, d: torch.Tensor) -> torch.Tensor:
        layer = self.layers[i]
        names = {n for n, _ in layer.params}
        if layer.kind in ("linear", "conv"):
            return state.sqnorm(d)
        if layer.kind in ("batchnorm", "layernorm"):
            s = torch.zeros(len(d), dtype=d.dtype, device=d.device)
            if "weight" in names:
                s = s + _sqsum((d * state).sum(2))
            if "bias" in names:
                s = s + _sqsum(d.sum(2))
            return s
        if layer.kind == "embedding":
            return _gram_sqnorm(state, d)
        raise AssertionError(layer.kind)

    # --- fallback: exact autograd, one module at a time, one sample at a time ----------------------------------
    def _fallback_sqnorms(self, i: int, calls: list[dict], deltas: list[list[torch.Tensor | None]],
                          n_rows: int) -> torch.Tensor:
        """(n_units, R) squared norms; a unit is a sample (mean-grad, copies summed) or a row (mean-norm).

        First choice: torch.func, vmap over units of a vjp of the module alone (batch-first modules only); if the
        module cannot be vmapped, a plain loop over units with autograd (slow but works on anything).
        """
        layer = self.layers[i]
        if not self._no_vmap.get(i) and not (isinstance(layer.module, nn.MultiheadAttention)
                                             and not layer.module.batch_first):
            try:
                return self._fallback_vmap(i, calls, deltas, n_rows)
            except Exception:  # noqa: BLE001 - any vmap limitation: the loop below is always exact
                self._no_vmap[i] = True
        return self._fallback_loop(i, calls, deltas, n_rows)

    def _fallback_vmap(self, i: int, calls: list[dict], deltas: list[list[torch.Tensor | None]],
                       n_rows: int) -> torch.Tensor:
        from torch.func import functional_call, vjp, vmap

        layer = self.layers[i]
        mod = layer.module
        names = [n for n, _ in layer.params]
        pvals = tuple(p.detach() for _, p in layer.params)
        group = self.group if self.aggregate == "mean-grad" else 1
        n_units = n_rows // group
        n_ranks = self.n_ranks
        flat: list[Any] = []
        specs = []
        for c in calls:
            a_idx = []
            for a in c["args"]:
                a_idx.append(len(flat))
                flat.append(a)
            k_idx = {}
            for k, v in c["kwargs"].items():
                k_idx[k] = len(flat)
                flat.append(v)
            specs.append((a_idx, k_idx))
        batched = [isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n_rows for v in flat]
        pids = [pid for c in calls for pid in c["probes"]]
        dls = []
        for pid in pids:
            shape = self.rec.probes[pid].shape
            ts = [deltas[r][pid] if deltas[r][pid] is not None else torch.zeros(shape) for r in range(n_ranks)]
            t = torch.stack(ts, 1)  # (n_rows, R, ...)
            dls.append(t.reshape(n_units, group, n_ranks, *shape[1:]).transpose(1, 2))
        scale = 1.0 / group

        def per_unit(flat_u: tuple, dls_u: tuple) -> torch.Tensor:
            def f(*params: torch.Tensor) -> tuple[torch.Tensor, ...]:
                pd = dict(zip(names, params))
                outs: list[torch.Tensor] = []
                for a_idx, k_idx in specs:
                    o = functional_call(mod, pd, tuple(flat_u[j] for j in a_idx),
                                        {k: flat_u[j] for k, j in k_idx.items()})
                    o = [o] if isinstance(o, torch.Tensor) else [t for t in o if t is not None]
                    outs += [t for t in o if t.is_floating_point()]
                return tuple(outs)

            _, fn = vjp(f, *pvals)
            gs = vmap(fn)(tuple(dls_u))
            return sum(g.reshape(n_ranks, -1).pow(2).sum(1) for g in gs) * scale * scale

        n_par = sum(p.numel() for p in pvals)
        step = max(1, min(n_units, _BLOCK_ELEMENTS // 4 // max(1, n_ranks * n_par * group)))
        in_dims = (tuple(0 if b else None for b in batched), tuple(0 for _ in dls))
        vm = vmap(per_unit, in_dims=in_dims)
        out = []
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # The fused attention kernels have no vmap batching rule (vmap would loop over samples); the math
        # backend is made of batched matmuls and is exact.
        with sdpa_kernel([SDPBackend.MATH]):
            for s0 in range(0, n_units, step):
                s1 = min(n_units, s0 + step)
                flat_c = tuple(v.detach()[s0 * group:s1 * group].reshape(s1 - s0, group, *v.shape[1:]) if b
                               else v for v, b in zip(flat, batched))
                out.append(vm(flat_c, tuple(d[s0:s1] for d in dls)))
        return torch.cat(out).detach().double()

    def _fallback_loop(self, i: int, calls: list[dict], deltas: list[list[torch.Tensor | None]],
                       n_rows: int) -> torch.Tensor:
        """(n_units, R) squared norms; a unit is a sample (mean-grad, copies summed) or a row (mean-norm)."""
        layer = self.layers[i]
        mod = layer.module
        params = [p for _, p in layer.params]
        group = self.group if self.aggregate == "mean-grad" else 1
        n_units = n_rows // group
        out = torch.zeros(n_units, self.n_ranks, dtype=torch.float64)
        bdim = 1 if isinstance(mod, nn.MultiheadAttention) and not mod.batch_first else 0

        def take(v: Any, sl: slice) -> Any:
            if isinstance(v, torch.Tensor) and v.dim() > bdim and v.shape[bdim] == n_rows:
                return v.detach().narrow(bdim, sl.start, sl.stop - sl.start)
            return v

        def out_take(t: torch.Tensor, sl: slice) -> torch.Tensor:
            return t.narrow(bdim, sl.start, sl.stop - sl.start) if t.dim() > bdim and t.shape[bdim] == n_rows else t

        for u in range(n_units):
            sl = slice(u * group, (u + 1) * group)
            outs, grads_by_rank = [], [[] for _ in range(self.n_ranks)]
            for c in calls:
                o = mod(*[take(a, sl) for a in c["args"]], **{k: take(v, sl) for k, v in c["kwargs"].items()})
                o = [o] if isinstance(o, torch.Tensor) else [t for t in o if t is not None]
                o = [t for t in o if t.is_floating_point()]
                for t, pid in zip(o, c["probes"]):
                    outs.append(t)
                    for r in range(self.n_ranks):
                        g = deltas[r][pid]
                        grads_by_rank[r].append(torch.zeros_like(t) if g is None else out_take(g, sl))
            for r in range(self.n_ranks):
                gs = torch.autograd.grad(outs, params, grads_by_rank[r], retain_graph=r < self.n_ranks - 1,
                                         allow_unused=True)
                scale = 1.0 / group
                out[u, r] = sum(float((g.double() * scale).pow(2).sum()) for g in gs if g is not None)
        return out

    # --- one chunk -----------------------------------------------------------------------------------------------
    def run(self, x: torch.Tensor, classes: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x: (n*group, ...) rows, sample-major (copy 0 clean). Returns sqnorms (n, R, L) or (n*group, R, L) for
        mean-norm, probs (n, C) of the clean rows, classes (n, R)."""
        rec = self.rec
        rec.reset()
        rec.active = True
        try:
            logits = self.model(x)
        finally:
            rec.active = False
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise IncompatibleStrategyError(
                f"REGrad needs a model returning logits of shape (batch, n_classes); this one returned "
                f"{getattr(logits, 'shape', type(logits).__name__)}")
        n_rows, n_cls = logits.shape
        self.n_rows = n_rows
        g = self.group
        probs = torch.softmax(logits.detach()[::g].double(), 1)  # the clean copy of each sample
        if classes is None:
            order = torch.argsort(probs, dim=1, descending=True, stable=True)[:, :self.n_ranks]
        else:
            order = classes
        states = {i: self._prepare(i) for i in range(len(self.layers))}
        fast = [i for i, L in enumerate(self.layers) if L.kind != "fallback" and states[i] is not None]
        fallback = [i for i, L in enumerate(self.layers) if L.kind == "fallback" and states[i] is not None]
        n_units = n_rows // g if self.aggregate == "mean-grad" else n_rows
        sq = torch.zeros(n_units, self.n_ranks, len(self.layers), dtype=torch.float64)
        fb_deltas: list[list[torch.Tensor | None]] = []
        probe_of = [p for i in fast for c in rec.calls[i] for p in c["probes"][:1]]
        fb_probes = {p for i in fallback for c in rec.calls[i] for p in c["probes"]}
        wanted = sorted(set(probe_of) | fb_probes)
        pos = {p: j for j, p in enumerate(wanted)}
        p_rows = torch.softmax(logits.detach(), 1)
        for r in range(self.n_ranks):
            # d log p_k / d logits = onehot(k) - p: one backward pass serves the rank-r class of every row
            cls = order[:, r].repeat_interleave(g)
            gout = -p_rows
            gout[torch.arange(n_rows), cls] += 1.0
            grads = torch.autograd.grad(logits, [rec.probes[p] for p in wanted], gout, retain_graph=True,
                                        allow_unused=True)
            full: list[torch.Tensor | None] = [None] * len(rec.probes)
            for p in wanted:
                full[p] = grads[pos[p]]
            for i in fast:
                d = self._deltas(i, full)
                sq[:, r, i] = self._fast_sqnorm(i, states[i], d).double()
            if fallback:
                fb_deltas.append([full[p] if p in fb_probes else None for p in range(len(rec.probes))])
        for i in fallback:
            sq[:, :, i] = self._fallback_sqnorms(i, states[i], fb_deltas, n_rows)
        return sq.numpy(), probs.cpu().numpy(), order.cpu().numpy()


def _iter_batches(inputs: torch.Tensor | Iterable[Any], batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        for i in range(0, len(inputs), batch_size):
            yield inputs[i:i + batch_size]
        return
    if isinstance(inputs, np.ndarray):
        yield from _iter_batches(torch.from_numpy(inputs), batch_size)
        return
    for b in inputs:
        if isinstance(b, (tuple, list)):  # a DataLoader yielding (x, y)
            b = b[0]
        b = torch.as_tensor(b)
        for i in range(0, len(b), batch_size):  # re-chunk large batches to keep memory bounded
            yield b[i:i + batch_size]


def _check(class_weighting: str, aggregate: str, combine: str, n_perturbations: int, sigma: float,
           top_k: int | None, batch_size: int, perturb: str = DEFAULT_PERTURB) -> None:
    if class_weighting not in CLASS_WEIGHTINGS:
        raise ConfigError(f"class_weighting must be one of {CLASS_WEIGHTINGS}, got {class_weighting!r}")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if combine not in COMBINES:
        raise ConfigError(f"combine must be one of {COMBINES}, got {combine!r}")
    if n_perturbations < 0:
        raise ConfigError(f"n_perturbations must be >= 0, got {n_perturbations}")
    if perturb not in PERTURBS:
        raise ConfigError(f"perturb must be one of {PERTURBS} (noise on the inputs or on the trainable "
                          f"parameters), got {perturb!r}")
    if sigma < 0:
        unit = ("relative to each parameter tensor's std" if perturb == "params"
                else "in the normalised input space")
        raise ConfigError(f"sigma (noise std {unit}) must be >= 0, got {sigma}")
    if perturb == "params" and aggregate == "mean-grad" and n_perturbations > 0 and sigma > 0:
        raise ConfigError('perturb="params" supports aggregate="mean-norm" only (the average of the per-layer '
                          'gradient norms over the perturbed models); use aggregate="mean-norm", or '
                          'perturb="input" for "mean-grad"')
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be None (all classes) or >= 1, got {top_k}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def gradient_norms(model: nn.Module, inputs: torch.Tensor | Iterable[Any], *, n_perturbations: int = 0,
                   sigma: float = DEFAULT_SIGMA, aggregate: str = DEFAULT_AGGREGATE, top_k: int | None = None,
                   seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                   last_layer_only: bool = False, perturb: str = DEFAULT_PERTURB) -> GradientNorms:
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
      any batch, so it depends on ``seed`` alone, not on batching. For each batch and each m the noise is added in
      place (under ``torch.no_grad``), the norms are computed at the perturbed weights exactly as with M = 0, and
      the original parameters are copied back (in a ``finally``: bit-identical even if scoring raises). The class
      ranking, hence the class weights, always comes from the clean model (m = 0). Only ``aggregate="mean-norm"``
      (mean over m = 0..M of each per-layer norm) is supported: ``"mean-grad"`` would need the per-sample gradients
      of different models summed before the norm, which this engine does not do, so it is refused with a ConfigError
      (only when the noise is used, i.e. M > 0 and sigma > 0). Cost: M + 1 forward/backward sweeps per batch of
      ``batch_size`` samples (the same as input noise); extra memory: M copies of the parameters' noise plus one
      clean copy.

    The model is left exactly as found: parameters, buffers, train/eval flags, ``requires_grad``, no ``.grad``.
    References: Wang & Ji, CVPR 2024 (arXiv 2404.10124).
    """
    _check(DEFAULT_CLASS_WEIGHTING, aggregate, DEFAULT_COMBINE, n_perturbations, sigma, top_k, batch_size, perturb)
    if torch.is_inference_mode_enabled():
        raise ConfigError("REGrad needs autograd; call it outside torch.inference_mode()")
    m = n_perturbations if sigma > 0 else 0  # sigma = 0: every copy equals x, so the copies change nothing
    on_params = perturb == "params" and m > 0
    group = 1 if on_params else m + 1
    chunk = max(1, batch_size // group)
    first = True
    engine: _Engine | None = None
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    start = 0
    grad_flags = [(p, p.grad) for p in model.parameters()]
    perturbed: list[nn.Parameter] = []
    clean: list[torch.Tensor] = []
    noise: list[list[torch.Tensor]] = []
    if on_params:
        perturbed = [p for _, p in trainable_parameters(model)]
        with torch.no_grad():
            clean = [p.detach().clone() for p in perturbed]
        scales = parameter_scales(clean)
        noise = [[(sigma * sc * e).to(device=p.device, dtype=p.dtype) for e, sc, p in zip(eps_m, scales, clean)]
                 for eps_m in parameter_noise([p.shape for p in clean], m, seed)]
    try:
        with eval_mode(model), torch.enable_grad():
            for xb in _iter_batches(inputs, chunk):
                if first:
                    layers = discover_layers(model, xb[:2])
                    if last_layer_only:
                        layers = layers[-1:]
                    with torch.no_grad():
                        n_cls = model(xb[:1]).shape[-1]
                    n_ranks = n_cls if top_k is None else min(top_k, n_cls)
                    engine = _Engine(model, layers, n_ranks, group, aggregate)
                    first = False
                if on_params:
                    sq, probs, classes = engine.run(xb, None)  # the clean model ranks the classes
                    norms = np.sqrt(np.clip(sq, 0, None))
                    ranks = torch.from_numpy(classes)
                    for noise_m in noise:
                        with torch.no_grad():
                            for p, c, e in zip(perturbed, clean, noise_m):
                                p.copy_(c).add_(e)
                        try:
                            sq_m, _, _ = engine.run(xb, ranks)
                        finally:
                            with torch.no_grad():
                                for p, c in zip(perturbed, clean):
                                    p.copy_(c)
                        norms = norms + np.sqrt(np.clip(sq_m, 0, None))
                    norms = norms / (m + 1)
                    parts.append((norms, probs, classes))
                    start += len(xb)
                    continue
                if m:
                    eps = perturbation_noise(xb.shape[1:], range(start, start + len(xb)), m, seed, xb.dtype)
                    rows = torch.cat([xb.unsqueeze(1), xb.unsqueeze(1) + sigma * eps], 1)
                    rows = rows.reshape(len(xb) * group, *xb.shape[1:])
                else:
                    rows = xb
                sq, probs, classes = engine.run(rows, None)
                norms = np.sqrt(np.clip(sq, 0, None))
                if aggregate == "mean-norm" and group > 1:
                    norms = norms.reshape(len(xb), group, *norms.shape[1:]).mean(1)
                parts.append((norms, probs, classes))
                start += len(xb)
    finally:
        if engine is not None:
            engine.close()
        with torch.no_grad():  # already restored after every perturbed run; this guards any other exit path
            for p, c in zip(perturbed, clean):
                p.copy_(c)
        for p, g in grad_flags:  # autograd.grad never accumulates, but a fallback module might
            p.grad = g
    if engine is None:
        return GradientNorms(np.zeros((0, 0, 0)), np.zeros((0, 0)), np.zeros((0, 0), np.int64), [])
    return GradientNorms(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                         np.concatenate([p[2] for p in parts]).astype(np.int64), [L.name for L in engine.layers])


def regrad_scores(model: nn.Module, inputs: torch.Tensor | Iterable[Any], *,
                  class_weighting: ClassWeighting = DEFAULT_CLASS_WEIGHTING,
                  layer_alpha: float = DEFAULT_LAYER_ALPHA, n_perturbations: int = DEFAULT_N_PERTURBATIONS,
                  sigma: float = DEFAULT_SIGMA, aggregate: Aggregate = DEFAULT_AGGREGATE,
                  combine: Combine = DEFAULT_COMBINE, top_k: int | None = None, seed: int = 0,
                  batch_size: int = DEFAULT_BATCH_SIZE, last_layer_only: bool = False,
                  perturb: Perturb = DEFAULT_PERTURB) -> np.ndarray:
    """REGrad epistemic uncertainty U(x), ``(N,)`` float64; higher = more uncertain.

    model: any ``nn.Module`` mapping a batch to logits ``(n, C)``. inputs: tensor ``(N, ...)`` or iterable of
    batches. class_weighting: "root" (sqrt(p_k)/sum_j sqrt(p_j)), "expected" (p_k, ExGrad), "predicted" (argmax
    only), "uniform" (1/C). layer_alpha: layer weights softmax(alpha (l-1)/(L-1)). n_perturbations (M), sigma:
    x_m = x + sigma * eps_m, sigma in the model's (normalised) input units. aggregate: "mean-grad" averages the M+1
    gradients before the norm, "mean-norm" averages their norms. combine: "linear" sum_k c_k sum_l w_l ||g||, or
    "squared" sqrt(sum_k c_k sum_l w_l ||g||^2) (the second-order Bayesian form). top_k: keep the k most probable
    classes (weights renormalised). seed: noise seed. batch_size: rows (copies included) per chunk.
    last_layer_only: the last layer's gradient alone (an approximation; the backward passes stop there).
    perturb: "input" (default, x_m as above) or "params": theta_m = theta + sigma * std(theta_j) * eps per
    trainable parameter tensor theta_j, sigma relative to each tensor's own std, ``aggregate="mean-norm"`` only
    (details in :func:`gradient_norms`).

    References: Wang & Ji, "Gradient-based Uncertainty Quantification for Pre-trained Classifiers", CVPR 2024
    (arXiv 2404.10124); Igoe et al. 2022 (arXiv 2205.10439) for class_weighting="expected".
    """
    _check(class_weighting, aggregate, combine, n_perturbations, sigma, top_k, batch_size, perturb)
    if class_weighting == "predicted":
        top_k = 1  # only the argmax class has a non-zero weight: one backward pass suffices
    gn = gradient_norms(model, inputs, n_perturbations=n_perturbations, sigma=sigma, aggregate=aggregate,
                        top_k=top_k, seed=seed, batch_size=batch_size, last_layer_only=last_layer_only,
                        perturb=perturb)
    if len(gn.norms) == 0:
        return np.zeros(0)
    return gn.score(class_weighting, layer_alpha, combine)


# --------------------------------------------------------------------------------------------------------------
# GradNorm
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def gradnorm_scores(model: nn.Module, inputs: torch.Tensor | Iterable[Any], *, temperature: float = 1.0,
                    batch_size: int = 1024) -> np.ndarray:
    """GradNorm, ``(N,)`` float64: ||d KL(u || softmax(z/T)) / d W||_1 for the last linear layer's weight W.

    HIGHER means more familiar (in-distribution). The gradient with respect to the logits is (p - u)/T, so the
    weight gradient is the outer product (p - u)/T a^T and its L1 norm is ||p - u||_1 ||a||_1 / T, computed in
    closed form from the penultimate features a.
    References: Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts in the Wild",
    NeurIPS 2021.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    head = last_linear(model, "GradNorm")
    feats: list[torch.Tensor] = []
    h = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach()))
    out = []
    try:
        with eval_mode(model):
            for xb in _iter_batches(inputs, batch_size):
                feats.clear()
                logits = model(xb).double()
                a = feats[-1].double()
                if a.dim() != 2:
                    raise IncompatibleStrategyError(f"GradNorm needs the last Linear layer to see (batch, features), "
                                                    f"got {tuple(a.shape)}")
                p = torch.softmax(logits / temperature, 1)
                u = 1.0 / p.shape[1]
                out.append(((p - u).abs().sum(1) * a.abs().sum(1) / temperature).numpy())
    finally:
        h.remove()
    return np.concatenate(out) if out else np.zeros(0)


# --------------------------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------------------------
class REGrad(Strategy):
    """Acquire the highest REGrad epistemic uncertainty. Every keyword of :func:`regrad_scores` is a setting.

    References: Wang & Ji, CVPR 2024 (arXiv 2404.10124).
    """

    name = "regrad"
    needs = frozenset({"model", "inputs"})
    #: runs recorded before the parameter-noise option existed perturbed the inputs
    params_added = {"perturb": "input"}

    def __init__(self, class_weighting: ClassWeighting = DEFAULT_CLASS_WEIGHTING,
                 layer_alpha: float = DEFAULT_LAYER_ALPHA, n_perturbations: int = DEFAULT_N_PERTURBATIONS,
                 sigma: float = DEFAULT_SIGMA, aggregate: Aggregate = DEFAULT_AGGREGATE,
                 combine: Combine = DEFAULT_COMBINE, top_k: int | None = None, seed: int = 0,
                 batch_size: int = DEFAULT_BATCH_SIZE, last_layer_only: bool = False,
                 perturb: Perturb = DEFAULT_PERTURB) -> None:
        _check(class_weighting, aggregate, combine, n_perturbations, sigma, top_k, batch_size, perturb)
        self.class_weighting = class_weighting
        self.layer_alpha = float(layer_alpha)
        self.n_perturbations = int(n_perturbations)
        self.sigma = float(sigma)
        self.aggregate = aggregate
        self.combine = combine
        self.top_k = top_k
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.last_layer_only = bool(last_layer_only)
        self.perturb = perturb

    def scores(self, model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
        return regrad_scores(model, inputs, class_weighting=self.class_weighting, layer_alpha=self.layer_alpha,
                             n_perturbations=self.n_perturbations, sigma=self.sigma, aggregate=self.aggregate,
                             combine=self.combine, top_k=self.top_k, seed=self.seed, batch_size=self.batch_size,
                             last_layer_only=self.last_layer_only, perturb=self.perturb)

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        return top_n(self.scores(ctx.model, ctx.inputs), ctx.candidates, n)


class ExGrad(REGrad):
    """Expected gradient norm: REGrad with class_weighting="expected", uniform layers, no perturbation.

    References: Igoe et al., "How Useful are Gradients for OOD Detection?", arXiv 2205.10439 (2022).
    """

    name = "exgrad"

    def __init__(self, class_weighting: ClassWeighting = "expected", layer_alpha: float = 0.0,
                 n_perturbations: int = 0, sigma: float = 0.0, aggregate: Aggregate = "mean-grad",
                 combine: Combine = "linear", top_k: int | None = None, seed: int = 0,
                 batch_size: int = DEFAULT_BATCH_SIZE, last_layer_only: bool = False,
                 perturb: Perturb = DEFAULT_PERTURB) -> None:
        super().__init__(class_weighting, layer_alpha, n_perturbations, sigma, aggregate, combine, top_k, seed,
                         batch_size, last_layer_only, perturb)


class GradNorm(Strategy):
    """Acquire the LOWEST GradNorm (least familiar). ``pool_scores`` hold -GradNorm, so that, as for every other
    uncertainty strategy, higher means more uncertain.

    References: Huang, Geng & Li, NeurIPS 2021.
    """

    name = "gradnorm"
    needs = frozenset({"model", "inputs"})

    def __init__(self, temperature: float = 1.0, batch_size: int = 1024) -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)

    def check_learner(self, learner: Any) -> None:
        super().check_learner(learner)
        if getattr(learner, "is_fitted", False):
            last_linear(learner.network, "GradNorm")

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        s = gradnorm_scores(ctx.model, ctx.inputs, temperature=self.temperature, batch_size=self.batch_size)
        return top_n(-s, ctx.candidates, n)
