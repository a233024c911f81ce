"""REGrad's perturbation noise, keyed so that a sample's noise never depends on what is scored beside it.

Input noise for one sample is drawn from its own generator, seeded by

* ``[key, seed, sample_id]`` when a ``key`` is given: ``REGrad.select`` draws the key once per call from the
  round's ``rng`` and passes the candidates' global sample ids, so a sample's noise (hence its score) is the same
  whether it is scored alone, in another batch, in another order or with another ``batch_size``;
* ``[seed, i]`` without a key, where ``i`` is the sample's id if ``ids`` are given, else its index in the full
  ``inputs`` sequence passed to :func:`~strategies.regrad.regrad_scores` (stable across ``batch_size`` and
  chunking; the same numbers as before ids existed).

Parameter noise (``perturb="params"``) is drawn once per call, before any batch, per perturbed model m and
parameter tensor j: ``[key, seed, m, j]`` with a key, ``[seed, m, j]`` without. It is shared by every sample, so
it cannot depend on the batch either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn


def noise_key(rng: np.random.Generator | None) -> int | None:
    """The one draw from ``rng`` that keys a call's noise (None without an rng)."""
    return None if rng is None else int(rng.integers(2**63))


def _entropy(key: int | None, seed: int, *words: int) -> list[int]:
    return [int(seed), *map(int, words)] if key is None else [int(key), int(seed), *map(int, words)]


def perturbation_noise(
    sample_shape: Sequence[int],
    indices: Iterable[int],
    n_perturbations: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    key: int | None = None,
) -> torch.Tensor:
    """Standard-normal input noise, ``(len(indices), n_perturbations, *sample_shape)``.

    indices: the keys of the samples (global sample ids, or indices into the full input sequence); sample ``i`` gets
    the same noise for a given ``(key, seed)`` whatever else is drawn with it (see the module docstring).
    """
    idx = list(indices)
    out = np.empty((len(idx), n_perturbations, *sample_shape), dtype=np.float32)
    for j, i in enumerate(idx):
        gen = np.random.default_rng(_entropy(key, seed, i))
        out[j] = gen.standard_normal((n_perturbations, *sample_shape), dtype=np.float32)
    return torch.from_numpy(out).to(dtype)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters that ``perturb="params"`` perturbs: every ``requires_grad`` parameter of ``model``, in
    ``named_parameters()`` order (shared parameters once). Frozen parameters are left alone."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def parameter_noise(
    shapes: Sequence[Sequence[int]],
    n_perturbations: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    key: int | None = None,
) -> list[list[torch.Tensor]]:
    """Standard-normal parameter noise: ``noise[m][j]`` has ``shapes[j]`` (m = 0..n_perturbations-1 stands for
    the perturbed models 1..M; model 0 is the clean one).

    Tensor ``j`` of model ``m`` has its own generator seeded by ``(key, seed, m, j)`` (``(seed, m, j)`` without a
    key), so the draw depends only on those and the parameter list, never on how the inputs are batched.
    Unscaled: :func:`~strategies.regrad.gradient_norms` multiplies tensor j by ``sigma * std(theta_j)``.
    """
    return [
        [
            torch.from_numpy(
                np.random.default_rng(_entropy(key, seed, m, j)).standard_normal(tuple(sh), dtype=np.float32)
            ).to(dtype)
            for j, sh in enumerate(shapes)
        ]
        for m in range(n_perturbations)
    ]


def parameter_scales(params: Sequence[torch.Tensor]) -> list[float]:
    """std of each tensor's entries (population std, 0 for a single entry): the unit of ``sigma`` under
    ``perturb="params"``."""
    return [float(p.detach().double().std(correction=0)) if p.numel() > 1 else 0.0 for p in params]
