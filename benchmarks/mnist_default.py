"""The default MNIST protocol of ``python -m al.bench`` (budget 2000), timed end to end per strategy.

Runs each strategy through the real CLI in a subprocess (so wall time includes start-up and data loading),
into one store, then writes ``benchmarks/results/mnist_default.md``: wall time, accuracy at 100/1000/2000
labels, and the share of round time spent training, evaluating, selecting (scoring) and storing.

    python benchmarks/mnist_default.py --strategies entropy random [--store sqlite:///.bench/mnist_default.db]

Resumable: a killed run continues from the store when the command is repeated (its wall time then covers only
the last invocation, and the file says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from al.store import Store

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", nargs="+", default=["entropy", "random"])
    p.add_argument("--store", default=f"sqlite:///{ROOT / '.bench' / 'mnist_default.db'}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mnist_default.md"))
    args = p.parse_args()
    (ROOT / ".bench").mkdir(exist_ok=True)
    # Wall times of earlier invocations are kept beside the report, so strategies can be run one at a time.
    walls_file = Path(args.out).with_suffix(".walls.json")
    walls: dict[str, tuple[float, bool]] = (
        {k: tuple(v) for k, v in json.loads(walls_file.read_text()).items()} if walls_file.exists() else {}
    )
    for strat in args.strategies:
        name = f"mnist-{strat}-seed{args.seed}"
        fresh = name not in set(Store(args.store).runs()["run"])
        t0 = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "al.bench",
            "--strategy",
            strat,
            "--budget",
            "2000",
            "--seed",
            str(args.seed),
            "--store",
            args.store,
            "--no-progress",
        ]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ})
        if fresh or strat not in walls:
            walls[strat] = (time.perf_counter() - t0, fresh)
        walls_file.write_text(json.dumps(walls, indent=1))
    write_report(Store(args.store), walls, args)


def write_report(store: Store, walls: dict[str, tuple[float, bool]], args: argparse.Namespace) -> None:
    c = store.curves()
    lines = [
        "# MNIST, default protocol (`python -m al.bench --budget 2000`)",
        "",
        f"Command: `python benchmarks/mnist_default.py --strategies {' '.join(walls)}` (strategies may be run "
        "one invocation at a time; wall times are kept in the `.walls.json` file beside this one)",
        "",
        "Protocol: 100 random initial labels, query size 100, budget 2000 (20 rounds), pool subset 10000 "
        "scored per round, default CNN retrained from scratch each round (Adam 1e-3, batch 64, 30 epochs and "
        "at least 300 steps), seed 0. Machine: 2 CPU cores, no GPU.",
        "",
        "| strategy | wall time (s) | acc @100 | acc @1000 | acc @2000 | train | evaluate | select | store |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for strat, (wall, fresh) in walls.items():
        d = c[c["run"] == f"mnist-{strat}-seed{args.seed}"].set_index("n_labelled")
        parts = d[["train_seconds", "eval_seconds", "select_seconds", "store_seconds"]].fillna(0).sum()
        share = parts / parts.sum() * 100
        acc = [f"{d['accuracy'].get(n, float('nan')):.4f}" for n in (100, 1000, 2000)]
        w = f"{wall:.0f}" + ("" if fresh else " (resumed)")
        lines.append(f"| {strat} | {w} | {' | '.join(acc)} | " + " | ".join(f"{v:.1f}%" for v in share) + " |")
    lines += [
        "",
        "Shares are of the summed per-round time recorded in the store (training, test-set evaluation, "
        "selection including the forward passes over the scored subset, and store writes).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
