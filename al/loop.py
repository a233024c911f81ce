"""The pool-based loop. One round, for round_idx r:

``select (r = 0: the random initial set) -> Store.record_query -> Oracle.label -> Store.record_labels ->
Learner.fit(labels of rounds <= r) -> evaluate -> Store.record_metrics``.

Round r's query is chosen by the model trained at the end of round r - 1. Everything a round draws comes
from ``round_rng(seed, r, purpose)``, so a fresh process that finds round r - 1 complete retrains that model
bit for bit (same labelled set, same seed) and continues exactly where the killed one stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .build import build_parts
from .config import DATASET_DEFAULTS, FALLBACK_DEFAULTS, ExperimentConfig, config_record, resolved_int
from .data import Dataset, data_fingerprint
from .errors import ConfigError, LabelsPending, ModelError
from .labelling import LabellingSession
from .oracles import Oracle
from .seeding import round_rng, torch_seed
from .store import HEARTBEAT_S, RunState, Store, crash_point
from .strategy import Context, Strategy

# Re-exported: `from al.loop import Experiment, ExperimentConfig` is the documented import.
__all__ = ["DATASET_DEFAULTS", "FALLBACK_DEFAULTS", "Experiment", "ExperimentConfig", "RoundReport"]


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

    def __init__(
        self,
        config: ExperimentConfig,
        store: Store | str = "sqlite:///al-runs.db",
        *,
        name: str | None = None,
        dataset: Dataset | None = None,
        oracle: Oracle | None = None,
        strategy: Strategy | None = None,
        data_dir: str | None = None,
        progress: bool = False,
        on_round: Callable[[RoundReport], None] | None = None,
        oracle_dir: str | None = None,
        oracle_timeout: float | None = None,
    ) -> None:
        if oracle_timeout is not None and not oracle_timeout > 0:
            raise ConfigError(f"--oracle-timeout must be a positive number of seconds, got {oracle_timeout}")
        self.oracle_timeout = oracle_timeout
        parts = build_parts(
            config,
            store,
            dataset=dataset,
            oracle=oracle,
            strategy=strategy,
            data_dir=data_dir,
            progress=progress,
            oracle_dir=oracle_dir,
        )
        self.config, self.dataset, self.strategy = parts.config, parts.dataset, parts.strategy
        self.learner, self.oracle, self.store = parts.learner, parts.oracle, parts.store
        self.name = name or self.config.default_run_name()
        self.progress = progress
        self.on_round = on_round
        self._model_round: int | None = None
        self._store_s = 0.0

    def config_record(self) -> dict[str, Any]:
        """The run's configuration as the store keeps it (see :func:`al.config.config_record`)."""
        return config_record(self.config, self.strategy)

    def open_run(self) -> RunState:
        """This experiment's run in the store, created if new; refused if stored with other settings or on other
        data (see :func:`al.data.data_fingerprint`)."""
        return self.store.open_run(
            self.name,
            self.config_record(),
            absent_means={"strategy_params": self.strategy.params_added},
            data_fingerprint=data_fingerprint(self.dataset),
        )

    # --- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> RunState:
        """Run to the budget (or pool exhaustion), continuing whatever the store holds. Returns the final state.

        Raises LabelsPending when the oracle answered only part of a query (the run is left ``waiting``).
        """
        st = self.open_run()
        if st.status == "finished":
            return st
        self.store.claim(st.run_id)
        try:
            # The heartbeat thread is stopped and joined before the status is set, on every way out.
            with self.store.keep_alive(st.run_id, every_s=self.heartbeat_s):
                return self._run_rounds()
        except LabelsPending as e:
            self.store.set_status(st.run_id, "waiting", str(e))
            raise
        except KeyboardInterrupt:
            self.store.set_status(st.run_id, "stopped", "interrupted by the user")
            raise
        except Exception as e:
            self.store.set_status(st.run_id, "stopped", f"{type(e).__name__}: {e}")
            raise

    #: Seconds between heartbeats; a claim silent for 120 s (Store.claim's default) may be taken over.
    heartbeat_s: float = HEARTBEAT_S

    def _run_rounds(self) -> RunState:
        """Move the open round on by one transition at a time, reading the store before each, to the budget."""
        while True:
            st = self.store.state(self.name)
            last = st.last_round
            if last is None or last.state == "complete":
                if last is not None and self._done(st):
                    self.store.set_status(st.run_id, "finished")
                    return self.store.state(self.name)
                self._query(st, 0 if last is None else last.round_idx + 1)  # -> queried
            elif last.state == "queried":
                self._label(st, last.round_idx)  # -> labelled (or LabelsPending)
            else:
                self._fit_and_evaluate(st, last.round_idx)  # -> complete

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
            n = min(resolved_int(c.init_size, "init_size"), c.budget)
            ids = self._initial_ids(n)
            scores, pool_scores = None, None
        else:
            n = min(resolved_int(c.query_size, "query_size"), c.budget - n_have, len(unlabelled))
            self._ensure_model(st, r - 1)
            rng_sub = round_rng(c.seed, r, "pool-subset")
            cand = unlabelled
            if c.pool_subset and c.pool_subset < len(unlabelled):
                cand = np.sort(rng_sub.choice(unlabelled, size=max(c.pool_subset, n), replace=False))
            ctx = Context(
                cand,
                st.labelled_ids(),
                learner=self.learner,
                inputs_of=self.inputs_of,
                mc_samples=c.mc_samples,
                rng_for=lambda purpose: round_rng(c.seed, r, purpose),
                n_classes=self.dataset.n_classes,
            )
            try:
                sel = self.strategy(ctx, n, round_rng(c.seed, r, "select"))
            except ModelError as e:  # nothing of round r is stored yet; the run stops at its query
                raise ModelError(f"round {r}, choosing its query with the model of round {r - 1}: {e}") from e
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
        session = LabellingSession(
            self.oracle, self.store, n_classes=self.dataset.n_classes, timeout=self.oracle_timeout
        )
        outcome = session.label_round(st, r)
        self._store_s += outcome.store_seconds
        crash_point("after-labels", r)
        outcome.conclude()  # LabelsPending while samples still await a label

    def _train(self, st: RunState, r: int) -> float:
        ids = st.labelled_ids(up_to_round=r)
        y = np.array([st.labels[i] for i in ids], dtype=np.int64)
        t0 = time.perf_counter()
        try:
            self.learner.fit(self.inputs_of(ids), y, seed=torch_seed(round_rng(self.config.seed, r, "train")) % 2**62)
        except ModelError as e:  # diverged: the round stays as stored (its query and labels), the run stops
            raise ModelError(f"round {r}, training on {len(ids)} labels: {e}") from e
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
        try:
            m = self.learner.evaluate(self.dataset.test_x, self.dataset.test_y)
        except ModelError as e:  # no metrics are recorded: the round stays labelled, to be trained again
            raise ModelError(f"round {r}, evaluating on the test set: {e}") from e
        eval_s = time.perf_counter() - t0
        n = len(st.labelled_ids(up_to_round=r))
        # Time spent writing this round's query and labels (the metrics write itself is the last, unmeasured one).
        store_s, self._store_s = self._store_s, 0.0
        self.store.record_metrics(
            st.run_id,
            r,
            n_labelled=n,
            accuracy=m["accuracy"],
            nll=m["nll"],
            train_seconds=train_s,
            eval_seconds=eval_s,
            store_seconds=store_s,
        )
        crash_point("after-metrics", r)
        if self.on_round is not None:
            select_s = (st.last_round.select_seconds if st.last_round is not None else None) or 0.0
            self.on_round(RoundReport(r, n, m["accuracy"], m["nll"], train_s, select_s, store_s))
