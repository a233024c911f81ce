"""Per-sample squared gradient norms of Linear and Conv layers from (input, output-gradient) pairs.

The per-sample weight gradient of a Linear layer (also on token sequences) or a Conv1d/Conv2d layer is
sum_q delta_q a_q^T over positions q (sequence positions; conv output pixels with ``unfold``ed patches). Its squared
norm is computed either directly (materialise the (d_out, d_in) gradient per sample) or by the Gram form
sum_{q,q'} (a_q . a_q')(delta_q . delta_q'); the input Gram is class independent, so it is paid once per chunk
while the direct form is paid per class. :class:`PairLayer` takes the cheaper of the two by a flop count, unless
``pair_rule`` forces one (tests, benchmarks: the choice changes speed, never the result beyond rounding).

References: Goodfellow, "Efficient Per-Example Gradient Computations", arXiv 1510.01799 (2015); Rochette et al.,
"Efficient Per-Example Gradient Computations in Convolutional Neural Networks", arXiv 1912.06015 (2019).
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import nn
from torch.nn import functional as F

from al.errors import ConfigError

PairRule = Literal["auto", "gram", "direct"]
PAIR_RULES = ("auto", "gram", "direct")

# Intermediate tensors (direct per-sample gradients, Gram matrices) are computed in row blocks of at most this
# many elements, so memory stays bounded whatever the layer width and chunk size.
BLOCK_ELEMENTS = 1 << 24


def check_pair_rule(pair_rule: str) -> PairRule:
    if not isinstance(pair_rule, str) or pair_rule not in PAIR_RULES:
        raise ConfigError(
            f'pair_rule must be one of {PAIR_RULES} ("auto" picks the faster form per layer), got {pair_rule!r}'
        )
    return cast(PairRule, pair_rule)


def rows_block(n_rows: int, per_row: int) -> int:
    return max(1, min(n_rows, BLOCK_ELEMENTS // max(per_row, 1)))


def sqsum(t: torch.Tensor) -> torch.Tensor:
    """Per-row squared L2 norm, (n, ...) -> (n,), without a squared temporary."""
    return torch.linalg.vector_norm(t.reshape(len(t), -1), dim=1).square()


def gram_sqnorm(a_gram: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """sum_{q,q'} G_a[q,q'] (d_q . d_q'): a_gram (n, Q, Q), d (n, k, Q) -> (n,)."""
    out = torch.empty(len(d), dtype=d.dtype, device=d.device)
    q = d.shape[2]
    bs = rows_block(len(d), q * q)
    for s in range(0, len(d), bs):
        dd = torch.bmm(d[s : s + bs].transpose(1, 2), d[s : s + bs])
        out[s : s + bs] = (dd * a_gram[s : s + bs]).sum((1, 2))
    return out


def direct_sqnorm(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """||d a^T||_F^2 per sample: a (n, i, Q), d (n, o, Q) -> (n,)."""
    out = torch.empty(len(d), dtype=d.dtype, device=d.device)
    bs = rows_block(len(d), a.shape[1] * d.shape[1])
    for s in range(0, len(d), bs):
        out[s : s + bs] = sqsum(torch.bmm(d[s : s + bs], a[s : s + bs].transpose(1, 2)))
    return out


class PairLayer:
    """Linear / Conv: per-sample gradient = sum over pairs q of delta_q a_q^T (+ bias sum_q delta_q)."""

    def __init__(self, a: torch.Tensor, has_bias: bool, n_ranks: int, pair_rule: PairRule = "auto") -> None:
        # a: (n, d_in, Q), the pairs of one (folded) sample, channels first so that conv patches (unfold's own
        # layout) and conv output gradients need no transposed copies. The rule is picked per layer by flop
        # count: direct costs n_ranks * Q * d_in * d_out, Gram costs Q^2 * d_in once plus n_ranks * Q^2 * d_out.
        self.a = a
        self.has_bias = has_bias
        self.n_ranks = n_ranks
        self.pair_rule = pair_rule
        self.gram: torch.Tensor | None = None

    def sqnorm(self, d: torch.Tensor) -> torch.Tensor:
        n, d_in, q = self.a.shape
        d_out = d.shape[1]
        direct = self.n_ranks * q * d_in * d_out
        gram = q * q * d_in + self.n_ranks * q * q * (d_out + 1)
        use_gram = gram < direct and n * q * q <= 4 * BLOCK_ELEMENTS
        if self.pair_rule != "auto":
            use_gram = self.pair_rule == "gram"
        if q == 1 and self.pair_rule == "auto":
            s = sqsum(self.a) * sqsum(d)
        elif use_gram:
            if self.gram is None:
                bs = rows_block(n, q * q)
                self.gram = torch.cat(
                    [torch.bmm(self.a[i : i + bs].transpose(1, 2), self.a[i : i + bs]) for i in range(0, n, bs)]
                )
            s = gram_sqnorm(self.gram, d)
        else:
            s = direct_sqnorm(self.a, d)
        if self.has_bias:
            s = s + sqsum(d.sum(2))
        return s


def fold(t: torch.Tensor, group: int) -> torch.Tensor:
    """(n*group, k, Q) -> (n, k, group*Q): the copies of one sample become more pairs of the same sum."""
    nq, k, q = t.shape
    return t.reshape(nq // group, group, k, q).transpose(1, 2).reshape(nq // group, k, group * q)


def cat(ts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim)


def conv_patches(mod: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Unfolded input patches, (n, C_in * prod(kernel), L_out)."""
    # a string padding ("same") never gets here: layers._fast_kind sends such convs to the fallback
    pad = tuple(int(v) for v in mod.padding)
    k: tuple[int, ...]
    p: tuple[int, ...]
    s: tuple[int, ...]
    dl: tuple[int, ...]
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(2)
        k, p, s, dl = (1, mod.kernel_size[0]), (0, pad[0]), (1, mod.stride[0]), (1, mod.dilation[0])
    else:
        k, p, s, dl = mod.kernel_size, pad, mod.stride, mod.dilation
    return F.unfold(x, k, dilation=dl, padding=p, stride=s)
