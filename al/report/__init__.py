"""Learning-curve reports from a store: tables as pandas DataFrames, figures as PNG, Markdown per protocol.

    python -m al.report --store sqlite:///al-runs.db [--dataset mnist] [--out report/]

Runs are compared only within one *protocol*: the same dataset and the same settings that shape a learning
curve (budget, init_size, query_size, class-balanced start, pool subset, model and training schedule, MC-dropout
passes; :data:`PROTOCOL_FIELDS`). Runs of different protocols are never averaged together.

Within a protocol, runs are grouped by strategy *and its settings*: when a protocol holds more than one variant of
a strategy (say REGrad with two ``layer_alpha``), each variant gets its own row, labelled with the settings in
which it differs from the strategy's defaults (``regrad(layer_alpha=0)``; the all-defaults variant keeps the plain
name). A strategy run with one set of settings keeps its plain name.

Statistics over seeds use *finished* runs only. Runs still in progress (any status other than ``finished``:
running, stopped half-way, waiting for labels) are listed as such and drawn dashed, but kept out of the means,
because a partial curve has no AUBC and has not had its chance to reach the accuracy targets. A strategy with
fewer finished seeds than the best-covered strategy of its protocol is flagged.

Definitions (per run; the table gives mean and std, or median, over the finished seeds):

* **AUBC** (area under the budget curve, normalised): with the learning curve ``a(n)`` taken as the
  piecewise-linear interpolation of test accuracy between the evaluated label counts
  ``n_0 < n_1 < ... < n_R`` (``n_0`` the initial set, ``n_R`` the final label count),
  ``AUBC = 1 / (n_R - n_0) * integral_{n_0}^{n_R} a(n) dn`` (trapezoidal rule). Accuracy lies in [0, 1], so
  AUBC does too; 1 means perfect accuracy from the first label. With a constant query size it equals the mean
  accuracy over the acquisition steps with half weight on the first and last step. Needs ``R >= 1``.
* **accuracy at n labels**: ``a(n)`` by the same linear interpolation (exact when ``n`` is an evaluated
  count); NaN outside ``[n_0, n_R]``.
* **labels to reach accuracy t**: the smallest evaluated label count ``n_r`` with ``a(n_r) >= t`` (no
  interpolation: the labels one actually had to buy); infinite if never reached. Reported as the median over
  seeds, as Kirsch et al. (2019) report theirs, with the number of seeds that reached it.

References: AUBC as in Zhan et al., "A comparative survey of deep active learning" (2022) and Kirsch et al.,
"BatchBALD" (NeurIPS 2019) for labels-to-accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, StoreError
from ..store import Store, display_url, hide_passwords

#: Config fields that define a protocol: runs differing in any of them are never compared or averaged.
PROTOCOL_FIELDS = (
    "dataset",
    "model",
    "budget",
    "init_size",
    "query_size",
    "init_balanced",
    "pool_subset",
    "epochs",
    "min_steps",
    "batch_size",
    "lr",
    "warm_start",
    "oracle",
    "mc_samples",
)
#: Protocol fields that joined :data:`PROTOCOL_FIELDS` after reports had been committed, with the value every run
#: recorded before then used (the ExperimentConfig default). At that value (or absent) they stay out of
#: :func:`protocol_id`'s hash, so those reports keep their protocol ids and file names.
PROTOCOL_FIELD_DEFAULTS: dict[str, Any] = {"mc_samples": 20}
DEFAULT_TARGETS = (0.8, 0.9, 0.95)
IN_PROGRESS = "in progress"


# --- maths on one curve ------------------------------------------------------------------------------------------
def _sorted_curve(n_labelled: Sequence[float], accuracy: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(n_labelled, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    if n.shape != a.shape or n.ndim != 1:
        raise ValueError(f"n_labelled {n.shape} and accuracy {a.shape} must be 1-d of the same length")
    order = np.argsort(n, kind="stable")
    n, a = n[order], a[order]
    if len(n) > 1 and np.any(np.diff(n) <= 0):
        raise ValueError("a learning curve has two evaluations at the same label count; pass one run at a time")
    return n, a


def aubc(n_labelled: Sequence[float], accuracy: Sequence[float]) -> float:
    """Normalised area under the budget curve, in [0, 1] (see the module docstring). NaN for < 2 points.

    n_labelled: (R+1,) label counts; accuracy: (R+1,) test accuracies in [0, 1].
    """
    n, a = _sorted_curve(n_labelled, accuracy)
    if len(n) < 2:
        return float("nan")
    # np.trapz was renamed trapezoid in numpy 2; the explicit sum works with both.
    area = float(np.sum((a[1:] + a[:-1]) * np.diff(n)) / 2.0)
    return area / float(n[-1] - n[0])


def accuracy_at(n_labelled: Sequence[float], accuracy: Sequence[float], at: float) -> float:
    """Test accuracy at ``at`` labels, linearly interpolated; NaN outside the curve's range."""
    n, a = _sorted_curve(n_labelled, accuracy)
    if len(n) == 0 or at < n[0] or at > n[-1]:
        return float("nan")
    return float(np.interp(at, n, a))


def labels_to_reach(n_labelled: Sequence[float], accuracy: Sequence[float], target: float) -> float:
    """Smallest evaluated label count whose accuracy is >= ``target``; ``inf`` if never reached."""
    n, a = _sorted_curve(n_labelled, accuracy)
    hit = np.flatnonzero(a >= target)
    return float(n[hit[0]]) if len(hit) else math.inf


# --- reading the store --------------------------------------------------------------------------------------------
def protocol_id(config: dict) -> str:
    """A short, stable, file-name-safe id of the protocol a run's config belongs to.

    ``<dataset>-b<budget>-i<init>[bal]-q<query>`` plus a hash of the other protocol fields, so that two
    schedules of the same budget get different ids. A field of :data:`PROTOCOL_FIELD_DEFAULTS` enters the hash
    only when it differs from its default."""
    c = {k: config.get(k) for k in PROTOCOL_FIELDS}
    rest = json.dumps(
        {
            k: c[k]
            for k in PROTOCOL_FIELDS
            if k not in ("dataset", "budget", "init_size", "query_size", "init_balanced")
            and not (k in PROTOCOL_FIELD_DEFAULTS and c[k] in (None, PROTOCOL_FIELD_DEFAULTS[k]))
        },
        sort_keys=True,
        default=str,
    )
    h = hashlib.sha1(rest.encode()).hexdigest()[:6]
    return (
        f"{c['dataset']}-b{c['budget']}-i{c['init_size']}{'bal' if c['init_balanced'] else ''}-q{c['query_size']}-{h}"
    )


def describe_protocol(config: dict) -> str:
    """One line stating the pool subset and training schedule, to print beside every table."""
    c = config
    subset = (
        "the whole unlabelled pool"
        if not c.get("pool_subset")
        else f"a fresh random {c['pool_subset']} unlabelled candidates"
    )
    start = "class-balanced" if c.get("init_balanced") else "random"
    fit = "fine-tuned from the previous round" if c.get("warm_start") else "retrained from scratch"
    return (
        f"{c.get('dataset')}, model `{c.get('model')}`: {c.get('init_size')} {start} initial labels, "
        f"{c.get('query_size')} per round up to {c.get('budget')}; each round scores {subset}; the model is "
        f"{fit} each round with Adam (lr {c.get('lr')}, batch {c.get('batch_size')}) for "
        f"{c.get('epochs')} epochs and at least {c.get('min_steps')} steps; oracle {c.get('oracle')}."
        + _non_default_fields(c)
    )


def _non_default_fields(config: dict) -> str:
    # Said only when not the default, so the descriptions in reports written before these fields existed stay.
    mc = config.get("mc_samples")
    return f" MC dropout uses {mc} passes." if mc not in (None, PROTOCOL_FIELD_DEFAULTS["mc_samples"]) else ""


# --- strategy variants --------------------------------------------------------------------------------------------
def _canonical(v: Any) -> Any:
    # Stored settings went through JSON (tuples became lists); compare defaults in the same form.
    return json.loads(json.dumps(v, default=str))


def _settings(config: dict, added: dict[str, Any]) -> dict[str, Any]:
    """A run's strategy settings; a key added to the strategy after the run (``params_added``) gets the value the
    run used, so old and new runs of the same settings are one variant."""
    stored = config.get("strategy_params")
    out = dict(stored if stored is not None else config.get("strategy_kwargs") or {})
    for k, v in added.items():
        out.setdefault(k, _canonical(v))
    return out


def _strategy_defaults(name: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(constructor defaults, params_added) of the registered strategy ``name``; (None, {}) when it is not
    installed here, in which case variants are told apart by the settings in which they differ."""
    from ..errors import ALError
    from ..registry import STRATEGIES

    try:
        cls = STRATEGIES.get(name)
    except (ALError, KeyError, ImportError):
        return None, {}
    try:
        # A default instance: its params() are the defaults as recorded (a strategy may add derived keys), and
        # params_added may be a property that depends on the settings.
        default = cls()
        return _canonical(default.params()), dict(default.params_added)
    except (ALError, TypeError, ValueError):  # a strategy with required settings
        params = inspect.signature(cls.__init__).parameters.values()
        added = getattr(cls, "params_added", {})  # a property when it depends on the settings: not known here
        return (
            {p.name: _canonical(p.default) for p in params if p.default is not inspect.Parameter.empty},
            dict(added) if isinstance(added, Mapping) else {},
        )


def _fmt_setting(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return v if isinstance(v, str) else json.dumps(v)


def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run, the label its strategy is reported under (see the module docstring).

    ``runs``: one row per run with ``protocol``, ``strategy`` (the stored name) and ``config`` (dict). Returns a
    Series aligned with ``runs``: the stored name, or ``name(key=value, ...)`` when the run's protocol holds more
    than one set of settings for that name."""
    labels = runs["strategy"].astype(object).copy()
    for (_, name), g in runs.groupby(["protocol", "strategy"], sort=False):
        plain = [_settings(c, {}) for c in g["config"]]
        if len({json.dumps(p, sort_keys=True, default=str) for p in plain}) < 2:
            continue  # one variant: the plain name, as every report before variants existed
        defaults, added = _strategy_defaults(g["config"].iloc[0].get("strategy", name))
        sets = [_settings(c, added) for c in g["config"]]
        if len({json.dumps(x, sort_keys=True, default=str) for x in sets}) < 2:
            continue  # they differed only in settings added since the older runs, at the value those used
        keys = sorted(set().union(*sets))
        if defaults is None:  # unknown strategy: name the settings that differ between its variants
            keys = [k for k in keys if len({json.dumps(x.get(k), default=str) for x in sets}) > 1]
        for idx, st in zip(g.index, sets, strict=True):
            diff = [k for k in keys if k in st and (defaults is None or k not in defaults or st[k] != defaults[k])]
            labels[idx] = f"{name}({', '.join(f'{k}={_fmt_setting(st[k])}' for k in diff)})" if diff else name
    return labels


def runs_table(store: Store, dataset: str | None = None) -> pd.DataFrame:
    """One row per run: run, strategy, dataset, seed, status, protocol, in_progress, config (dict),
    strategy_name.

    ``strategy`` is the label the run is reported under (:func:`variant_labels`), ``strategy_name`` the name
    stored with the run. ``in_progress`` is True for every run whose status is not ``finished``."""
    runs = store.runs()
    if dataset is not None:
        runs = runs[runs["dataset"] == dataset]
    runs = runs.copy()
    runs["config"] = [json.loads(c) for c in runs["config"]]
    runs["protocol"] = [protocol_id(c) for c in runs["config"]]
    runs["in_progress"] = runs["status"] != "finished"
    runs = runs.reset_index(drop=True)
    runs["strategy_name"] = runs["strategy"]
    if len(runs):
        runs["strategy"] = variant_labels(runs)
    return runs


def learning_curves(store: Store, dataset: str | None = None) -> pd.DataFrame:
    """Completed rounds of every run, with its protocol: run, strategy, dataset, protocol, seed, status,
    in_progress, round_idx, n_labelled, accuracy, nll, score_* summaries of the candidate scores..."""
    runs = runs_table(store, dataset)
    cur = store.curves()
    cur = cur[cur["run"].isin(runs["run"])].copy()
    cur["strategy"] = cur["run"].map(dict(zip(runs["run"], runs["strategy"], strict=True)))
    return cur.merge(runs[["run", "protocol", "in_progress"]], on="run", how="left").reset_index(drop=True)


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
    table: pd.DataFrame  # one row per strategy (see summarise)
    at_labels: list[int]
    targets: list[float]


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


def paired_comparison(per_run: pd.DataFrame, reference: str, metric: str = "aubc") -> pd.DataFrame:
    """``reference`` against every other strategy of one protocol, seed by seed (finished runs only).

    Seeds share the initial set and the test set, so the paired difference ``reference - other`` of ``metric``
    removes most of the seed-to-seed spread. Columns: n_pairs, diff_mean, diff_se (standard error of the mean
    difference; NaN for one pair), seeds_won, seeds_lost, verdict: "wins" / "loses" when the mean difference is
    more than two standard errors from zero, otherwise "ties"; "too few seeds" under 3 pairs. Index: the other
    strategy.
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
        verdict = "ties" if n >= 3 else "too few seeds"
        if n >= 3 and se == se and abs(mean) > 2 * se:
            verdict = "wins" if mean > 0 else "loses"
        rows.append(
            dict(
                strategy=strat,
                n_pairs=n,
                diff_mean=mean,
                diff_se=se,
                seeds_won=int((d > 0).sum()),
                seeds_lost=int((d < 0).sum()),
                verdict=verdict if n else "no common seed",
            )
        )
    cols = ["strategy", "n_pairs", "diff_mean", "diff_se", "seeds_won", "seeds_lost", "verdict"]
    return pd.DataFrame(rows, columns=cols).set_index("strategy")


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


# --- figures ------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and background runs have no display
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(
    curves: pd.DataFrame, path: str | Path, title: str = "", table: pd.DataFrame | None = None
) -> Path:
    """Test accuracy against labels: per strategy the mean over finished seeds with a band of +-1 std;
    runs in progress as thin dashed lines. ``curves``: rows of one protocol (see :func:`learning_curves`)."""
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
            st = done.groupby("n_labelled")["accuracy"].agg(["mean", "std", "count"]).reset_index()
            st["std"] = st["std"].fillna(0.0)
            ax.plot(st["n_labelled"], st["mean"], color=c, lw=1.8, label=f"{s} (n={n_seeds}){flag}")
            ax.fill_between(st["n_labelled"], st["mean"] - st["std"], st["mean"] + st["std"], color=c, alpha=0.15)
        for j, (_, rg) in enumerate(g[g["in_progress"]].groupby("run")):
            ax.plot(
                rg["n_labelled"],
                rg["accuracy"],
                color=c,
                lw=0.9,
                ls="--",
                label=f"{s}: {IN_PROGRESS}" if j == 0 else None,
            )
    ax.set_xlabel("labelled samples")
    ax.set_ylabel("test accuracy")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title or "learning curves", 95)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
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


# --- Markdown -----------------------------------------------------------------------------------------------------
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
    under ``out``, and ``report.md`` linking them all. Returns the paths written. A password in ``command``
    (a store URL's) is masked before it is written."""
    command = hide_passwords(command) if command else command
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = learning_curves(store, dataset)
    written: list[Path] = []
    sections = []
    for s in summaries(store, dataset, at_labels, targets):
        cur = curves[curves["protocol"] == s.protocol]
        png = plot_learning_curves(
            cur, out / f"{s.protocol}-curves.png", f"{s.protocol}: " + describe_protocol(s.config), s.table
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
        p.write_text(
            f"# Active-learning report: {s.protocol}\n\n"
            + protocol_markdown(s, png.name, upng.name if upng else None, command, reference, cur)
        )
        written.append(p)
        sections.append(protocol_markdown(s, png.name, upng.name if upng else None, reference=reference, curves=cur))
    index = out / "report.md"
    head = "# Active-learning report\n\n" + (f"Produced by `{command}`\n\n" if command else "")
    index.write_text(head + ("\n".join(sections) if sections else "The store holds no completed round yet.\n"))
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


if __name__ == "__main__":
    sys.exit(main())
