"""Layer discovery: which modules own trainable parameters, in forward order, and which rule computes each one's
per-sample gradient norm.

A "layer" (gradient block) is a module's directly owned trainable parameters. Linear, Conv1d/Conv2d, BatchNorm
(eval), LayerNorm and Embedding with their stock ``forward`` have closed-form rules (:mod:`.pairs`, :mod:`.engine`);
anything else goes through the exact autograd fallback (:mod:`.fallback`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from al.errors import IncompatibleStrategyError
from al.learner import eval_mode


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
    if (
        isinstance(module, (nn.Conv1d, nn.Conv2d))
        and type(module).forward in (nn.Conv1d.forward, nn.Conv2d.forward)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and names <= {"weight", "bias"}
    ):
        return "conv"
    if (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.track_running_stats
        and module.running_mean is not None
        and names <= {"weight", "bias"}
    ):
        return "batchnorm"
    if (
        isinstance(module, nn.LayerNorm)
        and type(module).forward is nn.LayerNorm.forward
        and names <= {"weight", "bias"}
    ):
        return "layernorm"
    if (
        isinstance(module, nn.Embedding)
        and type(module).forward is nn.Embedding.forward
        and module.max_norm is None
        and names == {"weight"}
    ):
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
        raise IncompatibleStrategyError(
            "the model has no trainable parameter that its forward pass uses; REGrad "
            "needs gradients: unfreeze at least the last layer (requires_grad=True)"
        )
    return layers
