"""Learning-curve reports from a store: tables as pandas DataFrames, figures as PNG, Markdown per protocol.

    python -m al.report --store sqlite:///al-runs.db [--dataset mnist] [--out report/]

Runs are compared only within one *protocol*: the same dataset and the same settings that shape a learning
curve (budget, init_size, query_size, class-balanced start, pool subset, model and training schedule, MC-dropout
passes; :data:`PROTOCOL_FIELDS`). Runs of different protocols are never averaged together.

Within a protocol, runs are grouped by strategy *and its settings*: when a protocol holds more than one variant of
a strategy (say REGrad with two ``layer_alpha``), each variant gets its own row, labelled with the settings in
which it differs from the strategy's defaults (``regrad(layer_alpha=0)``; the all-defaults variant keeps the plain
name). A strategy run with one set of settings keeps its plain name.

Statistics over seeds use *finished* runs only. Runs still in progress (any status other than ``finished``:
running, stopped half-way, waiting for labels) are listed as such and drawn dashed, but kept out of the means,
because a partial curve has no AUBC and has not had its chance to reach the accuracy targets. A strategy with
fewer finished seeds than the best-covered strategy of its protocol is flagged.

Definitions (per run; the table gives mean and std, or median, over the finished seeds):

* **AUBC** (area under the budget curve, normalised): with the learning curve ``a(n)`` taken as the
  piecewise-linear interpolation of test accuracy between the evaluated label counts
  ``n_0 < n_1 < ... < n_R`` (``n_0`` the initial set, ``n_R`` the final label count),
  ``AUBC = 1 / (n_R - n_0) * integral_{n_0}^{n_R} a(n) dn`` (trapezoidal rule). Accuracy lies in [0, 1], so
  AUBC does too; 1 means perfect accuracy from the first label. With a constant query size it equals the mean
  accuracy over the acquisition steps with half weight on the first and last step. Needs ``R >= 1``.
* **accuracy at n labels**: ``a(n)`` by the same linear interpolation (exact when ``n`` is an evaluated
  count); NaN outside ``[n_0, n_R]``.
* **labels to reach accuracy t**: the smallest evaluated label count ``n_r`` with ``a(n_r) >= t`` (no
  interpolation: the labels one actually had to buy); infinite if never reached. Reported as the median over
  seeds, as Kirsch et al. (2019) report theirs, with the number of seeds that reached it.

References: AUBC as in Zhan et al., "A comparative survey of deep active learning" (2022) and Kirsch et al.,
"BatchBALD" (NeurIPS 2019) for labels-to-accuracy.

The package holds one concern per module: :mod:`~al.report.metrics` (maths on one curve),
:mod:`~al.report.protocols` (protocol identity, strategy variants, reading the store),
:mod:`~al.report.tables` (summaries over seeds, paired comparison), :mod:`~al.report.markdown` (rendering),
:mod:`~al.report.plots` (figures), :mod:`~al.report.regression` (regression protocols: RMSE area, RMSE at n
labels, the per-strategy table; lower is better), :mod:`~al.report.stopping` (stopping criteria's stored values: the
``"<name>"`` / ``"<name>:threshold"`` round-value convention, their figure and table) and
:mod:`~al.report.cli` (:func:`write_report`, ``python -m al.report``).
Every name is re-exported here: import them from ``al.report``.
"""

from __future__ import annotations

from .cli import main, write_report
from .markdown import (
    interim_markdown,
    markdown_table,
    paired_markdown,
    protocol_markdown,
    regression_protocol_markdown,
    rmse_markdown_table,
)
from .metrics import DEFAULT_TARGETS, accuracy_at, aubc, labels_to_reach
from .plots import plot_batch_uncertainty, plot_learning_curves, plot_round_values
from .protocols import (
    IN_PROGRESS,
    PROTOCOL_FIELD_DEFAULTS,
    PROTOCOL_FIELDS,
    describe_protocol,
    learning_curves,
    protocol_id,
    runs_table,
    variant_labels,
)
from .regression import per_run_rmse, rmse_area, rmse_at, rmse_winners, summarise_rmse
from .stopping import criterion_names, last_values, stopping_markdown, write_stopping
from .tables import (
    ProtocolSummary,
    batch_uncertainty,
    default_at_labels,
    interim_table,
    paired_comparison,
    per_run_metrics,
    summaries,
    summarise,
    winners,
)

__all__ = [
    "DEFAULT_TARGETS",
    "IN_PROGRESS",
    "PROTOCOL_FIELDS",
    "PROTOCOL_FIELD_DEFAULTS",
    "ProtocolSummary",
    "accuracy_at",
    "criterion_names",
    "last_values",
    "aubc",
    "batch_uncertainty",
    "default_at_labels",
    "describe_protocol",
    "interim_markdown",
    "interim_table",
    "labels_to_reach",
    "learning_curves",
    "main",
    "markdown_table",
    "paired_comparison",
    "paired_markdown",
    "per_run_metrics",
    "plot_batch_uncertainty",
    "plot_learning_curves",
    "plot_round_values",
    "protocol_id",
    "protocol_markdown",
    "per_run_rmse",
    "regression_protocol_markdown",
    "rmse_area",
    "rmse_at",
    "rmse_markdown_table",
    "rmse_winners",
    "summarise_rmse",
    "runs_table",
    "summaries",
    "summarise",
    "stopping_markdown",
    "variant_labels",
    "winners",
    "write_report",
    "write_stopping",
]
