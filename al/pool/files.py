"""``FilePool``: a user's pool with keyed samples, held in memory (tables, arrays) or read on demand (image files,
a torch ``Dataset``) through a ``torch.utils.data.DataLoader``.

Reading on demand: a ``Reader`` is a picklable map-style torch ``Dataset`` whose item ``i`` is ``(x, error)``:
the input of source position ``i`` and ``""``, or a zero input and the reason it could not be read. A failed
file therefore never stops a DataLoader worker; :class:`LoaderInputs` reads the whole pass and then raises
:class:`al.errors.UnreadableSamples` naming every failed sample, which the loop excludes (with the reasons
recorded in the store) before it scores again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..errors import DataError, UnreadableSamples
from ..inputs import LazyInputs
from ..tasks import CLASSIFICATION, REGRESSION, known_answers
from .base import UNLABELLED, Alignment, Pool, TestSplit, spec_fingerprint

#: Rows per DataLoader batch when reading a pool of files.
READ_BATCH = 256
#: Fewer samples than this are read in this process: starting loader workers costs about what reading them does
#: (measured on 28x28 PNGs, 2 cores: 2,000 files 0.31 s with 2 workers against 0.26 s without; break-even near
#: 4,000; 8,000 files 0.94 s against 1.10 s).
WORKERS_FROM = 4096


class Reader(torch.utils.data.Dataset):
    """Base of the on-demand readers: ``self[i] -> (x: (*input_shape) float32, error: str)``; ``describe(i)`` names
    source position ``i`` in messages (a path)."""

    input_shape: tuple[int, ...] = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        """Item ``i``: what :meth:`finish` turns into the model input (for images, uint8 pixels), and ``""`` or
        the reason it could not be read."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        return f"item {i}"

    def finish(self, batch: torch.Tensor) -> torch.Tensor:
        """A collated batch of items -> float32 model inputs (in the main process, once per batch)."""
        return batch


def _collate(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([x for x, _ in items]), [e for _, e in items]


class LoaderInputs(LazyInputs):
    """Inputs of ``ids`` (at source positions ``positions``) read by ``reader`` through a DataLoader, in order.

    workers: DataLoader worker processes (0 = read in this process). pin_memory: page-locked batches, for
    non-blocking copies to a CUDA device. Iterating yields CPU float32 batches of at most ``batch_size`` rows;
    when some samples could not be read, their rows are zeros and the pass ends with UnreadableSamples.
    """

    def __init__(
        self,
        reader: Reader,
        ids: np.ndarray,
        positions: np.ndarray,
        *,
        workers: int = 0,
        batch_size: int = READ_BATCH,
        pin_memory: bool = False,
    ) -> None:
        self.reader, self.ids, self.positions = reader, np.asarray(ids), np.asarray(positions)
        self.workers, self.batch_size, self.pin_memory = workers, batch_size, pin_memory
        self.input_shape = reader.input_shape

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if len(self.ids) == 0:
            return
        workers = self.workers if len(self.ids) > WORKERS_FROM else 0
        loader = DataLoader(
            Subset(self.reader, self.positions.tolist()),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            # Prefetching two batches per worker bounds memory at (2 * workers + 1) batches.
            prefetch_factor=2 if workers else None,
        )
        failed: dict[int, str] = {}
        start = 0
        for x, errors in loader:
            for j, err in enumerate(errors):
                if err:
                    k = start + j
                    failed[int(self.ids[k])] = f"{self.reader.describe(int(self.positions[k]))}: {err}"
            start += len(x)
            out = self.reader.finish(x)
            # Pinned after finishing, so that the float batch itself is copied to the GPU without blocking.
            yield out.pin_memory() if self.pin_memory else out
        if failed:
            raise UnreadableSamples(failed)


class FilePool(Pool):
    """A keyed pool (see :mod:`al.pool.base`). Use the constructors in :mod:`al.pool` (``Pool.from_folder``,
    ``from_table``, ``from_arrays``, ``from_torch``) rather than this class directly.

    source: an in-memory tensor ``(n_source, *input_shape)`` or a Reader. keys: one per source position, unique.
    labels: ``(n_source,)`` with -1 for unknown, or None. The ids start as source positions; :meth:`align` adopts
    the ids a run recorded. task ``"regression"``: labels are numeric targets with NaN for unknown, and
    ``classes`` is empty (``n_classes`` is then 1, the model's output width).
    """

    def __init__(
        self,
        name: str,
        kind: str,
        source: torch.Tensor | Reader,
        keys: Sequence[str],
        classes: Sequence[str],
        *,
        labels: np.ndarray | None = None,
        test: TestSplit | None = None,
        card: dict[str, Any] | None = None,
        default_model: str = "cnn",
        root: Path | None = None,
        preview_mean: Sequence[float] = (0.0,),
        preview_std: Sequence[float] = (1.0,),
        workers: int = 0,
        task: str = CLASSIFICATION,
    ) -> None:
        self.name, self.kind, self.source = name, kind, source
        self.task = task
        self.classes = list(classes)
        self.n_classes = 1 if task == REGRESSION else len(self.classes)
        self.default_model = default_model
        self.root = root
        self.workers = workers
        self.pin_memory = False
        self._test = test
        n = len(keys)
        if len(source) != n:
            raise DataError(f"pool {name!r}: {len(source)} inputs but {n} keys")
        if len(set(keys)) != n:
            dup = _first_duplicate(keys)
            raise DataError(f"pool {name!r}: the id {dup!r} appears more than once; every sample needs its own id")
        self._source_keys = list(keys)
        src_labels = None if labels is None else self._checked_labels(labels, n)
        if src_labels is not None and not known_answers(src_labels).any():
            src_labels = None  # a label column with no label in it: an unlabelled pool
        self._source_labels = src_labels
        self._pos: np.ndarray = np.arange(n, dtype=np.int64)  # id -> source position (-1: gone)
        self._excluded: dict[int, str] = {}
        shape = tuple(source.shape[1:]) if isinstance(source, torch.Tensor) else tuple(source.input_shape)
        self._shape = shape
        self.card = card or {"kind": "tensor", "shape": list(shape)}
        self._preview = (tuple(preview_mean), tuple(preview_std))

    def _checked_labels(self, labels: np.ndarray, n: int) -> np.ndarray:
        """The source's labels: class indices in range (or -1), or a regression pool's numbers (or NaN)."""
        regression = self.task == REGRESSION
        y = np.asarray(labels, dtype=np.float64 if regression else np.int64)
        what = "targets" if regression else "labels"
        if len(y) != n:
            raise DataError(f"pool {self.name!r}: {len(y)} {what} for {n} samples")
        if regression and np.isinf(y).any():
            raise DataError(f"pool {self.name!r}: a target is infinite; give a number (or leave it empty)")
        if not regression and ((y >= self.n_classes).any() or (y < UNLABELLED).any()):
            raise DataError(f"pool {self.name!r}: labels must lie in 0..{self.n_classes - 1} (or be empty)")
        return y

    # --- what the pool is ---------------------------------------------------------------------------------------
    @property
    def n_pool(self) -> int:
        return len(self._pos)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def labels(self) -> np.ndarray | None:
        if self._source_labels is None:
            return None
        if self.task == REGRESSION:
            out = np.full(self.n_pool, np.nan)
            ok = self._pos >= 0
            out[ok] = self._source_labels[self._pos[ok]]
            return out
        out = np.full(self.n_pool, UNLABELLED, dtype=np.int64)
        ok = self._pos >= 0
        out[ok] = self._source_labels[self._pos[ok]]
        return out

    @property
    def keys(self) -> list[str | None]:
        return [self._source_keys[p] if p >= 0 else None for p in self._pos]

    @property
    def available(self) -> np.ndarray:
        ok = self._pos >= 0
        if self._excluded:
            ok[list(self._excluded)] = False
        return ok

    @property
    def excluded(self) -> dict[int, str]:
        return dict(self._excluded)

    @property
    def test(self) -> TestSplit | None:
        return self._test

    def replace_test(self, split: TestSplit | None) -> None:
        """Use ``split`` as the test split from now on (the loop leaves unreadable test files out)."""
        self._test = split

    def fingerprint(self) -> str:
        # A table's standardising statistics follow its rows, so rows added later must not make it other data.
        card = {k: v for k, v in self.card.items() if not (self.kind == "table" and k in ("mean", "std"))}
        return spec_fingerprint(self.kind, self.name, self.input_shape, self.classes, card)

    def input_card(self) -> dict[str, Any]:
        return dict(self.card)

    # --- reading ------------------------------------------------------------------------------------------------
    def _positions(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n_pool):
            raise DataError(f"pool {self.name!r}: sample ids must lie in 0..{self.n_pool - 1}")
        pos = self._pos[ids]
        if (pos < 0).any():
            gone = [int(i) for i in ids[pos < 0][:3]]
            raise DataError(f"pool {self.name!r}: samples {gone} are no longer in the pool (their files are gone)")
        return pos

    def inputs(self, ids: np.ndarray) -> torch.Tensor | LazyInputs:
        pos = self._positions(ids)
        if isinstance(self.source, torch.Tensor):
            return self.source[torch.from_numpy(pos)]
        return LoaderInputs(self.source, np.asarray(ids), pos, workers=self.workers, pin_memory=self.pin_memory)

    def preview(self, sample_id: int) -> np.ndarray:
        x = self.tensor_inputs(np.array([sample_id]))[0].double()
        if x.dim() != 3:  # a table row: nothing to show as an image
            raise DataError(f"pool {self.name!r} holds table rows, not images; label them from their values")
        mean, std = self._preview
        m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
        return (x * s + m).clamp(0, 1).numpy()

    def row_of(self, sample_id: int) -> dict[str, float] | None:
        if self.card.get("kind") != "table":
            return None
        x = self.tensor_inputs(np.array([sample_id]))[0].double().numpy()
        raw = x * np.asarray(self.card["std"]) + np.asarray(self.card["mean"])  # undo the pool's standardising
        return {str(c): float(v) for c, v in zip(self.card["columns"], raw, strict=True)}

    def path_of(self, sample_id: int) -> Path | None:
        key = self.keys[int(sample_id)]
        return None if self.root is None or key is None else self.root / key

    # --- ids ----------------------------------------------------------------------------------------------------
    def align(self, stored: Mapping[int, str]) -> Alignment:
        """See :meth:`Pool.align`. Called once, right after the run is opened, before any id is used."""
        if not stored:
            return Alignment({int(i): k for i, k in enumerate(self._source_keys)}, {})
        by_key = {k: p for p, k in enumerate(self._source_keys)}
        n_ids = max(max(stored) + 1, 0)
        pos = np.full(n_ids, -1, dtype=np.int64)
        missing: dict[int, str] = {}
        for i, k in stored.items():
            p = by_key.pop(k, None)
            if p is None:
                missing[int(i)] = k
            else:
                pos[i] = p
        # New keys get new ids after the largest recorded one, in the pool's own (sorted) order.
        new = sorted(by_key.values())
        added = {n_ids + j: self._source_keys[p] for j, p in enumerate(new)}
        self._pos = np.concatenate([pos, np.asarray(new, dtype=np.int64)])
        return Alignment(added, missing)

    def exclude(self, reasons: Mapping[int, str]) -> None:
        self._excluded.update({int(i): r for i, r in reasons.items()})


def _first_duplicate(keys: Sequence[str]) -> str:
    seen: set[str] = set()
    for k in keys:
        if k in seen:
            return k
        seen.add(k)
    return ""
