"""al.report on regression runs: RMSE curves and the table (RMSE area, RMSE at label counts, final NLL; lower is
better), beside classification protocols whose reports are unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from al import report
from al.report.regression import per_run_rmse, rmse_area, summarise_rmse
from al.store import Store

LABELS = [20, 30, 40]
CURVES = {  # strategy -> per seed, the test RMSE at 20, 30, 40 labels
    "random": [[70.0, 66.0, 64.0], [72.0, 67.0, 63.0], [71.0, 65.0, 62.0]],
    "mc-variance": [[70.0, 62.0, 58.0], [72.0, 63.0, 59.0], [71.0, 61.0, 57.0]],
}
CONFIG = dict(
    dataset="diabetes",
    task="regression",
    model="mlp-regressor",
    budget=40,
    init_size=20,
    query_size=10,
    init_balanced=False,
    pool_subset=0,
    epochs=30,
    min_steps=100,
    batch_size=64,
    lr=0.001,
    warm_start=False,
    oracle="ground-truth",
    mc_samples=20,
)


def _store(url: str) -> Store:
    s = Store(url)
    for strategy, seeds in CURVES.items():
        for seed, rmse in enumerate(seeds):
            run = s.open_run(f"d-{strategy}-{seed}", {**CONFIG, "strategy": strategy, "seed": seed}).run_id
            for r, (n, e) in enumerate(zip(LABELS, rmse, strict=True)):
                ids = np.arange(n - (20 if r == 0 else 10), n) + 1000 * seed
                s.record_query(run, r, ids, None)
                s.record_targets(run, r, {int(i): 100.0 for i in ids}, "ground-truth")
                s.record_metrics(run, r, n_labelled=n, nll=5.0 + e / 100, rmse=e)
            s.set_status(run, "finished")
    return s


def test_rmse_area_is_the_mean_rmse_over_the_budget():
    assert rmse_area([20, 30, 40], [70.0, 66.0, 64.0]) == pytest.approx((68.0 + 65.0) / 2)


def test_the_summary_ranks_the_lower_rmse_area_first(store_url):
    (s,) = report.summaries(_store(store_url))
    assert s.task == "regression" and list(s.table.index) == ["mc-variance", "random"]
    want = np.mean([rmse_area(LABELS, c) for c in CURVES["mc-variance"]])
    assert s.table.loc["mc-variance", "area_mean"] == pytest.approx(want)
    assert s.table.loc["random", "rmse@40_mean"] == pytest.approx(63.0)
    assert s.at_labels == [30, 40]  # default_at_labels: spread over the budget


def test_the_report_writes_the_rmse_table_and_curves(store_url, tmp_path):
    store = _store(store_url)
    written = report.write_report(store, tmp_path, reference="random")
    md = (tmp_path / "report.md").read_text()
    assert "| strategy | seeds | RMSE area | RMSE @ 30 | RMSE @ 40 | final NLL |" in md
    row = next(line for line in md.splitlines() if line.startswith("| mc-variance | 3 |"))
    assert row.split(" | ")[2].startswith("**")  # the lowest RMSE area is bold
    assert "Regression: the model is trained with the mean squared error" in md and "lower is better" in md
    # random against mc-variance, seed by seed: random's area is larger on every seed, so it loses
    pair = next(line for line in md.splitlines() if line.startswith("| mc-variance | 3 |") and "loses" in line)
    assert "0 / 3" in pair
    assert any(p.name.endswith("-curves.png") for p in written)
    frame = per_run_rmse(report.learning_curves(store), [30])
    assert sorted(frame["rmse@30"]) == sorted(c[1] for cs in CURVES.values() for c in cs)
    assert summarise_rmse(frame, [30]).loc["random", "n_seeds"] == 3


def test_a_store_with_both_tasks_reports_each_protocol_in_its_own_terms(store_url, tmp_path):
    store = _store(store_url)
    cls = {**CONFIG, "dataset": "digits", "model": "mlp", "strategy": "entropy", "seed": 0}
    del cls["task"]
    run = store.open_run("c-entropy-0", cls).run_id
    for r, n in enumerate(LABELS):
        ids = np.arange(n - (20 if r == 0 else 10), n)
        store.record_query(run, r, ids, None)
        store.record_labels(run, r, {int(i): 1 for i in ids}, "ground-truth")
        store.record_metrics(run, r, n_labelled=n, accuracy=0.5 + r / 10, nll=1.0)
    store.set_status(run, "finished")
    summaries = {s.protocol.split("-")[0]: s for s in report.summaries(store)}
    assert summaries["digits"].task == "classification" and "aubc_mean" in summaries["digits"].table
    assert summaries["diabetes"].task == "regression" and "area_mean" in summaries["diabetes"].table
    report.write_report(store, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| strategy | seeds | AUBC |" in md and "| strategy | seeds | RMSE area |" in md
