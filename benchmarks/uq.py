"""OOD detection and calibration of uncertainty scores (REGrad and baselines) on MNIST / Fashion-MNIST.

    AL_DATA_DIR=../shared/data python benchmarks/uq.py            # writes benchmarks/results/uq.md

Scores, each oriented so that HIGHER = MORE UNCERTAIN:
  regrad    REGrad with the library defaults (strategies.regrad), Wang & Ji, CVPR 2024
  regrad-root  REGrad with square-root class weighting and uniform layer weights, no perturbation (the
            defaults before the OOD ablation chose "predicted" and layer_alpha -10): shows what that choice costs
  exgrad    expected gradient norm sum_k p_k ||grad log p_k||, Igoe et al. 2022
  gradnorm  minus GradNorm (GradNorm is higher in-distribution), Huang, Geng & Li, NeurIPS 2021
  msp       1 - max_k p_k, Hendrycks & Gimpel, ICLR 2017
  entropy   predictive entropy
  mi        MC-dropout mutual information (BALD), Gal, Islam & Ghahramani, ICML 2017; T = --mc-samples passes

OOD detection (the OOD set is the positive class): AUROC, AUPR-out (OOD positive, score as is), AUPR-in
(in-distribution positive, minus the score), FPR at 95% TPR (the fraction of OOD inputs accepted when the threshold
keeps 95% of the in-distribution inputs). References: Hendrycks & Gimpel (ICLR 2017) for the metrics.

Calibration of the uncertainty (how well each score ranks the model's own errors), per model and test set:
AUROC of misclassification detection (errors positive) and the area under the accuracy-rejection curve (ARC:
reject the most uncertain fraction r of the inputs, take the accuracy of the rest, average over r in [0, 1) on the
grid r = j/N; higher is better; an oracle ranking reaches 1 - err^2/2 roughly, a random one the plain accuracy).
Plus the model's NLL and expected calibration error (ECE, 15 equal-width confidence bins; Guo et al., ICML 2017).
References: Nadeem, Zucker & Hanczar (2009) for accuracy-rejection curves.

Test sets are random subsets (seeded) to keep the run within CPU minutes; their sizes are printed in uq.md.
Models are cached under $AL_CACHE_DIR/uq-models so that a rerun only rescores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from al.data import load_dataset, load_test_images  # noqa: E402
from al.learner import TorchLearner  # noqa: E402

SCORES = ("regrad", "regrad-root", "exgrad", "gradnorm", "msp", "entropy", "mi")


# --- metrics (plain functions of arrays) --------------------------------------------------------------------------
def ood_metrics(s_in: np.ndarray, s_out: np.ndarray) -> dict[str, float]:
    """s_in: (N_in,), s_out: (N_out,) uncertainty scores (higher = more uncertain). Returns AUROC, AUPR-in,
    AUPR-out and FPR@95%TPR (in-distribution as the positive class of the TPR, as in Liang et al. 2018)."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]  # 1 = OOD
    s = np.r_[s_in, s_out].astype(np.float64)
    fpr_in, tpr_in, _ = roc_curve(1 - y, -s)  # in-distribution positive, scored by certainty
    fpr95 = float(fpr_in[np.searchsorted(tpr_in, 0.95, side="left")])
    return {
        "AUROC": float(roc_auc_score(y, s)),
        "AUPR-in": float(average_precision_score(1 - y, -s)),
        "AUPR-out": float(average_precision_score(y, s)),
        "FPR@95TPR": fpr95,
    }


def accuracy_rejection_area(scores: np.ndarray, correct: np.ndarray) -> float:
    """Area under the accuracy-rejection curve. scores: (N,) uncertainty; correct: (N,) bool.

    Rejecting the j most uncertain inputs (j = 0..N-1), the accuracy of the N - j kept ones, averaged over j.
    Ties in the score are broken by the stable order of the input, which is random for a random test subset."""
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")  # most certain first
    c = np.asarray(correct, dtype=np.float64)[order]
    kept_acc = np.cumsum(c) / np.arange(1, len(c) + 1)  # accuracy of the k most certain, k = 1..N
    return float(kept_acc.mean())


def misclassification_auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of detecting the model's errors by the score; NaN when there is no error (or no correct answer)."""
    from sklearn.metrics import roc_auc_score

    err = ~np.asarray(correct, dtype=bool)
    if err.all() or not err.any():
        return float("nan")
    return float(roc_auc_score(err, scores))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of (bin share) * |accuracy - mean confidence|. probs: (N, C)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


# --- scores -------------------------------------------------------------------------------------------------------
def uncertainty_scores(
    learner: TorchLearner, x: torch.Tensor, mc_samples: int = 20, seed: int = 0, timings: dict[str, float] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every score of :data:`SCORES` for inputs x: (N, 1, 28, 28); returns ({name: (N,)}, probs (N, C))."""
    from strategies import regrad as rg
    from strategies.bayesian import mutual_information
    from strategies.uncertainty import entropy_score

    model = learner.module_
    out: dict[str, np.ndarray] = {}
    t = timings if timings is not None else {}

    def timed(name: str, fn: Callable[[], np.ndarray]) -> None:
        t0 = time.perf_counter()
        out[name] = np.asarray(fn(), dtype=np.float64)
        t[name] = t.get(name, 0.0) + time.perf_counter() - t0

    probs = learner.predict_proba(x)
    if rg.DEFAULT_N_PERTURBATIONS == 0:
        # Without perturbations REGrad and ExGrad weight the same per-class gradient norms differently: one pass
        # of gradient_norms serves both (they are timed together under "regrad").
        t0 = time.perf_counter()
        gn = rg.gradient_norms(model, x)
        out["regrad"] = gn.score()  # the library's default class weighting, layer weights and combination
        out["regrad-root"] = gn.score("root", 0.0, "linear")
        out["exgrad"] = gn.score("expected", 0.0, "linear")
        t["regrad"] = t.get("regrad", 0.0) + time.perf_counter() - t0
    else:
        timed("regrad", lambda: rg.regrad_scores(model, x))
        timed(
            "regrad-root",
            lambda: rg.regrad_scores(model, x, class_weighting="root", layer_alpha=0.0, n_perturbations=0),
        )
        timed(
            "exgrad", lambda: rg.regrad_scores(model, x, class_weighting="expected", layer_alpha=0.0, n_perturbations=0)
        )
    timed("gradnorm", lambda: -rg.gradnorm_scores(model, x))
    out["msp"] = 1.0 - probs.max(1)
    out["entropy"] = entropy_score(probs)
    timed("mi", lambda: mutual_information(learner.mc_predict_proba(x, mc_samples, seed=seed)))
    return {k: out[k] for k in SCORES}, probs


# --- models -------------------------------------------------------------------------------------------------------
def train_model(
    dataset: str,
    n_labels: int,
    seed: int,
    epochs: int,
    min_steps: int,
    model: str = "cnn",
    pad: int = 0,
    early_stopping: bool = False,
    device: str = "cpu",
) -> tuple[TorchLearner, float]:
    """``model`` (the project's CNN by default) trained on a seeded random ``n_labels`` subset of ``dataset``'s
    training set (cached). ``pad``: pixels of background added on each side (28x28 -> 32x32 with 2);
    ``early_stopping``: train until the loss on 20% of the subset held out stops improving (patience 3, at most
    ``epochs`` epochs) instead of the fixed schedule. ``device``: where it trains and scores (the cache holds CPU
    tensors, so a model trained on a GPU is reused on the CPU and back)."""
    ds = load_dataset(dataset)
    cache = Path(os.environ.get("AL_CACHE_DIR", "/tmp")) / "uq-models"
    cache.mkdir(parents=True, exist_ok=True)
    extra = (
        "" if (model, pad, early_stopping) == ("cnn", 0, False) else f"-{model}-p{pad}{'-es' if early_stopping else ''}"
    )
    f = cache / f"{dataset}-n{n_labels}-s{seed}-e{epochs}-m{min_steps}{extra}.pt"
    shape = (ds.input_shape[0], ds.input_shape[1] + 2 * pad, ds.input_shape[2] + 2 * pad)
    kw = {"early_stopping": True, "max_epochs": epochs} if early_stopping else {}
    learner = TorchLearner(
        model, ds.n_classes, shape, epochs=epochs, min_steps=min_steps, seed=seed, device=device, **kw
    )
    if f.exists():
        learner.reset(seed)
        learner.module_.load_state_dict(torch.load(f, map_location="cpu"))
        learner.module_.eval()
        return learner, 0.0
    ids = np.sort(np.random.default_rng(seed).permutation(ds.n_pool)[:n_labels])
    t0 = time.perf_counter()
    learner.fit(pad_images(ds.train_x[ids], pad, ds.mean[0], ds.std[0]), ds.train_y[ids], seed=seed)
    secs = time.perf_counter() - t0
    torch.save({k: v.cpu() for k, v in learner.module_.state_dict().items()}, f)
    return learner, secs


def pad_images(x: torch.Tensor, pad: int, mean: float, std: float) -> torch.Tensor:
    """Normalised images with ``pad`` pixels of background (raw pixel 0) on each side."""
    if not pad:
        return x
    return torch.nn.functional.pad(x, (pad, pad, pad, pad), value=-mean / std)


def subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n <= 0 or n >= len(y):
        return x, y
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(y))[:n]))
    return x[idx], y[idx]


def rotate(x: torch.Tensor, degrees: float, mean: float, std: float) -> torch.Tensor:
    """Rotate normalised images, filling the corners with the background (pixel 0), not with normalised 0."""
    from torchvision.transforms.functional import rotate as tv_rotate

    return (tv_rotate(x * std + mean, degrees) - mean) / std


# --- the benchmark ------------------------------------------------------------------------------------------------
def _table(rows: list[dict], cols: list[str], best: dict[str, str]) -> str:
    """Markdown table; per group (column 'set'), the best value of each metric column in bold."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["set"], []).append(r)
    for g in groups.values():
        winners = {}
        for c, how in best.items():
            vals = [r[c] for r in g if r.get(c) == r.get(c)]
            if vals:
                winners[c] = max(vals) if how == "max" else min(vals)
        for r in g:
            cells = []
            for c in cols:
                v = r[c]
                if isinstance(v, float):
                    txt = "n/a" if v != v else f"{v:.3f}"
                    if c in winners and v == winners[c]:
                        txt = f"**{txt}**"
                else:
                    txt = str(v)
                cells.append(txt)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/uq.py", description=__doc__.splitlines()[0])
    p.add_argument("--n-ood", type=int, default=2000, help="test inputs per set for OOD detection (0: all 10k)")
    p.add_argument("--n-cal", type=int, default=1000, help="test inputs per set for calibration (0: all 10k)")
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[100, 1000, 10000],
        help="labels of the calibration models; the largest also serves for OOD",
    )
    p.add_argument("--rotations", type=float, nargs="+", default=[15, 30, 45, 60])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--min-steps", type=int, default=300)
    p.add_argument("--large-epochs", type=int, default=10, help="epochs for models on >= 5000 labels")
    p.add_argument("--mc-samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "uq.md"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/uq.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    n_scored = 0

    def epochs_for(n: int) -> int:
        return args.large_epochs if n >= 5000 else args.epochs

    mn, fa = load_dataset("mnist"), load_dataset("fashion-mnist")
    large = max(args.sizes)
    trained: dict[str, float] = {}

    # OOD detection
    ood_rows: list[dict] = []
    ood_cases = [
        ("mnist", mn, [("fashion-mnist", "Fashion-MNIST"), ("notmnist", "notMNIST")]),
        ("fashion-mnist", fa, [("mnist", "MNIST")]),
    ]
    for name, ds, outs in ood_cases:
        learner, secs = train_model(name, large, args.seed, epochs_for(large), args.min_steps)
        trained[f"{name} {large}"] = max(secs, trained.get(f"{name} {large}", 0.0))
        x_in, y_in = subset(ds.test_x, ds.test_y, args.n_ood, args.seed)
        s_in, probs_in = uncertainty_scores(learner, x_in, args.mc_samples, args.seed, timings)
        n_scored += len(x_in)
        acc = float((probs_in.argmax(1) == y_in.numpy()).mean())
        for oname, label in outs:
            xo, yo = load_test_images(oname, mean=ds.mean[0], std=ds.std[0])
            xo, _ = subset(xo, yo, args.n_ood, args.seed + 1)
            s_out, _ = uncertainty_scores(learner, xo, args.mc_samples, args.seed, timings)
            n_scored += len(xo)
            for k in SCORES:
                ood_rows.append(
                    {"set": f"{name} (acc {acc:.3f}) vs {label}", "score": k, **ood_metrics(s_in[k], s_out[k])}
                )
        print(f"OOD {name} done at {time.perf_counter() - t_start:.0f}s", flush=True)

    # calibration of the uncertainty
    cal_rows: list[dict] = []
    model_rows: list[dict] = []
    x_c, y_c = subset(mn.test_x, mn.test_y, args.n_cal, args.seed + 2)
    sets = [("MNIST-test", x_c)] + [(f"rotated {d:g}°", rotate(x_c, d, mn.mean[0], mn.std[0])) for d in args.rotations]
    for n in args.sizes:
        learner, secs = train_model("mnist", n, args.seed, epochs_for(n), args.min_steps)
        # the largest model was already trained (or loaded) for OOD detection: keep that time
        trained[f"mnist {n}"] = max(secs, trained.get(f"mnist {n}", 0.0))
        for sname, xs in sets:
            scores, probs = uncertainty_scores(learner, xs, args.mc_samples, args.seed, timings)
            n_scored += len(xs)
            y = y_c.numpy()
            correct = probs.argmax(1) == y
            model_rows.append(
                {
                    "set": f"{n} labels",
                    "test set": sname,
                    "accuracy": float(correct.mean()),
                    "NLL": nll(probs, y),
                    "ECE": expected_calibration_error(probs, y),
                }
            )
            for k in SCORES:
                cal_rows.append(
                    {
                        "set": f"{n} labels, {sname} (acc {correct.mean():.3f})",
                        "score": k,
                        "misclassification AUROC": misclassification_auroc(scores[k], correct),
                        "accuracy-rejection area": accuracy_rejection_area(scores[k], correct),
                    }
                )
        print(f"calibration {n} labels done at {time.perf_counter() - t_start:.0f}s", flush=True)

    write_markdown(
        Path(args.out),
        command,
        args,
        ood_rows,
        cal_rows,
        model_rows,
        trained,
        timings,
        n_scored,
        time.perf_counter() - t_start,
    )
    print(f"wrote {args.out}")
    return 0


def _mean_rank(rows: list[dict], metric: str, higher: bool) -> dict[str, float]:
    """Mean rank (1 = best) of each score over the table's groups."""
    groups: dict[str, dict[str, float]] = {}
    for r in rows:
        groups.setdefault(r["set"], {})[r["score"]] = r[metric]
    ranks: dict[str, list[float]] = {k: [] for k in SCORES}
    for g in groups.values():
        vals = np.array([g[k] for k in SCORES], dtype=np.float64)
        if np.isnan(vals).any():
            continue
        order = (-vals if higher else vals).argsort().argsort() + 1
        for k, rk in zip(SCORES, order, strict=True):
            ranks[k].append(float(rk))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in ranks.items()}


def write_markdown(
    path: Path,
    command: str,
    args: argparse.Namespace,
    ood_rows: list[dict],
    cal_rows: list[dict],
    model_rows: list[dict],
    trained: dict[str, float],
    timings: dict[str, float],
    n_scored: int,
    total_s: float,
) -> None:
    ood_rank = _mean_rank(ood_rows, "AUROC", True)
    cal_rank = _mean_rank(cal_rows, "misclassification AUROC", True)
    arc_rank = _mean_rank(cal_rows, "accuracy-rejection area", True)
    large = max(args.sizes)
    lines = [
        "# Uncertainty quantification: OOD detection and calibration",
        "",
        "Produced by (from the repository root, `AL_DATA_DIR` pointing at the data):",
        "",
        "```",
        command,
        "```",
        "",
        f"Model: the project's `cnn` (2 conv + dense, dropout 0.25), seed {args.seed}, Adam lr 1e-3, batch 64, "
        f"trained on a seeded random subset of the training set: {args.epochs} epochs and at least "
        f"{args.min_steps} steps below 5000 labels, {args.large_epochs} epochs from 5000 labels. "
        f"'All labels' is represented by a {large}-label subset (60k would take CPU-hours here). "
        f"Test sets are seeded random subsets: {args.n_ood or 'all'} inputs per set for OOD, "
        f"{args.n_cal or 'all'} for calibration (the same MNIST-test inputs, rotated, for every rotation). "
        f"MC dropout: {args.mc_samples} passes. One model per setting (one seed), so differences in the third "
        f"decimal are within noise. Every score is oriented so that higher = more uncertain (GradNorm negated).",
        "",
        f"Total {total_s:.0f} s on this machine ({n_scored} inputs scored); scoring time by score, all sets "
        f"together: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + (" (regrad, regrad-root and exgrad share one gradient pass)" if "exgrad" not in timings else "")
        + ".",
        "",
        "## OOD detection",
        "",
        f"The {large}-label model of each in-distribution set; OOD inputs normalised with the in-distribution "
        "statistics. Bold: best per pair.",
        "",
        _table(
            ood_rows,
            ["set", "score", "AUROC", "AUPR-in", "AUPR-out", "FPR@95TPR"],
            {"AUROC": "max", "AUPR-in": "max", "AUPR-out": "max", "FPR@95TPR": "min"},
        ),
        "",
        "Mean rank by AUROC over the pairs (1 = best): "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(ood_rank.items(), key=lambda t: t[1]))
        + ".",
        "",
        "## Calibration of the uncertainty",
        "",
        "How well each score ranks the model's own errors. Misclassification AUROC: errors positive. "
        "Accuracy-rejection area: mean accuracy of the kept inputs when rejecting the most uncertain fraction, over "
        "all fractions (higher is better). Bold: best per model and test set.",
        "",
        _table(
            cal_rows,
            ["set", "score", "misclassification AUROC", "accuracy-rejection area"],
            {"misclassification AUROC": "max", "accuracy-rejection area": "max"},
        ),
        "",
        "Mean rank over the model x test-set cells (1 = best): misclassification AUROC "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cal_rank.items(), key=lambda t: t[1]))
        + "; accuracy-rejection area "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(arc_rank.items(), key=lambda t: t[1]))
        + ".",
        "",
        "## The models' own calibration",
        "",
        _table(model_rows, ["set", "test set", "accuracy", "NLL", "ECE"], {}),
        "",
        "Training time (s; 0 = loaded from the cache of an earlier run): "
        + ", ".join(f"{k}: {v:.0f}" for k, v in trained.items())
        + ".",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
