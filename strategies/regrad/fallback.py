"""The exact fallback for layers without a closed-form rule: re-run the module alone, per unit, under autograd.

A unit is a sample (``mean-grad``: its M + 1 copies summed) or a row (``mean-norm``). First choice: torch.func,
vmap over units of a vjp of the module alone (batch-first modules only); if the module cannot be vmapped, a plain
loop over units with autograd (slow but works on anything: nn.MultiheadAttention, GroupNorm, a module using its own
nn.Parameter in forward, ...).

References: Horace He, Richard Zou et al., "functorch: JAX-like composable function transforms for PyTorch" (2021),
the per-sample-gradient recipe of ``torch.func``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers import Layer
from .pairs import BLOCK_ELEMENTS

Deltas = list[list[torch.Tensor | None]]  # deltas[r][probe]: the rank-r output gradient at each probe


def can_vmap(layer: Layer) -> bool:
    # a sequence-first attention module batches along dim 1, which the vmap path (dim 0) does not handle
    return not (isinstance(layer.module, nn.MultiheadAttention) and not layer.module.batch_first)


def fallback_vmap(
    layer: Layer, calls: list[dict], deltas: Deltas, probes: list[torch.Tensor], n_rows: int, group: int, n_ranks: int
) -> torch.Tensor:
    """(n_units, R) squared norms by torch.func; ``group`` rows form one unit (1 for ``mean-norm``)."""
    from torch.func import functional_call, vjp, vmap

    mod = layer.module
    names = [n for n, _ in layer.params]
    pvals = tuple(p.detach() for _, p in layer.params)
    n_units = n_rows // group
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
        shape = probes[pid].shape
        ts = [
            deltas[r][pid] if deltas[r][pid] is not None else torch.zeros(shape, device=probes[pid].device)
            for r in range(n_ranks)
        ]
        t = torch.stack(ts, 1)  # (n_rows, R, ...)
        dls.append(t.reshape(n_units, group, n_ranks, *shape[1:]).transpose(1, 2))
    scale = 1.0 / group

    def per_unit(flat_u: tuple, dls_u: tuple) -> torch.Tensor:
        def f(*params: torch.Tensor) -> tuple[torch.Tensor, ...]:
            pd = dict(zip(names, params, strict=True))
            outs: list[torch.Tensor] = []
            for a_idx, k_idx in specs:
                o = functional_call(mod, pd, tuple(flat_u[j] for j in a_idx), {k: flat_u[j] for k, j in k_idx.items()})
                o = [o] if isinstance(o, torch.Tensor) else [t for t in o if t is not None]
                outs += [t for t in o if t.is_floating_point()]
            return tuple(outs)

        fn = vjp(f, *pvals)[1]
        gs = vmap(fn)(tuple(dls_u))
        return sum(g.reshape(n_ranks, -1).pow(2).sum(1) for g in gs) * scale * scale

    n_par = sum(p.numel() for p in pvals)
    step = max(1, min(n_units, BLOCK_ELEMENTS // 4 // max(1, n_ranks * n_par * group)))
    in_dims = (tuple(0 if b else None for b in batched), tuple(0 for _ in dls))
    vm = vmap(per_unit, in_dims=in_dims)
    out = []
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # The fused attention kernels have no vmap batching rule (vmap would loop over samples); the math
    # backend is made of batched matmuls and is exact.
    with sdpa_kernel([SDPBackend.MATH]):
        for s0 in range(0, n_units, step):
            s1 = min(n_units, s0 + step)
            flat_c = tuple(
                v.detach()[s0 * group : s1 * group].reshape(s1 - s0, group, *v.shape[1:]) if b else v
                for v, b in zip(flat, batched, strict=True)
            )
            out.append(vm(flat_c, tuple(d[s0:s1] for d in dls)))
    return torch.cat(out).detach().double()


def fallback_loop(
    layer: Layer, calls: list[dict], deltas: Deltas, n_rows: int, group: int, n_ranks: int
) -> torch.Tensor:
    """(n_units, R) squared norms by one autograd call per unit and rank; ``group`` rows form one unit."""
    mod = layer.module
    params = [p for _, p in layer.params]
    n_units = n_rows // group
    out = torch.zeros(n_units, n_ranks, dtype=torch.float64)
    bdim = 1 if isinstance(mod, nn.MultiheadAttention) and not mod.batch_first else 0

    def take(v: Any, sl: slice) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() > bdim and v.shape[bdim] == n_rows:
            return v.detach().narrow(bdim, sl.start, sl.stop - sl.start)
        return v

    def out_take(t: torch.Tensor, sl: slice) -> torch.Tensor:
        return t.narrow(bdim, sl.start, sl.stop - sl.start) if t.dim() > bdim and t.shape[bdim] == n_rows else t

    for u in range(n_units):
        sl = slice(u * group, (u + 1) * group)
        outs: list[torch.Tensor] = []
        grads_by_rank: list[list[torch.Tensor]] = [[] for _ in range(n_ranks)]
        for c in calls:
            o = mod(*[take(a, sl) for a in c["args"]], **{k: take(v, sl) for k, v in c["kwargs"].items()})
            o = [o] if isinstance(o, torch.Tensor) else [t for t in o if t is not None]
            o = [t for t in o if t.is_floating_point()]
            for t, pid in zip(o, c["probes"], strict=False):  # as many probes as floating outputs
                outs.append(t)
                for r in range(n_ranks):
                    g = deltas[r][pid]
                    grads_by_rank[r].append(torch.zeros_like(t) if g is None else out_take(g, sl))
        for r in range(n_ranks):
            gs = torch.autograd.grad(outs, params, grads_by_rank[r], retain_graph=r < n_ranks - 1, allow_unused=True)
            scale = 1.0 / group
            out[u, r] = sum(float((g.double() * scale).pow(2).sum()) for g in gs if g is not None)
    return out
