"""The pool-based loop. One round, for round_idx r:

``select (r = 0: the random initial set) -> Store.record_query -> Oracle.label -> Store.record_labels ->
Learner.fit(labels of rounds <= r) -> evaluate -> Store.record_metrics``.

Round r's query is chosen by the model trained at the end of round r - 1. Everything a round draws comes
from ``round_rng(seed, r, purpose)``, so a fresh process that finds round r - 1 complete retrains that model
bit for bit (same labelled set, same seed) and continues exactly where the killed one stopped.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .data import Dataset, load_dataset
from .errors import ConfigError, LabelsPending
from .labelling import LabellingSession
from .learner import TorchLearner
from .oracles import Oracle, as_oracle, make_oracle
from .registry import build_strategy
from .seeding import round_rng, torch_seed
from .store import RunState, Store, crash_point
from .strategy import Context, Strategy

#: Per-dataset defaults for settings left unset; chosen so a run is practical on a 2-core CPU (see README).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": dict(init_size=100, query_size=100, pool_subset=10_000, epochs=30, min_steps=300),
    "fashion-mnist": dict(init_size=100, query_size=100, pool_subset=10_000, epochs=30, min_steps=300),
    "cifar10": dict(init_size=1000, query_size=1000, pool_subset=10_000, epochs=30, min_steps=1000),
    "digits": dict(init_size=20, query_size=30, pool_subset=0, epochs=30, min_steps=200),
}
FALLBACK_DEFAULTS: dict[str, Any] = dict(init_size=100, query_size=100, pool_subset=10_000, epochs=30, min_steps=300)


@dataclass
class ExperimentConfig:
    """Everything that determines a run's results. ``None`` means the dataset's default."""

    dataset: str = "mnist"
    strategy: str = "entropy"
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)
    budget: int = 2000
    init_size: int | None = None
    query_size: int | None = None
    seed: int = 0
    model: str | None = None
    epochs: int | None = None
    min_steps: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    pool_subset: int | None = None
    warm_start: bool = False
    init_balanced: bool = False
    oracle: str = "ground-truth"
    mc_samples: int = 20

    def resolved(self, dataset: Dataset | None = None) -> "ExperimentConfig":
        """A copy with dataset defaults filled in and every setting checked."""
        d = DATASET_DEFAULTS.get(self.dataset, FALLBACK_DEFAULTS)
        out = ExperimentConfig(**{**asdict(self), **{k: v for k, v in d.items() if getattr(self, k) is None}})
        if out.model is None:
            out.model = dataset.default_model if dataset is not None else "cnn"
        out.check(dataset.n_pool if dataset is not None else None)
        return out

    def check(self, n_pool: int | None = None) -> None:
        if self.budget is None or self.budget <= 0:
            raise ConfigError(f"--budget must be a positive number of labels, got {self.budget}")
        if self.init_size is not None and self.init_size < 1:
            raise ConfigError(f"--init-size must be at least 1 (strategies need a trained model), got {self.init_size}")
        if self.init_size is not None and self.budget < self.init_size:
            raise ConfigError(f"--budget {self.budget} is below --init-size {self.init_size}; the budget counts the "
                              f"initial labels too, so raise the budget or lower --init-size")
        if self.query_size is not None and self.query_size < 1:
            raise ConfigError(f"--query-size must be at least 1, got {self.query_size}")
        if self.pool_subset is not None and self.pool_subset < 0:
            raise ConfigError(f"--pool-subset must be 0 (whole pool) or positive, got {self.pool_subset}")
        if self.pool_subset and self.query_size and self.query_size > self.pool_subset:
            raise ConfigError(f"--query-size {self.query_size} exceeds --pool-subset {self.pool_subset}; each round "
                              f"picks from the subset, so enlarge the subset or lower the query size")
        for k in ("epochs", "batch_size", "mc_samples"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ConfigError(f"--{k.replace('_', '-')} must be at least 1, got {v}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be 0 or positive (it seeds NumPy and torch), got {self.seed}")
        if self.min_steps is not None and self.min_steps < 0:
            raise ConfigError(f"--min-steps must be 0 or positive, got {self.min_steps}")
        if n_pool is not None:
            if self.budget > n_pool:
                raise ConfigError(f"--budget {self.budget} exceeds the pool of {n_pool} samples in {self.dataset!r}; "
                                  f"lower it to at most {n_pool}")
            if self.query_size is not None and self.query_size > n_pool:
                raise ConfigError(f"--query-size {self.query_size} exceeds the pool of {n_pool} samples")

    def default_run_name(self) -> str:
        return f"{self.dataset}-{self.strategy}-seed{self.seed}"


@dataclass
class RoundReport:
    round_idx: int
    n_labelled: int
    accuracy: float
    nll: float
    train_seconds: float
    select_seconds: float
    store_seconds: float


class Experiment:
    """Runs (or continues) one active-learning run recorded in ``store`` under ``name``.

    dataset and oracle may be given as objects (the Python API) or are built from the config.
    ``on_round`` is called with a RoundReport after each completed round. ``oracle_dir`` is the hand-off folder
    of ``--oracle csv``. ``oracle_timeout``: seconds to wait for one call of the oracle (per answer for
    one-at-a-time oracles) before the run stops with an OracleError; the query stays saved. Neither changes
    a run's results, so neither is part of its stored configuration.
    """

    def __init__(self, config: ExperimentConfig, store: Store | str = "sqlite:///al-runs.db", *,
                 name: str | None = None, dataset: Dataset | None = None, oracle: Oracle | None = None,
                 strategy: Strategy | None = None, data_dir: str | None = None, progress: bool = False,
                 on_round: Callable[[RoundReport], None] | None = None, oracle_dir: str | None = None,
                 oracle_timeout: float | None = None) -> None:
        config.check()
        if oracle_timeout is not None and not oracle_timeout > 0:
            raise ConfigError(f"--oracle-timeout must be a positive number of seconds, got {oracle_timeout}")
        self.oracle_timeout = oracle_timeout
        self.dataset = dataset if dataset is not None else load_dataset(config.dataset, data_dir)
        self.config = config.resolved(self.dataset)
        self.strategy = strategy if strategy is not None else build_strategy(self.config.strategy,
                                                                             **self.config.strategy_kwargs)
        self.name = name or self.config.default_run_name()
        self.progress = progress
        self.on_round = on_round
        c = self.config
        self.learner = TorchLearner(c.model, self.dataset.n_classes, self.dataset.input_shape, epochs=c.epochs,
                                    min_steps=c.min_steps, batch_size=c.batch_size, lr=c.lr,
                                    warm_start=c.warm_start, seed=c.seed, progress=progress)
        self._check_model()
        self.strategy.check_learner(self.learner)
        del self.learner.module_  # checked; each round builds (or fine-tunes) its own model
        labels = self.dataset.train_y.numpy()
        # A user's object or function is wrapped once here, so that the loop only ever sees Oracle instances.
        self.oracle = as_oracle(oracle) if oracle is not None else make_oracle(
            c.oracle, labels, self.dataset.n_classes, c.seed, dataset=self.dataset, oracle_dir=oracle_dir)
        # The store is opened last: nothing is written until every setting has been checked.
        self.store = store if isinstance(store, Store) else Store(store)
        self._model_round: int | None = None
        self._store_s = 0.0

    def _check_model(self) -> None:
        self.learner.reset(self.config.seed)
        with torch.no_grad():
            out = self.learner.logits(self.dataset.train_x[:2])
        if out.shape[1] != self.dataset.n_classes:
            raise ConfigError(f"model {self.config.model!r} outputs {out.shape[1]} classes but dataset "
                              f"{self.dataset.name!r} has {self.dataset.n_classes}; build the model with "
                              f"n_classes={self.dataset.n_classes}")

    def config_record(self) -> dict[str, Any]:
        d = asdict(self.config)
        d["strategy_params"] = {k: _jsonable(v) for k, v in self.strategy.params().items()}
        return d

    def open_run(self) -> RunState:
        """This experiment's run in the store, created if new; refused if stored with other settings."""
        return self.store.open_run(self.name, self.config_record(),
                                   absent_means={"strategy_params": self.strategy.params_added})

    # --- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> RunState:
        """Run to the budget (or pool exhaustion), continuing whatever the store holds. Returns the final state.

        Raises LabelsPending when the oracle answered only part of a query (the run is left ``waiting``).
        """
        st = self.open_run()
        if st.status == "finished":
            return st
        self.store.claim(st.run_id)
        beating = self._start_heartbeat(st.run_id)
        try:
            while True:
                st = self.store.state(self.name)
                last = st.last_round
                if last is not None and last["state"] == "complete" and self._done(st):
                    self.store.set_status(st.run_id, "finished")
                    return self.store.state(self.name)
                if last is None or last["state"] == "complete":
                    r = 0 if last is None else last["round_idx"] + 1
                    self._query(st, r)
                elif last["state"] == "queried":
                    self._label(st, last["round_idx"])
                else:
                    self._fit_and_evaluate(st, last["round_idx"])
        except LabelsPending as e:
            self.store.set_status(st.run_id, "waiting", str(e))
            raise
        except KeyboardInterrupt:
            self.store.set_status(st.run_id, "stopped", "interrupted by the user")
            raise
        except Exception as e:
            self.store.set_status(st.run_id, "stopped", f"{type(e).__name__}: {e}")
            raise
        finally:
            beating.set()

    #: Seconds between heartbeats; a claim silent for 120 s (Store.claim's default) may be taken over.
    heartbeat_s: float = 20.0

    def _start_heartbeat(self, run_id: int) -> threading.Event:
        """Refresh the claim's heartbeat from a daemon thread while the run is being written, so that a long
        round (minutes of training) is never mistaken for a dead process by another host. Set the returned
        event to stop it."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                try:
                    self.store.heartbeat(run_id)
                except Exception:  # noqa: BLE001 - a missed beat only risks a takeover, which the store's fence reports
                    return

        threading.Thread(target=beat, name=f"al-heartbeat-{run_id}", daemon=True).start()
        return stop

    def _done(self, st: RunState) -> bool:
        return len(st.labels) >= self.config.budget or len(st.labels) >= self.dataset.n_pool

    def _unlabelled(self, st: RunState) -> np.ndarray:
        mask = np.ones(self.dataset.n_pool, dtype=bool)
        mask[st.labelled_ids()] = False
        return np.flatnonzero(mask)

    def inputs_of(self, ids: np.ndarray) -> torch.Tensor:
        return self.dataset.train_x[torch.from_numpy(np.array(ids, dtype=np.int64))]  # a copy: ids may be read-only

    def _query(self, st: RunState, r: int) -> None:
        c = self.config
        n_have = len(st.labels)
        unlabelled = self._unlabelled(st)
        t0 = time.perf_counter()
        if r == 0:
            n = min(c.init_size, c.budget)
            ids = self._initial_ids(n)
            scores, pool_scores = None, None
        else:
            n = min(c.query_size, c.budget - n_have, len(unlabelled))
            self._ensure_model(st, r - 1)
            rng_sub = round_rng(c.seed, r, "pool-subset")
            cand = unlabelled
            if c.pool_subset and c.pool_subset < len(unlabelled):
                cand = np.sort(rng_sub.choice(unlabelled, size=max(c.pool_subset, n), replace=False))
            ctx = Context(cand, st.labelled_ids(), learner=self.learner, inputs_of=self.inputs_of,
                          mc_samples=c.mc_samples, rng_for=lambda purpose: round_rng(c.seed, r, purpose),
                          n_classes=self.dataset.n_classes)
            sel = self.strategy(ctx, n, round_rng(c.seed, r, "select"))
            ids, scores = sel.ids, sel.scores
            pool_scores = sel.pool_scores if self.strategy.scores_are_uncertainty else None
        select_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.store.record_query(st.run_id, r, ids, scores, pool_scores=pool_scores, select_seconds=select_s)
        self._store_s = time.perf_counter() - t1
        crash_point("after-query", r)

    def _initial_ids(self, n: int) -> np.ndarray:
        rng = round_rng(self.config.seed, 0, "init")
        if not self.config.init_balanced:
            return rng.choice(self.dataset.n_pool, size=n, replace=False)
        # Class-balanced initial set (the BatchBALD protocol's 2 per class): uses the true labels, as a
        # simulation protocol does; a real labeller would need them from a first random batch.
        y = self.dataset.train_y.numpy()
        k = self.dataset.n_classes
        per = [rng.permutation(np.flatnonzero(y == c)) for c in range(k)]
        out = [p[i] for i in range(max(len(p) for p in per)) for p in per if i < len(p)]
        return np.array(out[:n], dtype=np.int64)

    def _label(self, st: RunState, r: int) -> None:
        """Ask the oracle for round ``r``'s pending labels (see :class:`al.labelling.LabellingSession`)."""
        session = LabellingSession(self.oracle, self.store, n_classes=self.dataset.n_classes,
                                   timeout=self.oracle_timeout)
        outcome = session.label_round(st, r)
        self._store_s += outcome.store_seconds
        crash_point("after-labels", r)
        outcome.conclude()  # LabelsPending while samples still await a label

    def _train(self, st: RunState, r: int) -> float:
        ids = st.labelled_ids(up_to_round=r)
        y = np.array([st.labels[i] for i in ids], dtype=np.int64)
        t0 = time.perf_counter()
        self.learner.fit(self.inputs_of(ids), y, seed=torch_seed(round_rng(self.config.seed, r, "train")) % 2**62)
        self._model_round = r
        return time.perf_counter() - t0

    def _ensure_model(self, st: RunState, r: int) -> None:
        # A resumed process retrains round r's model from the same labels and seed: the same weights. With
        # --warm-start the fine-tuning history is not stored, so a resumed run refits from scratch once.
        if self._model_round != r:
            self._train(st, r)

    def _fit_and_evaluate(self, st: RunState, r: int) -> None:
        train_s = self._train(st, r)
        crash_point("after-train", r)
        t0 = time.perf_counter()
        m = self.learner.evaluate(self.dataset.test_x, self.dataset.test_y)
        eval_s = time.perf_counter() - t0
        n = len(st.labelled_ids(up_to_round=r))
        # Time spent writing this round's query and labels (the metrics write itself is the last, unmeasured one).
        store_s, self._store_s = self._store_s, 0.0
        self.store.record_metrics(st.run_id, r, n_labelled=n, accuracy=m["accuracy"], nll=m["nll"],
                                  train_seconds=train_s, eval_seconds=eval_s, store_seconds=store_s)
        crash_point("after-metrics", r)
        if self.on_round is not None:
            select_s = st.last_round["select_seconds"] or 0.0
            self.on_round(RoundReport(r, n, m["accuracy"], m["nll"], train_s, select_s, store_s))


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)
