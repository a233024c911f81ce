"""Labels to 90% / 95% MNIST test accuracy in the BatchBALD authors' own run logs, the yardstick for protocol mnist-p5.

The authors' repository (github.com/BlackHC/BatchBALD) commits one log per run under ``laaos_results/paper/``: a
Python file of ``store[...] = {...}`` lines holding the run's arguments, initial samples and, per acquisition
iteration, the test metrics of the model trained on the labels so far. This script reads them as literals (never
executing them), groups the MNIST runs by acquisition function, method, acquisition size, MC samples and
validation-set size, and writes each group's labels to 90% / 95% (median, range, and how many runs reached it).

    git clone https://github.com/BlackHC/BatchBALD ../BatchBALD     # needs internet, once
    python benchmarks/batchbald_reference_logs.py ../BatchBALD --out benchmarks/results/batchbald_reference_logs.md

The label count of an iteration is the training-set size its test accuracy was measured at (the initial samples
plus every earlier iteration's chosen samples).
"""

from __future__ import annotations

import argparse
import ast
import re
import statistics
from collections import defaultdict
from pathlib import Path

THRESHOLDS = (0.90, 0.95)


def read_log(path: Path) -> dict:
    """``args``, ``initial_samples`` and ``iterations`` of one laaos log, parsed with ``ast.literal_eval``."""
    out: dict = {"iterations": []}
    for line in path.read_text().splitlines():
        m = re.match(r"store\['(\w+)'\](\.append\()?\s*=?\s*(.*?)\)?$", line)
        if not m:
            continue
        key, append, value = m.groups()
        try:
            v = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            continue
        if append and key == "iterations":
            out["iterations"].append(v)
        elif not append:
            out[key] = v
    return out


def labels_to(log: dict, threshold: float) -> int | None:
    n = len(log.get("initial_samples") or [])
    for it in log["iterations"]:
        if it["test_metrics"]["accuracy"] >= threshold:
            return n
        chosen = it.get("chosen_samples", [])
        n += len(chosen) if isinstance(chosen, list) else 1
    return None


def group_of(log: dict) -> tuple | None:
    args = log.get("args", {})
    dataset = str(args.get("dataset", "DatasetEnum.mnist")).split(".")[-1]
    if dataset != "mnist":
        return None  # Repeated-MNIST, EMNIST, noisy variants, CINIC-10 are other protocols
    return (
        str(args.get("type", "?")).split(".")[-1],
        str(args.get("acquisition_method", "independent (not logged)")).split(".")[-1],
        args.get("available_sample_k"),
        args.get("num_inference_samples"),
        args.get("validation_set_size"),
        args.get("epochs"),
        len(log.get("initial_samples") or []),
    )


def summary(values: list[int | None], n_runs: int) -> str:
    got = sorted(v for v in values if v is not None)
    if len(got) * 2 <= n_runs:  # the median run did not reach it
        return f"not reached by the median run ({len(got)}/{n_runs} reached it)"
    padded = got + [10**9] * (n_runs - len(got))
    med = statistics.median(padded)
    return f"{med:g} (range {got[0]}-{got[-1]}, {len(got)}/{n_runs} reached it)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", type=Path, help="a clone of github.com/BlackHC/BatchBALD")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/batchbald_reference_logs.md"))
    a = ap.parse_args()
    logs = sorted((a.repo / "laaos_results" / "paper").glob("*.py"))
    if not logs:
        raise SystemExit(f"error: no laaos_results/paper/*.py under {a.repo}; pass a clone of BlackHC/BatchBALD")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in logs:
        log = read_log(p)
        g = group_of(log)
        if g is not None and log["iterations"]:
            groups[g].append(log)
    lines = [
        "# Labels to 90% / 95% MNIST test accuracy in the BatchBALD authors' run logs",
        "",
        "Made by `python benchmarks/batchbald_reference_logs.py <clone of github.com/BlackHC/BatchBALD>` from the",
        f"{sum(len(v) for v in groups.values())} MNIST run logs of `laaos_results/paper/` (each parsed as literals).",
        "Method `multibald` is BatchBALD; `b` the acquisition size, `k` the MC-dropout samples, `val` the validation",
        "set (held out of the pool, labelled outside the budget), `epochs` the early-stopping maximum.",
        "",
        "| function | method | b | k | val | epochs | initial | runs | labels to 90% | labels to 95% |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g, runs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        cells = [str(x) for x in g] + [str(len(runs))]
        cells += [summary([labels_to(r, t) for r in runs], len(runs)) for t in THRESHOLDS]
        lines.append("| " + " | ".join(cells) + " |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
