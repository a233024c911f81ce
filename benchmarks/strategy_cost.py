"""Selection cost of every registered strategy on the full 60k MNIST pool with the default CNN.

One run, side by side: the CNN is trained briefly on 1000 random labels; the candidates are the other 59000
pool images. Measured:

1. the model passes the context provides, once per round for every strategy that needs them: one forward
   pass (probabilities), MC-dropout passes, penultimate embeddings of the pool and of the labelled set;
2. each strategy's selection for query sizes 10 and 100 *given those arrays* (model-based strategies such as
   regrad run their own passes inside ``select``, so their figure includes them).

Time is wall-clock (``time.perf_counter``); ratios to the one forward pass are the figures to compare, since
the 2 CPU cores are shared with other work. Peak extra memory is reported two ways: ``tracemalloc`` peak
(Python and NumPy allocations only, not torch's) and the peak of the process RSS sampled every 2 ms by a
thread, minus the RSS before the call (covers torch too; approximate, since freed memory the allocator keeps
is not seen again). Both are measured during the same call as the time, so times include tracemalloc's
overhead. torch uses its default thread count.

    AL_DATA_DIR=../shared/data .venv/bin/python benchmarks/strategy_cost.py
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from al.data import load_dataset  # noqa: E402
from al.learner import TorchLearner  # noqa: E402
from al.strategy import Context  # noqa: E402
from strategies import STRATEGIES, build_strategy  # noqa: E402
from strategies.bayesian import batchbald_select  # noqa: E402
from strategies.diversity import kcenter_greedy  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Measure:
    """Time, tracemalloc peak and sampled-RSS peak of one call."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        gc.collect()
        base = rss()
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.002)

        th = threading.Thread(target=sample, daemon=True)
        tracemalloc.start()
        th.start()
        t0 = time.perf_counter()
        try:
            self.result = fn()
        finally:
            self.seconds = time.perf_counter() - t0
            stop.set()
            th.join()
            self.traced_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            self.rss_extra = max(peak[0], rss()) - base


def mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/strategy_cost.md"))
    p.add_argument("--n-labelled", type=int, default=1000)
    p.add_argument(
        "--mc-passes",
        type=int,
        default=4,
        help="MC-dropout passes actually run over the pool (the time for 20 is extrapolated)",
    )
    p.add_argument("--mc-samples", type=int, default=20, help="T the bald/batchbald timings use")
    p.add_argument("--batchbald-subset", type=int, default=5000)
    p.add_argument("--strategies", nargs="*", default=None)
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument(
        "--model-based-subset",
        type=int,
        default=1000,
        help="candidates for strategies that run the model themselves (regrad...)",
    )
    args = p.parse_args(argv)
    command = "AL_DATA_DIR=../shared/data .venv/bin/python benchmarks/strategy_cost.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )

    load0 = os.getloadavg()[0]
    ds = load_dataset("mnist")
    rng = np.random.default_rng(0)
    order = rng.permutation(ds.n_pool)
    labelled, cand = np.sort(order[: args.n_labelled]), np.sort(order[args.n_labelled :])
    learner = TorchLearner("cnn", 10, ds.input_shape, epochs=1, min_steps=args.train_steps, seed=0)
    t0 = time.perf_counter()
    learner.fit(ds.train_x[labelled], ds.train_y[labelled])
    train_s = time.perf_counter() - t0
    acc = learner.evaluate(ds.test_x, ds.test_y)["accuracy"]
    x_cand = ds.train_x[torch.from_numpy(cand)]
    print(f"trained on {len(labelled)} labels in {train_s:.0f} s, test accuracy {acc:.3f}", flush=True)

    rows: list[str] = []
    fwd = Measure(lambda: learner.predict_proba(x_cand))
    probs = fwd.result
    rows.append(f"| forward pass (probs) | {fwd.seconds:.2f} | 1.00 | {mib(fwd.traced_peak)} | {mib(fwd.rss_extra)} |")
    print(rows[-1], flush=True)
    mc = Measure(lambda: learner.mc_predict_proba(x_cand, args.mc_passes, seed=1))
    mc_probs_small = mc.result
    rows.append(
        f"| MC dropout, {args.mc_passes} passes (measured) | {mc.seconds:.2f} | {mc.seconds / fwd.seconds:.2f} "
        f"| {mib(mc.traced_peak)} | {mib(mc.rss_extra)} |"
    )
    est = mc.seconds * args.mc_samples / args.mc_passes
    rows.append(
        f"| MC dropout, {args.mc_samples} passes (x{args.mc_samples / args.mc_passes:g}, extrapolated) | "
        f"{est:.2f} | {est / fwd.seconds:.2f} | - | - |"
    )
    emb = Measure(lambda: learner.embed(x_cand))
    rows.append(
        f"| embeddings of the pool | {emb.seconds:.2f} | {emb.seconds / fwd.seconds:.2f} | "
        f"{mib(emb.traced_peak)} | {mib(emb.rss_extra)} |"
    )
    lemb = Measure(lambda: learner.embed(ds.train_x[torch.from_numpy(labelled)]))
    rows.append(
        f"| embeddings of the labelled set | {lemb.seconds:.2f} | {lemb.seconds / fwd.seconds:.2f} | "
        f"{mib(lemb.traced_peak)} | {mib(lemb.rss_extra)} |"
    )
    print("\n".join(rows[-4:]), flush=True)
    # T = mc_samples for the scoring algorithms: the measured passes tiled, which costs what T real passes cost
    mc_probs = np.tile(mc_probs_small, (int(np.ceil(args.mc_samples / args.mc_passes)), 1, 1))[: args.mc_samples]
    arrays = dict(probs=probs, mc_probs=mc_probs, embeddings=emb.result, labelled_embeddings=lemb.result)

    def inputs_of(ids: np.ndarray) -> torch.Tensor:
        return ds.train_x[torch.from_numpy(np.asarray(ids, dtype=np.int64))]

    def ctx_for(candidates: np.ndarray, arr: dict[str, np.ndarray]) -> Context:
        return Context(
            candidates,
            labelled,
            learner=learner,
            inputs_of=inputs_of,
            mc_samples=args.mc_samples,
            seed=1,
            n_classes=10,
            **arr,
        )

    names = args.strategies or STRATEGIES.names()
    srows: list[str] = []
    for name in names:
        strat = build_strategy(name)
        for n in (10, 100):
            if name == "batchbald" and n == 100:
                continue  # measured below on a subset, and extrapolated for the full pool
            if {"model", "inputs"} & strat.needs:
                # Model-based strategies run their own passes: measured on a subset, extrapolated linearly
                # (their work is per candidate) and compared with the forward pass over the same subset.
                sub = cand[:: max(1, len(cand) // args.model_based_subset)][: args.model_based_subset]
                if n > len(sub):
                    continue
                f_sub = Measure(lambda: learner.predict_proba(inputs_of(sub))).seconds
                m = Measure(lambda: strat(ctx_for(sub, {}), n, np.random.default_rng(0)))
                full = m.seconds * len(cand) / len(sub)
                srows.append(
                    f"| {name} | {n} | {len(sub)} (subset) | {m.seconds:.2f} (full pool ~{full:.0f}, "
                    f"extrapolated) | {m.seconds / f_sub:.1f} (vs forward on the subset) | "
                    f"{mib(m.traced_peak)} | {mib(m.rss_extra)} |"
                )
                print(srows[-1], flush=True)
                continue
            m = Measure(lambda: strat(ctx_for(cand, arrays), n, np.random.default_rng(0)))
            if name == "batchbald":
                bb10 = m.seconds
            srows.append(
                f"| {name} | {n} | {len(cand)} | {m.seconds:.2f} | {m.seconds / fwd.seconds:.2f} | "
                f"{mib(m.traced_peak)} | {mib(m.rss_extra)} |"
            )
            print(srows[-1], flush=True)

    notes: list[str] = []
    if "batchbald" in names:
        # Steps after the first few all cost the same (num_samples configurations), so the full-pool time for 100
        # picks is the time for 10 plus 90 times the per-step cost of picks 6..10, measured here.
        def steps(k: int) -> float:
            t = time.perf_counter()
            batchbald_select(mc_probs, k, np.random.default_rng(0))
            return time.perf_counter() - t

        t5, t10 = steps(5), bb10
        per_step = (t10 - t5) / 5
        full100 = t10 + 90 * per_step
        srows.append(
            f"| batchbald | 100 | {len(cand)} | ~{full100:.0f} (extrapolated) | {full100 / fwd.seconds:.1f} | - | - |"
        )
        sub = np.sort(np.random.default_rng(1).choice(len(cand), size=args.batchbald_subset, replace=False))
        arr_sub = {
            k: (v[:, sub] if k == "mc_probs" else v[sub] if k != "labelled_embeddings" else v)
            for k, v in arrays.items()
        }
        for n in (10, 100):
            m = Measure(lambda: build_strategy("batchbald")(ctx_for(cand[sub], arr_sub), n, np.random.default_rng(0)))
            srows.append(
                f"| batchbald | {n} | {len(sub)} (subset) | {m.seconds:.2f} | {m.seconds / fwd.seconds:.2f} "
                f"| {mib(m.traced_peak)} | {mib(m.rss_extra)} |"
            )
            print(srows[-1], flush=True)
        notes.append(
            f"batchbald on the full pool, 100 picks: extrapolated as t(10 picks) + 90 x per-step time of "
            f"picks 6..10 ({per_step:.2f} s/step; from pick 5 on, every step scores "
            f"{build_strategy('batchbald').num_samples} sampled configurations)."
        )
    # The memory requirement, on its own: 60k x 128 embeddings, 1000 labelled centres.
    e60 = np.random.default_rng(0).normal(size=(60_000, 128)).astype(np.float32)
    c1k = np.random.default_rng(1).normal(size=(1000, 128)).astype(np.float32)
    kc = Measure(lambda: kcenter_greedy(e60, c1k, 100))
    notes.append(
        f"core-set requirement check: greedy k-center on random 60000 x 128 float32 embeddings with 1000 "
        f"labelled centres, 100 picks: {kc.seconds:.2f} s, tracemalloc peak {mib(kc.traced_peak)} MiB, "
        f"RSS +{mib(kc.rss_extra)} MiB (limit 1024 MiB). An N x N float32 matrix would be "
        f"{60_000**2 * 4 / 2**30:.1f} GiB."
    )

    text = "\n".join(
        [
            "# Strategy selection cost on the full MNIST pool",
            "",
            "Produced by:",
            "",
            "```",
            command.strip(),
            "```",
            "",
            f"Default CNN trained on {len(labelled)} random labels ({args.train_steps} Adam steps, {train_s:.0f} s, "
            f"test accuracy {acc:.3f}); candidates: the other {len(cand)} pool images. torch threads: "
            f"{torch.get_num_threads()}; 2 CPU cores shared with other jobs, so compare ratios, not seconds. "
            f"Load average at start / end: {load0:.1f} / {os.getloadavg()[0]:.1f}.",
            "",
            "Memory: 'traced' = tracemalloc peak (Python + NumPy, not torch); 'RSS' = sampled peak process RSS "
            "minus RSS before the call (includes torch; approximate). Both in MiB.",
            "",
            "## Model passes the context provides (once per round, shared by all strategies)",
            "",
            "| what | seconds | x forward | traced MiB | RSS MiB |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "## Selection given those arrays",
            "",
            f"bald and batchbald use T = {args.mc_samples} MC samples: the {args.mc_passes} measured passes tiled "
            f"{args.mc_samples // args.mc_passes}x, which costs what {args.mc_samples} real passes cost. Model-based "
            "strategies (needs `model`/`inputs`: regrad, exgrad, gradnorm) run their own passes inside `select`, so "
            f"their time includes them; they are measured on {args.model_based_subset} evenly spaced candidates, "
            "their ratio is to a forward pass over that same subset, and the full-pool time is extrapolated "
            "linearly.",
            "",
            "| strategy | query size | candidates | seconds | x forward | traced MiB | RSS MiB |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *srows,
            "",
            *[f"- {n}" for n in notes],
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
