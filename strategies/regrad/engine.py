"""The per-sample gradient-norm engine: one forward pass per chunk, one backward pass per class rank.

One forward pass per chunk with hooks (:class:`~.recorder.Recorder`) that record each layer's input and attach a
zero probe to its output; then one backward pass per class *rank* (the r-th most probable class of each sample, so
one pass serves every sample and ``top_k`` costs k passes) that returns the gradients delta with respect to every
layer output at once. Per-sample, per-layer gradient norms then follow from (input, delta) pairs without
materialising per-sample gradients where that is cheaper:

* Linear / Conv: :mod:`.pairs` (direct or Gram form, picked per layer by flop count or forced by ``pair_rule``).
* Perturbed copies are folded into the batch. For ``mean-grad`` the M+1 copies of one sample are simply more
  (a, delta) pairs of the same sum, so gbar's norm is exact with the same two formulas.
* BatchNorm (eval), LayerNorm: per-sample gradients are small (channels) and materialised; Embedding: Gram form
  restricted to equal token ids.
* Anything else that owns trainable parameters: the exact autograd fallback of :mod:`.fallback`.

Nothing here knows about classes weights, noise or strategies; :func:`~strategies.regrad.gradient_norms` drives it.
Devices: everything is computed where the model's logits are (the caller moves each chunk to the model's device);
:meth:`Engine.run` returns NumPy arrays, so its results are on the CPU whatever the device.
References: Wang & Ji, CVPR 2024 (arXiv 2404.10124), for what the norms are used for; Goodfellow (2015,
arXiv 1510.01799) for the per-example gradient identities.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from al.errors import IncompatibleStrategyError
from al.inputs import iter_batches as iter_batches  # re-exported: strategies.regrad.iter_batches is al's own

from .fallback import Deltas, can_vmap, fallback_loop, fallback_vmap
from .layers import Layer
from .pairs import PairLayer, PairRule, cat, conv_patches, fold, gram_sqnorm, sqsum
from .recorder import Recorder


class Engine:
    """Per-chunk computation of per-sample, per-rank, per-layer squared gradient norms for one model.

    n_ranks: class ranks R (backward passes per chunk). group: rows per original sample (M + 1 copies, or 1).
    aggregate: "mean-grad" folds the copies of a sample into one unit; "mean-norm" keeps one unit per row.
    pair_rule: "auto", "gram" or "direct" for Linear/Conv layers (speed only).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[Layer],
        n_ranks: int,
        group: int,
        aggregate: str,
        pair_rule: PairRule = "auto",
    ) -> None:
        self.model = model
        self.layers = layers
        self.n_ranks = n_ranks
        self.group = group
        self.aggregate = aggregate
        self.pair_rule = pair_rule
        self.rec = Recorder(layers)
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
                f"batch ({self.n_rows}); REGrad needs per-sample inputs to every layer (no batch reshaping)"
            )
        return t

    def _channels_first(self, t: torch.Tensor, layer: Layer) -> torch.Tensor:
        """A layer's input or output gradient as (rows, d, Q) (a view wherever possible)."""
        t = self._batch_first(t, layer)
        kind = layer.kind
        if kind in ("conv", "batchnorm"):  # (n, C, *spatial): channels already come first
            return t.reshape(len(t), t.shape[1], -1)
        if kind == "layernorm":
            nd = len(layer.module.normalized_shape)  # type: ignore[arg-type]
            return t.reshape(len(t), -1, math.prod(t.shape[t.dim() - nd :])).transpose(1, 2)
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
                    f"REGrad needs that input: make the op out-of-place (e.g. nn.ReLU(inplace=False))"
                )
        mod: Any = layer.module  # its type is what layer.kind says (layers._fast_kind checked it)
        kind = layer.kind
        folded = self.aggregate == "mean-grad" and self.group > 1
        if kind == "fallback":
            return calls
        xs = [self._batch_first(c["args"][0].detach(), layer) for c in calls]
        if kind == "linear":
            a = cat([self._channels_first(x, layer) for x in xs], 2)
        elif kind == "conv":
            a = cat([conv_patches(mod, x) for x in xs], 2)
        elif kind == "batchnorm":
            sh = [1, -1] + [1] * (xs[0].dim() - 2)
            a = cat(
                [
                    self._channels_first(
                        (x - mod.running_mean.view(sh)) / torch.sqrt(mod.running_var.view(sh) + mod.eps), layer
                    )
                    for x in xs
                ],
                2,
            )
        elif kind == "layernorm":
            a = cat(
                [self._channels_first(F.layer_norm(x, mod.normalized_shape, None, None, mod.eps), layer) for x in xs], 2
            )
        elif kind == "embedding":
            a = cat([x.reshape(len(x), -1) for x in xs], 1)
            if folded:
                a = a.reshape(len(a) // self.group, -1)
            eq = a.unsqueeze(2) == a.unsqueeze(1)
            if mod.padding_idx is not None:
                keep = a.ne(mod.padding_idx)
                eq = eq & keep.unsqueeze(2) & keep.unsqueeze(1)
            return eq.to(mod.weight.dtype)
        else:  # pragma: no cover - _fast_kind returns only the kinds above
            raise AssertionError(kind)
        if folded:
            a = fold(a, self.group)
        if kind in ("linear", "conv"):
            return PairLayer(a, "bias" in {n for n, _ in layer.params}, self.n_ranks, self.pair_rule)
        return a

    def _deltas(self, i: int, grads: list[torch.Tensor | None]) -> torch.Tensor:
        """Output gradients of layer i's calls as (rows, d_out, Q), concatenated over calls."""
        layer = self.layers[i]
        d = cat([self._channels_first(grads[c["probes"][0]], layer) for c in self.rec.calls[i]], 2)
        if self.aggregate == "mean-grad" and self.group > 1:
            d = fold(d, self.group) / self.group
        return d

    def _fast_sqnorm(self, i: int, state: Any, d: torch.Tensor) -> torch.Tensor:
        layer = self.layers[i]
        names = {n for n, _ in layer.params}
        if layer.kind in ("linear", "conv"):
            return state.sqnorm(d)
        if layer.kind in ("batchnorm", "layernorm"):
            s = torch.zeros(len(d), dtype=d.dtype, device=d.device)
            if "weight" in names:
                s = s + sqsum((d * state).sum(2))
            if "bias" in names:
                s = s + sqsum(d.sum(2))
            return s
        if layer.kind == "embedding":
            return gram_sqnorm(state, d)
        raise AssertionError(layer.kind)

    # --- fallback: exact autograd, one module at a time, one sample at a time ----------------------------------
    def _fallback_sqnorms(self, i: int, calls: list[dict], deltas: Deltas, n_rows: int) -> torch.Tensor:
        """(n_units, R) squared norms; a unit is a sample (mean-grad, copies summed) or a row (mean-norm)."""
        layer = self.layers[i]
        group = self.group if self.aggregate == "mean-grad" else 1
        if not self._no_vmap.get(i) and can_vmap(layer):
            try:
                return fallback_vmap(layer, calls, deltas, self.rec.probes, n_rows, group, self.n_ranks)
            except Exception:  # noqa: BLE001 - any vmap limitation: the loop below is always exact
                self._no_vmap[i] = True
        return fallback_loop(layer, calls, deltas, n_rows, group, self.n_ranks)

    # --- one chunk -----------------------------------------------------------------------------------------------
    def run(self, x: torch.Tensor, classes: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x: (n*group, ...) rows, sample-major (copy 0 clean). Returns sqnorms (n, R, L) or (n*group, R, L) for
        mean-norm, probs (n, C) of the clean rows, classes (n, R). ``x`` and ``classes`` may sit on the CPU or the
        model's device; the squared norms are accumulated on the device and copied to the CPU once."""
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
                f"{getattr(logits, 'shape', type(logits).__name__)}"
            )
        n_rows, n_cls = logits.shape
        self.n_rows = n_rows
        g = self.group
        probs = torch.softmax(logits.detach()[::g].double(), 1)  # the clean copy of each sample
        if classes is None:
            order = torch.argsort(probs, dim=1, descending=True, stable=True)[:, : self.n_ranks]
        else:
            order = classes.to(logits.device)  # ranks from an earlier run come back as CPU tensors
        states = {i: self._prepare(i) for i in range(len(self.layers))}
        fast = [i for i, L in enumerate(self.layers) if L.kind != "fallback" and states[i] is not None]
        fallback = [i for i, L in enumerate(self.layers) if L.kind == "fallback" and states[i] is not None]
        n_units = n_rows // g if self.aggregate == "mean-grad" else n_rows
        sq = torch.zeros(n_units, self.n_ranks, len(self.layers), dtype=torch.float64, device=logits.device)
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
            gout[torch.arange(n_rows, device=gout.device), cls] += 1.0
            grads = torch.autograd.grad(
                logits, [rec.probes[p] for p in wanted], gout, retain_graph=True, allow_unused=True
            )
            full: list[torch.Tensor | None] = [None] * len(rec.probes)
            for p in wanted:
                full[p] = grads[pos[p]]
            for i in fast:
                d = self._deltas(i, full)
                sq[:, r, i] = self._fast_sqnorm(i, states[i], d).double()
            if fallback:
                fb_deltas.append([full[p] if p in fb_probes else None for p in range(len(rec.probes))])
        for i in fallback:
            sq[:, :, i] = self._fallback_sqnorms(i, states[i], fb_deltas, n_rows).to(sq.device)
        return sq.cpu().numpy(), probs.cpu().numpy(), order.cpu().numpy()
