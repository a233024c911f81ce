"""Shared by tests/test_grid.py and tests/test_grid_dask.py: small digits protocols, and oracles that fail in the
ways a grid must survive. The oracles are named in a protocol's config as ``tests.grid_helpers:<factory>``, so the
worker processes import this module themselves (the repository root is on their path)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
#: While this file exists, ``fails_while_marked`` raises from its second call. Set before any worker starts, so
#: that every worker process (a LocalCluster's, a spawned pool's) inherits it.
FAIL_MARKER = os.environ.setdefault(
    "AL_GRID_FAIL_MARKER", os.path.join(tempfile.gettempdir(), f"al-grid-fail-{os.getpid()}")
)

#: A digits schedule of 0.1-0.5 s per round on this machine (epochs 5, 30 steps).
FAST = {"dataset": "digits", "init_size": 20, "init_balanced": True, "query_size": 20, "epochs": 5, "min_steps": 30}


def protocol(folder: Path, name: str, runs: list[dict], budget: int = 60, **config: object) -> Path:
    """Write a protocol file ``<folder>/<name>.json`` of the FAST schedule; returns its path."""
    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps({"name": name, "config": {**FAST, "budget": budget, **config}, "runs": runs}))
    return path


def fails_while_marked(labels, n_classes):  # noqa: ANN001, ANN201 - an oracle factory, as users write them
    """Ground truth, except that from its second call (round 1) it raises while FAIL_MARKER exists."""
    calls = {"n": 0}

    def label(ids):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] >= 2 and os.path.exists(os.environ.get("AL_GRID_FAIL_MARKER", FAIL_MARKER)):
            raise RuntimeError("the test oracle fails while its marker file exists")
        return {int(i): int(labels[i]) for i in ids}

    return label


def kills_its_process(labels, n_classes):  # noqa: ANN001, ANN201
    """Ground truth for round 0, then SIGKILL of the process that asks (a cell that kills every worker it runs on,
    as a segfault in native code or the OOM killer would)."""
    calls = {"n": 0}

    def label(ids):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return {int(i): int(labels[i]) for i in ids}

    return label


def results(store) -> dict[str, tuple]:  # noqa: ANN001 - a Store
    """Per run: its labelled set (sample, label, round) and its accuracies per round, to compare two stores."""
    out = {}
    curves = store.curves()
    for run in store.runs()["run"]:
        lab = store.labels(run)[["sample_id", "label", "round_idx"]].sort_values(["round_idx", "sample_id"])
        cur = curves[curves["run"] == run].sort_values("round_idx")
        out[run] = (
            [tuple(map(int, r)) for r in lab.itertuples(index=False)],
            [(int(r), float(a)) for r, a in zip(cur["round_idx"], cur["accuracy"], strict=True)],
        )
    return out


def table_counts(store) -> dict[str, int]:  # noqa: ANN001 - a Store
    """Rows per al table, and each run's last update, to show that a resubmitted grid wrote nothing."""
    runs = store.runs()
    return {
        "runs": len(runs),
        "rounds": len(store.curves()),
        "labels": sum(len(store.labels(r)) for r in runs["run"]),
        "queries": sum(len(store.queries(r)) for r in runs["run"]),
        "updated": tuple(pd.to_datetime(runs["updated_at"]).astype(str)),
    }
