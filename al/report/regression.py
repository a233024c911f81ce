"""Regression protocols' numbers: per-run RMSE metrics and the per-strategy table (lower is better).

Definitions (per run; the table gives mean and std over the finished seeds), with the learning curve ``e(n)`` the
piecewise-linear interpolation of the test RMSE between the evaluated label counts ``n_0 < ... < n_R``:

* **RMSE area** (area under the RMSE curve, normalised): ``1 / (n_R - n_0) * integral_{n_0}^{n_R} e(n) dn``
  (trapezoidal), the AUBC definition applied to the RMSE: the mean RMSE over the budget, in the target's units.
  Lower is better. Needs ``R >= 1``.
* **RMSE at n labels**: ``e(n)`` by the same interpolation; NaN outside ``[n_0, n_R]``.
* **final NLL**: the Gaussian negative log-likelihood of the test targets at the last round (:mod:`al.regression`
  says which variance), nats per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .metrics import accuracy_at, aubc


def rmse_area(n_labelled: Sequence[float], rmse: Sequence[float]) -> float:
    """Normalised area under the RMSE curve (the module docstring); NaN for < 2 points."""
    return aubc(n_labelled, rmse)  # the same normalised trapezoid: the maths does not care what the curve is


def rmse_at(n_labelled: Sequence[float], rmse: Sequence[float], at: float) -> float:
    """Test RMSE at ``at`` labels, linearly interpolated; NaN outside the curve's range."""
    return accuracy_at(n_labelled, rmse, at)


def per_run_rmse(curves: pd.DataFrame, at_labels: Sequence[int] = ()) -> pd.DataFrame:
    """One row per run of a regression protocol: run, protocol, dataset, strategy, seed, in_progress, n_rounds,
    final_labels, final_rmse, final_nll, rmse_area and ``rmse@<n>`` for each of ``at_labels``."""
    rows = []
    for run, g in curves.groupby("run", sort=False):
        g = g[g["rmse"].notna()]
        if g.empty:
            continue
        n, e = g["n_labelled"].to_numpy(), g["rmse"].to_numpy(dtype=np.float64)
        last = int(np.argmax(n))
        row = dict(
            run=run,
            protocol=g["protocol"].iloc[0],
            dataset=g["dataset"].iloc[0],
            strategy=g["strategy"].iloc[0],
            seed=int(g["seed"].iloc[0]),
            in_progress=bool(g["in_progress"].iloc[0]),
            n_rounds=len(g),
            final_labels=int(n.max()),
            final_rmse=float(e[last]),
            final_nll=float(g["nll"].to_numpy(dtype=np.float64)[last]),
            rmse_area=rmse_area(n, e),
        )
        for at in at_labels:
            row[f"rmse@{at}"] = rmse_at(n, e, at)
        rows.append(row)
    return pd.DataFrame(rows)


def summarise_rmse(per_run: pd.DataFrame, at_labels: Sequence[int]) -> pd.DataFrame:
    """A regression protocol's per-strategy table: n_seeds (finished), n_in_progress, fewer_seeds, area_mean,
    area_std, ``rmse@<n>_mean``/``_std``, nll_mean/nll_std (final NLL). Finished runs only (ddof=1; NaN for one
    seed). Index: strategy, sorted by the RMSE area, best (lowest) first."""
    rows = []
    for strat, g in per_run.groupby("strategy"):
        done = g[~g["in_progress"]]
        row: dict = dict(
            strategy=strat,
            n_seeds=len(done),
            n_in_progress=int(g["in_progress"].sum()),
            area_mean=done["rmse_area"].mean(),
            area_std=done["rmse_area"].std(ddof=1),
        )
        for at in at_labels:
            row[f"rmse@{at}_mean"] = done[f"rmse@{at}"].mean()
            row[f"rmse@{at}_std"] = done[f"rmse@{at}"].std(ddof=1)
        row["nll_mean"], row["nll_std"] = done["final_nll"].mean(), done["final_nll"].std(ddof=1)
        rows.append(row)
    cols = ["strategy", "n_seeds", "n_in_progress", "area_mean", "area_std"]
    table = pd.DataFrame(rows, columns=cols + [c for r in rows[:1] for c in r if c not in cols])
    if table.empty:
        return table.set_index("strategy")
    table.insert(3, "fewer_seeds", table["n_seeds"] < table["n_seeds"].max())
    return table.sort_values("area_mean", ascending=True, na_position="last").set_index("strategy")


def rmse_winners(table: pd.DataFrame, at_labels: Sequence[int]) -> dict[str, set[str]]:
    """For each compared column (RMSE area, RMSE at each count, final NLL) the strategies with the lowest value
    (ties all win); strategies without a finished seed cannot win."""
    out: dict[str, set[str]] = {}
    ok = table[table["n_seeds"] > 0]
    for col in ["area_mean", *[f"rmse@{a}_mean" for a in at_labels], "nll_mean"]:
        v = ok[col] if col in ok else pd.Series(dtype=float)
        if v.isna().all():
            out[col] = set()
            continue
        out[col] = set(v.index[np.isclose(v.to_numpy(dtype=float), v.min(), rtol=0, atol=1e-12)])
    return out
