"""A pool: the samples active learning chooses from, each with a stable integer id, and an optional test split.

Built-in datasets (:class:`al.data.Dataset`) are pools held in memory, labelled, with ids that are row indices.
A user's pool (:class:`FilePool`: a folder of images, a table, arrays, any map-style torch ``Dataset``) has

- ``keys``: what each id is (a file's path relative to the pool folder, or a table's id), recorded in the store,
  so that a re-scanned folder keeps every old id (:meth:`Pool.align`);
- ``labels``: ``(n_pool,)`` int64 with ``-1`` for unlabelled samples, or None when no label is known at all: an
  unlabelled pool keeps no fake labels; a regression pool's (``task`` ``"regression"``, :mod:`al.tasks`) are
  float64 targets with NaN for unlabelled samples, its ``n_classes`` 1 (the model's output width);
- inputs read on demand: :meth:`Pool.inputs` returns a tensor for in-memory pools and a
  :class:`al.inputs.LazyInputs` for file pools, so no code path holds a pool of files as one tensor.

Ids are dense in ``range(n_pool)`` except for files that disappeared since the run recorded them: those ids stay
reserved (never renumbered) and ``available`` is False for them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..inputs import LazyInputs
from ..tasks import CLASSIFICATION, known_answers

UNLABELLED = -1


@dataclass(frozen=True)
class TestSplit:
    """Held-out samples with labels: ``inputs`` (tensor or LazyInputs, ``(n_test, ...)``), ``labels (n_test,)``,
    and ``keys`` (their paths, for messages) when they are files."""

    inputs: torch.Tensor | LazyInputs
    labels: np.ndarray
    keys: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Alignment:
    """What :meth:`Pool.align` found: ``added`` (new id -> key), ``missing`` (stored id -> key, no longer in the
    pool)."""

    added: dict[int, str]
    missing: dict[int, str]


class Pool:
    """The interface the loop, the strategies' context and the oracles use (see the module docstring)."""

    name: str
    classes: list[str]
    n_classes: int
    default_model: str
    #: What its labels are (:mod:`al.tasks`): class indices, or numbers for a regression pool.
    task: str = CLASSIFICATION

    @property
    def n_pool(self) -> int:
        """Size of the id space, ``max id + 1`` (ids of files gone since they were recorded included)."""
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray | None:
        """``(n_pool,)`` int64 known labels, ``-1`` where unknown (regression: float64 targets, NaN where unknown);
        None when the pool has no labels at all."""
        raise NotImplementedError

    @property
    def keys(self) -> list[str | None] | None:
        """What each id is (relative path or table id), None for a gone id; None for built-in datasets."""
        return None

    @property
    def available(self) -> np.ndarray:
        """``(n_pool,)`` bool: the ids that can be read now."""
        return np.ones(self.n_pool, dtype=bool)

    @property
    def test(self) -> TestSplit | None:
        """The test split, or None (then rounds record no accuracy)."""
        return None

    @property
    def has_labels(self) -> bool:
        y = self.labels
        return y is not None and bool(known_answers(y[self.available]).any())

    @property
    def fully_labelled(self) -> bool:
        y = self.labels
        return y is not None and bool(known_answers(y[self.available]).all())

    def inputs(self, ids: np.ndarray) -> torch.Tensor | LazyInputs:
        """Inputs of ``ids`` in that order: a tensor ``(n, *input_shape)`` or a LazyInputs read on demand."""
        raise NotImplementedError

    def tensor_inputs(self, ids: np.ndarray) -> torch.Tensor:
        """Inputs of ``ids`` as one tensor (for small sets: the labelled set, a batch to show)."""
        x = self.inputs(ids)
        return x.materialise() if isinstance(x, LazyInputs) else x

    def preview(self, sample_id: int) -> np.ndarray:
        """The sample as an image in [0, 1], ``(C, H, W)`` float, for people labelling it."""
        raise NotImplementedError

    def path_of(self, sample_id: int) -> Path | None:
        """The sample's file, for pools of files."""
        return None

    def row_of(self, sample_id: int) -> dict[str, float] | None:
        """A table row's feature values as the table holds them (column -> value), for people labelling rows;
        None for pools of images."""
        return None

    def fingerprint(self) -> str:
        """What the pool is, in at most 128 characters, checked when a run is resumed (see al.data_fingerprint)."""
        raise NotImplementedError

    def input_card(self) -> dict[str, Any]:
        """What a saved model needs to read new inputs (al.checkpoints): kind, shape, normalisation."""
        return {"kind": "tensor", "shape": list(self.input_shape)}

    def align(self, stored: Mapping[int, str]) -> Alignment:
        """Adopt the ids a run has recorded (id -> key): a key the run knows keeps its id, new keys get new ids
        after the largest recorded one, and recorded keys no longer in the pool keep their ids, unavailable.
        Pools without keys (built-in datasets) have nothing to align."""
        if stored:
            raise DataError(f"pool {self.name!r} has no sample keys, but the run recorded {len(stored)}")
        return Alignment({}, {})

    def exclude(self, reasons: Mapping[int, str]) -> None:
        """Make ``reasons``' ids unavailable (unreadable files); the reasons are reported by the caller."""
        if reasons:
            raise DataError(f"pool {self.name!r} cannot exclude samples: its inputs are all in memory")


def spec_fingerprint(kind: str, name: str, shape: tuple[int, ...], classes: list[str], card: dict[str, Any]) -> str:
    """Fingerprint of a keyed pool: what its samples are read as (kind, classes, input spec), not which files it
    holds; the files are matched by their recorded keys instead, so that a folder may grow between sessions."""
    h = hashlib.sha256(json.dumps([kind, classes, card], sort_keys=True).encode()).hexdigest()[:32]
    dims = "x".join(str(d) for d in shape)
    tail = f":{kind}:{dims}:{len(classes)}c:sha256-{h}"
    return name[: 128 - len(tail)] + tail
