"""Summary tables over seeds: per-run metrics, the per-strategy table, winners, the interim comparison that
counts runs in progress, the paired comparison against a reference strategy, and the acquired-batch scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..store import Store
from ..tasks import CLASSIFICATION, REGRESSION
from .metrics import DEFAULT_TARGETS, accuracy_at, aubc, labels_to_reach
from .protocols import learning_curves, runs_table
from .regression import per_run_rmse, summarise_rmse


def per_run_metrics(
    curves: pd.DataFrame, at_labels: Sequence[int] = (), targets: Sequence[float] = DEFAULT_TARGETS
) -> pd.DataFrame:
    """One row per run: protocol, strategy, seed, in_progress, n_rounds, final_labels, final_accuracy, aubc,
    ``acc@<n>`` for each of ``at_labels`` and ``labels_to_<t>`` for each target (inf: never reached)."""
    rows = []
    for run, g in curves.groupby("run", sort=False):
        n, a = g["n_labelled"].to_numpy(), g["accuracy"].to_numpy()
        row = dict(
            run=run,
            protocol=g["protocol"].iloc[0],
            dataset=g["dataset"].iloc[0],
            strategy=g["strategy"].iloc[0],
            seed=int(g["seed"].iloc[0]),
            in_progress=bool(g["in_progress"].iloc[0]),
            n_rounds=len(g),
            final_labels=int(n.max()),
            final_accuracy=float(a[np.argmax(n)]),
            aubc=aubc(n, a),
        )
        for at in at_labels:
            row[f"acc@{at}"] = accuracy_at(n, a, at)
        for t in targets:
            row[f"labels_to_{t:g}"] = labels_to_reach(n, a, t)
        rows.append(row)
    return pd.DataFrame(rows)


def default_at_labels(config: dict, k: int = 3) -> list[int]:
    """``k`` label counts at about ``budget * j / k`` (j = 1..k), each moved to the nearest label count a run
    actually evaluates (init_size + m * query_size): 100, 200, 300 for the BatchBALD protocol."""
    lo, hi, q = int(config["init_size"]), int(config["budget"]), int(config["query_size"])
    pts = []
    for j in range(1, k + 1):
        m = max(1, round((hi * j / k - lo) / q))
        pts.append(min(lo + m * q, hi))
    pts[-1] = hi
    return sorted(set(pts))


@dataclass
class ProtocolSummary:
    """The comparison of one protocol: its config, per-run metrics and the per-strategy table."""

    protocol: str
    config: dict
    runs: pd.DataFrame  # per-run metrics, finished and in progress
    table: pd.DataFrame  # one row per strategy (see summarise; a regression protocol's: summarise_rmse)
    at_labels: list[int]
    targets: list[float]
    #: The protocol's task (al.tasks): a regression protocol's runs and table hold RMSE (al.report.regression).
    task: str = CLASSIFICATION


def summarise(per_run: pd.DataFrame, at_labels: Sequence[int], targets: Sequence[float]) -> pd.DataFrame:
    """One protocol's per-strategy table from its per-run metrics.

    Columns: n_seeds (finished), n_in_progress, fewer_seeds (True when fewer finished seeds than the
    best-covered strategy), aubc_mean, aubc_std, ``acc@<n>_mean``/``_std``, ``labels_to_<t>_median`` and
    ``labels_to_<t>_reached`` (seeds that reached it). Means and stds (ddof=1; NaN for one seed) use finished
    runs only. Index: strategy, sorted by AUBC, best first.
    """
    rows = []
    for strat, g in per_run.groupby("strategy"):
        done = g[~g["in_progress"]]
        row: dict = dict(
            strategy=strat,
            n_seeds=len(done),
            n_in_progress=int(g["in_progress"].sum()),
            aubc_mean=done["aubc"].mean(),
            aubc_std=done["aubc"].std(ddof=1),
        )
        for at in at_labels:
            row[f"acc@{at}_mean"] = done[f"acc@{at}"].mean()
            row[f"acc@{at}_std"] = done[f"acc@{at}"].std(ddof=1)
        for t in targets:
            col = done[f"labels_to_{t:g}"]
            row[f"labels_to_{t:g}_median"] = float(np.median(col)) if len(col) else float("nan")
            row[f"labels_to_{t:g}_reached"] = int(np.isfinite(col).sum())
        rows.append(row)
    cols = ["strategy", "n_seeds", "n_in_progress", "aubc_mean", "aubc_std"]
    table = pd.DataFrame(rows, columns=cols + [c for r in rows[:1] for c in r if c not in cols])
    if table.empty:
        return table.set_index("strategy")
    top = table["n_seeds"].max()
    table.insert(3, "fewer_seeds", table["n_seeds"] < top)
    return table.sort_values("aubc_mean", ascending=False, na_position="last").set_index("strategy")


def winners(table: pd.DataFrame, at_labels: Sequence[int], targets: Sequence[float]) -> dict[str, set[str]]:
    """For each compared column, the strategies that win it (ties all win): highest AUBC and accuracy,
    fewest labels to each target. Strategies without a finished seed cannot win."""
    out: dict[str, set[str]] = {}
    ok = table[table["n_seeds"] > 0]
    for col, best in (
        [("aubc_mean", "max")]
        + [(f"acc@{a}_mean", "max") for a in at_labels]
        + [(f"labels_to_{t:g}_median", "min") for t in targets]
    ):
        if ok.empty or col not in ok:
            out[col] = set()
            continue
        v = ok[col].replace([np.inf], np.nan) if best == "min" else ok[col]
        if v.isna().all():
            out[col] = set()
            continue
        ref = v.max() if best == "max" else v.min()
        out[col] = set(v.index[np.isclose(v.to_numpy(dtype=float), ref, rtol=0, atol=1e-12)])
    return out


def interim_table(curves: pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    """A comparison that counts runs in progress: every strategy's curves cut at a common label count.

    ``n_common`` is the smallest, over strategies, of the furthest label count any of its runs has reached;
    each strategy is then summarised over its runs (finished or not) that reached ``n_common``:
    ``aubc_to_common`` (the AUBC definition applied to the curve cut at ``n_common``) and ``acc_at_common``,
    mean and std, with ``n_runs`` and ``n_in_progress`` among them. Returns (table, n_common); an empty
    table and None when no strategy has two evaluated rounds. ``curves``: rows of one protocol."""
    reach = curves.groupby("run")["n_labelled"].max()
    strat_of = curves.groupby("run")["strategy"].first()
    furthest = reach.groupby(strat_of).max()
    first = curves.groupby("run")["n_labelled"].min()
    furthest = furthest[furthest > first.groupby(strat_of).min()]
    if furthest.empty:
        return pd.DataFrame(), None
    n_common = int(furthest.min())
    rows = []
    for strat, g in curves[curves["strategy"].isin(furthest.index)].groupby("strategy"):
        vals_a, vals_acc, prog = [], [], 0
        for _, rg in g.groupby("run"):
            if rg["n_labelled"].max() < n_common:
                continue
            cut = rg[rg["n_labelled"] <= n_common]
            vals_a.append(aubc(cut["n_labelled"], cut["accuracy"]))
            vals_acc.append(accuracy_at(cut["n_labelled"], cut["accuracy"], n_common))
            prog += bool(rg["in_progress"].iloc[0])
        rows.append(
            dict(
                strategy=strat,
                n_runs=len(vals_a),
                n_in_progress=prog,
                aubc_to_common_mean=float(np.mean(vals_a)),
                aubc_to_common_std=float(np.std(vals_a, ddof=1)) if len(vals_a) > 1 else float("nan"),
                acc_at_common_mean=float(np.mean(vals_acc)),
                acc_at_common_std=float(np.std(vals_acc, ddof=1)) if len(vals_acc) > 1 else float("nan"),
            )
        )
    t = pd.DataFrame(rows).set_index("strategy").sort_values("aubc_to_common_mean", ascending=False)
    return t, n_common


def paired_comparison(
    per_run: pd.DataFrame, reference: str, metric: str = "aubc", *, higher_is_better: bool = True
) -> pd.DataFrame:
    """``reference`` against every other strategy of one protocol, seed by seed (finished runs only).

    Seeds share the initial set and the test set, so the paired difference ``reference - other`` of ``metric``
    removes most of the seed-to-seed spread. Columns: n_pairs, diff_mean, diff_se (standard error of the mean
    difference; NaN for one pair), seeds_won, seeds_lost, verdict: "wins" / "loses" when the mean difference is
    more than two standard errors from zero, otherwise "ties"; "too few seeds" under 3 pairs. Index: the other
    strategy. ``higher_is_better=False`` (an RMSE area): the reference wins, and a seed counts as won, where its
    value is the smaller.
    """
    done = per_run[~per_run["in_progress"]]
    ref = done[done["strategy"] == reference].set_index("seed")[metric]
    rows = []
    for strat, g in done[done["strategy"] != reference].groupby("strategy"):
        other = g.set_index("seed")[metric]
        common = ref.index.intersection(other.index)
        d = (ref.loc[common] - other.loc[common]).to_numpy(dtype=float)
        n = len(d)
        se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        mean = float(d.mean()) if n else float("nan")
        sign = 1 if higher_is_better else -1  # an RMSE area: the reference wins with the smaller one
        verdict = "ties" if n >= 3 else "too few seeds"
        if n >= 3 and se == se and abs(mean) > 2 * se:
            verdict = "wins" if sign * mean > 0 else "loses"
        rows.append(
            dict(
                strategy=strat,
                n_pairs=n,
                diff_mean=mean,
                diff_se=se,
                seeds_won=int((sign * d > 0).sum()),
                seeds_lost=int((sign * d < 0).sum()),
                verdict=verdict if n else "no common seed",
            )
        )
    cols = ["strategy", "n_pairs", "diff_mean", "diff_se", "seeds_won", "seeds_lost", "verdict"]
    return pd.DataFrame(rows, columns=cols).set_index("strategy")


def summaries(
    store: Store,
    dataset: str | None = None,
    at_labels: Sequence[int] | None = None,
    targets: Sequence[float] = DEFAULT_TARGETS,
) -> list[ProtocolSummary]:
    """One :class:`ProtocolSummary` per protocol found in ``store`` (optionally one dataset's only)."""
    runs = runs_table(store, dataset)
    curves = learning_curves(store, dataset)
    out = []
    for proto, rg in runs.groupby("protocol", sort=True):
        config = rg["config"].iloc[0]
        at = list(at_labels) if at_labels else default_at_labels(config)
        if config.get("task", CLASSIFICATION) == REGRESSION:
            pr = per_run_rmse(curves[curves["protocol"] == proto], at)
            if not pr.empty:
                out.append(ProtocolSummary(proto, config, pr, summarise_rmse(pr, at), at, [], REGRESSION))
            continue
        pr = per_run_metrics(curves[curves["protocol"] == proto], at, targets)
        if pr.empty:
            continue
        out.append(ProtocolSummary(proto, config, pr, summarise(pr, at, targets), at, list(targets)))
    return out


def batch_uncertainty(store: Store, curves: pd.DataFrame) -> pd.DataFrame:
    """Per run and round, the acquisition scores of the acquired batch (from ``Store.queries``) beside the
    candidate pool's score summary (the rounds' ``score_*`` columns).

    Columns: run, strategy, seed, protocol, round_idx, labels_before (labels when the batch was chosen),
    batch_mean, batch_min, batch_max, pool_q25, pool_median, pool_q75. Rounds without scores (the initial set,
    strategies such as random or core-set that have no per-sample uncertainty) are left out."""
    frames = []
    for run, g in curves.groupby("run", sort=False):
        # n_scored is set only for strategies whose scores are uncertainties (Strategy.scores_are_uncertainty);
        # random stores zeros, and core-set/BADGE distances are no per-sample uncertainty.
        scored = g[g["n_scored"].notna()]
        if scored.empty:
            continue
        q = store.queries(run).dropna(subset=["score"])
        q = q[q["round_idx"].isin(scored["round_idx"])]
        if q.empty:
            continue
        b = q.groupby("round_idx")["score"].agg(batch_mean="mean", batch_min="min", batch_max="max").reset_index()
        r = g[["round_idx", "n_labelled", "n_queried", "score_q25", "score_median", "score_q75"]].rename(
            columns={"score_q25": "pool_q25", "score_median": "pool_median", "score_q75": "pool_q75"}
        )
        m = b.merge(r, on="round_idx", how="inner")
        m["labels_before"] = m["n_labelled"] - m["n_queried"]
        for k in ("strategy", "seed", "protocol"):
            m[k] = g[k].iloc[0]
        m["run"] = run
        frames.append(m)
    cols = [
        "run",
        "strategy",
        "seed",
        "protocol",
        "round_idx",
        "labels_before",
        "batch_mean",
        "batch_min",
        "batch_max",
        "pool_q25",
        "pool_median",
        "pool_q75",
    ]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
