"""Forward hooks that record each layer's inputs and attach a zero "probe" to its outputs.

One backward pass then returns the gradient with respect to every layer output at once (the gradients of the
probes), which is all the per-sample norm rules need besides the recorded inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from al.errors import IncompatibleStrategyError

from .layers import Layer


class Recorder:
    """Forward hooks that record each layer's inputs and attach a zero probe to its outputs.

    The gradient with respect to a probe is the gradient with respect to the layer output as it left the layer,
    even when a later in-place op (``ReLU(inplace=True)``) rewrites that tensor.
    """

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self.active = False
        self.calls: dict[int, list[dict[str, Any]]] = {}
        self.probes: list[torch.Tensor] = []
        self._handles = [L.module.register_forward_hook(self._hook(i), with_kwargs=True) for i, L in enumerate(layers)]

    def _hook(self, i: int) -> Callable[..., Any]:
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
                    f"a tensor or a tuple of tensors"
                )
            rec = {
                "args": args,
                "kwargs": kwargs,
                "probes": probe_ids,
                "versions": [a._version for a in args if isinstance(a, torch.Tensor)],
            }
            self.calls.setdefault(i, []).append(rec)
            return new_out

        return hook

    def reset(self) -> None:
        self.calls, self.probes = {}, []

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
