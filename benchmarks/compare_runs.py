"""Compare runs of the same name in two stores: labelled sets, picks in rank order, scores and accuracies.

    python benchmarks/compare_runs.py --reference sqlite:///benchmarks/results/protocols.sqlite \
        --candidate sqlite:////tmp/rerun.db --out benchmarks/results/refactor_check.md \
        mnist-p1-entropy-seed0 mnist-p1-bald-seed0

Used to show that a refactor changed no result: a run rerun by today's code into a fresh store must give the same
queries (ids in rank order, round by round), the same labels and the same per-round accuracy and NLL as the one
committed. Scores are compared to 1e-12 relative (they are stored as floats). Exit code 0 when every named run is
identical, 1 otherwise, 2 when a run is missing from either store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))


def compare_run(ref: object, cand: object, run: str) -> dict[str, object]:
    """One row of the comparison: which of queries, labels, scores, accuracy and NLL are identical."""
    rq, cq = ref.queries(run), cand.queries(run)  # type: ignore[attr-defined]
    rl, cl = ref.labels(run), cand.labels(run)  # type: ignore[attr-defined]
    rc = ref.curves().query("run == @run").sort_values("round_idx")  # type: ignore[attr-defined]
    cc = cand.curves().query("run == @run").sort_values("round_idx")  # type: ignore[attr-defined]
    key = ["round_idx", "rank"]
    rq, cq = rq.sort_values(key).reset_index(drop=True), cq.sort_values(key).reset_index(drop=True)
    same_picks = rq[key + ["sample_id"]].equals(cq[key + ["sample_id"]])
    rs, cs = rq["score"].to_numpy(float), cq["score"].to_numpy(float)
    same_scores = rs.shape == cs.shape and bool(np.allclose(rs, cs, rtol=1e-12, atol=0, equal_nan=True))
    lab = ["sample_id", "label", "round_idx"]
    same_labels = (
        rl[lab]
        .sort_values("sample_id")
        .reset_index(drop=True)
        .equals(cl[lab].sort_values("sample_id").reset_index(drop=True))
    )
    acc_r, acc_c = rc["accuracy"].to_numpy(float), cc["accuracy"].to_numpy(float)
    nll_r, nll_c = rc["nll"].to_numpy(float), cc["nll"].to_numpy(float)
    same_acc = acc_r.shape == acc_c.shape and bool(np.array_equal(acc_r, acc_c))
    same_nll = nll_r.shape == nll_c.shape and bool(np.allclose(nll_r, nll_c, rtol=1e-12, atol=0))
    return {
        "run": run,
        "rounds": f"{len(rc)} / {len(cc)}",
        "labels": f"{len(rl)} / {len(cl)}",
        "picks": same_picks,
        "labelled set": same_labels,
        "scores": same_scores,
        "accuracy": same_acc,
        "nll": same_nll,
        "final accuracy": f"{acc_r[-1]:.4f} / {acc_c[-1]:.4f}" if len(acc_r) and len(acc_c) else "-",
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("runs", nargs="+", help="run names present in both stores")
    p.add_argument("--reference", required=True, help="SQLAlchemy URL of the store holding the recorded runs")
    p.add_argument("--candidate", required=True, help="SQLAlchemy URL of the store holding the reruns")
    p.add_argument("--out", help="write the table as Markdown to this file too")
    args = p.parse_args(argv)
    from al.store import Store

    ref, cand = Store(args.reference, must_exist=True), Store(args.candidate, must_exist=True)
    missing = [r for r in args.runs if r not in set(ref.runs()["run"]) or r not in set(cand.runs()["run"])]
    if missing:
        print(f"error: run(s) {', '.join(missing)} missing from one of the stores", file=sys.stderr)
        return 2
    rows = [compare_run(ref, cand, r) for r in args.runs]
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for row in rows:
        lines.append(
            "| "
            + " | ".join("same" if v is True else "DIFFERENT" if v is False else str(v) for v in row.values())
            + " |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    identical = all(all(v for v in row.values() if isinstance(v, bool)) for row in rows)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
