"""The dashboard's data, as JSON-ready dicts read from a store (never written): runs, learning curves, and one run's
rounds.

Curves are grouped as :mod:`al.report` groups them (:func:`al.report.learning_curves`, :func:`al.report.runs_table`,
:func:`al.report.variant_labels`): per protocol (dataset and the settings that shape a curve), per strategy
variant; finished runs as the mean ± std over seeds at each label count, runs in progress as their own (dashed)
lines, so that a live run is on the chart from its first completed round. Per-round uncertainty is the acquired
batch's scores beside the candidates' summary, as :func:`al.report.batch_uncertainty` reads them; stopping
criteria are the round values without a colon in their name and their ``"<name>:threshold"``
(:mod:`al.report.stopping`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..report import describe_protocol, learning_curves, runs_table
from ..report.stopping import THRESHOLD_SUFFIX
from ..store.claims import STALE_AFTER_S, owner_gone

if TYPE_CHECKING:
    from ..store import Store

#: Statistics of the candidates' scores shown per round (RoundRecord.score_<stat>).
POOL_STATS = ("q10", "q25", "median", "q75", "q90", "mean", "max")


def num(v: Any) -> float | None:
    """A number for JSON: None for missing, NaN and infinite values."""
    if v is None or v is pd.NA:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _when(v: Any) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else pd.Timestamp(v).isoformat()


def web_hint(name: str) -> str:
    return (
        f"run {name} waits for web labels: run its own `python -m al.bench ... --oracle web` command again (the same "
        f"flags that started it); it serves the labelling page and continues the run"
    )


def runs_payload(store: Store) -> dict[str, Any]:
    """``GET /api/runs``: every run, most recently updated first, with its status, labels so far and, for runs
    in progress, the open round and whether the process writing it is still alive."""
    runs = runs_table(store)
    cur = store.curves()
    last = cur.groupby("run").tail(1).set_index("run") if len(cur) else pd.DataFrame()
    out = []
    for row in runs.itertuples(index=False):
        config: dict[str, Any] = row.config
        item: dict[str, Any] = {
            "run": row.run,
            "strategy": row.strategy,
            "dataset": row.dataset,
            "seed": int(row.seed),
            "status": row.status,
            "protocol": row.protocol,
            "oracle": config.get("oracle"),
            "budget": config.get("budget"),
            "message": row.message if isinstance(row.message, str) else None,  # pandas reads NULL as NaN here
            "updated_at": _when(row.updated_at),
            "rounds": 0,
            "labels": None,
            "accuracy": None,
            "open_round": None,
            "hint": None,
        }
        if row.run in last.index:
            lr = last.loc[row.run]
            item["rounds"] = int(lr["round_idx"]) + 1
            item["labels"] = int(lr["n_labelled"]) if num(lr["n_labelled"]) is not None else None
            item["accuracy"] = num(lr["accuracy"])
        if row.status != "finished":
            st = store.state(row.run)
            item["labels"] = len(st.labels)
            rnd = st.last_round
            if rnd is not None and rnd.state != "complete":
                answered = sum(1 for r in st.label_round.values() if r == rnd.round_idx)
                item["open_round"] = {
                    "round": rnd.round_idx,
                    "state": rnd.state,
                    "answered": answered,
                    "total": rnd.n_queried,
                }
            rec = st.run
            if row.status == "running" and rec.owner and owner_gone(rec.owner, rec.heartbeat, STALE_AFTER_S):
                item["status"] = "interrupted"
                item["message"] = f"its process ({rec.owner}) is gone; run its command again to continue"
            if config.get("oracle") == "web" and item["status"] in ("waiting", "interrupted", "stopped"):
                item["hint"] = web_hint(row.run)
        out.append(item)
    out.sort(key=lambda d: d["updated_at"] or "", reverse=True)
    return {"runs": out}


def curves_payload(store: Store, dataset: str | None = None) -> dict[str, Any]:
    """``GET /api/curves``: per protocol, per strategy: ``band`` (finished runs: mean, std and count of test
    accuracy over seeds at each label count) and ``in_progress`` (each unfinished run's own points)."""
    cur = learning_curves(store, dataset)
    runs = runs_table(store, dataset)
    protocols = []
    for proto, g in cur.groupby("protocol", sort=True):
        config = runs.loc[runs["protocol"] == proto, "config"].iloc[0]
        series = []
        for strategy, sg in g.groupby("strategy", sort=True):
            done = sg[~sg["in_progress"]]
            band = []
            if len(done):
                st = done.groupby("n_labelled")["accuracy"].agg(["mean", "std", "count"]).reset_index()
                for n, mean, std, count in st.itertuples(index=False):
                    band.append({"n": int(n), "mean": num(mean), "std": num(std) or 0.0, "count": int(count)})
            live = [
                {
                    "run": run,
                    "points": [
                        {"n": int(n), "accuracy": num(a)}
                        for n, a in rg[["n_labelled", "accuracy"]].itertuples(index=False)
                    ],
                }
                for run, rg in sg[sg["in_progress"]].groupby("run", sort=True)
            ]
            series.append(
                {
                    "strategy": strategy,
                    "n_seeds": int(done["run"].nunique()),
                    "band": band,
                    "in_progress": live,
                }
            )
        protocols.append(
            {
                "protocol": proto,
                "dataset": str(g["dataset"].iloc[0]),
                "description": describe_protocol(config),
                "series": series,
            }
        )
    return {"dataset": dataset, "protocols": protocols}


def rounds_payload(store: Store, name: str) -> dict[str, Any]:
    """``GET /api/runs/{name}/rounds``: per round, its state, labels, test accuracy and NLL, the candidates'
    score summary (``pool``), the acquired batch's scores (``batch``) and the stored round values; plus the
    run's criteria (round-value names without a colon) and their thresholds."""
    st = store.state(name)
    values = store.round_values(st.run_id)
    q = store.queries(name)
    batch: dict[int, dict[str, float | None]] = {}
    if len(q):
        scored = q.dropna(subset=["score"])
        for r, g in scored.groupby("round_idx"):
            s = g["score"].to_numpy(dtype=np.float64)
            s = s[np.isfinite(s)]
            if len(s):
                batch[int(r)] = {"mean": float(s.mean()), "min": float(s.min()), "max": float(s.max())}
    rounds = []
    criteria: set[str] = set()
    for rnd in st.rounds:
        vals = values.get(rnd.round_idx, {})
        criteria.update(n for n in vals if ":" not in n)
        has_scores = rnd.n_scored is not None  # set only for strategies whose scores are uncertainties
        rounds.append(
            {
                "round": rnd.round_idx,
                "state": rnd.state,
                "n_queried": rnd.n_queried,
                "n_labelled": rnd.n_labelled,
                "accuracy": num(rnd.accuracy),
                "nll": num(rnd.nll),
                "n_scored": rnd.n_scored,
                "pool": {k: num(getattr(rnd, f"score_{k}")) for k in POOL_STATS} if has_scores else None,
                "batch": batch.get(rnd.round_idx) if has_scores else None,
                "values": {k: num(v) for k, v in vals.items()},
                "train_seconds": num(rnd.train_seconds),
                "select_seconds": num(rnd.select_seconds),
            }
        )
    return {
        "run": st.name,
        "status": st.status,
        "strategy": st.run.strategy,
        "dataset": st.run.dataset,
        "labels": len(st.labels),
        "budget": st.config.get("budget"),
        "criteria": [{"name": c, "threshold_name": f"{c}{THRESHOLD_SUFFIX}"} for c in sorted(criteria)],
        "rounds": rounds,
    }
