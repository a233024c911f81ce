"""``python -m al.predict``: classify image files (or table rows) with a checkpoint or an exported model.

    python -m al.predict --model model.pt photos/*.jpg                # path<TAB>class<TAB>confidence per file
    python -m al.predict --model model.pt photos/*.jpg --output out.csv
    python -m al.predict --model model.pt new-rows.csv                 # a table model: one line per row

Exit codes: 0 every input predicted, 1 some inputs could not be read (each is reported on stderr, and in the
CSV's ``error`` column; the others are predicted), 2 bad usage (no model file, a file that is not an al model,
no inputs, an output that cannot be written).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .checkpoints import LoadedModel, Prediction, load_model
from .cli_parser import OneLineParser
from .errors import ALError, ConfigError, DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m al.predict",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--model", required=True, help="a checkpoint (round-NNN.pt) or a file from python -m al.export")
    p.add_argument("inputs", nargs="*", metavar="FILE", help="image files, or for a table model table files")
    p.add_argument("--output", help="write a CSV (path, class, class_idx, confidence, error) instead of printing")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default 64)")
    p.add_argument("--id-column", help="for a table model: the column naming each row (default: the row number)")
    return p


def check_output(path: str | os.PathLike[str]) -> Path:
    """``path`` can be created or overwritten: its nearest existing folder is writable. ConfigError otherwise;
    nothing is created."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"output {str(p)!r} is a folder; give a file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigError(f"output {str(p)!r} cannot be written (folder {str(parent)!r} is not writable)")
    return p


def _read_table(path: str) -> object:
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"table {path!r} does not exist")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(p)
        return pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",")
    except Exception as e:  # noqa: BLE001 - pandas raises many kinds on a malformed file
        raise DataError(f"{path} cannot be read as a table ({type(e).__name__}: {' '.join(str(e).split())})") from e


def predict(model: LoadedModel, inputs: Sequence[str], batch_size: int, id_column: str | None) -> list[Prediction]:
    """Predictions for image files, or for the rows of table files (``file:row`` when there are several)."""
    if model.card.input_kind == "image":
        return model.predict_files(inputs, batch_size=batch_size)
    if model.card.input_kind != "table":
        raise ConfigError(
            f"this model was trained on a built-in dataset's tensors (input shape {model.card.input_shape}); "
            f"it predicts from Python (al.load_model(path).predict_proba(x)), not from files"
        )
    out: list[Prediction] = []
    for path in inputs:
        df = _read_table(path)
        if id_column is not None and id_column not in df.columns:  # type: ignore[attr-defined]
            raise ConfigError(f"table {path!r} has no column {id_column!r} (--id-column)")
        preds = model.predict_table(df, batch_size=batch_size, id_column=id_column)
        if len(inputs) > 1:
            preds = [Prediction(f"{path}:{p.path}", p.class_idx, p.class_name, p.confidence, p.error) for p in preds]
        out.extend(preds)
    return out


def write_csv(path: Path, preds: Sequence[Prediction]) -> None:
    """The predictions as CSV (path, class, class_idx, confidence, error), written to a temporary file first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "class", "class_idx", "confidence", "error"])
    for p in preds:
        conf = "" if p.confidence is None else f"{p.confidence:.6f}"
        w.writerow([p.path, p.class_name or "", "" if p.class_idx is None else p.class_idx, conf, p.error or ""])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.inputs:
            raise ConfigError("no input files; give image files (or, for a table model, table files) after --model")
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
        out = check_output(args.output) if args.output else None
        model = load_model(args.model)
        if model.card.input_kind == "table":
            bad = [f for f in args.inputs if Path(f).suffix.lower() not in TABLE_SUFFIXES]
            if bad:
                raise ConfigError(f"this is a table model; {bad[0]!r} is not a table ({', '.join(TABLE_SUFFIXES)})")
        preds = predict(model, args.inputs, args.batch_size, args.id_column)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed = [p for p in preds if p.error]
    for p in failed:
        print(f"error: {p.path}: {p.error}", file=sys.stderr)
    if out is not None:
        write_csv(out, preds)
        print(f"{len(preds) - len(failed)} predictions written to {out}", file=sys.stderr)
    else:
        for p in preds:
            if not p.error:
                print(f"{p.path}\t{p.class_name}\t{p.confidence:.4f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
