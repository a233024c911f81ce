"""Model inputs held in memory or read on demand: the one type every scoring path iterates in batches.

A built-in dataset's inputs are one in-memory tensor; a pool of the user's files is a :class:`LazyInputs`, an
iterable of CPU float32 batches read through a ``torch.utils.data.DataLoader`` when it is iterated, so that no
code path holds the whole pool as a tensor. ``iter_batches`` takes either (and NumPy arrays, and any iterable of
batches or ``(x, y)`` pairs, as a DataLoader gives) and yields chunks of bounded size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

#: What every scoring function accepts: a tensor ``(N, ...)``, an array, a LazyInputs, or an iterable of batches.
Inputs = torch.Tensor | np.ndarray | Iterable[Any]


class LazyInputs:
    """The inputs of ``len(self)`` samples, read on demand: iterating yields CPU float32 tensors
    ``(b, *input_shape)`` in order, each of at most ``batch_size`` rows, with the inputs of the samples in the
    order they were asked for. Subclasses implement ``__len__`` and ``__iter__``; ``materialise`` reads them all
    into one tensor (for small sets: a labelled set to train on, a batch to show)."""

    input_shape: tuple[int, ...] = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def materialise(self) -> torch.Tensor:
        parts = list(self)
        return torch.cat(parts) if parts else torch.empty((0, *self.input_shape))


def iter_batches(inputs: Inputs, batch_size: int) -> Iterator[torch.Tensor]:
    """Chunks of at most ``batch_size`` rows from a tensor, an array, a LazyInputs or an iterable of batches (or
    ``(x, y)`` pairs, as a DataLoader yields)."""
    if isinstance(inputs, torch.Tensor):
        for i in range(0, len(inputs), batch_size):
            yield inputs[i : i + batch_size]
        return
    if isinstance(inputs, np.ndarray):
        yield from iter_batches(torch.from_numpy(inputs), batch_size)
        return
    for b in inputs:
        if isinstance(b, (tuple, list)):  # a DataLoader yielding (x, y)
            b = b[0]
        b = torch.as_tensor(b)
        for i in range(0, len(b), batch_size):  # re-chunk large batches to keep memory bounded
            yield b[i : i + batch_size]


def n_rows(inputs: Inputs) -> int | None:
    """How many samples ``inputs`` holds, when that is known without reading them (None for a bare iterable)."""
    try:
        return len(inputs)  # type: ignore[arg-type]
    except TypeError:
        return None
