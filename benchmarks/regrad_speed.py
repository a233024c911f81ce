"""REGrad speed, side by side in one run, as ratios to a plain forward pass over the same inputs.

Measured on the default MNIST `cnn` and on `lenet5`, on real MNIST-test inputs: a no-grad forward pass, a naive
per-sample per-class autograd loop (timed on a subset, scaled per sample), torch.func vmap(grad) per class,
BackPACK's BatchL2Grad per class (if importable), and ours (all classes; top-3; M = 0 and M = 4; last layer only).
All references compute the same per-sample, per-class, per-layer gradient norms; their agreement with ours is
checked and reported. Each timing is the median of interleaved repeats. ``torch.set_num_threads(1)``: this machine
has 2 cores shared with other jobs, and single-threaded timings are far steadier there; ratios, not seconds, are
the result.

Then the rank agreement (Spearman) of the approximations (top-3 classes, last layer only) with the exact score,
on briefly trained models, over MNIST-test and Fashion-MNIST-test inputs.

    AL_DATA_DIR=../shared/data .venv/bin/python benchmarks/regrad_speed.py

References: Wang & Ji, CVPR 2024 (arXiv 2404.10124); Dangel et al., "BackPACK", ICLR 2020; torch.func (functorch).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from al.data import load_dataset, load_test_images  # noqa: E402
from al.learner import TorchLearner  # noqa: E402
from al.models import build_model  # noqa: E402
from strategies.regrad import discover_layers, gradient_norms, regrad_scores  # noqa: E402

BATCH = 256
# Every class backpropagated (the library default since issue 17; "predicted" needs only one): the cost the issue's
# goal is about.
ALL = dict(class_weighting="root", layer_alpha=0.0, n_perturbations=0)
M4 = dict(n_perturbations=4, sigma=0.1, aggregate="mean-grad")
# The defaults before issue 17: the predicted class only, one backward sweep per input.
PREVIOUS = dict(class_weighting="predicted", layer_alpha=-10.0, n_perturbations=0)


def forward(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        for i in range(0, len(x), BATCH):
            model(x[i : i + BATCH])


def groups(model: torch.nn.Module, x: torch.Tensor) -> list[list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for _, p in L.params] for L in discover_layers(model, x[:2])]


def naive(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """(n, C, L) by one autograd call per sample and class."""
    gr = groups(model, x)
    params = dict(model.named_parameters())
    plist = [params[n] for g in gr for n in g]
    out = []
    for i in range(len(x)):
        logp = torch.log_softmax(model(x[i : i + 1]), 1)[0]
        per_c = []
        for k in range(len(logp)):
            gs = dict(
                zip([n for g in gr for n in g], torch.autograd.grad(logp[k], plist, retain_graph=True), strict=True)
            )
            per_c.append([float(torch.sqrt(sum(gs[n].pow(2).sum() for n in g))) for g in gr])
        out.append(per_c)
    return np.array(out)


def torch_func(model: torch.nn.Module, x: torch.Tensor, n_classes: int = 10) -> np.ndarray:
    from torch.func import functional_call, grad, vmap

    gr = groups(model, x)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def logp(p, xi, k):
        return torch.log_softmax(functional_call(model, p, (xi[None],)), 1)[0, k]

    out = np.zeros((len(x), n_classes, len(gr)))
    f = vmap(grad(logp), in_dims=(None, 0, None))
    for s in range(0, len(x), BATCH // 2):
        xb = x[s : s + BATCH // 2]
        for k in range(n_classes):
            g = f(params, xb, k)
            for li, names in enumerate(gr):
                out[s : s + len(xb), k, li] = torch.sqrt(sum(g[n].flatten(1).pow(2).sum(1) for n in names)).numpy()
    return out


def backpack_l2(model: torch.nn.Module, x: torch.Tensor, n_classes: int = 10) -> np.ndarray:
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad

    m = extend(copy.deepcopy(model).eval())
    gr = groups(m, x)
    params = dict(m.named_parameters())
    out = np.zeros((len(x), n_classes, len(gr)))
    for s in range(0, len(x), BATCH):
        xb = x[s : s + BATCH]
        for k in range(n_classes):
            # BackPACK frees the module inputs it stored after each backward pass, so each class needs its own
            # forward pass (its documented use: forward, then backward inside the context).
            logp = torch.log_softmax(m(xb), 1)
            with backpack(BatchL2Grad()):
                logp[:, k].sum().backward()
            for li, names in enumerate(gr):
                out[s : s + len(xb), k, li] = torch.sqrt(sum(params[n].batch_l2 for n in names)).detach().numpy()
            for p in m.parameters():
                p.grad = None
    return out


def ours_norms(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    gn = gradient_norms(model, x)
    out = np.zeros((len(x), gn.probs.shape[1], len(gn.layers)))
    for r in range(gn.classes.shape[1]):
        out[np.arange(len(x)), gn.classes[:, r]] = gn.norms[:, r]
    return out


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1024, help="inputs timed")
    ap.add_argument("--n-naive", type=int, default=32, help="inputs for the naive loop (scaled per sample)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-rank", type=int, default=2000, help="inputs per set for the Spearman agreement")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "regrad_speed.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*batching rule.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    t0 = time.perf_counter()
    try:
        import backpack  # noqa: F401

        have_backpack = True
    except ImportError:
        have_backpack = False

    ds = load_dataset("mnist")
    x = ds.test_x[: args.n]
    x_fa = load_test_images("fashion-mnist")[0]
    lines = [
        "# REGrad speed: ratios to a plain forward pass, side by side in one run",
        "",
        f"Produced by `AL_DATA_DIR=../shared/data .venv/bin/python "
        f"benchmarks/regrad_speed.py {' '.join(sys.argv[1:])}`".rstrip()
        + f" ({time.strftime('%Y-%m-%d')}, "
        f"torch {torch.__version__}, `torch.set_num_threads(1)` on a 2-core CPU shared with other jobs "
        f"(load average {os.getloadavg()[0]:.1f} at the start); "
        f"each figure the median of {args.repeats} interleaved repeats).",
        "",
        f"Inputs: the first {args.n} MNIST-test images, chunks of {BATCH}. Every method computes the same "
        f"per-sample, per-class (10), per-layer gradient norms of log p(k|x) (our top-3 and last-layer "
        f"variants compute fewer). The naive loop is timed on {args.n_naive} inputs and scaled per input. "
        "BackPACK: "
        + (
            f"backpack-for-pytorch {version('backpack-for-pytorch')}."
            if have_backpack
            else "not installed (pip install backpack-for-pytorch failed)."
        ),
        "",
    ]
    for model_name in ("cnn", "lenet5"):
        torch.manual_seed(0)
        model = build_model(model_name, 10, (1, 28, 28)).eval()
        # agreement of every reference with ours on a small subset
        xs = x[:64]
        ref = ours_norms(model, xs)
        agree = {"naive loop": naive(model, xs[:8]), "torch.func vmap(grad)": torch_func(model, xs)}
        if have_backpack:
            agree["BackPACK BatchL2Grad"] = backpack_l2(model, xs)
        err = {
            k: float(np.max(np.abs(v - ref[: len(v)]) / np.maximum(np.abs(ref[: len(v)]), 1e-12)))
            for k, v in agree.items()
        }
        methods: dict[str, Callable[[], object]] = {
            "forward pass (no grad)": lambda: forward(model, x),
            "ours, exact, all 10 classes, M=0": lambda: regrad_scores(model, x, **ALL),
            "ours, top-3 classes, M=0": lambda: regrad_scores(model, x, top_k=3, **ALL),
            "ours, predicted class only (defaults before issue 17), M=0": lambda: regrad_scores(model, x, **PREVIOUS),
            "ours, last layer only, all classes, M=0": lambda: regrad_scores(model, x, last_layer_only=True, **ALL),
            "ours, exact, all 10 classes, M=4": lambda: regrad_scores(model, x, **{**ALL, **M4}),
            "ours, top-3 classes, M=4": lambda: regrad_scores(model, x, top_k=3, **{**ALL, **M4}),
            "torch.func vmap(grad), 10 classes": lambda: torch_func(model, x),
        }
        if have_backpack:
            methods["BackPACK BatchL2Grad, 10 classes"] = lambda: backpack_l2(model, x)
        times: dict[str, list[float]] = {k: [] for k in methods}
        times["naive loop (scaled)"] = []
        for _ in range(args.repeats):
            for k, fn in methods.items():
                times[k].append(timed(fn))
            times["naive loop (scaled)"].append(timed(lambda: naive(model, x[: args.n_naive])) * args.n / args.n_naive)
        med = {k: statistics.median(v) for k, v in times.items()}
        f = med["forward pass (no grad)"]
        ours = med["ours, exact, all 10 classes, M=0"]
        print(model_name, {k: round(v / f, 2) for k, v in med.items()}, err, flush=True)
        lines += [
            f"## `{model_name}`",
            "",
            f"Forward pass: {f:.3f} s for {args.n} inputs.",
            "",
            "| method | time / forward pass | ours is faster by |",
            "| --- | --- | --- |",
        ]
        for k, v in med.items():
            speed = "" if k.startswith("ours") or k.startswith("forward") else f"{v / ours:.1f}x"
            lines.append(f"| {k} | {v / f:.2f} | {speed} |")
        lines += [
            "",
            "Largest relative difference of each reference's per-layer norms from ours (64 inputs; naive "
            "on 8): " + ", ".join(f"{k} {v:.1e}" for k, v in err.items()) + ".",
            "",
        ]

    # ---- rank agreement of the approximations, on briefly trained models --------------------------------------
    lines += [
        "## Rank agreement of the approximations with the exact score",
        "",
        f"Models trained with `TorchLearner` on a seeded 10000 MNIST training images, 2 epochs. Exact = "
        "class_weighting root, layer_alpha 0, M 0, over all 10 classes and layers; "
        f"Spearman rho over {args.n_rank} inputs "
        f"of each set.",
        "",
        "| model | inputs | top-3 classes | last layer only | top-3, last layer |",
        "| --- | --- | --- | --- | --- |",
    ]
    idx = torch.from_numpy(np.sort(np.random.default_rng(0).permutation(len(ds.train_y))[:10000]))
    for model_name in ("cnn", "lenet5"):
        learner = TorchLearner(model_name, 10, (1, 28, 28), epochs=2, min_steps=0, batch_size=128, seed=0)
        learner.fit(ds.train_x[idx], ds.train_y[idx])
        model = learner.module_
        for set_name, xs in (("MNIST-test", ds.test_x[: args.n_rank]), ("Fashion-MNIST-test", x_fa[: args.n_rank])):
            gn = gradient_norms(model, xs)
            kw = dict(class_weighting="root", layer_alpha=0.0)  # every class and layer counts: the hardest case
            exact = gn.score(**kw)
            rho = [
                spearmanr(exact, gn.score(top_k=3, **kw)).statistic,
                spearmanr(exact, gn.score(last_layer_only=True, **kw)).statistic,
                spearmanr(exact, gn.score(top_k=3, last_layer_only=True, **kw)).statistic,
            ]
            lines.append(f"| {model_name} | {set_name} | {rho[0]:.4f} | {rho[1]:.4f} | {rho[2]:.4f} |")
            print(model_name, set_name, rho, flush=True)
    lines += ["", f"Total run time {time.perf_counter() - t0:.0f} s."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
