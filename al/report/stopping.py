"""Stopping criteria in the report: the values a run stored per round (``Store.record_round_values``).

Convention for round-value names: a criterion's value is stored under its name (``"stabilising-predictions"``)
and its threshold, if it has one, under ``"<name>:threshold"`` (:func:`al.stopping.round_value_names`). Any
other ``"<name>:<suffix>"`` is stored but neither plotted nor tabulated. Each name without a colon gets a figure
``stopping-<name>.png`` (a line per run, thresholds dashed) and a row per run in the report's table of last
values. A store without round values adds nothing: the report is what it was before round values existed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from .plots import plot_round_values

THRESHOLD_SUFFIX = ":threshold"


def criterion_names(values: pd.DataFrame) -> list[str]:
    """The names of ``values`` (rows of ``Store.round_values()``) that are criteria: those without a colon."""
    return sorted({n for n in values["name"] if ":" not in n})


def last_values(values: pd.DataFrame) -> pd.DataFrame:
    """Per run and criterion, its last stored value: run, criterion, round_idx, value, threshold (NaN when
    none was stored for that round or before). A round whose value is NULL (no value that round) counts: the
    table shows what the criterion said last."""
    rows = []
    for name in criterion_names(values):
        for run, g in values[values["name"] == name].groupby("run", sort=False):
            last = g.sort_values("round_idx").iloc[-1]
            t = values[
                (values["run"] == run)
                & (values["name"] == f"{name}{THRESHOLD_SUFFIX}")
                & (values["round_idx"] <= last["round_idx"])
            ].sort_values("round_idx")
            rows.append(
                dict(
                    run=run,
                    criterion=name,
                    round_idx=int(last["round_idx"]),
                    value=float(last["value"]),
                    threshold=float(t["value"].iloc[-1]) if len(t) else float("nan"),
                )
            )
    cols = ["run", "criterion", "round_idx", "value", "threshold"]
    return pd.DataFrame(rows, columns=cols)


def _file_name(name: str) -> str:
    return "stopping-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "value") + ".png"


def stopping_markdown(table: pd.DataFrame, pngs: Iterable[str] = ()) -> str:
    """The report's section: the table of :func:`last_values` and the figures."""
    fmt = lambda v: "n/a" if v != v else f"{v:.4f}"  # noqa: E731 - NaN: no value that round / no threshold
    lines = [
        "## Stopping criteria",
        "",
        "Last stored value of each label-free stopping criterion per run (n/a: no value that round, e.g. nothing "
        "to compare with yet; see `al.stopping`).",
        "",
        "| run | criterion | round | value | threshold |",
        "|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(f"| {r.run} | {r.criterion} | {r.round_idx} | {fmt(r.value)} | {fmt(r.threshold)} |")
    for png in pngs:
        lines += ["", f"![stopping criterion]({png})"]
    return "\n".join(lines) + "\n"


def write_stopping(values: pd.DataFrame, out: str | Path) -> tuple[str | None, list[Path]]:
    """The figures under ``out`` and the Markdown section for ``values`` (rows of ``Store.round_values()``);
    (None, []) when no criterion has a value."""
    names = criterion_names(values)
    if not names:
        return None, []
    out = Path(out)
    pngs = [p for n in names if (p := plot_round_values(values, n, out / _file_name(n))) is not None]
    return stopping_markdown(last_values(values), [p.name for p in pngs]), pngs
