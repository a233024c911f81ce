"""``python -m al.export``: a run's labelled set as CSV, and its model as one file for ``al.predict``.

    python -m al.export --store sqlite:///al-runs.db --run my-run --labels labels.csv
    python -m al.export --store sqlite:///al-runs.db --run my-run --model model.pt [--round 3]

``--labels`` writes one row per label: ``sample_id, key, label, class_name, round_idx, oracle``, sorted by round
then id (key: the file path relative to the pool folder, or the table's id; empty for built-in datasets); a
regression run's rows are ``sample_id, key, target, round_idx, oracle``. ``--model`` copies a round's checkpoint
(default the last round with one) from ``<--checkpoints>/<run name>/`` (default ``al-checkpoints/<run name>/``)
into one file, its model card embedded; ``al.load_model`` and ``python -m al.predict --model`` read it.

Exit codes: 0 written; 2 bad usage (no such run or round, no checkpoint, an output that cannot be written,
neither --labels nor --model), and then nothing is written; 1 any other failure.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoints import checkpoint_path, checkpoint_rounds, export_model, read_model_file, run_checkpoint_folder
from .cli_parser import OneLineParser
from .errors import ALError, ConfigError, DataError, StoreError
from .predict import check_output
from .store import Store, display_url
from .tasks import REGRESSION

LABEL_COLUMNS = ["sample_id", "key", "label", "class_name", "round_idx", "oracle"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m al.export",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--store", required=True, help="SQLAlchemy URL of the store, e.g. sqlite:///al-runs.db")
    p.add_argument("--run", required=True, help="the run's name (as al.bench printed it)")
    p.add_argument("--labels", metavar="CSV", help="write the labelled set to this CSV file")
    p.add_argument("--model", metavar="PT", help="write the chosen round's model to this file")
    p.add_argument("--round", type=int, help="the round whose model --model writes (default the last with one)")
    p.add_argument(
        "--checkpoints",
        metavar="DIR",
        help="the folder holding each run's checkpoint folder (default al-checkpoints, as al.bench writes)",
    )
    return p


def run_classes(config: dict[str, Any]) -> list[str]:
    """The class names a run's stored config holds (``classes``, or its pool's), [] when it has none (built-in
    datasets: labels are then named by number)."""
    for holder in (config, config.get("pool") if isinstance(config.get("pool"), dict) else {}):
        names = holder.get("classes") if isinstance(holder, dict) else None
        if isinstance(names, list) and names:
            return [str(c) for c in names]
    return []


#: The columns of a regression run's labelled set: its numeric targets instead of classes.
TARGET_COLUMNS = ["sample_id", "key", "target", "round_idx", "oracle"]


def labels_csv(store: Store, run: str) -> str:
    """The labelled set of ``run`` as CSV text (columns LABEL_COLUMNS; a regression run's: TARGET_COLUMNS), sorted
    by round then id."""
    rec = store.run(run)
    keys = store.sample_keys(rec.run_id)
    if rec.config.get("task") == REGRESSION:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(TARGET_COLUMNS)
        df = store.targets(run).sort_values(["round_idx", "sample_id"], kind="stable")
        for sid, y, r, oracle in df[["sample_id", "target", "round_idx", "oracle"]].itertuples(index=False):
            w.writerow([int(sid), keys.get(int(sid), ""), repr(float(y)), int(r), oracle])
        return buf.getvalue()
    classes = run_classes(rec.config)
    df = store.labels(run).sort_values(["round_idx", "sample_id"], kind="stable")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LABEL_COLUMNS)
    for sid, y, r, oracle in df[["sample_id", "label", "round_idx", "oracle"]].itertuples(index=False):
        name = classes[int(y)] if 0 <= int(y) < len(classes) else str(int(y))
        w.writerow([int(sid), keys.get(int(sid), ""), int(y), name, int(r), oracle])
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _open_run(url: str, name: str) -> Store:
    store = Store(url, must_exist=True)
    runs = list(store.runs()["run"])
    if name not in runs:
        close = difflib.get_close_matches(name, runs, n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        have = f" (it has {len(runs)} runs)" if runs else " (it holds no runs)"
        raise ConfigError(f"no run named {name!r} in {display_url(url)}{hint}{have}")
    return store


def choose_checkpoint(store: Store, run: str, parent: str | None, round_idx: int | None) -> Path:
    """The checkpoint file ``--model`` exports; ConfigError saying which rounds exist and which have one."""
    folder = run_checkpoint_folder(run, parent)
    have = checkpoint_rounds(folder)
    if round_idx is not None:
        rounds = [r.round_idx for r in store.state(run).rounds]
        if round_idx not in rounds:
            raise ConfigError(
                f"run {run!r} has no round {round_idx}; its rounds are {_ranges(rounds) or 'none yet'}"
                + (f" and those with a checkpoint {_ranges(have)}" if have else "")
            )
        if round_idx not in have:
            raise ConfigError(
                f"round {round_idx} of run {run!r} has no checkpoint in {str(folder)!r}; "
                + (f"rounds with one: {_ranges(have)}" if have else "no round has one")
            )
        return checkpoint_path(folder, round_idx)
    if not have:
        raise ConfigError(
            f"run {run!r} has no checkpoint in {str(folder)!r}; pass --checkpoints DIR with the folder that holds "
            f"{run}/round-NNN.pt (the --checkpoints the run was given)"
        )
    return checkpoint_path(folder, have[-1])


def _ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out: list[str] = []
    vals = sorted(set(values))
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ", ".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.labels and not args.model:
            raise ConfigError("nothing to export: give --labels FILE.csv, --model FILE.pt, or both")
        if args.round is not None and not args.model:
            raise ConfigError("--round chooses the model --model writes; add --model FILE.pt")
        outputs = [Path(p) for p in (args.labels, args.model) if p]
        if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
            raise ConfigError("--labels and --model name the same file; give two different files")
        for p in outputs:
            check_output(p)
        # Everything is read and checked before the first file is written, so an error leaves nothing behind.
        store = _open_run(args.store, args.run)
        text = labels_csv(store, args.run) if args.labels else None
        src = choose_checkpoint(store, args.run, args.checkpoints, args.round) if args.model else None
        if src is not None:
            read_model_file(src)
    except (ConfigError, StoreError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if text is not None:
            _write_text(Path(args.labels), text)
            print(f"{text.count(chr(10)) - 1} labels written to {args.labels}")
        if src is not None:
            Path(args.model).parent.mkdir(parents=True, exist_ok=True)
            card = export_model(src, args.model)
            print(f"model of round {card.round_idx} ({card.model}, {card.n_labelled} labels) written to {args.model}")
    except OSError as e:
        print(f"error: cannot write the export ({type(e).__name__}: {e.strerror or e})", file=sys.stderr)
        return 2
    except ALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
