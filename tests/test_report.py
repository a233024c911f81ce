"""al.report: AUBC and table maths on hand-built curves, and the full report (DataFrames, PNG, Markdown,
notebook) on a tiny digits store with finished, in-progress and fewer-seed runs and two protocols."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fast_config

from al import report
from al.errors import OracleError
from al.loop import Experiment
from al.oracles import CallbackOracle
from al.store import Store

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- maths on hand-built curves -----------------------------------------------------------------------------------
def test_aubc_of_a_flat_curve_is_its_accuracy():
    assert report.aubc([20, 30, 40, 50], [0.7] * 4) == pytest.approx(0.7)


def test_aubc_is_trapezoidal_and_normalised_by_the_label_range():
    # area = (0+1)/2*10 + 1*20 = 25 over a range of 30
    assert report.aubc([10, 20, 40], [0.0, 1.0, 1.0]) == pytest.approx(25 / 30)
    # order of the points does not matter
    assert report.aubc([40, 10, 20], [1.0, 0.0, 1.0]) == pytest.approx(25 / 30)


def test_aubc_equals_mean_step_accuracy_with_half_weight_ends_for_equal_steps():
    acc = np.array([0.5, 0.6, 0.8, 0.9])
    expected = (acc[0] / 2 + acc[1] + acc[2] + acc[3] / 2) / 3
    assert report.aubc([20, 30, 40, 50], acc) == pytest.approx(expected)


def test_aubc_needs_two_points_and_distinct_label_counts():
    assert math.isnan(report.aubc([20], [0.5]))
    with pytest.raises(ValueError, match="same label count"):
        report.aubc([20, 20, 30], [0.5, 0.6, 0.7])


def test_accuracy_at_interpolates_and_is_nan_outside():
    n, a = [20, 30, 40], [0.5, 0.7, 0.8]
    assert report.accuracy_at(n, a, 30) == pytest.approx(0.7)
    assert report.accuracy_at(n, a, 25) == pytest.approx(0.6)
    assert math.isnan(report.accuracy_at(n, a, 50))
    assert math.isnan(report.accuracy_at(n, a, 10))


def test_labels_to_reach_is_the_first_evaluated_count_at_or_above_target():
    n, a = [20, 30, 40, 50], [0.5, 0.91, 0.89, 0.95]
    assert report.labels_to_reach(n, a, 0.9) == 30
    assert report.labels_to_reach(n, a, 0.95) == 50
    assert report.labels_to_reach(n, a, 0.96) == math.inf


def _per_run(rows):
    return pd.DataFrame(rows, columns=["run", "strategy", "in_progress", "aubc", "acc@30", "labels_to_0.9"])


def test_summarise_uses_finished_runs_flags_fewer_seeds_and_marks_winners():
    pr = _per_run(
        [
            ("a0", "a", False, 0.80, 0.85, 30.0),
            ("a1", "a", False, 0.84, 0.87, 50.0),
            ("a2", "a", True, 0.10, 0.10, math.inf),  # in progress: must not drag the mean down
            ("b0", "b", False, 0.90, 0.87, 40.0),  # one seed only: flagged
            ("c0", "c", False, 0.70, 0.60, math.inf),
            ("c1", "c", False, 0.72, 0.62, math.inf),
        ]
    )
    t = report.summarise(pr, [30], [0.9])
    assert list(t.index) == ["b", "a", "c"]  # sorted by AUBC
    assert t.loc["a", "aubc_mean"] == pytest.approx(0.82)
    assert t.loc["a", "aubc_std"] == pytest.approx(np.std([0.80, 0.84], ddof=1))
    assert t.loc["a", "n_seeds"] == 2 and t.loc["a", "n_in_progress"] == 1
    assert bool(t.loc["b", "fewer_seeds"]) and not bool(t.loc["a", "fewer_seeds"])
    assert math.isnan(t.loc["b", "aubc_std"])
    assert t.loc["a", "labels_to_0.9_median"] == 40 and t.loc["a", "labels_to_0.9_reached"] == 2
    assert t.loc["c", "labels_to_0.9_median"] == math.inf and t.loc["c", "labels_to_0.9_reached"] == 0
    w = report.winners(t, [30], [0.9])
    assert w["aubc_mean"] == {"b"}
    assert w["acc@30_mean"] == {"b"}  # 0.87 against a's 0.86
    assert w["labels_to_0.9_median"] == {"a", "b"}  # both medians are 40


def test_paired_comparison_counts_seeds_and_calls_a_clear_gap_a_win():
    pr = pd.DataFrame(
        {
            "strategy": ["r"] * 3 + ["x"] * 3 + ["y"] * 3 + ["z"] * 2 + ["r"],
            "seed": [0, 1, 2] * 3 + [0, 1, 3],
            "in_progress": [False] * 11 + [True],
            "aubc": [0.80, 0.82, 0.84, 0.70, 0.73, 0.75, 0.81, 0.81, 0.85, 0.90, 0.91, 0.0],
        }
    )
    c = report.paired_comparison(pr, "r")
    assert c.loc["x", "n_pairs"] == 3 and c.loc["x", "diff_mean"] == pytest.approx(0.28 / 3)
    assert c.loc["x", "verdict"] == "wins" and c.loc["x", "seeds_won"] == 3
    assert c.loc["y", "verdict"] == "ties" and (c.loc["y", "seeds_won"], c.loc["y", "seeds_lost"]) == (1, 2)
    assert c.loc["z", "n_pairs"] == 2 and c.loc["z", "verdict"] == "too few seeds"
    assert c.loc["z", "diff_mean"] == pytest.approx(-0.095)


def test_interim_table_cuts_every_curve_at_the_common_reach():
    def rows(run, strat, prog, accs, start=20, step=10):
        return [
            dict(run=run, strategy=strat, in_progress=prog, n_labelled=start + i * step, accuracy=a)
            for i, a in enumerate(accs)
        ]

    cur = pd.DataFrame(
        rows("a0", "a", False, [0.5, 0.6, 0.7, 0.8])
        + rows("a1", "a", True, [0.5, 0.7])
        + rows("b0", "b", True, [0.5, 0.9, 0.9])
        + rows("c0", "c", True, [0.5])
    )
    t, n = report.interim_table(cur)
    assert n == 40  # b reached 40 at most; c has a single round and cannot be compared yet
    assert set(t.index) == {"a", "b"}
    assert t.loc["a", "n_runs"] == 1 and t.loc["a", "n_in_progress"] == 0  # a1 stopped at 30 < 40
    assert t.loc["a", "aubc_to_common_mean"] == pytest.approx(report.aubc([20, 30, 40], [0.5, 0.6, 0.7]))
    assert t.loc["b", "acc_at_common_mean"] == pytest.approx(0.9) and t.loc["b", "n_in_progress"] == 1
    assert "cut at 40 labels" in report.interim_markdown(t, n)


def test_default_label_counts_for_the_batchbald_protocol():
    assert report.default_at_labels(dict(init_size=20, budget=300, query_size=10)) == [100, 200, 300]
    assert report.default_at_labels(dict(init_size=100, budget=2000, query_size=100)) == [700, 1300, 2000]
    assert report.default_at_labels(dict(init_size=20, budget=80, query_size=20)) == [40, 60, 80]


# --- a tiny real store --------------------------------------------------------------------------------------------
def _raise_on_round(r_fail: int):
    calls = {"n": 0}

    def ask(ids):
        calls["n"] += 1
        if calls["n"] > r_fail:
            raise RuntimeError("labeller went home")
        from al.data import load_dataset

        return load_dataset("digits").train_y.numpy()[ids].tolist()

    return ask


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> str:
    """digits: entropy and random x seeds 0, 1 finished; entropy seed 2 stopped after two rounds (in
    progress); margin with one seed (fewer seeds); random seed 0 under a second protocol (budget 40)."""
    import torch

    from al.data import load_dataset

    torch.set_num_threads(1)
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'tiny.db'}"
    ds = load_dataset("digits")
    store = Store(url)
    kw = dict(budget=80, init_size=20, query_size=20, epochs=5, min_steps=30)
    for strat in ("entropy", "random"):
        for seed in (0, 1):
            Experiment(fast_config(strategy=strat, seed=seed, **kw), store, dataset=ds).run()
    Experiment(fast_config(strategy="margin", seed=0, **kw), store, dataset=ds).run()
    with pytest.raises(OracleError):
        Experiment(
            fast_config(strategy="entropy", seed=2, **kw), store, dataset=ds, oracle=CallbackOracle(_raise_on_round(2))
        ).run()
    Experiment(
        fast_config(strategy="random", seed=0, **{**kw, "budget": 40}), store, dataset=ds, name="other-protocol-random"
    ).run()
    return url


def test_protocols_are_not_mixed(tiny_store):
    sums = report.summaries(Store(tiny_store))
    assert len(sums) == 2
    by_budget = {s.config["budget"]: s for s in sums}
    assert set(by_budget) == {40, 80}
    assert list(by_budget[40].table.index) == ["random"]
    assert by_budget[40].table.loc["random", "n_seeds"] == 1
    assert by_budget[80].table.loc["random", "n_seeds"] == 2


def test_tables_from_the_store_match_the_curves(tiny_store):
    store = Store(tiny_store)
    s = next(x for x in report.summaries(store, "digits") if x.config["budget"] == 80)
    t = s.table
    assert t.loc["entropy", "n_seeds"] == 2 and t.loc["entropy", "n_in_progress"] == 1
    assert bool(t.loc["margin", "fewer_seeds"]) and not bool(t.loc["entropy", "fewer_seeds"])
    cur = store.curves()
    for strat in ("entropy", "random"):
        vals = []
        for seed in (0, 1):
            g = cur[cur["run"] == f"digits-{strat}-seed{seed}"]
            assert list(g["n_labelled"]) == [20, 40, 60, 80]
            vals.append(report.aubc(g["n_labelled"], g["accuracy"]))
        assert t.loc[strat, "aubc_mean"] == pytest.approx(np.mean(vals))
        assert t.loc[strat, "acc@80_mean"] == pytest.approx(
            cur[cur["strategy"].eq(strat) & cur["n_labelled"].eq(80) & cur["run"].str.startswith("digits")][
                "accuracy"
            ].mean()
        )
    prog = s.runs[s.runs["in_progress"]]
    assert list(prog["run"]) == ["digits-entropy-seed2"] and prog["final_labels"].iloc[0] == 40


def test_batch_uncertainty_reads_the_acquired_scores(tiny_store):
    store = Store(tiny_store)
    cur = report.learning_curves(store)
    unc = report.batch_uncertainty(store, cur)
    assert set(unc["strategy"]) == {"entropy", "margin"}  # random has no per-sample uncertainty
    row = unc[(unc["run"] == "digits-entropy-seed0") & (unc["round_idx"] == 1)].iloc[0]
    q = store.queries("digits-entropy-seed0")
    assert row["batch_mean"] == pytest.approx(q[q["round_idx"] == 1]["score"].mean())
    assert row["labels_before"] == 20
    # entropy picks the top of the candidates: the batch sits above the candidates' upper quartile
    assert (unc[unc["strategy"] == "entropy"]["batch_min"] >= unc[unc["strategy"] == "entropy"]["pool_q75"]).all()


def test_write_report_makes_pngs_and_markdown(tiny_store, tmp_path):
    paths = report.write_report(Store(tiny_store), tmp_path, command="python -m al.report --store X")
    names = {p.name for p in paths}
    assert "report.md" in names
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 3  # curves for both protocols, uncertainty for the one with scored strategies
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
    md = next(p for p in paths if p.suffix == ".md" and "b80" in p.name).read_text()
    assert "python -m al.report --store X" in md
    assert "retrained from scratch" in md and "whole unlabelled pool" in md
    assert "digits-entropy-seed2: 2 rounds done, 40 labels so far" in md
    # the interim table would count no run the main table leaves out (entropy seed 2 stopped at 40 labels)
    assert "Interim comparison" not in md
    line = next(x for x in md.splitlines() if x.startswith("| margin"))
    assert "1 †" in line
    line = next(x for x in md.splitlines() if x.startswith("| entropy"))
    assert "2 (+1 in progress)" in line
    assert md.count("**") >= 2  # at least one winner marked
    index = (tmp_path / "report.md").read_text()
    assert index.count("## digits-") == 2


def test_cli_writes_report_and_refuses_an_empty_store(tiny_store, tmp_path, capsys):
    assert (
        report.main(
            [
                "--store",
                tiny_store,
                "--out",
                str(tmp_path / "r"),
                "--dataset",
                "digits",
                "--at",
                "40",
                "80",
                "--targets",
                "0.5",
            ]
        )
        == 0
    )
    md = (tmp_path / "r" / "report.md").read_text()
    assert "acc @ 40" in md and "labels to 50%" in md
    Store(f"sqlite:///{tmp_path / 'empty.db'}").close()
    assert report.main(["--store", f"sqlite:///{tmp_path / 'empty.db'}", "--out", str(tmp_path / "e")]) == 2
    assert "holds no runs" in capsys.readouterr().err


def test_cli_refuses_a_missing_store_file_without_creating_it_and_an_absent_dataset(tiny_store, tmp_path, capsys):
    missing = tmp_path / "typo.db"
    assert report.main(["--store", f"sqlite:///{missing}", "--out", str(tmp_path / "m")]) == 2
    assert "no store file at" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "m").exists()
    assert report.main(["--store", tiny_store, "--dataset", "mnist", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "no runs on dataset 'mnist'" in err and "digits" in err
    assert not (tmp_path / "d").exists()
    assert report.main(["--store", tiny_store, "--targets", "90"]) == 2


def test_notebook_executes_on_the_tiny_store(tiny_store, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # A kernel spec pointing at this interpreter, so the notebook runs in the project's venv on any machine.
    kdir = tmp_path / "jupyter" / "kernels" / "al-test"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "al test",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("AL_STORE", tiny_store)
    monkeypatch.setenv("AL_FIG_DIR", str(tmp_path / "figs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / "learning_curves.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="al-test", timeout=120, resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    client.execute()
    text = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])
    assert "error" not in [o.get("output_type") for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert "image/png" in text
    assert "entropy" in text and "in progress" in text
    assert sorted(p.name for p in (tmp_path / "figs").glob("*.png"))


# --- stopping criteria and runs without a test set ----------------------------------------------------------------
def _hand_store(url: str, *, with_values: bool) -> None:
    """Two finished runs of one protocol filled through the Store API; ``pool`` has no test set (no accuracy)."""
    s = Store(url)
    cfg = dict(dataset="digits", model="mlp", budget=30, init_size=10, query_size=10, strategy="entropy", seed=0)
    for name, acc in (("with-test", (0.5, 0.7, 0.8)), ("pool", (None, None, None))):
        run = s.open_run(name, {**cfg, "seed": 0 if acc[0] else 1}).run_id
        for r, a in enumerate(acc):
            ids = np.arange(10 * r, 10 * r + 10)
            s.record_query(run, r, ids, None)
            s.record_labels(run, r, {int(i): int(i) % 3 for i in ids}, "ground-truth")
            s.record_metrics(run, r, n_labelled=10 * (r + 1), accuracy=a, nll=None if a is None else 1.0)
            if with_values:
                s.record_round_values(
                    run,
                    r,
                    {
                        "stabilising-predictions": None if r == 0 else 0.9 + 0.05 * r,
                        "stabilising-predictions:threshold": 0.99,
                        "stabilising-predictions:streak": float(r),  # another suffix: stored, not shown
                    },
                )
        s.set_status(run, "finished")
    if with_values:
        s.record_round_values(s.state("pool").run_id, 3, {"max-uncertainty": 0.25})
    s.close()


def test_report_plots_stored_stopping_criteria(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _hand_store(url, with_values=True)
    store = Store(url, must_exist=True)
    table = report.last_values(store.round_values())
    first = table.iloc[0]
    assert (first["run"], first["criterion"], first["round_idx"], first["value"]) == (
        "pool",
        "max-uncertainty",
        3,
        0.25,
    )
    assert math.isnan(table["threshold"].iloc[0])
    kappa = table[table["criterion"] == "stabilising-predictions"].set_index("run")
    assert kappa.loc["with-test", "value"] == pytest.approx(1.0) and kappa.loc["pool", "threshold"] == 0.99
    paths = report.write_report(store, tmp_path / "out")
    names = {p.name for p in paths}
    assert {"stopping-stabilising-predictions.png", "stopping-max-uncertainty.png"} <= names
    assert not any("streak" in n for n in names)
    for n in ("stopping-stabilising-predictions.png", "stopping-max-uncertainty.png"):
        assert (tmp_path / "out" / n).read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Stopping criteria" in md and "| with-test | stabilising-predictions | 2 | 1.0000 | 0.9900 |" in md
    assert "| pool | max-uncertainty | 3 | 0.2500 | n/a |" in md and "streak" not in md
    assert "![stopping criterion](stopping-stabilising-predictions.png)" in md
    # The run without a test set is in no accuracy table or curve; the one with it is.
    cur = report.learning_curves(store)
    assert set(cur["run"]) == {"with-test"} and cur["accuracy"].dtype == np.float64
    (proto,) = report.summaries(store)
    assert proto.runs["run"].tolist() == ["with-test"] and proto.table.loc["entropy", "n_seeds"] == 1
    store.close()


def test_report_without_round_values_is_unchanged(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _hand_store(url, with_values=False)
    store = Store(url, must_exist=True)
    paths = report.write_report(store, tmp_path / "out")
    assert not any(p.name.startswith("stopping-") for p in paths)
    assert "Stopping criteria" not in (tmp_path / "out" / "report.md").read_text()
    store.close()


def test_report_of_runs_without_any_test_accuracy(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    s = Store(url)
    run = s.open_run("pool", dict(dataset="photos", budget=20, init_size=10, query_size=10, strategy="entropy")).run_id
    s.record_query(run, 0, np.arange(10), None)
    s.record_labels(run, 0, {i: 0 for i in range(10)}, "ground-truth")
    s.record_metrics(run, 0, n_labelled=10)
    s.record_round_values(run, 0, {"overall-uncertainty": 0.3, "overall-uncertainty:threshold": 0.05})
    s.close()
    paths = report.write_report(Store(url, must_exist=True), tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "no completed round yet" in md and "| pool | overall-uncertainty | 0 | 0.3000 | 0.0500 |" in md
    assert (tmp_path / "out" / "stopping-overall-uncertainty.png") in paths
