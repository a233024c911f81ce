"""BatchBALD beyond ``max_exact_configs``: stratified configurations (the paper's) against ancestral ones, measured
against exact joint mutual information.

Issue 16, part 2. Once a batch has more label configurations than ``max_exact_configs``, greedy BatchBALD
estimates H[y_i | batch] from drawn configurations. ``sampling="ancestral"`` (the old behaviour) draws
``num_samples`` configurations once and extends each by the new label at every step; ``sampling="stratified"``
(the new default, as in the paper and batchbald_redux) draws ``num_samples // T`` fresh configurations of the
whole batch from each MC sample at every step. Both keep the same number of configurations, so the gain loop
costs the same.

Small cases where everything is exact: C = 3 classes, T = 20 MC samples, a batch of n = 10 from 120 candidates
(40 sources x 3 noisy copies, as in Repeated-MNIST, so that redundancy matters), 12 pools, 3 selection seeds
each. For every batch: its exact joint MI I[y_1..y_10; w] (all 3^10 configurations enumerated), against that of
exact greedy (``max_exact_configs`` = 3^10); and the bias of the estimate, sum of the per-step gains minus the
batch's exact joint MI. Cost on a pool of realistic size: 2,000 candidates, 10 classes (Dirichlet(0.3) MC
probabilities), T = 20, a batch of 20 with the default settings (sampled from the 4th pick).
Times are wall-clock on a shared machine (other work ran beside it): compare within a row group, not closely.

    .venv/bin/python benchmarks/batchbald_sampling.py      # writes benchmarks/results/batchbald_sampling.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from strategies.bayesian import batchbald_select, conditional_entropy  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "batchbald_sampling.md"
T, C, N_SOURCES, COPIES, N = 20, 3, 40, 3, 10
#: (max_exact_configs, num_samples): sampled from the 5th pick at two costs, and the defaults (sampled from the 9th)
SETTINGS = [(27, 100), (27, 1000), (4096, 1000)]


def pool(seed: int) -> np.ndarray:
    """(T, 120, C) MC probabilities: per source a base logit and a per-MC-sample spread of its own size; each copy
    adds its own small noise (the same input seen three times, slightly perturbed)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(scale=2.0, size=(1, N_SOURCES, C))
    spread = rng.uniform(0.2, 3.0, size=(1, N_SOURCES, 1))
    z = base + spread * rng.normal(size=(T, N_SOURCES, C))
    z = np.repeat(z, COPIES, axis=1) + rng.normal(scale=0.3, size=(T, N_SOURCES * COPIES, C))
    e = np.exp(z - z.max(axis=2, keepdims=True))
    return e / e.sum(axis=2, keepdims=True)


def joint_mi(mc: np.ndarray, pos: np.ndarray) -> float:
    """Exact I[y_pos; w] = H[y_pos] - sum_j E_w H[y_j | w], enumerating all C^len(pos) configurations."""
    J = np.ones((mc.shape[0], 1))
    for j in pos:
        J = (J[:, :, None] * mc[:, j, None, :]).reshape(mc.shape[0], -1)
    pj = J.mean(axis=0)
    h = -(pj * np.log(np.where(pj > 0, pj, 1.0))).sum()
    return float(h - conditional_entropy(mc)[list(pos)].sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--pools", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3, help="selection seeds per pool")
    ap.add_argument("--cost-runs", type=int, default=3, help="timed runs per sampling on the large pool (0: none)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    # per setting and sampling: (joint MI loss vs exact greedy, estimate bias, seconds), one per pool x seed
    res: dict[tuple[int, int, str], list[tuple[float, float, float]]] = {}
    exact_mi, exact_bias = [], []
    for ps in range(args.pools):
        mc = pool(ps)
        pos_x, g_x = batchbald_select(mc, N, np.random.default_rng(0), max_exact_configs=C**N)
        best = joint_mi(mc, pos_x)
        exact_mi.append(best)
        exact_bias.append(float(g_x.sum()) - best)
        for mx, ns in SETTINGS:
            for sampling in ("ancestral", "stratified"):
                for s in range(args.seeds):
                    t0 = time.perf_counter()
                    pos, g = batchbald_select(
                        mc, N, np.random.default_rng([ps, s]), max_exact_configs=mx, num_samples=ns, sampling=sampling
                    )
                    dt = time.perf_counter() - t0
                    mi = joint_mi(mc, pos)
                    res.setdefault((mx, ns, sampling), []).append((best - mi, float(g.sum()) - mi, dt))
    n_runs = args.pools * args.seeds
    big = np.random.default_rng(99).dirichlet(np.ones(10) * 0.3, size=(T, 2000))
    cost: dict[str, list[float]] = {"ancestral": [], "stratified": []}
    for s in range(args.cost_runs):  # interleaved, CPU time of this process: the shared machine's load varies
        for sampling, times in cost.items():
            t0 = time.process_time()
            batchbald_select(big, 20, np.random.default_rng(s), sampling=sampling)
            times.append(time.process_time() - t0)
    lines = [
        "# BatchBALD's sampled regime: stratified vs ancestral configurations, against exact joint MI",
        "",
        "Produced by `.venv/bin/python benchmarks/batchbald_sampling.py` "
        f"({time.perf_counter() - t_start:.0f} s on the shared 2-core CPU).",
        "",
        (__doc__ or "").split("\n\n", 1)[1].split("\n\n    .venv")[0].strip(),
        "",
        f"Exact greedy: joint MI of its batches {np.mean(exact_mi):.4f} ± {np.std(exact_mi, ddof=1):.4f} nats "
        f"(mean ± std over {args.pools} pools); its summed gains equal the exact joint MI to "
        f"{max(abs(b) for b in exact_bias):.1e} nats (a check of the exact path).",
        "",
        f"Each cell: mean ± std over {args.pools} pools x {args.seeds} seeds = {n_runs} batches "
        "(loss: exact greedy's joint MI minus the batch's, >= 0 is worse; bias: summed per-step gains minus the "
        "batch's exact joint MI; max |bias| over the batches in brackets).",
        "",
        "| max_exact_configs | num_samples | sampling | joint MI below exact greedy (nats) | same batch as exact "
        "greedy | bias of the summed gains (nats) | ms per batch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (mx, ns, sampling), rows in res.items():
        a = np.asarray(rows)
        loss, bias, dt = a[:, 0], a[:, 1], a[:, 2]
        same = float(np.mean(np.abs(loss) < 1e-12))
        lines.append(
            f"| {mx} | {ns} | {sampling}{' (new default)' if sampling == 'stratified' else ' (old)'} | "
            f"{loss.mean():.4f} ± {loss.std(ddof=1):.4f} | {same:.2f} | {bias.mean():+.4f} ± {bias.std(ddof=1):.4f} "
            f"[{np.abs(bias).max():.3f}] | {np.median(dt) * 1e3:.0f} |"
        )
    lines += [
        "",
        "Cost on the realistic pool (2,000 x 10 classes, T = 20, 20 picks, default settings; CPU seconds of this "
        f"process, min of {args.cost_runs} interleaved runs): "
        + ", ".join(f"{k} {min(v):.2f} s" if v else f"{k} not timed" for k, v in cost.items())
        + ". Both keep about the same number of distinct configurations per step (measured on this pool: 696-1000 "
        "stratified, 705-1000 ancestral, from the 4th pick), which sets the gain loop's cost; the stratified "
        "draws of the whole batch at each step cost a few ms, which shows only on the small cases above.",
        "",
        "Issue 16 quoted, for C = 3, n = 10 and 12 pools of its own: ancestral 0.0107 ± 0.0022 nats below exact "
        "greedy, batchbald_redux's stratified sampling 0.0017, and summed gains 0.03 to 0.07 nats above the true "
        "joint MI (ancestral).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
