"""How a grid scales with workers, and what the Dask path costs against the local process pool, side by side.

A 12-cell digits grid (entropy, margin, least-confidence, random x seeds 0-2; budget 500, 20 class-balanced initial
labels, 20 per round, the digits schedule of 30 epochs / 200 steps: 25 rounds a cell) is run by
``python -m al.grid`` into a fresh SQLite store per run, one torch thread per worker, in four configurations:

    local pool, 1 worker | local pool, 2 workers | Dask LocalCluster, 2 workers | Dask LocalCluster, 1 worker

``--repeats`` times (default 2), the order reversed every other repeat (ABCD DCBA ...) so that a drift of the
machine's load does not favour one configuration; medians are quoted. Two times per run: the wall time of the whole
command as a user runs it (start-up of the client and of its workers or cluster, and the shutdown, included), and
the cells' span, from the first cell's start to the last cell's end (from their log files): what the executor
itself takes. Results: scaling = time(1 worker) / time(2 workers) per executor (goal >= 1.8 on 2 cores), Dask
overhead = time(dask) / time(local) - 1 at the same number of workers (goal < 5%). Every store must hold the same
results, cell by cell (checked and reported). The load average before and after each run is recorded: on a machine
shared with other jobs the figures are noisy.

    .venv/bin/python benchmarks/grid_scaling.py                      # writes benchmarks/results/grid_scaling.md
    .venv/bin/python benchmarks/grid_scaling.py --quick --out /tmp/g.md   # 4 short cells, to try it
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
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
    "budget": 500,
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


def run_once(proto: Path, folder: Path, executor: str, workers: int, rep: int) -> dict:
    tag = f"{executor}{workers}-{rep}"
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
    starts, ends = [], []
    for f in logs.glob("*.log"):
        for line in f.read_text().splitlines():
            stamp = dt.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()
            if " start on " in line:
                starts.append(stamp)
            elif " finished in " in line:
                ends.append(stamp)
    return {
        "executor": executor,
        "workers": workers,
        "rep": rep,
        "wall": wall,
        "span": max(ends) - min(starts),
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
    p.add_argument("--repeats", type=int, default=2, help="runs of each configuration (default 2)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grid_scaling.md"))
    args = p.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="al-grid-scaling-") as tmp:
        folder = Path(tmp)
        proto = write_protocol(folder, args.quick)
        n_cells = len(STRATEGIES) * (1 if args.quick else 3)
        rows = []
        for rep in range(args.repeats):
            for executor, workers in RUNS if rep % 2 == 0 else RUNS[::-1]:
                rows.append(run_once(proto, folder, executor, workers, rep))
                r = rows[-1]
                print(
                    f"{executor} x{workers} #{rep}: wall {r['wall']:.1f} s, cells' span {r['span']:.0f} s", flush=True
                )
        first = rows[0]
        identical = {
            f"{r['executor']} x{r['workers']} #{r['rep']}": same_results(first["store"], r["store"]) for r in rows[1:]
        }

    def median(key: str, executor: str, workers: int) -> float:
        return statistics.median(r[key] for r in rows if (r["executor"], r["workers"]) == (executor, workers))

    wall = {(e, w): median("wall", e, w) for e, w in RUNS}
    span = {(e, w): median("span", e, w) for e, w in RUNS}
    scaling = {e: (wall[(e, 1)] / wall[(e, 2)], span[(e, 1)] / span[(e, 2)]) for e in ("local", "dask")}
    overhead = {
        w: (wall[("dask", w)] / wall[("local", w)] - 1, span[("dask", w)] / span[("local", w)] - 1) for w in (1, 2)
    }
    cfg = dict(CONFIG, budget=80, min_steps=50) if args.quick else CONFIG
    lines = [
        "# Grid scaling: 1 and 2 workers, local process pool and Dask LocalCluster, side by side",
        "",
        f"`benchmarks/grid_scaling.py{' --quick' if args.quick else ''}`, run {started:%Y-%m-%d %H:%M} UTC on this "
        f"machine ({os.cpu_count()} cores), one torch thread per worker. The load average before and after each run "
        "is in the table (about 1 is this benchmark alone); on a shared virtual machine the same run's time still "
        "varies between repeats, so compare the medians and read the repeats as the spread.",
        "",
        f"Grid: {n_cells} digits cells ({', '.join(STRATEGIES)} x seeds {'0' if args.quick else '0-2'}), "
        f"`{json.dumps(cfg)}`, each run into a fresh SQLite store. Wall: the whole `python -m al.grid` command (the "
        "client's start-up, its workers' or cluster's, the cells, the shutdown); cells' span: from the first cell's "
        "start to the last cell's end, from their log files (1 s resolution): what the executor itself takes.",
        "",
        "| executor | workers | repeat | wall (s) | cells' span (s) | load before | load after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['executor']} | {r['workers']} | {r['rep']} | {r['wall']:.1f} | {r['span']:.0f} | "
            f"{r['load_before']:.2f} | {r['load_after']:.2f} |"
        )
    lines += [
        "",
        f"Medians over {args.repeats} repeat(s), wall / cells' span:",
        "",
        f"- scaling, 1 -> 2 workers (goal >= 1.8): local pool **{scaling['local'][0]:.2f}x** / "
        f"**{scaling['local'][1]:.2f}x**, Dask **{scaling['dask'][0]:.2f}x** / **{scaling['dask'][1]:.2f}x**",
        f"- Dask overhead against the local pool (goal < 5%): at 2 workers **{overhead[2][0]:+.1%}** / "
        f"**{overhead[2][1]:+.1%}**, at 1 worker **{overhead[1][0]:+.1%}** / **{overhead[1][1]:+.1%}**",
        f"- same results as `{first['executor']} x{first['workers']} #0`, cell by cell (labelled sets and per-round "
        "accuracies): " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in identical.items()),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
