"""The declared rule and the Markdown report of ``benchmarks/regrad_suite.py``: results JSON in, Markdown out.

    python benchmarks/regrad_suite_report.py benchmarks/results/regrad_suite.json   # redraws regrad_suite.md

Kept apart from the run (training, gradient norms, AUROCs) so that the rule and the tables can be read, tested and
redrawn without torch or data: every function here takes the plain JSON ``run`` writes. The rule is the one declared
in ``regrad_suite.py``'s docstring and in the README (issue 17).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

# Rows and columns the report draws; regrad_suite.py computes exactly these.
WEIGHTINGS = ("root", "expected", "predicted", "uniform")
BASELINES = ("exgrad", "gradnorm", "msp", "entropy", "mi")
ROOT_VARIANT_NAME = "root/a0/linear/all/clean"  # square-root class weighting, uniform layers: a fixed column


# --- formatting -------------------------------------------------------------------------------------------
def t_interval(d: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the paired differences d (one per model)."""
    from scipy.stats import t as student

    d = d[~np.isnan(d)]
    if len(d) < 2:
        m = float(d.mean()) if len(d) else float("nan")
        return m, float("nan"), float("nan")
    m, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    h = float(student.ppf(0.975, len(d) - 1)) * se
    return m, m - h, m + h


# --- the rule ----------------------------------------------------------------------------------
def apply_rule(res: dict) -> dict:
    """The declared rule (module docstring) over the choosing suite: suite ranks per seed, eligible set, choice."""
    from scipy.stats import rankdata

    tasks = [t for t in res["tasks"] if t["group"] == "choose"]
    suite = []
    for per in res["per_seed"]:
        halves = []
        for kind in ("ood", "misclf"):
            ranks = [rankdata(-np.asarray(per[t["name"]]["variants"])) for t in tasks if t["kind"] == kind]
            halves.append(np.mean(ranks, 0))
        suite.append(np.mean(halves, 0))
    suite_arr = np.array(suite)  # (K, V)
    m = suite_arr.mean(0)
    se = suite_arr.std(0, ddof=1) / math.sqrt(len(suite_arr)) if len(suite_arr) > 1 else np.zeros_like(m)
    best = int(np.argmin(m))
    eligible = np.flatnonzero(m <= m[best] + se[best])
    costs = np.array([v["cost"] for v in res["variants"]])
    chosen = int(min(eligible, key=lambda i: (costs[i], m[i])))
    return {"mean_rank": m, "se": se, "best": best, "eligible": eligible, "chosen": chosen, "costs": costs}


def score_matrix(res: dict, task: str, names: dict[str, int | str]) -> dict[str, np.ndarray]:
    """{score label: (K,) AUROC over models}: variants by index, baselines by name."""
    out = {}
    for label, ref in names.items():
        if isinstance(ref, int):
            out[label] = np.array([p[task]["variants"][ref] for p in res["per_seed"]])
        else:
            out[label] = np.array([p[task]["baselines"][ref] for p in res["per_seed"]])
    return out


def fmt_ms(a: np.ndarray) -> str:
    a = a[~np.isnan(a)]
    if not len(a):
        return "n/a"
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" if len(a) > 1 else f"{a.mean():.3f}"


def fmt_diff(d: np.ndarray) -> str:
    m, lo, hi = t_interval(d)
    agree = int((np.sign(d) == np.sign(m)).sum()) if m == m and m != 0 else 0
    sig = "**" if lo == lo and (lo > 0 or hi < 0) else ""
    if lo != lo:
        return f"{m:+.3f}"
    return f"{sig}{m:+.3f} [{lo:+.3f}, {hi:+.3f}] {agree}/{len(d)}{sig}"


def setup_sentence(res: dict, n_variants: int) -> str:
    """What was trained and scored, in one paragraph."""
    a, seeds = res["args"], res["seeds"]
    if a.get("early_stopping"):
        schedule = (
            f"trained until the validation loss stopped improving (at most {a['epochs']} epochs below 5000 labels, "
            f"{a['large_epochs']} from 5000)"
        )
    else:
        schedule = (
            f"{a['epochs']} epochs (at least {a['min_steps']} steps) below 5000 labels, {a['large_epochs']} from 5000"
        )
    pad = f", inputs padded by {a['pad']} pixels on each side" if a.get("pad") else ""
    if a.get("device", "cpu") != "cpu":
        pad += f", on device {a['device']}"
    return (
        f"K = {len(seeds)} independently trained `{a.get('model', 'cnn')}` models per setting (seeds "
        f"{seeds[0]}..{seeds[-1]}): MNIST on {', '.join(map(str, a['sizes']))} labels and Fashion-MNIST on "
        f"{max(a['sizes'])} labels, {schedule}{pad}. Test subsets are the same for every model: {a['n_ood']} inputs "
        f"per set, the MNIST-test ones also for misclassification, the first {a['n_rot']} of them also rotated by "
        f"{', '.join(f'{r:g}' for r in a['rotations'])} degrees. MC dropout: {a['mc_samples']} passes. "
        f"{n_variants} REGrad variants."
    )


def write_markdown(res: dict, path: Path) -> None:
    rule = apply_rule(res)
    V = res["variants"]
    chosen, best = rule["chosen"], rule["best"]
    idx = {v["name"]: i for i, v in enumerate(V)}
    default_i = idx[res["library_default"]]
    # the REGrad columns, one per distinct variant (labels joined where two name the same one)
    regrad_cols: dict[int, list[str]] = {}
    for label, i in (
        ("regrad (chosen)", chosen),
        ("regrad (default when run)", default_i),
        ("regrad-root", idx[ROOT_VARIANT_NAME]),
    ):
        regrad_cols.setdefault(i, []).append(label)
    names: dict[str, int | str] = {" = ".join(labels): i for i, labels in regrad_cols.items()}
    names.update({b: b for b in BASELINES})
    K = len(res["seeds"])
    m, se, costs = rule["mean_rank"], rule["se"], rule["costs"]
    lines = [
        "# REGrad over many models: the uncertainty figures and the defaults chosen by the declared rule",
        "",
        "Produced by (from the repository root, `AL_DATA_DIR` pointing at the data; `--rewrite` redraws this file "
        "from the .json beside it):",
        "",
        "```",
        res["command"],
        "```",
        "",
        setup_sentence(res, len(V)) + " Figures: mean ± std over the K "
        "models; differences: mean, 95% t-interval over the models and how many models agree on the sign; bold "
        "where the interval excludes zero.",
        "",
        f"Cost: {res['total_seconds']:.0f} s in all on this machine (one torch thread; models and gradient norms "
        "are cached, so 0 s below means loaded). Training: "
        f"{sum(res['trained_seconds'].values()):.0f} s; scoring: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in res["scoring_seconds"].items())
        + ".",
        "",
        "## The rule and its choice",
        "",
        "Declared before the run (the script's docstring, the README): rank the REGrad variants on every choosing "
        "task per model (1 = best AUROC); a model's suite rank = mean of (mean rank over the two OOD pairs) and (mean "
        "rank over the misclassification cells); over the models, mean suite rank m and standard error se; eligible: "
        "m <= m(best) + se(best); choice: the cheapest eligible variant (backward sweeps per input), ties by lower m. "
        "notMNIST and AL AUBC are held out: not looked at by the rule.",
        "",
        f"Best mean rank: `{V[best]['name']}` (m = {m[best]:.1f} ± {se[best]:.1f} of {len(V)}, cost {costs[best]}). "
        f"Eligible: {len(rule['eligible'])} variants. **Chosen: `{V[chosen]['name']}`** (m = {m[chosen]:.1f} ± "
        f"{se[chosen]:.1f}, cost {costs[chosen]}; settings `{json.dumps(V[chosen]['kwargs'])}`). The library default "
        "when this ran, "
        f"`{V[default_i]['name']}`: m = {m[default_i]:.1f} ± {se[default_i]:.1f}, cost {costs[default_i]}"
        + (" (it is the choice)." if chosen == default_i else "."),
        "",
        "The 15 variants of lowest mean suite rank, and the cheapest eligible ones:",
        "",
        "| variant | mean suite rank | se | cost | eligible |",
        "|---|---|---|---|---|",
    ]
    top = list(np.argsort(m)[:15])
    cheap = sorted(rule["eligible"], key=lambda i: (costs[i], m[i]))[:5]
    eligible = set(int(i) for i in rule["eligible"])
    for i in top + [c for c in cheap if c not in top]:
        mark = " (chosen)" if i == chosen else ""
        lines.append(
            f"| `{V[i]['name']}`{mark} | {m[i]:.1f} | {se[i]:.1f} | {costs[i]} | {'yes' if i in eligible else 'no'} |"
        )
    for group, title in (("choose", "Choosing suite"), ("held-out", "Held out (reported after the choice)")):
        gtasks = [t for t in res["tasks"] if t["group"] == group]
        lines += ["", f"## {title}: AUROC, mean ± std over {K} models", ""]
        lines += ["| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for t in gtasks:
            mat = score_matrix(res, t["name"], names)
            accs = res["accuracy"].get(t["name"])
            label = t["name"] + (f" (acc {np.mean(accs):.3f})" if accs else "")
            lines.append(f"| {label} | " + " | ".join(fmt_ms(mat[n]) for n in names) + " |")
    # the summary: the chosen REGrad against every other score, per OOD pair and over the misclassification cells
    first = next(iter(names))
    groups = [(t["name"] + (" (held out)" if t["group"] == "held-out" else ""), [t["name"]]) for t in res["tasks"]]
    groups = [g for g, t in zip(groups, res["tasks"], strict=True) if t["kind"] == "ood"]
    groups.insert(
        2, ("misclassification (mean of the cells)", [t["name"] for t in res["tasks"] if t["kind"] == "misclf"])
    )
    lines += [
        "",
        f"## Summary: `{first}` against every other score",
        "",
        "Paired AUROC difference (this REGrad minus the column's score) over the models: mean [95% interval] "
        "models agreeing on the sign / K; bold where the interval excludes zero. The misclassification row "
        "averages each model's AUROC over the cells first.",
        "",
        "| task | " + " | ".join(list(names)[1:]) + " |",
        "|---|" + "---|" * (len(names) - 1),
    ]
    for label, tnames in groups:
        mats = [score_matrix(res, t, names) for t in tnames]
        mean = {n: np.mean([m[n] for m in mats], 0) for n in names}
        lines.append(f"| {label} | " + " | ".join(fmt_diff(mean[first] - mean[c]) for c in list(names)[1:]) + " |")
    # paired differences
    lines += [
        "",
        "## Paired differences over the models",
        "",
        "Row score minus column score, AUROC: mean [95% interval] models agreeing on the sign / K. Bold: the "
        "interval excludes zero, the only case in which a README claim 'A beats B' is made.",
    ]
    labels = list(names)
    for t in res["tasks"]:
        mat = score_matrix(res, t["name"], names)
        lines += ["", f"### {t['name']} ({t['group']})", "", "| | " + " | ".join(labels[1:]) + " |"]
        lines.append("|---|" + "---|" * (len(labels) - 1))
        for i, r in enumerate(labels[:-1]):
            cells = ["" if j <= i else fmt_diff(mat[r] - mat[c]) for j, c in enumerate(labels[1:], start=1)]
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
    # sigma sweep and layer profile
    ch = V[chosen]["kwargs"]
    lines += [
        "",
        "## Input-noise sweep (the paper's open question 2)",
        "",
        f"The chosen class weighting, layer alpha, combination and top-k (`{ch['class_weighting']}`, "
        f"{ch['layer_alpha']:g}, {ch['combine']}, top-k {ch.get('top_k', 'all')}) with each gradient pass; AUROC "
        "mean ± std over the models on the choosing suite's OOD pairs and the mean over the misclassification cells.",
        "",
    ]
    ood_tasks = [t["name"] for t in res["tasks"] if t["kind"] == "ood" and t["group"] == "choose"]
    mis_tasks = [t["name"] for t in res["tasks"] if t["kind"] == "misclf"]
    lines += [
        "| gradient pass | " + " | ".join(ood_tasks) + " | misclassification (mean of cells) | cost |",
        "|---|" + "---|" * (len(ood_tasks) + 2),
    ]
    stem = V[chosen]["name"].rsplit("/", 1)[0]
    for i, v in enumerate(V):
        if v["name"].rsplit("/", 1)[0] != stem:
            continue
        cells = [fmt_ms(np.array([p[t]["variants"][i] for p in res["per_seed"]])) for t in ood_tasks]
        mis = np.array([np.mean([p[t]["variants"][i] for t in mis_tasks]) for p in res["per_seed"]])
        lines.append(f"| {v['name'].rsplit('/', 1)[1]} | " + " | ".join(cells) + f" | {fmt_ms(mis)} | {v['cost']} |")
    lines += [
        "",
        "## Layer-alpha sweep (clean gradients, linear combination, all classes)",
        "",
        "AUROC mean ± std over the models; alpha < 0 weighs the layers near the input more, alpha > 0 the deep ones.",
        "",
    ]
    held = [t["name"] for t in res["tasks"] if t["group"] == "held-out"]
    lines += [
        "| weighting | alpha | "
        + " | ".join(ood_tasks)
        + " | misclassification (mean of cells) | "
        + " | ".join(f"{h} (held out)" for h in held)
        + " |",
        "|---|---|" + "---|" * (len(ood_tasks) + 1 + len(held)),
    ]
    for i, v in enumerate(V):
        parts = v["name"].split("/")
        if parts[2:] != ["linear", "all", "clean"]:
            continue
        cells = [fmt_ms(np.array([p[t]["variants"][i] for p in res["per_seed"]])) for t in ood_tasks + held]
        mis = np.array([np.mean([p[t]["variants"][i] for t in mis_tasks]) for p in res["per_seed"]])
        cells.insert(len(ood_tasks), fmt_ms(mis))
        lines.append(f"| {parts[0]} | {parts[1][1:]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Per-layer profile (clean gradients, one layer at a time, uniform layer weights)",
        "",
        "AUROC mean ± std over the models, each class weighting; layers from the input side.",
        "",
    ]
    for t in res["tasks"]:
        if t["kind"] != "ood":
            continue
        layers = res["per_seed"][0][t["name"]]["layers"]
        lines += [f"**{t['name']}** ({t['group']})", "", "| weighting | " + " | ".join(layers) + " |"]
        lines.append("|---|" + "---|" * len(layers))
        for w in WEIGHTINGS:
            cells = [
                fmt_ms(np.array([p[t["name"]]["profile"][w][li] for p in res["per_seed"]])) for li in range(len(layers))
            ]
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/regrad_suite_report.py", description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path, help="a results .json written by regrad_suite.py")
    p.add_argument("--out", type=Path, default=None, help="the .md to write (default: beside the .json)")
    args = p.parse_args(argv)
    if not args.json.is_file():
        raise SystemExit(f"{args.json}: no such file; run benchmarks/regrad_suite.py first (it writes the .json)")
    out = args.out or args.json.with_suffix(".md")
    write_markdown(json.loads(args.json.read_text()), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
