"""Building an experiment's parts from its config: the one place where dataset, strategy, learner, oracle and
store are made, checked against each other, and handed to ``Experiment``.

Order matters: everything that can be checked without writing is checked first (settings, names, the model's
output size, the strategy's needs), and the store is opened last, so a bad setting writes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import ExperimentConfig, resolved_int
from .data import load_dataset
from .devices import resolve_device
from .errors import ALError, ConfigError, OracleError, UnreadableSamples
from .learner import TorchLearner
from .models import resolve_model
from .oracles import Oracle, as_oracle, make_oracle
from .pool import FilePool, Pool
from .registry import build_strategy, check_strategy_task
from .regression import TorchRegressor
from .store import Store
from .strategy import Strategy
from .tasks import REGRESSION


@dataclass(frozen=True)
class Parts:
    """What one run is made of. ``config`` is resolved: every dataset default filled in and checked."""

    config: ExperimentConfig
    dataset: Pool
    strategy: Strategy
    learner: TorchLearner
    oracle: Oracle
    store: Store


def build_parts(
    config: ExperimentConfig,
    store: Store | str,
    *,
    dataset: Pool | None = None,
    oracle: Any = None,
    strategy: Strategy | None = None,
    data_dir: str | None = None,
    progress: bool = False,
    oracle_dir: str | None = None,
    device: Any = "cpu",
    oracle_options: Mapping[str, Any] | None = None,
) -> Parts:
    """The parts of a run of ``config``; ``dataset``, ``oracle``, ``strategy`` and ``store`` given as objects
    are used as they are (an oracle object or function is wrapped as an ``Oracle``), the others are built."""
    config.check()
    dataset = dataset if dataset is not None else load_dataset(config.dataset, data_dir)
    if dataset.name != config.dataset:
        # A dataset given as an object is what the run is on: its own name files the run (run name, the store's
        # dataset column, the dataset's defaults), whatever config.dataset says (it only names what to load).
        config = dataclasses.replace(config, dataset=dataset.name)
    c = config.resolved(dataset)
    check_task(c, dataset)
    if resolve_device(device).type == "cuda" and isinstance(dataset, FilePool):
        dataset.pin_memory = True  # page-locked batches: the copies to the GPU overlap with the next read
    if strategy is None:
        check_strategy_task(c.strategy, c.task, c.strategy_kwargs)
        strategy = build_strategy(c.strategy, **c.strategy_kwargs)
    else:
        check_strategy_task(type(strategy), c.task)
    if c.model is None:  # resolved() always chooses one; narrows the type
        raise ConfigError(f"no model for dataset {dataset.name!r}: pass --model")
    kind, task_settings = (
        (TorchRegressor, {"mc_samples": c.mc_samples})
        if c.task == REGRESSION
        else (TorchLearner, {"eval_mc_samples": c.eval_mc_samples})
    )
    learner = kind(
        resolve_model(c.model, weights=c.weights, freeze_backbone=c.freeze_backbone),
        dataset.n_classes,
        dataset.input_shape,
        epochs=resolved_int(c.epochs, "epochs"),
        min_steps=resolved_int(c.min_steps, "min_steps"),
        batch_size=c.batch_size,
        lr=c.lr,
        warm_start=c.warm_start,
        seed=c.seed,
        progress=progress,
        device=device,
        early_stopping=c.early_stopping,
        val_size=c.val_size,
        patience=c.patience,
        max_epochs=c.max_epochs,
        **task_settings,
    )
    probe_model(learner, dataset, c)
    strategy.check_learner(learner)
    del learner.module_  # checked; each round builds (or fine-tunes) its own model
    labels = dataset.labels
    # A user's object or function is wrapped once here, so that the loop only ever sees Oracle instances.
    if oracle is not None:
        oracle = as_oracle(oracle)
    else:
        try:
            oracle = make_oracle(
                c.oracle,
                labels,
                dataset.n_classes,
                c.seed,
                dataset=dataset,
                oracle_dir=oracle_dir,
                options={"store_url": store if isinstance(store, str) else store.url, **(oracle_options or {})},
            )
        except ALError:
            raise
        except Exception as e:  # a user's factory (package.module:factory) that raised: its message, one line
            raise OracleError(
                f"--oracle {c.oracle!r}: the oracle factory raised {_one_line(e)}; fix the factory (it is called as "
                f"factory(labels=..., n_classes={dataset.n_classes})), or use --oracle ground-truth to check the rest"
            ) from e
    # The store is opened last: nothing is written until every setting has been checked.
    return Parts(c, dataset, strategy, learner, oracle, store if isinstance(store, Store) else Store(store))


def check_task(config: ExperimentConfig, dataset: Pool) -> None:
    """The config's task must be the data's: a regression dataset or table (numeric targets) runs with
    ``--task regression``, class labels with the default."""
    if dataset.task != config.task:
        what = "numeric targets" if dataset.task == REGRESSION else "class labels"
        raise ConfigError(
            f"dataset {dataset.name!r} holds {what} (a {dataset.task} task) but the run's task is {config.task}; "
            f"pass --task {dataset.task} (ExperimentConfig(task={dataset.task!r}))"
        )


def probe_model(learner: TorchLearner, dataset: Pool, config: ExperimentConfig) -> None:
    """Build the model once and check that it takes the data's inputs and gives one output per class of ``dataset``.

    A factory that raises, or a model whose first layer does not fit the data, is a ConfigError naming the model
    and the data's shape, in one line, before anything is written.
    """
    shape = tuple(dataset.input_shape)
    try:
        learner.reset(config.seed)
    except ALError:
        raise
    except Exception as e:
        raise ConfigError(
            f"model {config.model!r} could not be built: {_one_line(e)}; fix the factory (it is called as "
            f"factory(n_classes={dataset.n_classes}, input_shape={shape})) or pick a registered model"
        ) from e
    try:
        x = dataset.tensor_inputs(np.flatnonzero(dataset.available)[:2])
    except UnreadableSamples:  # the loop excludes such files with their reasons; the probe needs only the shape
        x = torch.zeros((2, *shape))
    try:
        with torch.no_grad():
            out = learner.logits(x)
    except ALError:
        raise
    except Exception as e:
        raise ConfigError(
            f"model {config.model!r} cannot take the data: its input does not match the data's shape {shape} (a "
            f"batch is {tuple(x.shape)}): {_one_line(e)}; build the model for input_shape={shape}"
        ) from e
    if out.ndim != 2 or out.shape[0] != len(x):
        raise ConfigError(
            f"model {config.model!r} outputs shape {tuple(out.shape)} for a batch of shape {tuple(x.shape)}; it "
            f"must output logits of shape (batch, n_classes) = ({len(x)}, {dataset.n_classes}): flatten before "
            f"the last layer"
        )
    if out.shape[1] != dataset.n_classes and config.task == REGRESSION:
        raise ConfigError(
            f"model {config.model!r} outputs {out.shape[1]} values per sample, but a regression model outputs one "
            f"(the predicted mean); use --model mlp-regressor or build the model with n_classes=1"
        )
    if out.shape[1] != dataset.n_classes:
        raise ConfigError(
            f"model {config.model!r} outputs {out.shape[1]} classes but dataset "
            f"{dataset.name!r} has {dataset.n_classes}; build the model with "
            f"n_classes={dataset.n_classes}"
        )


def _one_line(e: BaseException) -> str:
    """``Type: message`` with the message's lines joined, for a one-line error."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
