"""Figures as PNG (matplotlib, headless): learning curves, the acquired batch's uncertainty, and stopping
criteria's values per round."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .protocols import IN_PROGRESS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and background runs have no display
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(
    curves: pd.DataFrame,
    path: str | Path,
    title: str = "",
    table: pd.DataFrame | None = None,
    metric: str = "accuracy",
) -> Path:
    """Test accuracy against labels: per strategy the mean over finished seeds with a band of +-1 std;
    runs in progress as thin dashed lines. ``curves``: rows of one protocol (see :func:`learning_curves`).
    ``metric="rmse"``: a regression protocol's test RMSE instead (lower is better)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    strategies = sorted(curves["strategy"].unique())
    colours = plt.get_cmap("tab10" if len(strategies) <= 10 else "tab20")
    for i, s in enumerate(strategies):
        g = curves[curves["strategy"] == s]
        done = g[~g["in_progress"]]
        c = colours(i % colours.N)
        n_seeds = done["run"].nunique()
        flag = ""
        if table is not None and s in table.index and bool(table.loc[s, "fewer_seeds"]):
            flag = " (fewer seeds)"
        if n_seeds:
            st = done.groupby("n_labelled")[metric].agg(["mean", "std", "count"]).reset_index()
            st["std"] = st["std"].fillna(0.0)
            ax.plot(st["n_labelled"], st["mean"], color=c, lw=1.8, label=f"{s} (n={n_seeds}){flag}")
            ax.fill_between(st["n_labelled"], st["mean"] - st["std"], st["mean"] + st["std"], color=c, alpha=0.15)
        for j, (_, rg) in enumerate(g[g["in_progress"]].groupby("run")):
            ax.plot(
                rg["n_labelled"],
                rg[metric],
                color=c,
                lw=0.9,
                ls="--",
                label=f"{s}: {IN_PROGRESS}" if j == 0 else None,
            )
    ax.set_xlabel("labelled samples")
    ax.set_ylabel("test RMSE (lower is better)" if metric == "rmse" else "test accuracy")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title or "learning curves", 95)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right" if metric == "rmse" else "lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_batch_uncertainty(unc: pd.DataFrame, path: str | Path, title: str = "") -> Path | None:
    """One panel per strategy (scores differ in scale between strategies): the mean acquisition score of the
    acquired batch per round (mean over seeds) and, shaded, the candidate pool's interquartile range."""
    if unc.empty:
        return None
    plt = _pyplot()
    strategies = sorted(unc["strategy"].unique())
    cols = min(3, len(strategies))
    rows = math.ceil(len(strategies) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, s in zip(axes.flat, strategies):  # noqa: B905 - axes may outnumber strategies (blanked below)
        g = (
            unc[unc["strategy"] == s]
            .groupby("labels_before")[["batch_mean", "pool_q25", "pool_median", "pool_q75"]]
            .mean()
            .reset_index()
        )
        ax.plot(g["labels_before"], g["batch_mean"], lw=1.6, label="acquired batch (mean)")
        ax.plot(g["labels_before"], g["pool_median"], lw=1.0, color="grey", label="candidates (median)")
        ax.fill_between(
            g["labels_before"], g["pool_q25"], g["pool_q75"], color="grey", alpha=0.2, label="candidates (IQR)"
        )
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("labels when queried", fontsize=8)
        ax.set_ylabel("acquisition score", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(strategies) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title or "uncertainty of the acquired batch", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_round_values(values: pd.DataFrame, name: str, path: str | Path, title: str = "") -> Path | None:
    """One stored round value per round, a line per run, with its threshold (the round value
    ``"<name>:threshold"``, see :mod:`al.report.stopping`) dashed in the run's colour. ``values``: rows of
    ``Store.round_values()`` (run, round_idx, name, value). None when no run has a value of ``name``."""
    series = values[(values["name"] == name) & values["value"].notna()]
    if series.empty:
        return None
    thresholds = values[(values["name"] == f"{name}:threshold") & values["value"].notna()]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    runs = list(dict.fromkeys(series["run"]))
    colours = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for i, run in enumerate(runs):
        c = colours(i % colours.N)
        g = series[series["run"] == run].sort_values("round_idx")
        ax.plot(g["round_idx"], g["value"], marker="o", ms=3, lw=1.4, color=c, label=run)
        t = thresholds[thresholds["run"] == run].sort_values("round_idx")
        if len(t):
            ax.step(t["round_idx"], t["value"], where="post", ls="--", lw=0.9, color=c)
    ax.set_xlabel("round")
    ax.set_ylabel(name)
    ax.set_title(title or f"stopping criterion {name} (dashed: threshold)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
