"""Pools from tables (CSV, Parquet, ``.npy`` features), from arrays and from a user's torch ``Dataset``.

Tables and arrays are held in memory as float32 tensors: a table's features are what pandas already loaded.
Feature columns are standardised with the pool's own mean and std (kept in the model card, so that ``al.predict``
applies the same to new rows). A label column's empty cells are unlabelled samples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..tasks import CLASSIFICATION, REGRESSION, TASKS
from .base import UNLABELLED, TestSplit
from .files import FilePool, LoaderInputs, Reader
from .folder import read_classes

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".npy")


def read_table(path: str | os.PathLike) -> Any:
    """A pandas DataFrame of a CSV/TSV/Parquet file, or of a 2-D ``.npy`` array (columns ``f0, f1, ...``)."""
    import pandas as pd

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"--pool {path}: no such file; give a .csv, .parquet or .npy table, or a folder of images")
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", keep_default_na=True)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
        if suffix == ".npy":
            a = np.load(p, allow_pickle=False)
            if a.ndim != 2:
                raise DataError(f"{path}: a .npy pool must be 2-D (samples x features), got shape {a.shape}")
            return pd.DataFrame(a, columns=[f"f{j}" for j in range(a.shape[1])])
    except DataError:
        raise
    except ImportError as e:
        raise DataError(f"reading {path} needs {e.name}: pip install pyarrow") from e
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow raise many kinds on a malformed file
        raise DataError(f"{path} cannot be read as a table ({type(e).__name__}: {' '.join(str(e).split())})") from e
    raise DataError(f"--pool {path}: unknown table type {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")


def _labels_from(values: Any, classes: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Class indices (-1 for empty cells) of a label column holding class names or class numbers."""
    import pandas as pd

    col = pd.Series(values)
    empty = col.isna() | (col.astype(str).str.strip() == "")
    text = col.where(~empty, "").astype(str).str.strip()
    # 3.0 read from a CSV column with empty cells is the class "3"
    text = text.str.replace(r"^(-?\d+)\.0$", r"\1", regex=True)
    if classes is None:
        present = sorted(
            set(text[~empty]), key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s)
        )
        if len(present) < 2:
            raise DataError(f"{where} has fewer than two classes; pass --classes to name them all")
        classes = present
    index = {c: k for k, c in enumerate(classes)}
    numeric = all(c.isdigit() for c in text[~empty]) and not all(c in index for c in text[~empty])
    y = np.full(len(col), UNLABELLED, dtype=np.int64)
    for row, (v, e) in enumerate(zip(text, empty, strict=True)):
        if e:
            continue
        if numeric:
            if int(v) < len(classes):
                y[row] = int(v)  # class numbers (not every cell is a class name): every cell is read as a number
            else:
                raise DataError(
                    f"{where}, row {row + 1}: class number {v} is not below the {len(classes)} classes {classes}; "
                    f"fix the cell or add the class to --classes"
                )
        elif v in index:
            y[row] = index[v]
        else:
            raise DataError(
                f"{where}, row {row + 1}: label {v!r} is not one of the classes {classes}; fix the cell or add the "
                f"class to --classes"
            )
    return y, classes


def _targets_from(values: Any, where: str) -> np.ndarray:
    """A target column as float64 (NaN for empty cells); a DataError naming the first cell that is no number."""
    import pandas as pd

    col = pd.Series(values)
    empty = col.isna() | (col.astype(str).str.strip() == "")
    num = pd.to_numeric(col.where(~empty), errors="coerce")
    bad = ~empty & (num.isna() | ~np.isfinite(num.fillna(0).to_numpy(dtype=np.float64)))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{where}, row {row + 1}: {col.iloc[row]!r} is not a number, and a regression target must be one; fix "
            f"the cell, leave it empty (no target yet), or name a numeric column with --label-column"
        )
    return num.to_numpy(dtype=np.float64)


def from_table(
    table: str | os.PathLike | Any,
    classes: str | Sequence[str] | None = None,
    *,
    label_column: str | None = None,
    id_column: str | None = None,
    test: str | os.PathLike | Any | None = None,
    name: str | None = None,
    task: str = CLASSIFICATION,
) -> FilePool:
    """A pool of a table's rows: a CSV/Parquet/.npy path or a pandas DataFrame.

    label_column: optional column of class names or numbers (empty = unlabelled); id_column: optional column of
    unique sample ids (default: the row number), recorded as each sample's key. Every other column is a feature
    and must be numeric. test: a table with the same columns, every row labelled.

    task ``"regression"`` (:mod:`al.tasks`): ``label_column`` is required and names the numeric target (an empty
    cell: a row without a target yet); ``classes`` must not be given. The targets stay in their own units (the
    learner standardises them for training).
    """
    import pandas as pd

    if task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    df = read_table(table) if not isinstance(table, pd.DataFrame) else table
    where = str(table) if not isinstance(table, pd.DataFrame) else "the table"
    if task == REGRESSION:
        if classes is not None:
            raise DataError("--classes names the classes of a classification task; drop it with --task regression")
        if label_column is None:
            raise DataError(f"--task regression needs --label-column: the column of {where} holding the numeric target")
    for col, what in ((label_column, "--label-column"), (id_column, "--id-column")):
        if col is not None and col not in df.columns:
            raise DataError(f"{what} {col!r} is not a column of {where} (columns: {', '.join(map(str, df.columns))})")
    features = [c for c in df.columns if c not in (label_column, id_column)]
    if not features:
        raise DataError(f"{where} has no feature columns besides the id and label columns")
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])]
    if bad:
        raise DataError(
            f"{where}: feature column {bad[0]!r} is not numeric (e.g. {df[bad[0]].iloc[0]!r}); encode it as numbers, "
            f"drop it, or name it with --id-column/--label-column"
        )
    x = df[features].to_numpy(dtype=np.float32)
    if not np.isfinite(x).all():
        r, c = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{where}, row {r + 1}, column {features[c]!r}: empty or not a finite number; fill it in")
    wanted = read_classes(classes)
    class_names: list[str]
    if task == REGRESSION:
        y, class_names = _targets_from(df[label_column], f"{where}, column {label_column!r}"), []
    elif label_column is not None:
        y, class_names = _labels_from(df[label_column].to_numpy(), wanted, f"{where}, column {label_column!r}")
    elif wanted is None:
        raise DataError(f"{where} has no label column, so the classes are unknown; pass --classes a,b,...")
    else:
        y, class_names = None, wanted
    if id_column is not None:
        keys = [str(v) for v in df[id_column].tolist()]
        if df[id_column].isna().any():
            raise DataError(
                f"{where}: column {id_column!r} has empty ids (row {int(df[id_column].isna().argmax()) + 1})"
            )
    else:
        keys = [str(i) for i in range(len(df))]
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0  # a constant feature stays 0 after centring
    split = None
    if test is not None:
        tdf = read_table(test) if not isinstance(test, pd.DataFrame) else test
        missing = [c for c in features + [label_column] if c is not None and c not in tdf.columns]
        if missing or label_column is None:
            raise DataError(
                f"the test table must have the pool's feature columns and its label column; missing "
                f"{missing or ['--label-column']}"
            )
        if task == REGRESSION:
            ty = _targets_from(tdf[label_column], f"test table, column {label_column!r}")
            unknown = np.isnan(ty)
        else:
            ty, _ = _labels_from(tdf[label_column].to_numpy(), class_names, f"test table, column {label_column!r}")
            unknown = ty < 0
        if unknown.any():
            raise DataError(f"the test table has {int(unknown.sum())} rows without a label; label every test row")
        tx = (tdf[features].to_numpy(dtype=np.float32) - mean) / std
        split = TestSplit(torch.from_numpy(tx), ty)
    card = {"kind": "table", "columns": [str(c) for c in features], "mean": mean.tolist(), "std": std.tolist()}
    if task == REGRESSION:  # part of the fingerprint: the same table as a classification pool is other data
        card["target"] = str(label_column)
    return FilePool(
        name or (Path(str(table)).stem if not isinstance(table, pd.DataFrame) else "table"),
        "table",
        torch.from_numpy((x - mean) / std),
        keys,
        class_names,
        labels=y,
        test=split,
        card=card,
        default_model="mlp-regressor" if task == REGRESSION else "mlp",
        task=task,
    )


def from_arrays(
    x: Any,
    y: Any = None,
    classes: Sequence[str] | None = None,
    *,
    ids: Sequence[Any] | None = None,
    test: tuple[Any, Any] | None = None,
    name: str = "arrays",
) -> FilePool:
    """A pool of in-memory arrays: ``x: (n, ...)`` model inputs used as they are (normalise them yourself),
    ``y: (n,)`` class indices with -1 for unlabelled (or None), ``ids``: unique keys (default the row number),
    ``test``: ``(x_test, y_test)``."""
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if xt.ndim < 2:
        raise DataError(f"x must be (n_samples, ...) with at least 2 dimensions, got shape {tuple(xt.shape)}")
    yv = None if y is None else np.asarray(y, dtype=np.int64)
    if classes is None:
        if yv is None:
            raise DataError("from_arrays needs classes= when y is not given")
        classes = [str(k) for k in range(int(yv.max()) + 1)]
    keys = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(xt))]
    split = None
    if test is not None:
        split = TestSplit(
            torch.as_tensor(np.asarray(test[0]), dtype=torch.float32), np.asarray(test[1], dtype=np.int64)
        )
    return FilePool(
        name, "arrays", xt, keys, list(classes), labels=yv, test=split, default_model="mlp" if xt.ndim == 2 else "cnn"
    )


class _TorchReader(Reader):
    """A user's map-style torch Dataset as a Reader: item ``i`` is ``dataset[i]`` (or its first element)."""

    def __init__(self, dataset: Any, input_shape: tuple[int, ...]) -> None:
        self.dataset, self.input_shape = dataset, input_shape

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            item = self.dataset[i]
            x = item[0] if isinstance(item, (tuple, list)) else item
            return torch.as_tensor(x, dtype=torch.float32).reshape(self.input_shape), ""
        except Exception as e:  # noqa: BLE001 - the user's dataset may raise anything for one item
            return torch.zeros(self.input_shape), f"{type(e).__name__}: {' '.join(str(e).split())}"


def from_torch(
    dataset: Any,
    classes: Sequence[str],
    *,
    labels: Any = None,
    test: Any = None,
    test_labels: Any = None,
    workers: int = 0,
    name: str = "torch-dataset",
) -> FilePool:
    """A pool of a map-style torch ``Dataset`` whose items are inputs (or ``(input, ...)`` tuples), read on demand
    through a DataLoader. labels: ``(n,)`` with -1 for unlabelled, or None; test/test_labels: a second dataset."""
    try:
        first = dataset[0]
    except Exception as e:  # noqa: BLE001
        raise DataError(f"the dataset's first item cannot be read ({type(e).__name__}: {e}); check the dataset") from e
    x0 = first[0] if isinstance(first, (tuple, list)) else first
    shape = tuple(torch.as_tensor(x0).shape)
    split = None
    if test is not None:
        if test_labels is None:
            raise DataError("from_torch: test= needs test_labels=")
        idx = np.arange(len(test))
        split = TestSplit(LoaderInputs(_TorchReader(test, shape), idx, idx, workers=workers), np.asarray(test_labels))
    return FilePool(
        name,
        "torch-dataset",
        _TorchReader(dataset, shape),
        [str(i) for i in range(len(dataset))],
        list(classes),
        labels=None if labels is None else np.asarray(labels),
        test=split,
        default_model="cnn" if len(shape) == 3 else "mlp",
        workers=workers,
    )
