"""GPU against CPU, in one run on one machine: REGrad, MC-dropout BALD and a training round, timed on both.

Timed on the same machine in the same process, each figure the median of a few repeats after one warm-up, with
``torch.cuda.synchronize()`` around every GPU timing and ``torch.set_num_threads(<all cores>)`` for the CPU:

* REGrad, exact (all 10 classes, ``class_weighting="root"``, no perturbation) on 1024 inputs, ``cnn`` 1x28x28;
* MC-dropout probabilities (20 passes) and BALD on 4096 inputs, ``cnn``;
* one training round: ``TorchLearner.fit`` on 1000 labelled samples with the default schedule (30 epochs, at
  least 300 steps, batch 64), for ``cnn`` (1x28x28) and ``resnet18`` (3x32x32). The CPU round of ``resnet18`` is
  timed on its first 3 epochs and scaled to the whole schedule (said so in the table), to keep the run short.

The GPU results are checked against the CPU ones on the way (REGrad scores: largest relative difference; MC
dropout: mean absolute difference of the MC means, the masks differing between devices; training: test accuracy
of both models), and reported beside the timings. Inputs: MNIST from ``AL_DATA_DIR`` when its raw files are there
(zero-padded to 32x32 and repeated over 3 channels for ``resnet18``), seeded random tensors otherwise; the output
says which. Writes ``benchmarks/results/gpu.md``.

    bash benchmarks/gpu_check.sh                   # tests/test_device.py, then this script (needs CUDA)
    .venv/bin/python benchmarks/gpu_check.py       # the timings alone; exits 2 without CUDA
    .venv/bin/python benchmarks/gpu_check.py --cpu-only-smoke   # every timing, tiny, on the CPU: a crash check
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from al.learner import TorchLearner  # noqa: E402
from strategies.bayesian import mutual_information  # noqa: E402
from strategies.regrad import regrad_scores  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "gpu.md"
EXACT = dict(class_weighting="root", layer_alpha=0.0, n_perturbations=0)  # every class: 10 backward passes


@dataclass
class Sizes:
    regrad: int = 1024
    mc: int = 4096
    mc_passes: int = 20
    train: int = 1000
    epochs: int = 30  # TorchLearner's defaults: the schedule of one round
    min_steps: int = 300
    cpu_resnet_epochs: int = 3  # the CPU resnet18 round is timed on these epochs and scaled
    repeats: int = 3
    cpu_repeats: int = 2


SMOKE = Sizes(
    regrad=16, mc=32, mc_passes=3, train=40, epochs=1, min_steps=2, cpu_resnet_epochs=1, repeats=1, cpu_repeats=1
)


@dataclass
class Row:
    task: str
    model: str
    cpu_s: float
    gpu_s: float
    check: str
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one untimed warm-up, the device synchronised."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_inputs(n_train: int, n_eval: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(train_x (n_train, 1, 28, 28), train_y, eval_x (n_eval, 1, 28, 28), eval_y, source description)."""
    d = Path(os.environ.get("AL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    if (d / "MNIST" / "raw").is_dir():
        from al.data import load_dataset

        ds = load_dataset("mnist", d)
        x, y = ds.train_x, ds.train_y
        n = n_train + n_eval
        if len(x) < n:
            raise SystemExit(f"gpu_check: MNIST has {len(x)} training images, fewer than the {n} needed")
        src = (
            f"MNIST (normalised) from {d}: the first {n_train} training images to train on, the next {n_eval} to score"
        )
        return x[:n_train], y[:n_train], x[n_train:n], y[n_train:n], src
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_eval, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n_train + n_eval,), generator=g)
    src = f"seeded random tensors (no MNIST raw files under {d}; set AL_DATA_DIR): accuracies mean nothing"
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], src


def to_rgb32(x: torch.Tensor) -> torch.Tensor:
    """(n, 1, 28, 28) -> (n, 3, 32, 32): zero-padded by 2 on each side, the grey channel repeated."""
    return F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)


def bench_regrad(x: torch.Tensor, gpu: torch.device, s: Sizes) -> Row:
    net = TorchLearner("cnn", 10, (1, 28, 28)).reset(0).network
    xs = x[: s.regrad]
    cpu = median_time(lambda: regrad_scores(net, xs, **EXACT), torch.device("cpu"), s.cpu_repeats)
    gnet = copy.deepcopy(net).to(gpu)
    gpu_s = median_time(lambda: regrad_scores(gnet, xs, **EXACT), gpu, s.repeats)
    a, b = regrad_scores(net, xs, **EXACT), regrad_scores(gnet, xs, **EXACT)
    rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
    return Row(f"REGrad exact, 10 classes, {len(xs)} inputs", "cnn", cpu, gpu_s, f"max rel. diff {rel:.1e}")


def bench_bald(x: torch.Tensor, gpu: torch.device, s: Sizes) -> Row:
    cpu_l = TorchLearner("cnn", 10, (1, 28, 28)).reset(0)
    gpu_l = TorchLearner("cnn", 10, (1, 28, 28), device=gpu).reset(0)  # the same initial weights, moved

    def run(lrn: TorchLearner) -> tuple[np.ndarray, np.ndarray]:
        mc = lrn.mc_predict_proba(xs, s.mc_passes, seed=0)
        return mc, mutual_information(mc)

    xs = x[: s.mc]
    cpu = median_time(lambda: run(cpu_l), torch.device("cpu"), s.cpu_repeats)
    gpu_s = median_time(lambda: run(gpu_l), gpu, s.repeats)
    diff = float(np.abs(run(cpu_l)[0].mean(0) - run(gpu_l)[0].mean(0)).mean())
    task = f"MC-dropout BALD, {s.mc_passes} passes, {len(xs)} inputs"
    return Row(task, "cnn", cpu, gpu_s, f"MC means differ by {diff:.1e} (other masks)")


def bench_fit(
    model: str,
    shape: tuple[int, ...],
    x: torch.Tensor,
    y: torch.Tensor,
    xt: torch.Tensor,
    yt: torch.Tensor,
    gpu: torch.device,
    s: Sizes,
    cpu_epochs: int | None = None,
) -> Row:
    """One round, default schedule; ``cpu_epochs``: time the CPU on that many epochs and scale to the schedule."""

    def learner(device: torch.device, epochs: int, min_steps: int) -> TorchLearner:
        return TorchLearner(model, 10, shape, epochs=epochs, min_steps=min_steps, device=device)

    steps_per_epoch = -(-len(x) // 64)
    full_epochs = max(s.epochs, -(-s.min_steps // steps_per_epoch))
    note = ""
    cpu_dev = torch.device("cpu")
    if cpu_epochs is not None and cpu_epochs < full_epochs:
        part = learner(cpu_dev, cpu_epochs, 0)
        cpu = median_time(lambda: part.fit(x, y, seed=0), cpu_dev, s.cpu_repeats, warmup=False)
        cpu *= full_epochs / cpu_epochs
        note = f"CPU time scaled from {cpu_epochs} of {full_epochs} epochs"
    else:
        full = learner(cpu_dev, s.epochs, s.min_steps)
        cpu = median_time(lambda: full.fit(x, y, seed=0), cpu_dev, 1, warmup=False)
    g = learner(gpu, s.epochs, s.min_steps)
    learner(gpu, 1, 1).fit(x[:128], y[:128], seed=0)  # warm-up: CUDA context, cuDNN autotuning, allocator
    gpu_s = median_time(lambda: g.fit(x, y, seed=0), gpu, s.repeats, warmup=False)
    acc = g.evaluate(xt, yt)["accuracy"]
    steps = full_epochs * steps_per_epoch
    task = f"fit, {len(x)} labelled, {full_epochs} epochs x {steps_per_epoch} steps ({steps})"
    return Row(task, f"{model} {'x'.join(map(str, shape))}", cpu, gpu_s, f"GPU model test accuracy {acc:.3f}", note)


def markdown(rows: list[Row], meta: dict[str, str], smoke: bool) -> str:
    lines = [
        "# GPU against CPU: REGrad, MC-dropout BALD and one training round"
        + (" (CPU-only smoke run: both columns are the CPU, tiny sizes)" if smoke else ""),
        "",
        f"Produced by `{meta['command']}` ({meta['date']}). {meta['threads']}. Each figure is the median of "
        f"{meta['repeats']} after one warm-up, `torch.cuda.synchronize()` around every GPU timing; TF32: "
        f"{meta['tf32']}.",
        "",
        f"Inputs: {meta['source']}.",
        "",
        "| task | model | CPU s | GPU s | speed-up | device | torch | check | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.model} | {r.cpu_s:.3f} | {r.gpu_s:.3f} | {r.cpu_s / r.gpu_s:.1f}x | {meta['device']} "
            f"| {meta['torch']} | {r.check} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-only-smoke", action="store_true", help="run every timing tiny, on the CPU only")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results file (default {OUT.relative_to(ROOT)}; the smoke run writes none unless given)",
    )
    args = ap.parse_args(argv)
    smoke = args.cpu_only_smoke
    if not smoke and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU, "
            "or pass --cpu-only-smoke to check the code on the CPU",
            file=sys.stderr,
        )
        return 2
    s = SMOKE if smoke else Sizes()
    out = args.out if args.out is not None else (None if smoke else OUT)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    gpu = torch.device("cpu") if smoke else torch.device("cuda", torch.cuda.current_device())
    t_start = time.perf_counter()
    x, y, xe, ye, source = load_inputs(s.train, max(s.mc, s.regrad))
    print(f"inputs: {source}", flush=True)
    rows: list[Row] = []
    for name, step in [
        ("regrad", lambda: bench_regrad(xe, gpu, s)),
        ("bald", lambda: bench_bald(xe, gpu, s)),
        ("fit cnn", lambda: bench_fit("cnn", (1, 28, 28), x, y, xe, ye, gpu, s)),
        (
            "fit resnet18",
            lambda: bench_fit(
                "resnet18", (3, 32, 32), to_rgb32(x), y, to_rgb32(xe), ye, gpu, s, cpu_epochs=s.cpu_resnet_epochs
            ),
        ),
    ]:
        t0 = time.perf_counter()
        r = step()
        rows.append(r)
        print(
            f"{name}: CPU {r.cpu_s:.3f} s, GPU {r.gpu_s:.3f} s, {r.cpu_s / r.gpu_s:.1f}x; {r.check} "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    tf32 = f"matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32} (torch's defaults)"
    meta = {
        "command": "bash benchmarks/gpu_check.sh" if not smoke else "benchmarks/gpu_check.py --cpu-only-smoke",
        "date": dt.date.today().isoformat(),
        "threads": f"CPU: torch.set_num_threads({threads}) (all cores)",
        "repeats": f"{s.repeats} (GPU) / {s.cpu_repeats} (CPU)",
        "tf32": tf32,
        "source": source,
        "device": "CPU (smoke)" if smoke else torch.cuda.get_device_name(gpu),
        "torch": torch.__version__,
    }
    text = markdown(rows, meta, smoke)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
