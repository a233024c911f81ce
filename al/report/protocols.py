"""Protocol identity and grouping: which runs are compared, and under which strategy label.

A protocol (:data:`PROTOCOL_FIELDS`) is the dataset and the settings that shape a learning curve; within one,
runs are grouped by strategy and its settings (:func:`variant_labels`). See the :mod:`al.report` docstring.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ..config import CONFIG_ADDED
from ..store import Store
from ..tasks import REGRESSION

#: Config fields that define a protocol: runs differing in any of them are never compared or averaged.
PROTOCOL_FIELDS = (
    "dataset",
    "model",
    "budget",
    "init_size",
    "query_size",
    "init_balanced",
    "pool_subset",
    "epochs",
    "min_steps",
    "batch_size",
    "lr",
    "warm_start",
    "oracle",
    "mc_samples",
    "early_stopping",
    "val_size",
    "patience",
    "max_epochs",
    "task",
    "val_held_out",
    "eval_mc_samples",
)
#: Protocol fields that joined :data:`PROTOCOL_FIELDS` after reports had been committed, with the value every run
#: recorded before then used (the ExperimentConfig default). At that value (or absent) they stay out of
#: :func:`protocol_id`'s hash, so those reports keep their protocol ids and file names.
PROTOCOL_FIELD_DEFAULTS: dict[str, Any] = {
    "mc_samples": 20,
    **{
        k: CONFIG_ADDED[k]
        for k in ("early_stopping", "val_size", "patience", "max_epochs", "task", "val_held_out", "eval_mc_samples")
    },
}
IN_PROGRESS = "in progress"


# --- reading the store --------------------------------------------------------------------------------------------
def protocol_id(config: dict) -> str:
    """A short, stable, file-name-safe id of the protocol a run's config belongs to.

    ``<dataset>-b<budget>-i<init>[bal]-q<query>`` plus a hash of the other protocol fields, so that two
    schedules of the same budget get different ids. A field of :data:`PROTOCOL_FIELD_DEFAULTS` enters the hash
    only when it differs from its default."""
    c = {k: config.get(k) for k in PROTOCOL_FIELDS}
    rest = json.dumps(
        {
            k: c[k]
            for k in PROTOCOL_FIELDS
            if k not in ("dataset", "budget", "init_size", "query_size", "init_balanced")
            and not (k in PROTOCOL_FIELD_DEFAULTS and c[k] in (None, PROTOCOL_FIELD_DEFAULTS[k]))
        },
        sort_keys=True,
        default=str,
    )
    h = hashlib.sha1(rest.encode()).hexdigest()[:6]
    return (
        f"{c['dataset']}-b{c['budget']}-i{c['init_size']}{'bal' if c['init_balanced'] else ''}-q{c['query_size']}-{h}"
    )


def describe_protocol(config: dict) -> str:
    """One line stating the pool subset and training schedule, to print beside every table."""
    c = config
    subset = (
        "the whole unlabelled pool"
        if not c.get("pool_subset")
        else f"a fresh random {c['pool_subset']} unlabelled candidates"
    )
    start = "class-balanced" if c.get("init_balanced") else "random"
    fit = "fine-tuned from the previous round" if c.get("warm_start") else "retrained from scratch"
    if c.get("early_stopping"):
        val = c.get("val_size", PROTOCOL_FIELD_DEFAULTS["val_size"])
        held = f"{val:.0%} of the labelled set" if val < 1 else f"{int(val)} labelled samples"
        if c.get("val_held_out"):
            held = f"{c['val_held_out']} pool samples set aside and labelled outside the budget"
        schedule = (
            f"until its loss on a validation split of {held} stops improving (patience "
            f"{c.get('patience', PROTOCOL_FIELD_DEFAULTS['patience'])} epochs, at most "
            f"{c.get('max_epochs', PROTOCOL_FIELD_DEFAULTS['max_epochs'])}; the best epoch's weights kept)"
        )
    else:
        schedule = f"for {c.get('epochs')} epochs and at least {c.get('min_steps')} steps"
    return (
        f"{c.get('dataset')}, model `{c.get('model')}`: {c.get('init_size')} {start} initial labels, "
        f"{c.get('query_size')} per round up to {c.get('budget')}; each round scores {subset}; the model is "
        f"{fit} each round with Adam (lr {c.get('lr')}, batch {c.get('batch_size')}) {schedule}; "
        f"oracle {c.get('oracle')}." + _non_default_fields(c)
    )


def _non_default_fields(config: dict) -> str:
    # Said only when not the default, so the descriptions in reports written before these fields existed stay.
    mc = config.get("mc_samples")
    out = f" MC dropout uses {mc} passes." if mc not in (None, PROTOCOL_FIELD_DEFAULTS["mc_samples"]) else ""
    if config.get("eval_mc_samples"):
        out += f" Test accuracy and NLL from the mean of {config['eval_mc_samples']} MC-dropout passes."
    if config.get("task", PROTOCOL_FIELD_DEFAULTS["task"]) == REGRESSION:
        out += (
            " Regression: the model is trained with the mean squared error on the labelled targets standardised "
            "per round; test RMSE and Gaussian NLL are in the target's units."
        )
    return out


# --- strategy variants --------------------------------------------------------------------------------------------
def _canonical(v: Any) -> Any:
    # Stored settings went through JSON (tuples became lists); compare defaults in the same form.
    return json.loads(json.dumps(v, default=str))


def _settings(config: dict, added: dict[str, Any]) -> dict[str, Any]:
    """A run's strategy settings; a key added to the strategy after the run (``params_added``) gets the value the
    run used, so old and new runs of the same settings are one variant."""
    stored = config.get("strategy_params")
    out = dict(stored if stored is not None else config.get("strategy_kwargs") or {})
    for k, v in added.items():
        out.setdefault(k, _canonical(v))
    return out


def _strategy_defaults(name: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(constructor defaults, params_added) of the registered strategy ``name``; (None, {}) when it is not
    installed here, in which case variants are told apart by the settings in which they differ."""
    from ..errors import ALError
    from ..registry import STRATEGIES

    try:
        cls = STRATEGIES.get(name)
    except (ALError, KeyError, ImportError):
        return None, {}
    try:
        # A default instance: its params() are the defaults as recorded (a strategy may add derived keys), and
        # params_added may be a property that depends on the settings.
        default = cls()
        return _canonical(default.params()), dict(default.params_added)
    except (ALError, TypeError, ValueError):  # a strategy with required settings
        params = inspect.signature(cls.__init__).parameters.values()
        added = getattr(cls, "params_added", {})  # a property when it depends on the settings: not known here
        return (
            {p.name: _canonical(p.default) for p in params if p.default is not inspect.Parameter.empty},
            dict(added) if isinstance(added, Mapping) else {},
        )


def _fmt_setting(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return v if isinstance(v, str) else json.dumps(v)


def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run, the label its strategy is reported under (see the module docstring).

    ``runs``: one row per run with ``protocol``, ``strategy`` (the stored name) and ``config`` (dict). Returns a
    Series aligned with ``runs``: the stored name, or ``name(key=value, ...)`` when the run's protocol holds more
    than one set of settings for that name."""
    labels = runs["strategy"].astype(object).copy()
    for (_, name), g in runs.groupby(["protocol", "strategy"], sort=False):
        plain = [_settings(c, {}) for c in g["config"]]
        if len({json.dumps(p, sort_keys=True, default=str) for p in plain}) < 2:
            continue  # one variant: the plain name, as every report before variants existed
        defaults, added = _strategy_defaults(g["config"].iloc[0].get("strategy", name))
        sets = [_settings(c, added) for c in g["config"]]
        if len({json.dumps(x, sort_keys=True, default=str) for x in sets}) < 2:
            continue  # they differed only in settings added since the older runs, at the value those used
        keys = sorted(set().union(*sets))
        if defaults is None:  # unknown strategy: name the settings that differ between its variants
            keys = [k for k in keys if len({json.dumps(x.get(k), default=str) for x in sets}) > 1]
        for idx, st in zip(g.index, sets, strict=True):
            diff = [k for k in keys if k in st and (defaults is None or k not in defaults or st[k] != defaults[k])]
            labels[idx] = f"{name}({', '.join(f'{k}={_fmt_setting(st[k])}' for k in diff)})" if diff else name
    return labels


def runs_table(store: Store, dataset: str | None = None) -> pd.DataFrame:
    """One row per run: run, strategy, dataset, seed, status, protocol, in_progress, config (dict),
    strategy_name.

    ``strategy`` is the label the run is reported under (:func:`variant_labels`), ``strategy_name`` the name
    stored with the run. ``in_progress`` is True for every run whose status is not ``finished``."""
    runs = store.runs()
    if dataset is not None:
        runs = runs[runs["dataset"] == dataset]
    runs = runs.copy()
    runs["config"] = [json.loads(c) for c in runs["config"]]
    runs["protocol"] = [protocol_id(c) for c in runs["config"]]
    runs["in_progress"] = runs["status"] != "finished"
    runs = runs.reset_index(drop=True)
    runs["strategy_name"] = runs["strategy"]
    if len(runs):
        runs["strategy"] = variant_labels(runs)
    return runs


def learning_curves(store: Store, dataset: str | None = None) -> pd.DataFrame:
    """Completed rounds of every run, with its protocol: run, strategy, dataset, protocol, seed, status,
    in_progress, round_idx, n_labelled, accuracy, nll, score_* summaries of the candidate scores..., rmse.

    Rounds without a test metric (a pool without a test set: no accuracy, nor a regression round's rmse) are
    left out: a run that has none is in no table or curve."""
    runs = runs_table(store, dataset)
    cur = store.curves()
    measured = cur["accuracy"].notna()
    if "rmse" in cur:  # a regression round (schema 5) has an RMSE instead of an accuracy
        measured |= cur["rmse"].notna()
    cur = cur[cur["run"].isin(runs["run"]) & measured].copy()
    cur["accuracy"] = cur["accuracy"].astype("float64")
    cur["strategy"] = cur["run"].map(dict(zip(runs["run"], runs["strategy"], strict=True)))
    return cur.merge(runs[["run", "protocol", "in_progress"]], on="run", how="left").reset_index(drop=True)
