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
from collections.abc import Callable, Sequence
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

#: What :meth:`Engine.run_outputs` asks of its caller: the model's output -> (out, one cotangent per rank, extra).
Head = Callable[[Any], tuple[torch.Tensor, Sequence[torch.Tensor], Any]]
#: Per-layer whitening for :class:`Engine` ``metric``: layer index -> (W_in, W_out), see :class:`Engine`.
Metric = dict[int, tuple[torch.Tensor, torch.Tensor]]


class Engine:
    """Per-chunk computation of per-sample, per-rank, per-layer squared gradient norms for one model.

    n_ranks: class ranks R (backward passes per chunk). group: rows per original sample (M + 1 copies, or 1).
    aggregate: "mean-grad" folds the copies of a sample into one unit; "mean-norm" keeps one unit per row.
    pair_rule: "auto", "gram" or "direct" for Linear/Conv layers (speed only).
    metric: optional layer index -> (W_in, W_out) for Linear / Conv layers only: that layer's norm becomes
    ||W_out (sum_q delta_q abar_q^T) W_in^T||_F, abar_q = (a_q, 1) with a bias and a_q without, i.e. the norm of
    the gradient under the Kronecker metric (W_in^T W_in) (x) (W_out^T W_out) (W_in: (d_in [+1], d_in [+1]), W_out:
    (d_out, d_out)). Identity matrices give the plain norm; the classifier path never passes one.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[Layer],
        n_ranks: int,
        group: int,
        aggregate: str,
        pair_rule: PairRule = "auto",
        metric: Metric | None = None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.n_ranks = n_ranks
        self.group = group
        self.aggregate = aggregate
        self.pair_rule = pair_rule
        self.metric: Metric = dict(metric or {})
        for i in self.metric:
            if layers[i].kind not in ("linear", "conv"):  # pragma: no cover - the caller checks the kinds
                raise AssertionError(f"a metric for layer {layers[i].name!r} of kind {layers[i].kind!r}")
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
        has_bias = "bias" in {n for n, _ in layer.params}
        if kind in ("linear", "conv"):
            a = self._pair_inputs(i)
            if i in self.metric:  # the bias joins the weight as an input of 1, so that one W_in whitens both
                a = torch.einsum("ij,njq->niq", self.metric[i][0].to(a), self._augmented(i, a))
                has_bias = False
            if folded:
                a = fold(a, self.group)
            return PairLayer(a, has_bias, self.n_ranks, self.pair_rule)
        xs = [self._batch_first(c["args"][0].detach(), layer) for c in calls]
        if kind == "batchnorm":
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
        return a

    def _pair_inputs(self, i: int) -> torch.Tensor:
        """A Linear / Conv layer's inputs over all its calls as (rows, d_in, Q) (conv: unfolded patches)."""
        layer = self.layers[i]
        xs = [self._batch_first(c["args"][0].detach(), layer) for c in self.rec.calls[i]]
        if layer.kind == "linear":
            return cat([self._channels_first(x, layer) for x in xs], 2)
        return cat([conv_patches(layer.module, x) for x in xs], 2)  # type: ignore[arg-type]

    def _augmented(self, i: int, a: torch.Tensor) -> torch.Tensor:
        """(rows, d_in, Q) -> (rows, d_in + 1, Q) with a row of ones when layer i has a bias, else ``a``."""
        if "bias" not in {n for n, _ in self.layers[i].params}:
            return a
        return torch.cat([a, a.new_ones(a.shape[0], 1, a.shape[2])], 1)

    def _deltas(self, i: int, grads: list[torch.Tensor | None]) -> torch.Tensor:
        """Output gradients of layer i's calls as (rows, d_out, Q), concatenated over calls."""
        layer = self.layers[i]
        d = cat([self._channels_first(self._probe_grad(grads, c["probes"][0]), layer) for c in self.rec.calls[i]], 2)
        if i in self.metric:
            d = torch.einsum("ij,njq->niq", self.metric[i][1].to(d), d)
        if self.aggregate == "mean-grad" and self.group > 1:
            d = fold(d, self.group) / self.group
        return d

    def _probe_grad(self, grads: list[torch.Tensor | None], p: int) -> torch.Tensor:
        # None: the output does not depend on this layer (a regression model's log-variance head under the "mean"
        # target); its gradient is zero. A classifier's logits depend on every layer, so it never sees None here.
        g = grads[p]
        return torch.zeros_like(self.rec.probes[p]) if g is None else g

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
    def _forward(self, x: torch.Tensor) -> Any:
        """The model's output on ``x`` with the hooks recording (whatever the model returns)."""
        rec = self.rec
        rec.reset()
        rec.active = True
        try:
            return self.model(x)
        finally:
            rec.active = False

    def _sweep(self, out: torch.Tensor, cotangent: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """Squared norms ``(n_units, R, L)`` (float64, on ``out``'s device) after :meth:`_forward`: for each rank r,
        one backward pass from ``out`` (``(n_rows, ...)``, computed from the recorded forward pass) with the output
        gradient ``cotangent(r)`` (``out``'s shape), i.e. the per-unit norms of grad_theta <cotangent(r), out>."""
        rec = self.rec
        n_rows = out.shape[0]
        self.n_rows = n_rows
        states = {i: self._prepare(i) for i in range(len(self.layers))}
        fast = [i for i, L in enumerate(self.layers) if L.kind != "fallback" and states[i] is not None]
        fallback = [i for i, L in enumerate(self.layers) if L.kind == "fallback" and states[i] is not None]
        n_units = n_rows // self.group if self.aggregate == "mean-grad" else n_rows
        sq = torch.zeros(n_units, self.n_ranks, len(self.layers), dtype=torch.float64, device=out.device)
        fb_deltas: list[list[torch.Tensor | None]] = []
        probe_of = [p for i in fast for c in rec.calls[i] for p in c["probes"][:1]]
        fb_probes = {p for i in fallback for c in rec.calls[i] for p in c["probes"]}
        wanted = sorted(set(probe_of) | fb_probes)
        for r in range(self.n_ranks):
            full = self._probe_grads(out, cotangent(r), wanted)
            for i in fast:
                d = self._deltas(i, full)
                sq[:, r, i] = self._fast_sqnorm(i, states[i], d).double()
            if fallback:
                fb_deltas.append([full[p] if p in fb_probes else None for p in range(len(rec.probes))])
        for i in fallback:
            sq[:, :, i] = self._fallback_sqnorms(i, states[i], fb_deltas, n_rows).to(sq.device)
        return sq

    def _probe_grads(self, out: torch.Tensor, gout: torch.Tensor, wanted: list[int]) -> list[torch.Tensor | None]:
        """The gradients of <gout, out> with respect to the probes in ``wanted`` (None elsewhere)."""
        probes = self.rec.probes
        grads = torch.autograd.grad(out, [probes[p] for p in wanted], gout, retain_graph=True, allow_unused=True)
        full: list[torch.Tensor | None] = [None] * len(probes)
        for p, g in zip(wanted, grads, strict=True):
            full[p] = g
        return full

    def run(self, x: torch.Tensor, classes: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x: (n*group, ...) rows, sample-major (copy 0 clean). Returns sqnorms (n, R, L) or (n*group, R, L) for
        mean-norm, probs (n, C) of the clean rows, classes (n, R). ``x`` and ``classes`` may sit on the CPU or the
        model's device; the squared norms are accumulated on the device and copied to the CPU once."""
        logits = self._forward(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise IncompatibleStrategyError(
                f"REGrad needs a model returning logits of shape (batch, n_classes); this one returned "
                f"{getattr(logits, 'shape', type(logits).__name__)}"
            )
        n_rows = logits.shape[0]
        g = self.group
        probs = torch.softmax(logits.detach()[::g].double(), 1)  # the clean copy of each sample
        if classes is None:
            order = torch.argsort(probs, dim=1, descending=True, stable=True)[:, : self.n_ranks]
        else:
            order = classes.to(logits.device)  # ranks from an earlier run come back as CPU tensors
        p_rows = torch.softmax(logits.detach(), 1)

        def cotangent(r: int) -> torch.Tensor:
            # d log p_k / d logits = onehot(k) - p: one backward pass serves the rank-r class of every row
            cls = order[:, r].repeat_interleave(g)
            gout = -p_rows
            gout[torch.arange(n_rows, device=gout.device), cls] += 1.0
            return gout

        sq = self._sweep(logits, cotangent)
        return sq.cpu().numpy(), probs.cpu().numpy(), order.cpu().numpy()

    def run_outputs(self, x: torch.Tensor, head: Head) -> tuple[np.ndarray, Any]:
        """The general form of :meth:`run`, for models that are not classifiers (regression): ``n_ranks`` terms.

        x: (n*group, ...) rows as for :meth:`run`. ``head(output)`` receives the model's output on ``x`` (whatever
        it returns) and gives ``(out, cotangents, extra)``: ``out`` a tensor ``(n*group, ...)`` computed from the
        output (differentiably), ``cotangents`` ``n_ranks`` tensors of ``out``'s shape, and anything ``extra`` to
        hand back. Term r of a row is the scalar <cotangents[r][row], out[row]>; the returned squared norms
        ``(n, R, L)`` (or ``(n*group, R, L)`` for mean-norm) are those of its parameter gradient, per layer, with
        the copies of a sample averaged before the norm for mean-grad, exactly as in :meth:`run`."""
        out, cotangents, extra = head(self._forward(x))
        if len(cotangents) != self.n_ranks:  # pragma: no cover - the callers build as many terms as ranks
            raise AssertionError(f"{len(cotangents)} cotangents for {self.n_ranks} ranks")
        sq = self._sweep(out, lambda r: cotangents[r])
        return sq.cpu().numpy(), extra

    def kfac_factors(self, x: torch.Tensor, head: Head) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Sums over the rows of ``x`` of the K-FAC factors of every Linear / Conv layer, for the terms ``head``
        gives (as in :meth:`run_outputs`; one row per sample: ``group`` must be 1 and there is no metric):
        layer index -> (sum_rows (1/Q) sum_q abar_q abar_q^T, sum_rows sum_r sum_q delta_{r,q} delta_{r,q}^T), with
        abar the layer's input (its patch for a Conv) followed by a 1 when the layer has a bias, Q its positions.
        References: Martens & Grosse, ICML 2015 (K-FAC); Grosse & Martens, ICML 2016 (convolutions)."""
        if self.group != 1 or self.metric:  # pragma: no cover - the caller builds a plain engine for this
            raise AssertionError("kfac_factors needs an engine with group 1 and no metric")
        out, cotangents, _ = head(self._forward(x))
        self.n_rows = out.shape[0]
        rec = self.rec
        idx = [i for i in range(len(self.layers)) if rec.calls.get(i)]
        factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i in idx:
            a = self._augmented(i, self._pair_inputs(i)).double()
            a_sum = torch.einsum("niq,njq->ij", a, a) / a.shape[2]
            factors[i] = (a_sum, torch.zeros(0))
        wanted = sorted({p for i in idx for c in rec.calls[i] for p in c["probes"][:1]})
        for r in range(len(cotangents)):
            full = self._probe_grads(out, cotangents[r], wanted)
            for i in idx:
                d = self._deltas(i, full).double()
                g_r = torch.einsum("niq,njq->ij", d, d)
                a_sum, g_sum = factors[i]
                factors[i] = (a_sum, g_r if g_sum.numel() == 0 else g_sum + g_r)
        return factors
