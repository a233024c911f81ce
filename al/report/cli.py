"""Learning-curve reports from a store: tables as pandas DataFrames, figures as PNG, Markdown per protocol.

The files per protocol (:func:`write_report`) and the command line that writes them, ``python -m al.report``
(:func:`main`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, StoreError
from ..store import Store, display_url, hide_passwords
from ..tasks import REGRESSION
from .markdown import protocol_markdown, regression_protocol_markdown
from .metrics import DEFAULT_TARGETS
from .plots import plot_batch_uncertainty, plot_learning_curves
from .protocols import describe_protocol, learning_curves, runs_table
from .stopping import write_stopping
from .tables import batch_uncertainty, summaries


def write_report(
    store: Store,
    out: str | Path,
    dataset: str | None = None,
    at_labels: Sequence[int] | None = None,
    targets: Sequence[float] = DEFAULT_TARGETS,
    command: str | None = None,
    reference: str | None = "regrad",
) -> list[Path]:
    """Write, per protocol, ``<protocol>.md``, ``<protocol>-curves.png`` and ``<protocol>-uncertainty.png``
    under ``out``, and ``report.md`` linking them all; when runs stored stopping criteria's values,
    ``stopping-<criterion>.png`` and a table of their last values in ``report.md`` (:mod:`al.report.stopping`).
    Returns the paths written. A password in ``command`` (a store URL's) is masked before it is written."""
    command = hide_passwords(command) if command else command
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = learning_curves(store, dataset)
    written: list[Path] = []
    sections = []
    for s in summaries(store, dataset, at_labels, targets):
        cur = curves[curves["protocol"] == s.protocol]
        regression = s.task == REGRESSION
        png = plot_learning_curves(
            cur,
            out / f"{s.protocol}-curves.png",
            f"{s.protocol}: " + describe_protocol(s.config),
            s.table,
            metric="rmse" if regression else "accuracy",
        )
        written.append(png)
        upng = plot_batch_uncertainty(
            batch_uncertainty(store, cur),
            out / f"{s.protocol}-uncertainty.png",
            f"{s.protocol}: acquisition scores of the acquired batch vs the candidates",
        )
        if upng:
            written.append(upng)
        p = out / f"{s.protocol}.md"
        uname = upng.name if upng else None
        if regression:
            whole = regression_protocol_markdown(s, png.name, uname, command, reference)
            section = regression_protocol_markdown(s, png.name, uname, reference=reference)
        else:
            whole = protocol_markdown(s, png.name, uname, command, reference, cur)
            section = protocol_markdown(s, png.name, uname, reference=reference, curves=cur)
        p.write_text(f"# Active-learning report: {s.protocol}\n\n" + whole)
        written.append(p)
        sections.append(section)
    values = store.round_values()
    values = values[values["run"].isin(runs_table(store, dataset)["run"])]
    stopping, pngs = write_stopping(values, out)
    written += pngs
    index = out / "report.md"
    head = "# Active-learning report\n\n" + (f"Produced by `{command}`\n\n" if command else "")
    body = "\n".join(sections) if sections else "The store holds no completed round yet.\n"
    index.write_text(head + body + (f"\n{stopping}" if stopping else ""))
    written.append(index)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m al.report", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--store", required=True, help="SQLAlchemy URL of the store, e.g. sqlite:///al-runs.db")
    p.add_argument("--dataset", help="only this dataset's runs")
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.add_argument(
        "--at",
        type=int,
        nargs="+",
        help="label counts for the accuracy columns (default: 3 evenly spread up to the budget)",
    )
    p.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=list(DEFAULT_TARGETS),
        help="accuracies for the labels-to-reach columns (default 0.8 0.9 0.95)",
    )
    p.add_argument(
        "--reference",
        default="regrad",
        help="strategy compared seed by seed against every other one (default regrad; '' for none)",
    )
    args = p.parse_args(argv)
    if any(not 0 < t <= 1 for t in args.targets):
        print("error: --targets are accuracies in (0, 1], e.g. 0.9 0.95", file=sys.stderr)
        return 2
    try:
        store = Store(args.store, must_exist=True)
        runs = store.runs()
        if runs.empty:
            print(
                f"error: store {display_url(args.store)} holds no runs; run `python -m al.bench ... --store "
                f"{display_url(args.store)}` first",
                file=sys.stderr,
            )
            return 2
        if args.dataset and args.dataset not in set(runs["dataset"]):
            print(
                f"error: store {display_url(args.store)} holds no runs on dataset {args.dataset!r}; it has "
                f"{', '.join(sorted(set(runs['dataset'])))}",
                file=sys.stderr,
            )
            return 2
        cmd = "python -m al.report " + " ".join(sys.argv[1:] if argv is None else argv)
        paths = write_report(
            store, args.out, args.dataset, args.at, args.targets, command=cmd, reference=args.reference or None
        )
    except (StoreError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for x in paths:
        print(x)
    return 0
