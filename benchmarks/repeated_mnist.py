"""Repeated-MNIST redundancy check (Kirsch et al., BatchBALD, NeurIPS 2019, section 5.1).

Each pool image appears 3 times with small Gaussian noise. Query size 10 to a budget of 300 labels from a
class-balanced initial set of 20 (2 per class), for batchbald, coreset, badge, bald, entropy and random over 3
seeds. Batch-aware strategies should avoid filling a batch with near-copies; BALD and entropy score each
candidate alone and take all copies of the best one.

Every run goes through ``al.loop.Experiment`` into a SQLite store, so the script is resumable: run the same
command again and it continues the unfinished runs and skips the finished ones. The results file is rewritten
from the store at the end (``--report-only`` rewrites it from whatever the store holds).

Scaled down to fit 2 shared CPU cores (the defaults, all stated in the results file):
- the pool is ``--base-size`` MNIST training images (a seeded random subset) x 3 noisy copies, and every
  round scores the whole pool (no pool subset, which would break up the copies);
- the model is ``--model`` (default ``mlp``: 2 hidden layers of 128 with dropout 0.25), not the paper's CNN.

    AL_DATA_DIR=../shared/data .venv/bin/python benchmarks/repeated_mnist.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from al.data import load_dataset, repeat_with_noise  # noqa: E402
from al.loop import Experiment, ExperimentConfig  # noqa: E402
from al.store import Store  # noqa: E402

STRATEGIES = ["batchbald", "coreset", "badge", "bald", "entropy", "random"]
MILESTONES = [20, 50, 100, 150, 200, 250, 300]


def build_pool(base_size: int, seed: int = 0):
    mnist = load_dataset("mnist")
    base = mnist.subset(n_pool=base_size, seed=seed) if base_size and base_size < mnist.n_pool else mnist
    return repeat_with_noise(base, name=f"repeated-mnist-{base.n_pool}x3")


def run_all(args: argparse.Namespace) -> None:
    ds = build_pool(args.base_size)
    store = Store(args.store)
    for seed in args.seeds:  # seeds outer: a partial store holds every strategy of the first seeds
        for strat in args.strategies:
            name = f"{ds.name}-{args.model}-{strat}-seed{seed}"
            cfg = ExperimentConfig(
                dataset=ds.name,
                strategy=strat,
                budget=args.budget,
                init_size=20,
                init_balanced=True,
                query_size=10,
                seed=seed,
                model=args.model,
                epochs=args.epochs,
                min_steps=args.min_steps,
                pool_subset=0,
                mc_samples=args.mc_samples,
            )
            t0 = time.perf_counter()
            st = Experiment(cfg, store, name=name, dataset=ds).run()
            print(f"{name}: {len(st.labels)} labels, {time.perf_counter() - t0:.0f} s", flush=True)


def redundancy(store: Store, run: str, n_base: int) -> tuple[int, int, int]:
    """(picks that are a near-copy of another pick in the same batch, picks that are a near-copy of a sample
    labelled in an earlier round, total picks). Near-copy: same source image (id mod n_base)."""
    labels = store.labels(run)
    earlier = set(labels[labels.round_idx == 0].sample_id % n_base)
    within = before = total = 0
    q = store.queries(run)
    for _, grp in q[q.round_idx > 0].groupby("round_idx"):
        batch: set[int] = set()
        for sid in grp.sort_values("rank").sample_id:
            src = int(sid) % n_base
            within += src in batch
            before += src in earlier and src not in batch
            batch.add(src)
            total += 1
        earlier |= batch
    return within, before, total


def report(args: argparse.Namespace, command: str) -> str:
    store = Store(args.store)
    curves = store.curves()
    n_base = args.base_size
    prefix = f"repeated-mnist-{n_base}x3-{args.model}-"
    curves = curves[curves.run.str.startswith(prefix)]
    runs = store.runs()
    runs = runs[runs.run.str.startswith(prefix)]
    lines = [
        f"# Repeated-MNIST: query size 10, budget {args.budget}",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    finished = runs[runs.status == "finished"]
    expected = len(args.seeds) * len(args.strategies)
    if len(finished) < expected:
        lines += [
            f"**PARTIAL**: {len(finished)} of {expected} runs finished (the others are missing or stopped "
            f"part-way; their completed rounds are included below where marked). Resume with the same "
            f"command.",
            "",
        ]
    lines += [
        "Protocol (scaled down to 2 shared CPU cores): pool = "
        f"{n_base} MNIST training images (seeded subset) x 3 copies, each copy with its own N(0, 0.1^2) noise "
        f"on the normalised pixels (`al.data.repeat_with_noise`, the construction of the registered "
        f"`repeated-mnist`); the whole pool of {3 * n_base} is scored every round; initial set 2 per class (20), "
        f"query size 10, budget {args.budget}; model `{args.model}` retrained from scratch each round "
        f"(epochs {args.epochs}, at least {args.min_steps} Adam steps); MC-dropout samples "
        f"{args.mc_samples}; full MNIST test set (10k). Seeds {', '.join(map(str, args.seeds))}.",
        "",
        "Accuracy (%) at a number of labels, mean +- std over seeds (n = seeds with that point):",
        "",
        "| strategy | " + " | ".join(str(m) for m in MILESTONES) + " | AUBC | copies in batch | copies of earlier |",
        "| --- | " + " | ".join("---" for _ in MILESTONES) + " | --- | --- | --- |",
    ]
    for strat in args.strategies:
        c = curves[curves.strategy == strat]
        if c.empty:
            lines.append(f"| {strat} | " + " | ".join("-" for _ in MILESTONES) + " | - | - | - |")
            continue
        cells = []
        for m in MILESTONES:
            a = c[c.n_labelled == m].accuracy * 100
            cells.append(f"{a.mean():.1f} +- {a.std(ddof=0):.1f} (n={len(a)})" if len(a) else "-")
        # AUBC over complete runs only: mean accuracy over the acquisition steps (accuracy is already in [0, 1])
        full = [g for _, g in c.groupby("run") if g.n_labelled.max() >= args.budget]
        aubc = [g.sort_values("n_labelled").accuracy.mean() for g in full]
        aubc_s = f"{np.mean(aubc):.3f} +- {np.std(aubc):.3f} (n={len(aubc)})" if aubc else "-"
        dups = [redundancy(store, r, n_base) for r in c.run.unique()]
        w, b, t = (sum(x[i] for x in dups) for i in range(3))
        lines.append(
            f"| {strat} | " + " | ".join(cells) + f" | {aubc_s} | {w}/{t} ({100 * w / max(t, 1):.0f}%) "
            f"| {b}/{t} ({100 * b / max(t, 1):.0f}%) |"
        )
    lines += [
        "",
        "AUBC: mean test accuracy over all rounds from 20 to the budget (one value per run), mean +- std over "
        "seeds. Copies in batch: acquired samples whose source image (id mod "
        f"{n_base}) was already picked in the same batch; copies of earlier: whose source image was labelled "
        "in an earlier round (including the initial set). Counts summed over the runs that have rounds; "
        "random picks would give about 0.5% and 5% here.",
        "",
        "Selection time per round (s, mean over rounds and seeds):",
        "",
        "| strategy | select s/round | train s/round |",
        "| --- | --- | --- |",
    ]
    for strat in args.strategies:
        c = curves[(curves.strategy == strat) & (curves.n_labelled > 20)]
        if not c.empty and "select_seconds" in c:
            lines.append(f"| {strat} | {c.select_seconds.mean():.2f} | {c.train_seconds.mean():.2f} |")
    return "\n".join(lines) + "\n"


def diagnose(args: argparse.Namespace) -> str:
    """Why does BatchBALD still take near-copies? One first-round query (balanced 20 labels, seed 0) at T=20 and
    T=100: in-batch copies of BALD's and BatchBALD's top 10, and the picks' gains and per-sample (aleatoric)
    entropies. A copy's BatchBALD gain is I(y'; w | y) = H(y' | y) - E_w H(y' | w): it stays large when the
    model's prediction for each weight sample is itself uncertain, because the labels of two copies are then
    modelled as independent noisy draws."""
    from al.learner import TorchLearner
    from strategies.bayesian import batchbald_select, conditional_entropy, mutual_information

    ds = build_pool(args.base_size)
    y = ds.train_y.numpy()
    g = np.random.default_rng(0)
    init = np.concatenate([g.choice(np.flatnonzero(y == c), 2, replace=False) for c in range(10)])
    learner = TorchLearner(args.model, 10, ds.input_shape, epochs=args.epochs, min_steps=args.min_steps, seed=0)
    learner.fit(ds.train_x[init], y[init])
    out = [
        "",
        "## Diagnostic: near-copies in one BatchBALD batch",
        "",
        f"Model `{args.model}` trained on 2 labels per class (seed 0); one query of 10 from the {ds.n_pool} pool.",
        "",
        "| T | strategy | source images of the 10 picks | in-batch copies | gains (nats) "
        "| mean E_w H[y given w] of picks |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for T in (args.mc_samples, 100):
        mc = learner.mc_predict_proba(ds.train_x, T, seed=1)
        cond = conditional_entropy(mc)
        bald = np.argsort(-mutual_information(mc), kind="stable")[:10]
        bb, gains = batchbald_select(mc, 10, np.random.default_rng(0))
        for name, pos, gn in (("bald", bald, mutual_information(mc)[bald]), ("batchbald", bb, gains)):
            src = pos % args.base_size
            out.append(
                f"| {T} | {name} | {' '.join(map(str, src))} | {10 - len(set(src))} | "
                f"{' '.join(f'{v:.2f}' for v in gn)} | {cond[pos].mean():.2f} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", default=f"sqlite:///{ROOT / 'benchmarks/results/repeated_mnist.db'}")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/repeated_mnist.md"))
    p.add_argument("--base-size", type=int, default=2000, help="MNIST images before tripling (0: all 60k)")
    p.add_argument("--strategies", nargs="+", default=STRATEGIES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--model", default="mlp")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--min-steps", type=int, default=300)
    p.add_argument("--mc-samples", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the 2 cores are shared)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--diagnose", action="store_true", help="append the near-copy diagnostic to the results file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "AL_DATA_DIR=../shared/data .venv/bin/python benchmarks/repeated_mnist.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    try:
        if not args.report_only:
            run_all(args)
    finally:
        text = report(args, command.strip())
        if args.diagnose:
            text += diagnose(args)
        Path(args.out).write_text(text)
        print(text)


if __name__ == "__main__":
    main()
