"""al.report keeps apart what is different: variants of one strategy in a protocol get a row each, and the
MC-dropout passes are part of a protocol's identity (without changing the ids of committed reports)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from al import report
from al.loop import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
BASE = dict(
    dataset="digits",
    model="mlp",
    budget=40,
    init_size=20,
    query_size=10,
    init_balanced=False,
    pool_subset=None,
    epochs=5,
    min_steps=30,
    batch_size=64,
    lr=1e-3,
    warm_start=False,
    oracle="ground-truth",
    mc_samples=20,
)


class FakeStore:
    """What the report reads from a store (runs, curves, queries), from hand-built runs."""

    def __init__(self, runs: list[dict]) -> None:
        self._runs, self._curves = [], []
        for r in runs:
            cfg = {
                **BASE,
                **r.get("config", {}),
                "strategy": r["strategy"],
                "seed": r["seed"],
                "strategy_kwargs": r.get("kwargs", {}),
                "strategy_params": r.get("params", {}),
            }
            self._runs.append(
                dict(
                    run=r["run"],
                    strategy=r.get("stored_name", r["strategy"]),
                    dataset="digits",
                    model="mlp",
                    seed=r["seed"],
                    status="finished",
                    config=json.dumps(cfg),
                )
            )
            for k, acc in enumerate(r["acc"]):
                self._curves.append(
                    dict(
                        run=r["run"],
                        strategy=r.get("stored_name", r["strategy"]),
                        dataset="digits",
                        seed=r["seed"],
                        round_idx=k,
                        n_labelled=20 + 10 * k,
                        n_queried=10,
                        accuracy=acc,
                        nll=1.0,
                        n_scored=np.nan,
                        score_q25=np.nan,
                        score_median=np.nan,
                        score_q75=np.nan,
                    )
                )

    def runs(self) -> pd.DataFrame:
        return pd.DataFrame(self._runs)

    def curves(self) -> pd.DataFrame:
        return pd.DataFrame(self._curves)

    def queries(self, run: str) -> pd.DataFrame:
        return pd.DataFrame(columns=["round_idx", "rank", "sample_id", "score"])


def _regrad_params(**changed) -> dict:
    from al.registry import build_strategy

    return json.loads(json.dumps(build_strategy("regrad", **changed).params()))


def test_two_variants_of_a_strategy_in_one_protocol_are_two_rows():
    default, alpha3 = _regrad_params(), _regrad_params(layer_alpha=3.0)
    assert default != alpha3
    store = FakeStore(
        [dict(run=f"rg-{s}", strategy="regrad", seed=s, params=default, acc=[0.5, 0.6, 0.7]) for s in (0, 1)]
        + [
            dict(
                run=f"rg0-{s}",
                strategy="regrad",
                seed=s,
                kwargs={"layer_alpha": 3.0},
                params=alpha3,
                acc=[0.5, 0.55, 0.6],
            )
            for s in (0, 1)
        ]
        + [dict(run="ent-0", strategy="entropy", seed=0, acc=[0.5, 0.6, 0.65])]
    )
    (s,) = report.summaries(store)  # type: ignore[arg-type]
    assert sorted(s.table.index) == ["entropy", "regrad", "regrad(layer_alpha=3)"]
    assert s.table.loc["regrad", "n_seeds"] == 2 and s.table.loc["regrad(layer_alpha=3)", "n_seeds"] == 2
    assert s.table.loc["regrad", "aubc_mean"] == pytest.approx(report.aubc([20, 30, 40], [0.5, 0.6, 0.7]))
    assert s.table.loc["regrad(layer_alpha=3)", "aubc_mean"] == pytest.approx(
        report.aubc([20, 30, 40], [0.5, 0.55, 0.6])
    )
    # the all-defaults variant keeps the plain name, so it is still the reference of the paired comparison
    assert "regrad(layer_alpha=3)" in report.paired_comparison(s.runs, "regrad").index
    assert set(report.learning_curves(store)["strategy"]) == set(s.table.index)  # type: ignore[arg-type]


def test_one_variant_keeps_the_plain_name_even_with_non_default_settings():
    alpha3 = _regrad_params(layer_alpha=3.0)
    store = FakeStore([dict(run=f"rg0-{s}", strategy="regrad", seed=s, params=alpha3, acc=[0.5, 0.6]) for s in (0, 1)])
    (s,) = report.summaries(store)  # type: ignore[arg-type]
    assert list(s.table.index) == ["regrad"]


def test_variants_of_an_unknown_strategy_are_labelled_by_the_settings_that_differ():
    store = FakeStore(
        [
            dict(run="a", strategy="not-installed", seed=0, params={"k": 1, "t": 0.5}, acc=[0.5, 0.6]),
            dict(run="b", strategy="not-installed", seed=0, params={"k": 2, "t": 0.5}, acc=[0.5, 0.7]),
        ]
    )
    (s,) = report.summaries(store)  # type: ignore[arg-type]
    assert sorted(s.table.index) == ["not-installed(k=1)", "not-installed(k=2)"]


def test_runs_differing_only_in_mc_samples_are_different_protocols():
    store = FakeStore(
        [
            dict(run="b20", strategy="bald", seed=0, acc=[0.5, 0.6]),
            dict(run="b50", strategy="bald", seed=0, config={"mc_samples": 50}, acc=[0.5, 0.7]),
        ]
    )
    sums = report.summaries(store)  # type: ignore[arg-type]
    assert len(sums) == 2
    assert {s.config["mc_samples"] for s in sums} == {20, 50}
    assert "MC dropout uses 50 passes" in report.describe_protocol({**BASE, "mc_samples": 50})
    assert "MC dropout" not in report.describe_protocol(BASE)


def test_the_default_mc_samples_keeps_protocol_ids_stable():
    assert "mc_samples" in report.PROTOCOL_FIELDS
    assert report.PROTOCOL_FIELD_DEFAULTS["mc_samples"] == ExperimentConfig().mc_samples
    without = {k: v for k, v in BASE.items() if k != "mc_samples"}
    assert report.protocol_id(BASE) == report.protocol_id(without)
    assert report.protocol_id({**BASE, "mc_samples": 50}) != report.protocol_id(BASE)
    # the ids of the committed protocol reports (file names under benchmarks/results/al) come from the same rule
    committed = {p.stem for p in (ROOT / "benchmarks" / "results" / "al").glob("*.md")} - {"report"}
    assert "mnist-b300-i20bal-q10-6a83a0" in committed
    p1 = dict(
        dataset="mnist",
        model="cnn",
        budget=300,
        init_size=20,
        query_size=10,
        init_balanced=True,
        pool_subset=1000,
        epochs=30,
        min_steps=300,
        batch_size=64,
        lr=1e-3,
        warm_start=False,
        oracle="ground-truth",
    )
    assert report.protocol_id({**p1, "mc_samples": 20}) == report.protocol_id(p1)


def test_early_stopping_makes_its_own_protocol_and_is_described():
    """Runs trained with early stopping are never averaged with fixed-schedule runs, the description says how they
    were trained, and the ids of the fixed-schedule protocols (every committed report) stay as they were."""
    assert report.protocol_id({**BASE, "early_stopping": False, "patience": 3}) == report.protocol_id(BASE)
    es = {**BASE, "early_stopping": True}
    assert report.protocol_id(es) != report.protocol_id(BASE)
    assert report.protocol_id({**es, "patience": 5}) != report.protocol_id(es)
    text = report.describe_protocol({**es, "val_size": 0.2, "patience": 3, "max_epochs": 100})
    assert "validation split of 20% of the labelled set" in text and "patience 3 epochs, at most 100" in text
    assert "30 epochs" not in text and "steps" not in text
    assert "20 labelled samples" in report.describe_protocol({**es, "val_size": 20})
    assert "validation" not in report.describe_protocol(BASE)
    for k in ("early_stopping", "val_size", "patience", "max_epochs"):
        assert report.PROTOCOL_FIELD_DEFAULTS[k] == getattr(ExperimentConfig(), k)
