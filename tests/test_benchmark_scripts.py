"""The benchmark scripts run end to end at toy sizes, so a change in the library cannot silently break them.

Each runs as a user would run it (a subprocess from the repository root) with the smallest settings its flags
allow, and its results file is checked for the tables it promises. The figures themselves mean nothing at these
sizes; the full runs are the commands at the top of each file in benchmarks/results/.
(Not covered: strategy_cost.py and mnist_default.py, whose whole point is the full 60k pool and full-length runs.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    d = os.environ.get("AL_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    if not (Path(d) / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST raw files not found under {d}; set AL_DATA_DIR")
    cache = os.environ.get("AL_CACHE_DIR") or str(tmp_path_factory.mktemp("al-cache"))
    return {**os.environ, "AL_DATA_DIR": d, "AL_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}


def run(script: str, args: list[str], env: dict[str, str]) -> str:
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, f"{script} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p.stdout


def numbers_in_table(md: str, header: str) -> list[float]:
    """The numeric cells of the first Markdown table whose header row contains ``header``."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|") and header in ln)
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append(ln)
    return [float(x) for x in re.findall(r"(?<![\w.])-?\d+\.\d+(?![\w.])", "\n".join(rows))]


def test_uq_writes_ood_and_calibration_tables(env, tmp_path):
    out = tmp_path / "uq.md"
    run(
        "uq.py",
        [
            "--n-ood",
            "100",
            "--n-cal",
            "100",
            "--sizes",
            "100",
            "--rotations",
            "30",
            "--epochs",
            "1",
            "--min-steps",
            "10",
            "--large-epochs",
            "1",
            "--mc-samples",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        env,
    )
    md = out.read_text()
    assert "## OOD detection" in md and "notMNIST" in md and "FPR@95TPR" in md
    aurocs = numbers_in_table(md, "AUROC")
    assert aurocs and all(0.0 <= a <= 1.0 for a in aurocs)
    for score in ("regrad", "regrad-root", "exgrad", "gradnorm", "mi"):
        assert f"| {score} |" in md
    assert "ECE" in md and "rotated 30" in md


def test_regrad_ood_ablation_chooses_a_default(env, tmp_path):
    out = tmp_path / "ood.md"
    # --sigmas without 0.2: the issue's-reading row (sigma 0.2) must still be scored, outside the grid
    run(
        "regrad_ood.py",
        [
            "--n-train",
            "300",
            "--epochs",
            "1",
            "--n-eval",
            "60",
            "--n-eval-transformer",
            "30",
            "--m",
            "1",
            "--sigmas",
            "0.1",
            "--param-sigmas",
            "0.05",
            "--out",
            str(out),
        ],
        env,
    )
    md = out.read_text()
    assert "REGrad, chosen setting" in md and "issue's reading" in md and "notMNIST" in md
    aurocs = numbers_in_table(md, "AUROC")
    assert aurocs and all(0.0 <= a <= 1.0 for a in aurocs)


def test_regrad_speed_compares_with_references(env, tmp_path):
    out = tmp_path / "speed.md"
    run("regrad_speed.py", ["--n", "32", "--n-naive", "2", "--repeats", "1", "--n-rank", "40", "--out", str(out)], env)
    md = out.read_text()
    assert "## `cnn`" in md and "## `lenet5`" in md and "torch.func vmap(grad)" in md
    # what issue 17's default change costs: the previous default's row beside the exact score, and the load
    assert "| ours, predicted class only (defaults before issue 17), M=0 |" in md and "load average" in md
    # every reference agrees with ours: the script reports the largest relative difference it found
    diffs = [float(x) for x in re.findall(r"(?:loop|grad\)|BatchL2Grad) (\d\.\de-\d\d)", md)]
    assert diffs and max(diffs) < 1e-4


@pytest.mark.slow  # three processes, each loading MNIST: in the slow suite .ci/run also runs
def test_folder_pool_compares_files_with_memory(env, tmp_path):
    out = tmp_path / "folder_pool.md"
    args = ["--folder", str(tmp_path / "png"), "--n", "300", "--rss-sizes", "300", "--repeats", "1"]
    args += ["--n-labelled", "50", "--epochs", "1", "--min-steps", "0", "--n-regrad", "20", "--out", str(out)]
    run("folder_pool.py", args, env)
    md = out.read_text()
    assert "folder / memory" in md and "## Peak RSS" in md
    assert len(list((tmp_path / "png" / "train").rglob("*.png"))) == 300
    # the folder pool reads back the in-memory tensors: the script reports the largest score differences
    table = md.split("| max abs difference |", 1)[1].split("\n\n", 1)[0]
    diffs = [float(x) for x in re.findall(r"\| (\d\.\d\de[-+]\d\d) \|", table)]
    assert len(diffs) == 3 and max(diffs) < 1e-4
    assert "agree to float32 rounding" in md


def test_repeated_mnist_runs_into_a_store_and_reports(env, tmp_path):
    out, db = tmp_path / "rm.md", tmp_path / "rm.db"
    args = [
        "--store",
        f"sqlite:///{db}",
        "--out",
        str(out),
        "--base-size",
        "60",
        "--strategies",
        "random",
        "bald",
        "--seeds",
        "0",
        "--budget",
        "40",
        "--epochs",
        "1",
        "--min-steps",
        "5",
        "--mc-samples",
        "2",
        "--threads",
        "1",
    ]
    run("repeated_mnist.py", args, env)
    md = out.read_text()
    assert "| random |" in md and "| bald |" in md
    from al.store import Store

    before = Store(f"sqlite:///{db}").curves()
    assert sorted(before.groupby("strategy")["n_labelled"].max().items()) == [("bald", 40), ("random", 40)]
    run("repeated_mnist.py", args, env)  # finished runs are continued from the store, not repeated
    assert Store(f"sqlite:///{db}").curves().equals(before)


def test_batchbald_reference_logs_reads_the_authors_logs_as_literals(tmp_path, env):
    """Two toy logs in the authors' laaos format (one never reaching 95%), and one that must not be executed."""
    paper = tmp_path / "repo" / "laaos_results" / "paper"
    paper.mkdir(parents=True)

    def log(name: str, accs: list[float], extra: str = "") -> None:
        args = {"type": "AcquisitionFunction.bald", "acquisition_method": "AcquisitionMethod.multibald"}
        args |= {"available_sample_k": 10, "num_inference_samples": 100, "validation_set_size": 1024, "epochs": 30}
        rows = ["store = {}", f"store['args']={args!r}", f"store['initial_samples']={list(range(20))!r}", extra]
        rows += ["store['iterations']=[]"]
        for a in accs:
            it = {"test_metrics": {"accuracy": a, "nll": 0.3}, "chosen_samples": [str(i) for i in range(10)]}
            rows.append(f"store['iterations'].append({it!r})")
        (paper / f"{name}.py").write_text("\n".join(rows) + "\n")

    log("a_1", [0.6, 0.85, 0.91, 0.93, 0.96], extra="import os; os.remove('never')")  # 90% at 40, 95% at 60
    log("a_2", [0.7, 0.88, 0.89, 0.92])  # 90% at 50, 95% never
    out = tmp_path / "ref.md"
    run("batchbald_reference_logs.py", [str(tmp_path / "repo"), "--out", str(out)], env)
    row = next(line for line in out.read_text().splitlines() if line.startswith("| bald | multibald"))
    assert "| 10 | 100 | 1024 | 30 | 20 | 2 |" in row
    assert "45 (range 40-50, 2/2 reached it)" in row and "not reached by the median run (1/2 reached it)" in row


def test_regrad_regression_uq_runs_toy_size_and_rewrites_from_its_json(tmp_path, env):
    out = tmp_path / "uq.md"
    args = [
        "--seeds",
        "2",
        "--steps",
        "40",
        "--width",
        "8",
        "--mc-samples",
        "4",
        "--datasets",
        "sine-1d",
        "--out",
        str(out),
    ]
    run("regrad_regression_uq.py", args, env)
    md = out.read_text()
    assert "python benchmarks/regrad_regression_uq.py --seeds 2" in md and "kfac-laplace" in md
    assert out.with_suffix(".json").exists()
    first = md
    run("regrad_regression_uq.py", ["--out", str(out), "--rewrite"], env)
    assert out.read_text() == first  # the .md is a pure function of the .json


def test_regrad_suite_applies_the_declared_rule_over_models(tmp_path, env):
    """Toy size: 2 models per setting; the choice in the .md is the declared rule recomputed here from the .json."""
    import json

    import numpy as np
    from scipy.stats import rankdata

    out = tmp_path / "suite.md"
    args = ["--models", "2", "--sizes", "100", "--rotations", "30", "--n-ood", "60", "--n-rot", "30", "--epochs", "1"]
    args += ["--min-steps", "10", "--large-epochs", "1", "--mc-samples", "2", "--alphas", "-10", "0"]
    args += ["--top-ks", "0", "3", "--sigmas", "0.5", "--mean-grad-sigmas", "--param-sigmas", "0.05", "--out", str(out)]
    run("regrad_suite.py", args, env)
    md = out.read_text()
    res = json.loads(out.with_suffix(".json").read_text())
    assert len(res["per_seed"]) == 2 and res["seeds"] == [0, 1]
    names = [v["name"] for v in res["variants"]]
    assert len(names) == len(set(names))
    # no top-1 twin of "predicted", and the library default is in the space
    assert not any("/top1/" in n for n in names) and res["library_default"] in names
    assert any(n.endswith("/params-s0.05-m1-mean-norm") for n in names)  # the parameter-noise pass is scored
    for per in res["per_seed"]:
        assert set(per) == {t["name"] for t in res["tasks"]}
        for task in per.values():
            vals = np.array(task["variants"])
            assert vals.shape == (len(names),) and np.all((vals >= 0) & (vals <= 1))
    # the rule, written again from its declaration
    choose = [t for t in res["tasks"] if t["group"] == "choose"]
    assert {t["kind"] for t in choose} == {"ood", "misclf"}
    assert {t["name"] for t in res["tasks"] if t["group"] == "held-out"} == {
        "MNIST vs notMNIST",
        "Fashion-MNIST vs notMNIST",
    }
    suite = []
    for per in res["per_seed"]:
        ood = np.mean([rankdata(-np.array(per[t["name"]]["variants"])) for t in choose if t["kind"] == "ood"], 0)
        mis = np.mean([rankdata(-np.array(per[t["name"]]["variants"])) for t in choose if t["kind"] == "misclf"], 0)
        suite.append((ood + mis) / 2)
    m, se = np.mean(suite, 0), np.std(suite, 0, ddof=1) / np.sqrt(2)
    best = int(np.argmin(m))
    eligible = [i for i in range(len(m)) if m[i] <= m[best] + se[best]]
    chosen = min(eligible, key=lambda i: (res["variants"][i]["cost"], m[i]))
    assert f"**Chosen: `{names[chosen]}`**" in md
    for section in ("## Held out", "## Paired differences", "## Input-noise sweep", "## Layer-alpha sweep"):
        assert section in md
    first = md
    run("regrad_suite.py", ["--out", str(out), "--rewrite"], env)
    assert out.read_text() == first  # the .md is a pure function of the .json
    # the report module alone (no torch, no data) draws the same file
    again = tmp_path / "again.md"
    run("regrad_suite_report.py", [str(out.with_suffix(".json")), "--out", str(again)], env)
    assert again.read_text() == first
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "regrad_suite_report.py"), str(tmp_path / "missing.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0 and "run benchmarks/regrad_suite.py first" in p.stderr
