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
import threading
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


def last_rounds(store: Store) -> pd.DataFrame:
    """Each run's last completed round (index: run; round_idx, n_labelled, accuracy...)."""
    cur = store.curves()
    return cur.groupby("run").tail(1).set_index("run") if len(cur) else pd.DataFrame()


def runs_payload(store: Store, runs: pd.DataFrame | None = None, last: pd.DataFrame | None = None) -> dict[str, Any]:
    """``GET /api/runs``: every run, most recently updated first, with its status, labels so far and, for runs
    in progress, the open round and whether the process writing it is still alive. ``runs``/``last``: the
    :func:`al.report.runs_table` and :func:`last_rounds` of the store when the caller has them."""
    runs = runs_table(store) if runs is None else runs
    last = last_rounds(store) if last is None else last
    done: dict[str, tuple[Any, Any, Any]] = {}
    if len(last):
        cols = (last["round_idx"], last["n_labelled"], last["accuracy"])
        done = {r: (i, n, a) for r, i, n, a in zip(last.index, *cols, strict=True)}
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
        if row.run in done:
            r_idx, n_lab, acc = done[row.run]
            item["rounds"] = int(r_idx) + 1
            item["labels"] = int(n_lab) if num(n_lab) is not None else None
            item["accuracy"] = num(acc)
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


def store_signature(store: Store) -> tuple[tuple[str, str, str], ...]:
    """What the curves depend on, read in one small query: each run's name, status and last update (a round's
    completion and every status change update it)."""
    runs = store.runs()
    return tuple(zip(runs["run"], runs["status"], runs["updated_at"].astype(str), strict=True))


class DashboardData:
    """The dashboard's payloads for one store, the parts that change only with a completed round or a status
    (the runs table, each run's last round, the curves) read again only when :func:`store_signature` changed: the
    dashboard asks every 2 s, and on a store of 79 runs those parts cost 0.4 s against a few ms for the
    signature. Runs in progress are always read afresh (their labels change with every answer)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._sig: Any = None
        self._parts: dict[str, Any] = {}

    def _fresh(self) -> dict[str, Any]:
        sig = store_signature(self.store)
        with self._lock:
            if sig != self._sig:
                self._sig, self._parts = sig, {}
            return self._parts

    def _part(self, parts: dict[str, Any], key: str, make: Any) -> Any:
        if key not in parts:
            value = make()
            with self._lock:
                parts.setdefault(key, value)
        return parts[key]

    def runs(self) -> dict[str, Any]:
        parts = self._fresh()
        table = self._part(parts, "runs", lambda: runs_table(self.store))
        last = self._part(parts, "last", lambda: last_rounds(self.store))
        return runs_payload(self.store, table, last)

    def curves(self, dataset: str | None = None) -> dict[str, Any]:
        parts = self._fresh()
        return self._part(parts, f"curves:{dataset}", lambda: curves_payload(self.store, dataset))

    def rounds(self, name: str) -> dict[str, Any]:
        return rounds_payload(self.store, name)
