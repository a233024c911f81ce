"""How a grid scales with workers, and what the Dask path costs against the local process pool, side by side.

A 12-cell digits grid (entropy, margin, least-confidence, random x seeds 0-2; budget 300, 20 class-balanced initial
labels, 20 per round, the digits schedule of 30 epochs / 200 steps: 15 rounds a cell) is run by
``python -m al.grid`` into a fresh SQLite store four times, one torch thread per worker:

    local pool, 1 worker | local pool, 2 workers | Dask LocalCluster, 2 workers | Dask LocalCluster, 1 worker

Each wall time is the whole command as a user runs it (start-up of the client, its workers or cluster, and the
shutdown included); the cells' own time (sum of every cell's "finished in" from its log) is beside it. Results:
scaling = wall(1 worker) / wall(2 workers) per executor (goal >= 1.8 on 2 cores), Dask overhead = wall(dask) /
wall(local) - 1 at the same number of workers (goal < 5%). Every store must hold the same results, cell by cell
(checked and reported). The load average before and after each run is recorded: on a machine shared with other
jobs the figures are noisy.

    .venv/bin/python benchmarks/grid_scaling.py                      # writes benchmarks/results/grid_scaling.md
    .venv/bin/python benchmarks/grid_scaling.py --quick --out /tmp/g.md   # 4 short cells, to try it
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

STRATEGIES = ["entropy", "margin", "least-confidence", "random"]
CONFIG = {
    "dataset": "digits",
    "budget": 300,
    "init_size": 20,
    "init_balanced": True,
    "query_size": 20,
    "epochs": 30,
    "min_steps": 200,
}
RUNS = [("local", 1), ("local", 2), ("dask", 2), ("dask", 1)]


def write_protocol(folder: Path, quick: bool) -> Path:
    cfg = dict(CONFIG, budget=80, min_steps=50) if quick else CONFIG
    runs = [{"strategy": s, "seeds": [0] if quick else [0, 1, 2]} for s in STRATEGIES]
    path = folder / "scaling.json"
    path.write_text(json.dumps({"name": "scaling", "title": "grid scaling", "config": cfg, "runs": runs}))
    return path


def run_once(proto: Path, folder: Path, executor: str, workers: int) -> dict:
    tag = f"{executor}{workers}"
    store = folder / f"{tag}.db"
    logs = folder / f"{tag}-logs"
    cmd = [sys.executable, "-m", "al.grid", str(proto), "--store", f"sqlite:///{store}", "--executor", executor]
    cmd += ["--workers", str(workers), "--threads", "1", "--logs", str(logs), "--no-progress"]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{tag}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    cell_s = sum(
        float(m.group(1)) for f in logs.glob("*.log") for m in re.finditer(r"finished in ([0-9.]+)s", f.read_text())
    )
    return {
        "executor": executor,
        "workers": workers,
        "wall": wall,
        "cells": cell_s,
        "load_before": load0[0],
        "load_after": os.getloadavg()[0],
        "store": store,
    }


def same_results(a: Path, b: Path) -> bool:
    from al.store import Store

    def read(p: Path) -> dict:
        with Store(f"sqlite:///{p}", must_exist=True) as s:
            cur = s.curves()
            return {
                run: (
                    s.labels(run)[["sample_id", "label", "round_idx"]].values.tolist(),
                    cur[cur["run"] == run][["round_idx", "accuracy"]].values.tolist(),
                )
                for run in s.runs()["run"]
            }

    return read(a) == read(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 short cells instead of 12 (to try the script)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grid_scaling.md"))
    args = p.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="al-grid-scaling-") as tmp:
        folder = Path(tmp)
        proto = write_protocol(folder, args.quick)
        n_cells = len(STRATEGIES) * (1 if args.quick else 3)
        rows = []
        for executor, workers in RUNS:
            rows.append(run_once(proto, folder, executor, workers))
            r = rows[-1]
            print(f"{executor} x{workers}: {r['wall']:.1f} s (cells {r['cells']:.1f} s)", flush=True)
        identical = {f"{r['executor']} x{r['workers']}": same_results(rows[0]["store"], r["store"]) for r in rows[1:]}
    wall = {(r["executor"], r["workers"]): r["wall"] for r in rows}
    scaling = {e: wall[(e, 1)] / wall[(e, 2)] for e in ("local", "dask")}
    overhead = {w: wall[("dask", w)] / wall[("local", w)] - 1 for w in (1, 2)}
    cfg = dict(CONFIG, budget=80, min_steps=50) if args.quick else CONFIG
    lines = [
        "# Grid scaling: 1 and 2 workers, local process pool and Dask LocalCluster, side by side",
        "",
        f"`benchmarks/grid_scaling.py{' --quick' if args.quick else ''}`, run {started:%Y-%m-%d %H:%M} UTC on this "
        f"machine ({os.cpu_count()} cores), one torch thread per worker. **The machine was shared** with other jobs "
        "(two other sessions' servers, a browser, a Label Studio server and their tests): the load average before and "
        "after each run is in the table, and the figures are as noisy as it suggests.",
        "",
        f"Grid: {n_cells} digits cells ({', '.join(STRATEGIES)} x seeds {'0' if args.quick else '0-2'}), "
        f"`{json.dumps(cfg)}`, each into a fresh SQLite store. Wall time: the whole `python -m al.grid` command (the "
        "client's start-up, its workers' or cluster's, the cells, the shutdown); cells: the sum of the cells' own "
        "times from their log files.",
        "",
        "| executor | workers | wall (s) | cells (s) | load before | load after |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['executor']} | {r['workers']} | {r['wall']:.1f} | {r['cells']:.1f} | {r['load_before']:.2f} | "
            f"{r['load_after']:.2f} |"
        )
    lines += [
        "",
        f"- scaling, 1 -> 2 workers (goal >= 1.8): local pool **{scaling['local']:.2f}x**, Dask "
        f"**{scaling['dask']:.2f}x**",
        f"- Dask overhead against the local pool (goal < 5%): **{overhead[2]:+.1%}** at 2 workers, "
        f"**{overhead[1]:+.1%}** at 1 worker",
        "- same results as `local x1`, cell by cell (labelled sets and per-round accuracies): "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in identical.items()),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
