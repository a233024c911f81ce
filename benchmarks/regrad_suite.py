"""REGrad measured over many trained models, and its defaults chosen by a rule declared before the run.

    AL_DATA_DIR=../shared/data python benchmarks/regrad_suite.py     # writes benchmarks/results/regrad_suite.{md,json}
    python benchmarks/regrad_suite.py --rewrite                       # redraws the .md from the .json

The rule and the tables live in benchmarks/regrad_suite_report.py (JSON in, Markdown out); this file trains and
scores.

Issue 17, parts 1 and 2. One trained model per setting cannot tell scores apart (the same default REGrad reached
0.553 AUROC on one Fashion-MNIST CNN against MNIST and about 0.79 on another), so every figure here is a mean
over K independently trained models (seeds 0..K-1, each with its own training subset and initialisation; the test
subsets are the same for every model, so the spread is the models'), and every comparison of two scores is a
paired difference over those K models with a 95% t-interval and the number of models that agree on its sign.

Models (the project's ``cnn``, trained as benchmarks/uq.py trains them and cached in the same folder,
``$AL_CACHE_DIR/uq-models``): MNIST on 100, 1000 and 10000 labels, Fashion-MNIST on 10000 labels, per seed.
Gradient norms are cached too (``$AL_CACHE_DIR/regrad-suite``), so a rerun, or a run with more perturbation
settings, only computes what is missing.

THE RULE (declared here and in the README before the run; the script applies it mechanically):

* Choosing suite, the only figures any choice may look at: AUROC of (a) the MNIST model, MNIST-test against
  Fashion-MNIST-test, (b) the Fashion-MNIST model, Fashion-MNIST-test against MNIST-test, and (c) misclassification
  detection (errors positive) of the 100-, 1000- and 10000-label MNIST models on MNIST-test and on MNIST-test
  rotated by each of the ``--rotations``.
* For each model seed, the REGrad variants are ranked on every choosing task (1 = highest AUROC, ties averaged);
  a variant's suite rank for that seed is the mean of its mean rank over the OOD tasks (a, b) and its mean rank
  over the misclassification tasks (c): each use of the score counts half, however many cells it has.
* Over the K seeds: mean suite rank m(v) and its standard error se(v) (std over seeds / sqrt(K)). With v* the
  variant of lowest m, the eligible set is {v : m(v) <= m(v*) + se(v*)}; the choice is the eligible variant of
  lowest cost (backward sweeps per input: (M + 1) x the class ranks it needs), ties broken by lower m(v).
* Held out, never looked at by the rule and reported after it: both models against notMNIST-test; active-learning
  AUBC (protocols 1 and 3, from the stores, for the settings that have runs there).

Search space: class weighting (root, expected, predicted, uniform) x layer alpha (``--alphas``) x combination
(linear, squared) x top-k (``--top-ks``; 0 = all classes) x gradient pass: clean (M = 0), input noise over the
``--sigmas`` sweep (mean-norm, M = ``--m``), input noise mean-grad at ``--mean-grad-sigmas``, parameter noise at
``--param-sigmas`` (mean-norm; sigma relative to each tensor's std). Every variant of one pass is a recombination
of the same norms (``GradientNorms.score``, the code path ``regrad_scores`` uses).

Baselines on the same models and inputs: ExGrad (Igoe et al. 2022: expected weighting, uniform layers, all
classes, M = 0), GradNorm (Huang et al., NeurIPS 2021; negated), max softmax probability (Hendrycks & Gimpel, ICLR
2017), predictive entropy, MC-dropout mutual information (Gal et al., ICML 2017; T = ``--mc-samples``).

References: Wang & Ji, CVPR 2024 (arXiv 2404.10124) for REGrad; the metrics as in benchmarks/uq.py.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from al.data import load_dataset, load_test_images  # noqa: E402
from strategies.regrad import gradient_norms, gradnorm_scores  # noqa: E402
from strategies.regrad.scores import GradientNorms  # noqa: E402
from strategies.regrad.settings import (  # noqa: E402
    DEFAULT_CLASS_WEIGHTING,
    DEFAULT_COMBINE,
    DEFAULT_LAYER_ALPHA,
    DEFAULT_N_PERTURBATIONS,
)
from strategies.regrad.weighting import RANKS_NEEDED  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regrad_suite_report import BASELINES, ROOT_VARIANT_NAME, WEIGHTINGS, write_markdown  # noqa: E402
from uq import pad_images, rotate, subset, train_model  # noqa: E402

COMBINES = ("linear", "squared")
N_CLASSES = 10


# --- the search space -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradPass:
    """One gradient computation per input: M perturbations of the inputs or of the parameters (or none)."""

    perturb: str  # "none" | "input" | "params"
    sigma: float = 0.0
    m: int = 0
    aggregate: str = "mean-norm"

    @property
    def tag(self) -> str:
        if self.perturb == "none":
            return "clean"
        return f"{self.perturb}-s{self.sigma:g}-m{self.m}-{self.aggregate}"

    def kwargs(self) -> dict:
        if self.perturb == "none":
            return {"n_perturbations": 0}
        return {"n_perturbations": self.m, "sigma": self.sigma, "aggregate": self.aggregate, "perturb": self.perturb}


@dataclass(frozen=True)
class Variant:
    grad_pass: GradPass
    class_weighting: str
    layer_alpha: float
    combine: str
    top_k: int  # 0 = all classes

    @property
    def name(self) -> str:
        k = "all" if self.top_k == 0 else f"top{self.top_k}"
        return f"{self.class_weighting}/a{self.layer_alpha:g}/{self.combine}/{k}/{self.grad_pass.tag}"

    @property
    def cost(self) -> int:
        """Backward sweeps per input: the class ranks needed times the M + 1 copies."""
        ranks = min(self.top_k or N_CLASSES, RANKS_NEEDED.get(self.class_weighting, N_CLASSES))
        return ranks * (self.grad_pass.m + 1)

    def kwargs(self) -> dict:
        """The variant as ``regrad_scores`` / ``--strategy-kwargs`` settings."""
        out: dict = {"class_weighting": self.class_weighting, "layer_alpha": self.layer_alpha, "combine": self.combine}
        if self.top_k:
            out["top_k"] = self.top_k
        out.update(self.grad_pass.kwargs())
        return out

    def score(self, gn: GradientNorms) -> np.ndarray:
        return gn.score(self.class_weighting, self.layer_alpha, self.combine, top_k=self.top_k or None)


def passes_of(args: argparse.Namespace) -> list[GradPass]:
    out = [GradPass("none")]
    out += [GradPass("input", s, args.m, "mean-norm") for s in args.sigmas]
    out += [GradPass("input", s, args.m, "mean-grad") for s in args.mean_grad_sigmas]
    out += [GradPass("params", s, args.m, "mean-norm") for s in args.param_sigmas]
    return out


def variants_of(passes: list[GradPass], alphas: list[float], top_ks: list[int]) -> list[Variant]:
    out = []
    for gp, w, a, c, k in itertools.product(passes, WEIGHTINGS, alphas, COMBINES, top_ks):
        if (w == "predicted" and k != 0) or (w != "predicted" and k == 1):
            continue  # one class kept gets weight 1 whatever the rule: every top-1 variant is "predicted"
        out.append(Variant(gp, w, float(a), c, k))
    return out


DEFAULT_VARIANT = Variant(GradPass("none"), DEFAULT_CLASS_WEIGHTING, DEFAULT_LAYER_ALPHA, DEFAULT_COMBINE, 0)
ROOT_VARIANT = Variant(GradPass("none"), "root", 0.0, "linear", 0)
assert ROOT_VARIANT.name == ROOT_VARIANT_NAME, "the report's fixed column must name this variant"
EXGRAD_VARIANT = Variant(GradPass("none"), "expected", 0.0, "linear", 0)


# --- metrics --------------------------------------------------------------------------------------------------
def auroc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of each row of scores (V, N) against the boolean labels positive (N,), vectorised over V."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return np.full(len(scores), np.nan)
    r = rankdata(scores, axis=1)
    return (r[:, pos].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


# --- tasks ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "ood" | "misclf"
    group: str  # "choose" | "held-out"
    model: str  # model key, e.g. "mnist-10000"
    sets: tuple[str, ...]  # (in, out) for ood; (test set,) for misclf


def tasks_of(args: argparse.Namespace) -> list[Task]:
    big = max(args.sizes)
    t = [
        Task("MNIST vs Fashion-MNIST", "ood", "choose", f"mnist-{big}", ("mnist", "fashion-mnist")),
        Task("Fashion-MNIST vs MNIST", "ood", "choose", f"fashion-mnist-{big}", ("fashion-mnist", "mnist")),
    ]
    for n in args.sizes:
        for s in ["mnist"] + [f"rot{d:g}" for d in args.rotations]:
            label = "MNIST-test" if s == "mnist" else f"rotated {s[3:]}°"
            t.append(Task(f"misclassification, {n} labels, {label}", "misclf", "choose", f"mnist-{n}", (s,)))
    t += [
        Task("MNIST vs notMNIST", "ood", "held-out", f"mnist-{big}", ("mnist", "notmnist")),
        Task("Fashion-MNIST vs notMNIST", "ood", "held-out", f"fashion-mnist-{big}", ("fashion-mnist", "notmnist")),
    ]
    return t


# --- scoring one model ----------------------------------------------------------------------------------------
def cache_dir() -> Path:
    d = Path(os.environ.get("AL_CACHE_DIR", "/tmp")) / "regrad-suite"
    d.mkdir(parents=True, exist_ok=True)
    return d


def input_sets(model_ds: str, needed: set[str], args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The inputs of each named set, normalised with the model's training-set statistics (fixed across models)."""
    ds = load_dataset(model_ds)
    mean, std = ds.mean[0], ds.std[0]
    out: dict[str, torch.Tensor] = {}
    for name in sorted(needed):
        if name in ("mnist", "fashion-mnist", "notmnist"):
            x, y = load_test_images(name, mean=mean, std=std)
            out[name], _ = subset(x, y, args.n_ood, 101 + ("mnist", "fashion-mnist", "notmnist").index(name))
        elif name.startswith("rot"):
            x, _ = mnist_test(args)
            out[name] = rotate(x[: args.n_rot], float(name[len("rot") :]), mean, std)
    return {k: pad_images(v, args.pad, mean, std) for k, v in out.items()}


def mnist_test(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST-test subset every MNIST model is scored on (OOD in-distribution and misclassification)."""
    return _mnist_test(args.n_ood)


@functools.cache
def _mnist_test(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_test_images("mnist")  # read once per run, not once per rotation and per task
    return subset(x, y, n, 101)


def misclf_labels(args: argparse.Namespace, name: str) -> np.ndarray:
    y = mnist_test(args)[1].numpy()
    return y if name == "mnist" else y[: args.n_rot]


def score_model(
    key: str, learner, sets: dict[str, torch.Tensor], passes: list[GradPass], args, timings: dict[str, float]
) -> dict[str, dict]:
    """Per set: probs, baseline scores, and the GradientNorms of every pass (cached as .npz)."""
    from strategies.bayesian import mutual_information
    from strategies.uncertainty import entropy_score

    model = learner.module_
    out: dict[str, dict] = {}
    for sname, x in sets.items():
        tag = f"{key}-{sname}-n{len(x)}"
        entry: dict = {"norms": {}}
        base_f = cache_dir() / f"{tag}-base-mc{args.mc_samples}.npz"
        if base_f.exists():
            z = np.load(base_f)
            entry.update({k: z[k] for k in z.files})
        else:
            probs = learner.predict_proba(x)
            entry["probs"] = probs
            entry["msp"] = 1.0 - probs.max(1)
            entry["entropy"] = entropy_score(probs)
            t1 = time.perf_counter()
            entry["gradnorm"] = -gradnorm_scores(model, x)
            t2 = time.perf_counter()
            entry["mi"] = mutual_information(learner.mc_predict_proba(x, args.mc_samples, seed=0))
            t3 = time.perf_counter()
            timings["gradnorm"] = timings.get("gradnorm", 0.0) + t2 - t1
            timings["mi"] = timings.get("mi", 0.0) + t3 - t2
            np.savez(base_f, **{k: entry[k] for k in ("probs", "msp", "entropy", "gradnorm", "mi")})
        for gp in passes:
            f = cache_dir() / f"{tag}-{gp.tag}.npz"
            if f.exists():
                z = np.load(f, allow_pickle=False)
                gn = GradientNorms(z["norms"], z["probs"], z["classes"], [str(s) for s in z["layers"]])
            else:
                t0 = time.perf_counter()
                gn = gradient_norms(model, x, seed=0, **gp.kwargs())
                timings[gp.tag] = timings.get(gp.tag, 0.0) + time.perf_counter() - t0
                np.savez(f, norms=gn.norms, probs=gn.probs, classes=gn.classes, layers=np.array(gn.layers))
            entry["norms"][gp.tag] = gn
        out[sname] = entry
    return out


# --- the run --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*batching rule.*")
    t_start = time.perf_counter()
    passes = passes_of(args)
    variants = variants_of(passes, args.alphas, args.top_ks)
    for extra in (DEFAULT_VARIANT, ROOT_VARIANT, EXGRAD_VARIANT):
        if extra not in variants:
            raise SystemExit(f"the search space must contain {extra.name}; keep alpha 0 and -10 and top-k 0")
    tasks = tasks_of(args)
    seeds = list(range(args.seed_offset, args.seed_offset + args.models))
    labels_of = {f"mnist-{n}": ("mnist", n) for n in args.sizes}
    labels_of[f"fashion-mnist-{max(args.sizes)}"] = ("fashion-mnist", max(args.sizes))
    # per (seed, task): {"variants": (V,) AUROC, "baselines": {name: AUROC}}
    per_seed: list[dict[str, dict]] = []
    timings: dict[str, float] = {}
    trained: dict[str, float] = {}
    accuracy: dict[str, list[float]] = {}
    for seed in seeds:
        results: dict[str, dict] = {}
        for mkey, (dsname, n) in labels_of.items():
            mtasks = [t for t in tasks if t.model == mkey]
            needed = {s for t in mtasks for s in t.sets}
            epochs = args.large_epochs if n >= 5000 else args.epochs
            learner, secs = train_model(
                dsname, n, seed, epochs, args.min_steps, args.model, args.pad, args.early_stopping, args.device
            )
            trained[f"{mkey} seed {seed}"] = secs
            sets = input_sets(dsname, needed, args)
            arch = "" if args.model == "cnn" else f"-{args.model}-p{args.pad}"
            mtag = f"{mkey}-seed{seed}-e{epochs}-m{args.min_steps}{arch}{'-es' if args.early_stopping else ''}"
            scored = score_model(mtag, learner, sets, passes, args, timings)
            for t in mtasks:
                if t.kind == "ood":
                    a, b = scored[t.sets[0]], scored[t.sets[1]]
                    positive = np.r_[np.zeros(len(a["msp"]), bool), np.ones(len(b["msp"]), bool)]

                    def both(get, a=a, b=b):
                        return np.r_[get(a), get(b)]
                else:
                    a = scored[t.sets[0]]
                    y = misclf_labels(args, t.sets[0])
                    correct = a["probs"].argmax(1) == y
                    accuracy.setdefault(t.name, []).append(float(correct.mean()))
                    positive = ~correct

                    def both(get, a=a):
                        return get(a)

                vals = np.empty(len(variants))
                for gp in passes:
                    idx = [i for i, v in enumerate(variants) if v.grad_pass == gp]
                    rows = np.stack([both(lambda e, v=variants[i], gp=gp: v.score(e["norms"][gp.tag])) for i in idx])
                    vals[idx] = auroc_rows(rows, positive)
                base = {k: float(auroc_rows(both(lambda e, k=k: e[k])[None], positive)[0]) for k in BASELINES[1:]}
                base["exgrad"] = float(vals[variants.index(EXGRAD_VARIANT)])
                # per-layer profile: the clean pass, one layer at a time, each class weighting
                gn_clean = [e["norms"]["clean"] for e in ([a, b] if t.kind == "ood" else [a])]
                profile = {}
                for w in WEIGHTINGS:
                    per_layer = []
                    for li in range(gn_clean[0].norms.shape[2]):
                        parts = [
                            GradientNorms(g.norms[:, :, li : li + 1], g.probs, g.classes, [g.layers[li]]).score(
                                w, 0.0, "linear"
                            )
                            for g in gn_clean
                        ]
                        per_layer.append(float(auroc_rows(np.concatenate(parts)[None], positive)[0]))
                    profile[w] = per_layer
                results[t.name] = {
                    "variants": vals.tolist(),
                    "baselines": base,
                    "profile": profile,
                    "layers": gn_clean[0].layers,
                }
            print(f"seed {seed} {mkey} scored at {time.perf_counter() - t_start:.0f}s", flush=True)
        per_seed.append(results)
    return {
        "command": "python benchmarks/regrad_suite.py " + " ".join(args.argv),
        "args": {k: v for k, v in vars(args).items() if k not in ("argv", "rewrite", "out")},
        "seeds": seeds,
        "variants": [{"name": v.name, "cost": v.cost, "kwargs": v.kwargs()} for v in variants],
        "tasks": [t.__dict__ for t in tasks],
        "per_seed": per_seed,
        "accuracy": accuracy,
        "trained_seconds": trained,
        "scoring_seconds": timings,
        "total_seconds": time.perf_counter() - t_start,
        "library_default": DEFAULT_VARIANT.name,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/regrad_suite.py", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=5, help="K: independently trained models per setting")
    p.add_argument("--seed-offset", type=int, default=0, help="first model seed")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000], help="MNIST labels per model")
    p.add_argument("--rotations", type=float, nargs="+", default=[15, 30, 45, 60])
    p.add_argument("--n-ood", type=int, default=1000, help="inputs per set for OOD detection")
    p.add_argument("--n-rot", type=int, default=250, help="of the MNIST-test inputs, how many are rotated")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--min-steps", type=int, default=300)
    p.add_argument("--large-epochs", type=int, default=10)
    p.add_argument("--mc-samples", type=int, default=20)
    p.add_argument("--alphas", type=float, nargs="+", default=[-10, -5, -2, 0, 2, 5, 10])
    p.add_argument("--top-ks", type=int, nargs="+", default=[0, 1, 3], help="0 = all classes")
    p.add_argument("--m", type=int, default=1, help="perturbations per input (M)")
    p.add_argument("--sigmas", type=float, nargs="*", default=[0.05, 0.5, 2.0], help="input noise, mean-norm")
    p.add_argument("--mean-grad-sigmas", type=float, nargs="*", default=[0.5], help="input noise, mean-grad")
    p.add_argument("--param-sigmas", type=float, nargs="*", default=[0.05], help="parameter noise, mean-norm")
    p.add_argument("--model", default="cnn", help="registered model (part 3: patch-transformer, resnet18)")
    p.add_argument("--pad", type=int, default=0, help="background pixels added on each side (2: 28x28 -> 32x32)")
    p.add_argument(
        "--early-stopping",
        action="store_true",
        help="train each model until its validation loss (20%% of its labels) stops improving, at most the epochs",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where models train and score: cpu, cuda, cuda:N, auto (part 3's resnet18 is GPU work: "
        "benchmarks/gpu_resnet_suite.sh)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "regrad_suite.md"))
    p.add_argument("--rewrite", action="store_true", help="redraw the .md from the .json beside it; compute nothing")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    js = out.with_suffix(".json")
    if args.rewrite:
        res = json.loads(js.read_text())
    else:
        if DEFAULT_N_PERTURBATIONS:
            raise SystemExit("the library default uses perturbations; add its pass to the search space first")
        res = run(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        js.write_text(json.dumps(res, indent=1))
    write_markdown(res, out)
    print(f"wrote {out}" + ("" if args.rewrite else f" and {js.name}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
