"""Time to accuracy: the fixed training schedule against early stopping, on protocol 2's labelled sets.

Protocol 2 (MNIST, 100 random initial labels, 100 per round to 2000, `cnn` from scratch each round) is replayed
on the labelled sets that its committed random run recorded (``mnist-p2-random-seed0`` in
benchmarks/results/protocols.sqlite), so both training rules see exactly the same data in every round. Round by
round, side by side in one process, each rule trains a fresh model with the round's seed and is scored on the
10,000 MNIST test images: the fixed schedule (30 epochs, at least 300 Adam steps: the protocol's) and early
stopping (a validation split of 20% of the labelled set, epochs of 5056 draws, patience 3, at most 100 epochs,
best weights restored). Training seconds per round and in total, test accuracy per round, and the labels (and
training seconds) each rule needs to reach 90% and 95%.

    python benchmarks/time_to_accuracy.py [--rounds N] [--out benchmarks/results/time_to_accuracy.md]

Data: $AL_DATA_DIR (default ../shared/data). Torch uses one thread per process unless --threads says otherwise.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from al.data import load_dataset
from al.learner import TorchLearner
from al.seeding import round_rng, torch_seed
from al.store import Store

HERE = Path(__file__).resolve().parent
STORE = HERE / "results" / "protocols.sqlite"
RUN = "mnist-p2-random-seed0"
RULES = {
    "fixed": dict(epochs=30, min_steps=300),
    "early-stopping": dict(early_stopping=True, val_size=0.2, patience=3, max_epochs=100),
}


def labelled_sets(store: Store, run: str) -> list[np.ndarray]:
    """The labelled ids after each round of ``run``, in round order."""
    labels = store.labels(run).sort_values(["round_idx", "sample_id"])
    out, have = [], np.empty(0, dtype=np.int64)
    for _, part in labels.groupby("round_idx", sort=True):
        have = np.concatenate([have, part["sample_id"].to_numpy(dtype=np.int64)])
        out.append(have.copy())
    return out


def first_reaching(n: list[int], acc: list[float], target: float) -> int | None:
    return next((k for k, a in enumerate(acc) if a >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="only the first N rounds (default all 20)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "time_to_accuracy.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", os.environ.get("AL_DATA_DIR") or str(HERE.parent.parent / "shared" / "data"))
    store = Store(f"sqlite:///{STORE}", must_exist=True)
    sets = labelled_sets(store, RUN)[: args.rounds]
    y = data.labels
    assert y is not None
    test = data.test
    assert test is not None
    rows: dict[str, list[tuple[int, float, float, int]]] = {k: [] for k in RULES}
    for r, ids in enumerate(sets):
        seed = torch_seed(round_rng(0, r, "train")) % 2**62  # the loop's per-round training seed
        x = data.inputs(ids)
        for rule, kw in RULES.items():
            lrn = TorchLearner("cnn", data.n_classes, data.input_shape, seed=0, **kw)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            lrn.fit(x, y[ids], seed=seed)
            secs = time.perf_counter() - t0
            acc = float(lrn.evaluate(test.inputs, test.labels)["accuracy"])
            epochs = int(getattr(lrn, "epochs_run_", 0))
            rows[rule].append((len(ids), secs, acc, epochs))
            line = f"round {r:2d} {len(ids):5d} labels {rule:15s} {secs:7.1f}s acc {acc:.4f} epochs {epochs}"
            print(line, flush=True)
        write(args.out, rows, done=r + 1, total=len(sets))


def write(out: str, rows: dict[str, list[tuple[int, float, float, int]]], *, done: int, total: int) -> None:
    lines = [
        "# Time to accuracy: fixed schedule vs early stopping (protocol 2's labelled sets)",
        "",
        f"Made by `python benchmarks/time_to_accuracy.py` ({done} of {total} rounds). Labelled sets: the committed "
        f"run `{RUN}` (benchmarks/results/protocols.sqlite); each round trains a fresh `cnn` with the loop's seed "
        "of that round under both rules, side by side in one process, one torch thread, on a shared 2-core machine "
        "(compare the ratios; absolute seconds vary with the load). Fixed: 30 epochs, >= 300 Adam steps. Early "
        "stopping: 20% held out from the labelled set, epochs of 5056 draws, patience 3, <= 100 epochs, best "
        "weights restored (so it trains on 80% of the labels).",
        "",
        "| labels | fixed: train s | fixed: acc | early stopping: train s | epochs | early stopping: acc |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    fx, es = rows["fixed"], rows["early-stopping"]
    for a, b in zip(fx, es, strict=False):
        lines.append(f"| {a[0]} | {a[1]:.1f} | {a[2]:.4f} | {b[1]:.1f} | {b[3]} | {b[2]:.4f} |")
    tf, te = sum(a[1] for a in fx), sum(b[1] for b in es)
    lines += ["", f"Total training: fixed {tf:.0f} s, early stopping {te:.0f} s (ratio {te / max(tf, 1e-9):.2f})."]
    for target in (0.90, 0.95):
        parts = []
        for name, rs in (("fixed", fx), ("early stopping", es)):
            k = first_reaching([r[0] for r in rs], [r[2] for r in rs], target)
            if k is None:
                parts.append(f"{name}: not within {rs[-1][0] if rs else 0} labels")
            else:
                parts.append(f"{name}: {rs[k][0]} labels after {sum(r[1] for r in rs[: k + 1]):.0f} s of training")
        lines.append(f"- {target:.0%} test accuracy: " + "; ".join(parts) + ".")
    Path(out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
