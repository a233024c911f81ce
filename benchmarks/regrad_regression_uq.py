"""Regression REGrad as uncertainty: agreement with a deep ensemble and MC dropout, and separation of inputs in a
GAP of the training data and FAR from it, on small ReLU MLPs.

    .venv/bin/python benchmarks/regrad_regression_uq.py      # writes benchmarks/results/regrad_regression_uq.{md,json}
    .venv/bin/python benchmarks/regrad_regression_uq.py --rewrite   # the .md again from the .json, no training

Data sets (each drawn once, seed 0; inputs standardised with the training rows' mean and std, targets too):

* sine-1d: x uniform on [-4, -1] U [1, 4] (160 training rows), y = sin(x) + N(0, 0.1^2). In-range test: 200 fresh
  x from the same range; GAP: 200 x uniform on (-1, 1); FAR: 200 x uniform on [6, 10] U [-10, -6].
* ring-2d: x = r (cos t, sin t), t uniform, r uniform on [1.5, 2.5] (300 training rows), two outputs
  y = (sin(1.5 x1) cos(x2), 0.5 x1 - 0.3 x2^2) + N(0, 0.05^2). In-range: 200 fresh; GAP: 200 with r uniform on
  [0, 1] (the hole); FAR: 200 with r uniform on [5, 8].
* diabetes: scikit-learn's bundled ``load_diabetes`` (442 rows, 10 features), features standardised over all rows;
  z = the first principal component's score. Rule: GAP = the rows with z in (q40, q55] of z, FAR = the rows with
  z > q85 (outside the training range of z); the remaining rows are split at random (seed 0) into 80% training and
  20% in-range test.

Models (Adam, full batch, weight decay 1e-4, ``--steps`` steps; 2 hidden ReLU layers of ``--width``): for each of
``--seeds`` seeds, one MLP trained on the squared error (mean only: the "mse" model) and one with a log-variance
head (output [mean | log var], trained on the Gaussian NLL: the "het" model). References, trained once per data set
with seeds of their own: a deep ensemble of 5 mse MLPs (Lakshminarayanan et al., NeurIPS 2017; epistemic variance =
variance of the members' means, averaged over outputs) and one MLP with dropout 0.1 after each hidden layer,
scored by the variance of ``--mc-samples`` stochastic passes (Gal & Ghahramani, ICML 2016).

Figures per scored model, then mean +- std over the seeds: Spearman rho of the score with the ensemble variance and
with the MC-dropout variance over all evaluation inputs (in-range + gap + far), and AUROC of the score separating
GAP inputs (positive) from in-range test inputs, and FAR inputs from in-range inputs (scikit-learn). Variants are
computed with ``regression_gradient_norms`` once per (target, metric, perturbation) setting and recombined with
``RegressionGradientNorms.score`` (the same code path as ``regression_regrad_scores``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strategies.regrad import regression_gradient_norms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Data:
    name: str
    train_x: np.ndarray
    train_y: np.ndarray  # (n, D)
    test_x: np.ndarray  # in range
    test_y: np.ndarray
    gap_x: np.ndarray
    far_x: np.ndarray
    rule: str


def _standardise(d: Data) -> Data:
    mx, sx = d.train_x.mean(0), d.train_x.std(0)
    my, sy = d.train_y.mean(0), d.train_y.std(0)

    def fx(a: np.ndarray) -> np.ndarray:
        return ((a - mx) / sx).astype(np.float32)

    def fy(a: np.ndarray) -> np.ndarray:
        return ((a - my) / sy).astype(np.float32)

    return Data(d.name, fx(d.train_x), fy(d.train_y), fx(d.test_x), fy(d.test_y), fx(d.gap_x), fx(d.far_x), d.rule)


def sine_1d(rng: np.random.Generator) -> Data:
    def inside(n: int) -> np.ndarray:
        return rng.uniform(1, 4, n) * rng.choice([-1.0, 1.0], n)

    def f(x: np.ndarray) -> np.ndarray:
        return (np.sin(x) + 0.1 * rng.standard_normal(len(x)))[:, None]

    tx, ex = inside(160), inside(200)
    far = rng.uniform(6, 10, 200) * rng.choice([-1.0, 1.0], 200)
    return Data(
        "sine-1d",
        tx[:, None],
        f(tx),
        ex[:, None],
        f(ex),
        rng.uniform(-1, 1, 200)[:, None],
        far[:, None],
        "train |x| in [1, 4]; gap x in (-1, 1); far |x| in [6, 10]",
    )


def ring_2d(rng: np.random.Generator) -> Data:
    def ring(n: int, lo: float, hi: float) -> np.ndarray:
        t, r = rng.uniform(0, 2 * np.pi, n), rng.uniform(lo, hi, n)
        return np.c_[r * np.cos(t), r * np.sin(t)]

    def f(x: np.ndarray) -> np.ndarray:
        y = np.c_[np.sin(1.5 * x[:, 0]) * np.cos(x[:, 1]), 0.5 * x[:, 0] - 0.3 * x[:, 1] ** 2]
        return y + 0.05 * rng.standard_normal(y.shape)

    tx, ex = ring(300, 1.5, 2.5), ring(200, 1.5, 2.5)
    return Data(
        "ring-2d",
        tx,
        f(tx),
        ex,
        f(ex),
        ring(200, 0.0, 1.0),
        ring(200, 5.0, 8.0),
        "train radius in [1.5, 2.5]; gap radius in [0, 1]; far radius in [5, 8]; 2 outputs",
    )


def diabetes(rng: np.random.Generator) -> Data:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    z = x @ vt[0]
    z = z * np.sign(np.corrcoef(z, y)[0, 1])  # orient PC1 so that the far side is the high-target side (sign only)
    q40, q55, q85 = np.quantile(z, [0.40, 0.55, 0.85])
    gap = (z > q40) & (z <= q55)
    far = z > q85
    rest = np.flatnonzero(~gap & ~far)
    rest = rng.permutation(rest)
    n_tr = int(round(0.8 * len(rest)))
    tr, te = rest[:n_tr], rest[n_tr:]
    return Data(
        "diabetes",
        x[tr],
        y[tr, None],
        x[te],
        y[te, None],
        x[gap],
        x[far],
        f"z = PC1 of the standardised features; gap: q40 < z <= q55 ({gap.sum()} rows); far: z > q85 "
        f"({far.sum()} rows); the rest 80/20 train ({len(tr)}) / in-range test ({len(te)}), seed 0",
    )


DATASETS: dict[str, Callable[[np.random.Generator], Data]] = {"sine-1d": sine_1d, "ring-2d": ring_2d}
DATASETS["diabetes"] = diabetes


# --------------------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------------------
def mlp(d_in: int, d_out: int, width: int, seed: int, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for k in range(2):
        layers += [nn.Linear(d_in if k == 0 else width, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, het: bool) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr, weight_decay=1e-4)
    d = y.shape[1]
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        if het:
            mu, lv = out[:, :d], out[:, d:].clamp(-10, 10)
            loss = 0.5 * (lv + (y - mu) ** 2 / lv.exp()).mean()
        else:
            loss = ((out - y) ** 2).mean()
        loss.backward()
        opt.step()
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# variants: (label, gradient-norm settings, score settings, model kind)
# --------------------------------------------------------------------------------------------------------------
NOISE = dict(n_perturbations=8, sigma=0.3)
NORMS: dict[str, tuple[str, dict]] = {
    "mean": ("mse", {}),
    "mean+input-noise(mean-norm)": ("mse", dict(NOISE, aggregate="mean-norm")),
    "mean+input-noise(mean-grad)": ("mse", dict(NOISE, aggregate="mean-grad")),
    "mean+param-noise": ("mse", dict(NOISE, perturb="params", aggregate="mean-norm")),
    "kfac": ("mse", dict(metric="kfac-laplace")),
    "kfac(lambda 0.1)": ("mse", dict(metric="kfac-laplace", prior_precision=0.1)),
    "kfac(lambda 10)": ("mse", dict(metric="kfac-laplace", prior_precision=10.0)),
    "het:mean": ("het", dict(variance_head="log-var-half")),
    "het:nll": ("het", dict(variance_head="log-var-half", target="gaussian-nll")),
    "het:kfac": ("het", dict(variance_head="log-var-half", metric="kfac-laplace")),
}
# label -> (norms key, output_weighting, layer_alpha, combine, last_layer_only)
VARIANTS: dict[str, tuple[str, str, float, str, bool]] = {
    "mean (alpha 0, linear)": ("mean", "uniform", 0.0, "linear", False),
    "mean, squared": ("mean", "uniform", 0.0, "squared", False),
    "mean, alpha -10": ("mean", "uniform", -10.0, "linear", False),
    "mean, alpha +3": ("mean", "uniform", 3.0, "linear", False),
    "mean, last layer only": ("mean", "uniform", 0.0, "linear", True),
    "mean, input noise M8 s0.3 mean-norm": ("mean+input-noise(mean-norm)", "uniform", 0.0, "linear", False),
    "mean, input noise M8 s0.3 mean-grad": ("mean+input-noise(mean-grad)", "uniform", 0.0, "linear", False),
    "mean, param noise M8 s0.3": ("mean+param-noise", "uniform", 0.0, "linear", False),
    "kfac-laplace (squared, alpha 0)": ("kfac", "uniform", 0.0, "squared", False),
    "kfac-laplace, last layer only": ("kfac", "uniform", 0.0, "squared", True),
    "kfac-laplace, prior_precision 0.1": ("kfac(lambda 0.1)", "uniform", 0.0, "squared", False),
    "kfac-laplace, prior_precision 10": ("kfac(lambda 10)", "uniform", 0.0, "squared", False),
    "kfac-laplace, linear": ("kfac", "uniform", 0.0, "linear", False),
    "het: mean": ("het:mean", "uniform", 0.0, "linear", False),
    "het: gaussian-nll": ("het:nll", "uniform", 0.0, "linear", False),
    "het: gaussian-nll, variance-weighted": ("het:nll", "variance", 0.0, "linear", False),
    "het: kfac-laplace (squared)": ("het:kfac", "uniform", 0.0, "squared", False),
}


def figures(score: np.ndarray, ens: np.ndarray, mc: np.ndarray, n_in: int, n_gap: int) -> dict[str, float]:
    s_in, s_gap, s_far = score[:n_in], score[n_in : n_in + n_gap], score[n_in + n_gap :]

    def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
        return float(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos]))

    return {
        "rho_ensemble": float(spearmanr(score, ens)[0]),
        "rho_mc_dropout": float(spearmanr(score, mc)[0]),
        "auroc_gap": auroc(s_in, s_gap),
        "auroc_far": auroc(s_in, s_far),
    }


def run_dataset(d: Data, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    tx, ty = torch.from_numpy(d.train_x), torch.from_numpy(d.train_y)
    ev = torch.from_numpy(np.concatenate([d.test_x, d.gap_x, d.far_x]))
    n_in, n_gap = len(d.test_x), len(d.gap_x)
    d_in, d_out = tx.shape[1], ty.shape[1]
    t0 = time.time()
    ens_models = [train(mlp(d_in, d_out, args.width, 100 + k), tx, ty, args.steps, args.lr, False) for k in range(5)]
    with torch.no_grad():
        ens_means = torch.stack([m(ev) for m in ens_models])
    ens = ens_means.var(0, correction=0).mean(1).double().numpy()
    drop = train(mlp(d_in, d_out, args.width, 200, dropout=0.1), tx, ty, args.steps, args.lr, False)
    drop.train()
    torch.manual_seed(300)
    with torch.no_grad():
        mc = torch.stack([drop(ev) for _ in range(args.mc_samples)]).var(0, correction=0).mean(1).double().numpy()
    drop.eval()
    reference = {"deep ensemble (5, variance of means)": ens, "MC dropout (variance)": mc}
    out: dict = {"rule": d.rule, "n": {"train": len(tx), "in": n_in, "gap": n_gap, "far": len(d.far_x)}}
    out["references"] = {k: figures(v, ens, mc, n_in, n_gap) for k, v in reference.items()}
    log(f"{d.name}: references trained in {time.time() - t0:.0f} s")
    per_seed: dict[str, list[dict[str, float]]] = {k: [] for k in VARIANTS}
    rmse: dict[str, list[float]] = {"mse": [], "het": []}
    secs: dict[str, float] = dict.fromkeys(NORMS, 0.0)
    for seed in range(args.seeds):
        models = {
            "mse": train(mlp(d_in, d_out, args.width, seed), tx, ty, args.steps, args.lr, False),
            "het": train(mlp(d_in, 2 * d_out, args.width, seed), tx, ty, args.steps, args.lr, True),
        }
        with torch.no_grad():
            for kind, m in models.items():
                pred = m(torch.from_numpy(d.test_x))[:, :d_out]
                rmse[kind].append(float(((pred - torch.from_numpy(d.test_y)) ** 2).mean().sqrt()))
        norms = {}
        for key, (kind, kw) in NORMS.items():
            t1 = time.time()
            ref = tx if kw.get("metric") == "kfac-laplace" else None
            norms[key] = regression_gradient_norms(models[kind], ev, reference=ref, seed=seed, **kw)
            secs[key] += time.time() - t1
        for label, (key, weighting, alpha, combine, last) in VARIANTS.items():
            score = norms[key].score(weighting, alpha, combine, last)
            per_seed[label].append(figures(score, ens, mc, n_in, n_gap))
        log(f"{d.name}: seed {seed} done at {time.time() - t0:.0f} s")
    out["variants"] = per_seed
    out["rmse_in_range"] = rmse
    out["scoring_seconds"] = secs
    return out


# What the committed run (the default command) shows; the tables below it are regenerated on every run.
SUMMARY = """## Which regime each variant handles

Read from the tables below (the default command's run; the regime table is computed from the figures):

* **Plain REGrad for regression** (target mean, Euclidean norm; any layer_alpha, last layer only, input or parameter
  noise, combine linear or squared; and target gaussian-nll on the model with a variance head) handles the **FAR**
  regime: AUROC far 0.97-1.00 on sine-1d and ring-2d (0.84 with layer_alpha -10 on sine-1d), and with target mean
  0.84-0.90 on diabetes, where it beats the ensemble's own 0.735 (gaussian-nll: 0.70). It fails the **GAP** regime
  and fails it the wrong way round: AUROC gap 0.00-0.28 on sine-1d and ring-2d, i.e. it ranks inputs inside the gap
  as MORE familiar than the training inputs, where the ensemble ranks them highest (0.865 and 1.000). This is the
  known behaviour of the parameter gradient of a ReLU network: its norm grows with the scale of the hidden
  activations, which is small between two clusters and large far away. Perturbations do not change it (they average
  the same norm over nearby points).
* **kfac-laplace** (the gap-aware variant: each layer's gradient measured with its K-FAC Laplace posterior covariance
  fitted to the training inputs) handles **both** on the synthetic sets: AUROC far 1.000, AUROC gap 0.68 +- 0.13
  (sine-1d) and 0.87 +- 0.07 (ring-2d) at prior_precision 1, 0.86 and 0.99 at prior_precision 0.1, 0.98 and 0.88 on
  the model with a variance head; its Spearman agreement with the ensemble rises from 0.42-0.59 (plain) to
  0.69-0.92. The last layer alone is not enough everywhere: gap 0.98 on ring-2d but 0.52 on sine-1d. A weaker prior
  (smaller prior_precision) lets the data term dominate and helps the gap; prior_precision 10 loses most of it
  (0.43, 0.40). The prior_precision comparison was made on this benchmark alone (no held-out choice), so the default
  stays 1.
* **diabetes** has no clear gap to find: the ensemble (0.549) and MC dropout (0.586) barely separate the held-out
  middle band of the first principal component from the in-range rows either. kfac-laplace sits at their level
  (0.45-0.52); plain REGrad ranks the band slightly below the training range (0.34-0.41). For the far rows
  kfac-laplace (0.76-0.80) matches the ensemble (0.735) and MC dropout (0.766) while plain REGrad is higher (0.84-0.90).
* **gaussian-nll** is no better than target mean on the same model, and with output_weighting "variance" it is worse
  on the two-output ring (far 0.84, gap 0.07): that weighting favours the output with the larger *aleatoric*
  variance, which says nothing about where the data are. On diabetes the gaussian-nll target agrees least with both
  references (rho 0.19 / 0.15). Without a variance head gaussian-nll is target mean scaled.
"""

VERDICTS = ((0.8, "handled"), (0.6, "partly"), (0.4, "no separation"), (-1.0, "INVERTED"))


def verdict(auroc: float) -> str:
    """handled (>= 0.8), partly (>= 0.6), no separation (>= 0.4), INVERTED (< 0.4: ranked below the training range)."""
    return next(word for lo, word in VERDICTS if auroc >= lo)


def mean_std(vals: list[float]) -> str:
    a = np.asarray(vals)
    return f"{a.mean():.3f} ± {a.std():.3f}"


def write_md(results: dict, args: argparse.Namespace, wall: float, path: Path) -> None:
    lines = [
        "# Regression REGrad as uncertainty: deep-ensemble / MC-dropout agreement, gap and far inputs",
        "",
        f"Produced by `{args.command}` ({wall:.0f} s on this 2-core CPU shared with other jobs, one thread).",
        "",
        "What is measured, the data sets and the rule for 'outside the training range' are in the docstring of "
        "`benchmarks/regrad_regression_uq.py`; raw per-model figures in `regrad_regression_uq.json`. "
        f"{args.seeds} scored MLP pairs per data set (seeds 0..{args.seeds - 1}; 2 hidden ReLU layers of "
        f"{args.width}, Adam lr {args.lr}, {args.steps} full-batch steps): an `mse` model (mean only) and a `het` "
        "model ([mean | log var], Gaussian NLL). The ensemble (5 members) and the MC-dropout MLP "
        f"(dropout 0.1, {args.mc_samples} passes) are the references, trained once per data set. Figures: mean ± std "
        "over the scored models. rho: Spearman over all evaluation inputs (in-range + gap + far). AUROC gap: gap "
        "inputs (positive) vs in-range test inputs; AUROC far: far inputs vs in-range inputs; 0.5 = no separation, "
        "below 0.5 = the score ranks those inputs as MORE familiar than the training range.",
        "",
        "Variants (module docstring of `strategies/regrad/regression.py` for the formulas): `mean` = target mean, "
        "Euclidean norm; `kfac-laplace` = metric kfac-laplace fitted to the training inputs (prior_precision 1 "
        "unless stated); "
        "`het:` = the same on the model with a variance head. Without a variance head target gaussian-nll is "
        "target mean divided by sqrt(noise_var), so it is not listed separately.",
        "",
        SUMMARY,
        "Regime table: the mean AUROC over the scored models as handled (>= 0.8), partly (>= 0.6), no separation "
        "(>= 0.4) or INVERTED (< 0.4: the score ranks those inputs below the training range).",
        "",
        "| score | " + " | ".join(f"{n} gap | {n} far" for n in results) + " |",
        "| --- | " + " | ".join("--- | ---" for _ in results) + " |",
    ]
    refs = next(iter(results.values()))["references"]
    for k in [*refs, *next(iter(results.values()))["variants"]]:
        cells = []
        for r in results.values():
            fs = r["references"][k] if k in r["references"] else None
            for col in ("auroc_gap", "auroc_far"):
                v = fs[col] if fs is not None else float(np.mean([f[col] for f in r["variants"][k]]))
                cells.append(f"{verdict(v)} ({v:.2f})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, r in results.items():
        n = r["n"]
        lines += [
            f"## {name}",
            "",
            f"{r['rule']}. Rows: train {n['train']}, in-range {n['in']}, gap {n['gap']}, far {n['far']}. "
            f"In-range test RMSE (standardised y): mse {mean_std(r['rmse_in_range']['mse'])}, "
            f"het {mean_std(r['rmse_in_range']['het'])}.",
            "",
            "| score | rho ensemble | rho MC dropout | AUROC gap | AUROC far |",
            "| --- | --- | --- | --- | --- |",
        ]
        for k, f in r["references"].items():
            lines.append(
                f"| {k} | {f['rho_ensemble']:.3f} | {f['rho_mc_dropout']:.3f} | {f['auroc_gap']:.3f} | "
                f"{f['auroc_far']:.3f} |"
            )
        for k, fs in r["variants"].items():
            cells = [mean_std([f[c] for f in fs]) for c in ("rho_ensemble", "rho_mc_dropout", "auroc_gap", "auroc_far")]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        secs = ", ".join(f"{k} {v:.1f}" for k, v in r["scoring_seconds"].items())
        lines += ["", f"Scoring seconds, all seeds: {secs}.", ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--width", type=int, default=50)
    p.add_argument("--mc-samples", type=int, default=50)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "regrad_regression_uq.md")
    p.add_argument("--rewrite", action="store_true", help="rewrite the .md from the .json next to --out (no training)")
    args = p.parse_args()
    if args.rewrite:
        raw = json.loads(args.out.with_suffix(".json").read_text())
        args.command = raw["command"]
        for k, v in raw.get("settings", {}).items():
            setattr(args, k, v)
        write_md(raw["results"], args, raw["wall_seconds"], args.out)
        return
    args.command = "python benchmarks/regrad_regression_uq.py" + "".join(f" {a}" for a in sys.argv[1:])
    torch.set_num_threads(1)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f} s] {msg}", flush=True)

    results = {}
    for name in args.datasets:
        data = _standardise(DATASETS[name](np.random.default_rng(0)))
        results[name] = run_dataset(data, args, log)
    wall = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_md(results, args, wall, args.out)
    settings = {k: getattr(args, k) for k in ("seeds", "steps", "lr", "width", "mc_samples", "datasets")}
    raw = {"command": args.command, "wall_seconds": wall, "settings": settings, "results": results}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    log(f"wrote {args.out.name} and {args.out.with_suffix('.json').name}")


if __name__ == "__main__":
    main()
