"""Markdown rendering of the summaries: the per-protocol table, the interim and paired comparisons, and a
protocol's whole section."""

from __future__ import annotations

import math

import pandas as pd

from .protocols import IN_PROGRESS, describe_protocol
from .regression import rmse_winners
from .tables import ProtocolSummary, interim_table, paired_comparison, winners


def interim_markdown(t: pd.DataFrame, n_common: int) -> str:
    sd = lambda v: "" if v != v else f" ± {v:.3f}"  # noqa: E731
    best_a, best_c = t["aubc_to_common_mean"].max(), t["acc_at_common_mean"].max()
    lines = [
        f"Interim comparison counting runs in progress: every curve cut at {n_common} labels, the furthest "
        f"point every strategy has reached (AUBC over the cut curve; mean ± std over the runs that reached "
        f"it). Not a substitute for the table above: short curves weigh the early rounds only.",
        "",
        f"| strategy | runs (of which in progress) | AUBC up to {n_common} | acc @ {n_common} |",
        "|---|---|---|---|",
    ]
    for strat, r in t.iterrows():
        a = f"{r['aubc_to_common_mean']:.3f}{sd(r['aubc_to_common_std'])}"
        c = f"{r['acc_at_common_mean']:.3f}{sd(r['acc_at_common_std'])}"
        lines.append(
            f"| {strat} | {int(r['n_runs'])} ({int(r['n_in_progress'])}) | "
            f"{'**' + a + '**' if r['aubc_to_common_mean'] == best_a else a} | "
            f"{'**' + c + '**' if r['acc_at_common_mean'] == best_c else c} |"
        )
    return "\n".join(lines)


def paired_markdown(cmp: pd.DataFrame, reference: str, metric: str = "AUBC") -> str:
    lines = [
        f"{reference} against each strategy, seed by seed ({metric} of {reference} minus the other's; "
        f"'wins'/'loses' when the mean paired difference is over two standard errors from 0 with >= 3 seeds):",
        "",
        f"| other strategy | seeds paired | {metric} difference | seeds {reference} better / worse | "
        f"verdict for {reference} |",
        "|---|---|---|---|---|",
    ]
    for strat, r in cmp.iterrows():
        se = "" if r["diff_se"] != r["diff_se"] else f" ± {r['diff_se']:.3f}"
        diff = "n/a" if r["diff_mean"] != r["diff_mean"] else f"{r['diff_mean']:+.3f}{se}"
        lines.append(
            f"| {strat} | {int(r['n_pairs'])} | {diff} | {int(r['seeds_won'])} / {int(r['seeds_lost'])} | "
            f"{r['verdict']} |"
        )
    return "\n".join(lines)


def _fmt_labels(v: float) -> str:
    return "n/a" if v != v else ("never" if math.isinf(v) else f"{v:.0f}")


def markdown_table(s: ProtocolSummary) -> str:
    """The protocol's table in Markdown; each column's winner in bold, fewer-seed strategies flagged with a
    dagger, in-progress runs counted in their own column."""
    t = s.table
    win = winners(t, s.at_labels, s.targets)
    head = (
        ["strategy", "seeds", "AUBC"]
        + [f"acc @ {a}" for a in s.at_labels]
        + [f"labels to {t_:.0%}" for t_ in s.targets]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def bold(txt: str, col: str, strat: str) -> str:
        return f"**{txt}**" if strat in win.get(col, set()) else txt

    for strat, r in t.iterrows():
        seeds = f"{int(r['n_seeds'])}" + (" †" if r["fewer_seeds"] else "")
        if r["n_in_progress"]:
            seeds += f" (+{int(r['n_in_progress'])} {IN_PROGRESS})"
        cells = [strat, seeds]
        if r["n_seeds"] == 0:
            cells += [IN_PROGRESS] * (len(head) - 2)
        else:
            sd = lambda v: "" if v != v else f" ± {v:.3f}"  # noqa: E731 - one seed has no std
            cells.append(bold(f"{r['aubc_mean']:.3f}{sd(r['aubc_std'])}", "aubc_mean", strat))
            for a in s.at_labels:
                m, d = r[f"acc@{a}_mean"], r[f"acc@{a}_std"]
                cells.append("n/a" if m != m else bold(f"{m:.3f}{sd(d)}", f"acc@{a}_mean", strat))
            for t_ in s.targets:
                med, k = r[f"labels_to_{t_:g}_median"], int(r[f"labels_to_{t_:g}_reached"])
                txt = _fmt_labels(med) + ("" if k == r["n_seeds"] else f" ({k}/{int(r['n_seeds'])} reached)")
                cells.append(bold(txt, f"labels_to_{t_:g}_median", strat))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def protocol_markdown(
    s: ProtocolSummary,
    curves_png: str | None = None,
    unc_png: str | None = None,
    command: str | None = None,
    reference: str | None = "regrad",
    curves: pd.DataFrame | None = None,
) -> str:
    """One protocol's section: schedule, table, definitions, paired comparison against ``reference`` (when it
    has finished runs), fewer-seed flags, runs in progress and the figures."""
    parts = [f"## {s.protocol}", "", describe_protocol(s.config), ""]
    if command:
        parts += ["Produced by:", "", "```", command, "```", ""]
    parts += [
        markdown_table(s),
        "",
        "AUBC: normalised area under the accuracy-vs-labels curve from the initial set to the last round "
        "(trapezoidal), mean ± std over finished seeds. acc @ n: test accuracy at n labels, mean ± std. "
        "labels to x%: median over finished seeds of the first label count with test accuracy >= x% "
        "('never': not reached within the budget). Bold: best in the column. "
        "†: fewer finished seeds than the best-covered strategy. Runs in progress are excluded from "
        "the statistics.",
    ]
    if reference and reference in set(s.runs.loc[~s.runs["in_progress"], "strategy"]) and len(s.table) > 1:
        parts += ["", paired_markdown(paired_comparison(s.runs, reference), reference)]
    flagged = [k for k, v in s.table["fewer_seeds"].items() if v] if "fewer_seeds" in s.table else []
    if flagged:
        parts += ["", f"Fewer seeds: {', '.join(flagged)}."]
    prog = s.runs[s.runs["in_progress"]]
    if len(prog):
        parts += ["", f"Runs in progress ({len(prog)}):", ""]
        parts += [f"- {r.run}: {r.n_rounds} rounds done, {r.final_labels} labels so far" for r in prog.itertuples()]
        if curves is not None:
            it, n_common = interim_table(curves)
            # Only worth showing when it counts at least one run the main table leaves out.
            if n_common is not None and len(it) > 1 and it["n_in_progress"].sum() > 0:
                parts += ["", interim_markdown(it, n_common)]
    if curves_png:
        parts += ["", f"![learning curves]({curves_png})"]
    if unc_png:
        parts += ["", f"![acquired-batch uncertainty]({unc_png})"]
    return "\n".join(parts) + "\n"


# --- regression protocols (lower is better) ---------------------------------------------------------------------
def rmse_markdown_table(s: ProtocolSummary) -> str:
    """A regression protocol's table (:func:`al.report.regression.summarise_rmse`): RMSE area, RMSE at the label
    counts and the final NLL, each mean ± std; the lowest of each column in bold, fewer-seed strategies flagged."""
    t = s.table
    win = rmse_winners(t, s.at_labels)
    head = ["strategy", "seeds", "RMSE area"] + [f"RMSE @ {a}" for a in s.at_labels] + ["final NLL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sd = lambda v: "" if v != v else f" ± {v:.3g}"  # noqa: E731 - one seed has no std

    def cell(m: float, d: float, col: str, strat: str) -> str:
        if m != m:
            return "n/a"
        txt = f"{m:.4g}{sd(d)}"
        return f"**{txt}**" if strat in win.get(col, set()) else txt

    for strat, r in t.iterrows():
        seeds = f"{int(r['n_seeds'])}" + (" †" if r["fewer_seeds"] else "")
        if r["n_in_progress"]:
            seeds += f" (+{int(r['n_in_progress'])} {IN_PROGRESS})"
        cells = [str(strat), seeds]
        if r["n_seeds"] == 0:
            cells += [IN_PROGRESS] * (len(head) - 2)
        else:
            cells.append(cell(r["area_mean"], r["area_std"], "area_mean", str(strat)))
            for a in s.at_labels:
                cells.append(cell(r[f"rmse@{a}_mean"], r[f"rmse@{a}_std"], f"rmse@{a}_mean", str(strat)))
            cells.append(cell(r["nll_mean"], r["nll_std"], "nll_mean", str(strat)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def regression_protocol_markdown(
    s: ProtocolSummary,
    curves_png: str | None = None,
    unc_png: str | None = None,
    command: str | None = None,
    reference: str | None = "regrad",
) -> str:
    """A regression protocol's section: schedule, RMSE table, definitions, the paired comparison of the RMSE area
    against ``reference`` (when it has finished runs), runs in progress and the figures."""
    parts = [f"## {s.protocol}", "", describe_protocol(s.config), ""]
    if command:
        parts += ["Produced by:", "", "```", command, "```", ""]
    parts += [
        rmse_markdown_table(s),
        "",
        "RMSE area: normalised area under the test-RMSE-vs-labels curve from the initial set to the last round "
        "(trapezoidal; the mean RMSE over the budget, in the target's units), mean ± std over finished seeds; "
        "lower is better. RMSE @ n: test RMSE at n labels. final NLL: Gaussian negative log-likelihood of the "
        "test targets at the last round (nats per sample; variance: the training residuals' plus the MC-dropout "
        "variance of the mean). Bold: best (lowest) in the column. †: fewer finished seeds than the best-covered "
        "strategy. Runs in progress are excluded from the statistics.",
    ]
    if reference and reference in set(s.runs.loc[~s.runs["in_progress"], "strategy"]) and len(s.table) > 1:
        cmp = paired_comparison(s.runs, reference, "rmse_area", higher_is_better=False)
        parts += ["", paired_markdown(cmp, reference, "RMSE area").replace("better / worse", "lower / higher")]
    flagged = [k for k, v in s.table["fewer_seeds"].items() if v] if "fewer_seeds" in s.table else []
    if flagged:
        parts += ["", f"Fewer seeds: {', '.join(flagged)}."]
    prog = s.runs[s.runs["in_progress"]]
    if len(prog):
        parts += ["", f"Runs in progress ({len(prog)}):", ""]
        parts += [f"- {r.run}: {r.n_rounds} rounds done, {r.final_labels} labels so far" for r in prog.itertuples()]
    if curves_png:
        parts += ["", f"![RMSE curves]({curves_png})"]
    if unc_png:
        parts += ["", f"![acquired-batch uncertainty]({unc_png})"]
    return "\n".join(parts) + "\n"
