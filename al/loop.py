"""The pool-based loop. One round, for round_idx r:

``select (r = 0: the random initial set) -> Store.record_query -> Oracle.label -> Store.record_labels ->
Learner.fit(labels of rounds <= r) -> evaluate -> Store.record_metrics``.

Round r's query is chosen by the model trained at the end of round r - 1. Everything a round draws comes
from ``round_rng(seed, r, purpose)``, so a fresh process that finds round r - 1 complete retrains that model
bit for bit (same labelled set, same seed) and continues exactly where the killed one stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .build import build_parts
from .config import DATASET_DEFAULTS, FALLBACK_DEFAULTS, ExperimentConfig, config_record, resolved_int
from .errors import ConfigError, DataError, LabelsPending, ModelError, StoreError, UnreadableSamples
from .inputs import LazyInputs
from .labelling import LabellingSession
from .oracles import Oracle
from .pool import Pool, TestSplit
from .registry import build_strategy
from .seeding import round_rng, torch_seed
from .stop_rounds import StoppingRounds
from .store import HEARTBEAT_S, RunState, Store, crash_point
from .strategy import Context, Strategy
from .tasks import REGRESSION, known_answers

# Re-exported: `from al.loop import Experiment, ExperimentConfig` is the documented import.
__all__ = ["DATASET_DEFAULTS", "FALLBACK_DEFAULTS", "Experiment", "ExperimentConfig", "RoundReport"]


@dataclass
class RoundReport:
    round_idx: int
    n_labelled: int
    accuracy: float | None  # None without a test set (and for a regression task: see rmse)
    nll: float | None  # a regression task's: the Gaussian NLL (al.regression)
    train_seconds: float
    select_seconds: float
    store_seconds: float
    #: Seconds the remaining rounds should take (training, scoring, evaluating; not the labelling), from the mean
    #: of the last three rounds; None when no round is left or none was timed.
    eta_seconds: float | None = None
    #: The stopping criterion's value this round (name -> value), as stored.
    criteria: dict[str, float | None] = field(default_factory=dict)
    #: A regression task's test RMSE, in the target's units (None for classification or without a test set).
    rmse: float | None = None


class Experiment:
    """Runs (or continues) one active-learning run recorded in ``store`` under ``name``.

    dataset and oracle may be given as objects (the Python API) or are built from the config.
    ``on_round`` is called with a RoundReport after each completed round. ``oracle_dir`` is the hand-off folder
    of ``--oracle csv``. ``oracle_timeout``: seconds to wait for one call of the oracle (per answer for
    one-at-a-time oracles) before the run stops with an OracleError; the query stays saved. ``device``: where the
    model trains and scores (see :func:`al.devices.resolve_device`). ``checkpoint_dir``: save each round's model
    under ``<checkpoint_dir>/<run name>/`` (see :mod:`al.checkpoints`), for ``al.export``. None of these is part
    of the run's stored configuration: they do not choose what is labelled (on a GPU, see the README on
    determinism). ``oracle_options``: settings of the ``--oracle`` kind (:class:`al.oracles.OracleContext`).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        store: Store | str = "sqlite:///al-runs.db",
        *,
        name: str | None = None,
        dataset: Pool | None = None,
        oracle: Oracle | None = None,
        strategy: Strategy | None = None,
        data_dir: str | None = None,
        progress: bool = False,
        on_round: Callable[[RoundReport], None] | None = None,
        oracle_dir: str | None = None,
        oracle_timeout: float | None = None,
        device: Any = "cpu",
        checkpoint_dir: str | None = None,
        oracle_options: Mapping[str, Any] | None = None,
    ) -> None:
        if oracle_timeout is not None and not oracle_timeout > 0:
            raise ConfigError(f"--oracle-timeout must be a positive number of seconds, got {oracle_timeout}")
        self.oracle_timeout = oracle_timeout
        from .stopping import make_stopping

        # Checked before build_parts opens the store: a bad --stop or --stop-kwargs writes nothing.
        self.stopping = make_stopping(config.stop, **config.stop_settings)
        parts = build_parts(
            config,
            store,
            dataset=dataset,
            oracle=oracle,
            strategy=strategy,
            data_dir=data_dir,
            progress=progress,
            oracle_dir=oracle_dir,
            device=device,
            oracle_options=oracle_options,
        )
        self.config, self.dataset, self.strategy = parts.config, parts.dataset, parts.strategy
        self._strategy_from_config = strategy is None  # a strategy object given by the caller is used as it is
        self.learner, self.oracle, self.store = parts.learner, parts.oracle, parts.store
        self.name = name or self.config.default_run_name()
        self.progress = progress
        self.on_round = on_round
        self._model_round: int | None = None
        self._store_s = 0.0
        self._aligned = False
        self.stop_rounds = StoppingRounds(
            self.stopping, self.config, self.store, self.dataset, self.learner, self._checkpoint_predictions
        )
        self.checkpoint_dir = checkpoint_dir
        if checkpoint_dir is not None and self.config.task == REGRESSION:
            raise ConfigError(
                "model checkpoints (al.export, al.predict) are for classifiers; saving a regression task's models is "
                "not supported yet: drop --checkpoints (pass --no-checkpoints with --pool)"
            )
        if checkpoint_dir is not None:
            from .checkpoints import check_writable

            check_writable(checkpoint_dir)
        #: Messages about the pool met while running (files gone, files unreadable), for the command line to show.
        self.notices: list[str] = []
        self.val_ids = self._held_out_val_ids()
        self._val_data: tuple[torch.Tensor, np.ndarray] | None = None

    def config_record(self) -> dict[str, Any]:
        """The run's configuration as the store keeps it (see :func:`al.config.config_record`); a user's pool adds
        its class names (``al.export`` names the labels by them; built-in datasets' records stay as they were)."""
        d = config_record(self.config, self.strategy)
        if self.dataset.keys is not None:
            d["classes"] = list(self.dataset.classes)
        return d

    def open_run(self) -> RunState:
        """This experiment's run in the store, created if new; refused if stored with other settings or on other
        data (see :func:`al.data.data_fingerprint`). A run stored before a strategy default changed continues under
        the value it was made with (see :attr:`al.strategy.Strategy.previous_defaults`)."""
        self._keep_stored_defaults()
        st = self.store.open_run(
            self.name,
            self.config_record(),
            absent_means={"strategy_params": self.strategy.params_added},
            data_fingerprint=self.dataset.fingerprint(),
        )
        if not self._aligned:
            self._align_ids(st)
        return st

    def _keep_stored_defaults(self) -> None:
        """Rebuild the strategy with the previous default of each setting whose default changed, where this run is
        stored, was made at that previous default, and did not set it (same strategy, same ``strategy_kwargs``)."""
        previous = self.strategy.previous_defaults
        if not previous or not self._strategy_from_config or self.config.task == REGRESSION:
            # a regression run's scores never read the classifier defaults that changed (REGrad's class weighting
            # and layer alpha): one stored under them is refused with the differences rather than rebuilt
            return
        try:
            stored = self.store.run(self.name).config
        except StoreError:
            return  # a new run: the current defaults
        c = self.config
        if stored.get("strategy") != c.strategy or stored.get("strategy_kwargs", {}) != c.strategy_kwargs:
            return  # another strategy or other settings: open_run refuses it with the differences
        made_with = stored.get("strategy_params") or {}
        now = self.strategy.params()
        keep = {
            k: old
            for k, old in previous.items()
            if k not in c.strategy_kwargs and k in made_with and made_with[k] == old and now.get(k) != old
        }
        if keep:
            strategy = build_strategy(c.strategy, **c.strategy_kwargs, **keep)
            strategy.check_learner(self.learner)
            self.strategy = strategy

    def _align_ids(self, st: RunState) -> None:
        """Give the pool the ids this run recorded for its files (a re-scanned folder keeps every old id; new files
        get new ids), record the new ones, and report recorded files that are gone: their ids stay reserved and
        their labels stored, they are never renumbered. Pools without keys (built-in datasets) have nothing to do.
        """
        pool = self.dataset
        if pool.keys is None:
            self._aligned = True
            return
        found = pool.align(self.store.sample_keys(st.run_id))
        if found.added:
            self.store.record_sample_keys(st.run_id, found.added)
        if found.missing:
            labelled = [k for i, k in found.missing.items() if i in st.labels]
            shown = ", ".join(sorted(found.missing.values())[:5])
            self.notices.append(
                f"{len(found.missing)} files recorded by run {self.name!r} are no longer in the pool ({shown}"
                f"{', ...' if len(found.missing) > 5 else ''}); their ids stay reserved"
                + (f", and {len(labelled)} of them are labelled: they are left out of training" if labelled else "")
            )
        excluded = self.store.excluded_samples(st.run_id)
        if excluded:
            pool.exclude(excluded)
        self._aligned = True

    def _exclude(self, st: RunState, e: UnreadableSamples) -> None:
        """Leave samples that could not be read out of the pool for the rest of the run, with the reasons stored."""
        self.store.exclude_samples(st.run_id, e.reasons)
        self.dataset.exclude(e.reasons)
        self.notices.append(f"excluded {e}")
        if self.progress:
            print(f"warning: excluded {e}", flush=True)

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
        if len(st.labels) >= self.config.budget or len(self._unlabelled(st)) == 0:
            return True
        message = self.stop_rounds.decided(st)
        if message is not None:
            self.notices.append(f"stopped before the budget by --stop {self.config.stop}: {message}")
        return message is not None

    def _unlabelled(self, st: RunState) -> np.ndarray:
        mask = self.dataset.available.copy()
        mask[st.labelled_ids()] = False
        mask[self.val_ids] = False
        return np.flatnonzero(mask)

    def _held_out_val_ids(self) -> np.ndarray:
        """``val_held_out`` ids of the pool set aside for early stopping (the BatchBALD paper's validation set):
        drawn once from the run's seed among the available samples outside the initial set, so the same on every
        resume; never queried, labelled by the pool's true labels, not counted in the budget. Empty when off."""
        k = self.config.val_held_out
        if not k:
            return np.empty(0, dtype=np.int64)
        if not (self._simulated_oracle and self.dataset.fully_labelled):
            raise ConfigError(
                f"--val-held-out {k} labels its validation set from the pool's true labels, a benchmark device: it "
                f"needs a fully labelled pool and a simulated oracle (ground-truth or noisy:...), not --oracle "
                f"{self.config.oracle}; with a real labeller use --early-stopping with --val-size"
            )
        init = self._initial_ids(min(resolved_int(self.config.init_size, "init_size"), self.config.budget))
        free = np.flatnonzero(self.dataset.available)
        free = free[~np.isin(free, init)]
        if k > len(free):
            raise ConfigError(f"--val-held-out {k} exceeds the {len(free)} pool samples outside the initial set")
        rng = round_rng(self.config.seed, 0, "val-held-out")
        return np.sort(rng.choice(free, size=k, replace=False)).astype(np.int64)

    def _val_set(self) -> tuple[torch.Tensor, np.ndarray] | None:
        if not len(self.val_ids):
            return None
        if self._val_data is None:
            y = self.dataset.labels
            assert y is not None  # _held_out_val_ids checked that the pool is fully labelled
            self._val_data = (self.dataset.tensor_inputs(self.val_ids), np.asarray(y)[self.val_ids])
        return self._val_data

    def inputs_of(self, ids: np.ndarray) -> torch.Tensor | LazyInputs:
        return self.dataset.inputs(ids)

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
            while True:  # again without the samples found unreadable, which the next pass no longer reads
                try:
                    sel = self._select(st, r, n, unlabelled)
                    break
                except UnreadableSamples as e:
                    self._exclude(st, e)
                    unlabelled = self._unlabelled(st)
                    n = min(n, len(unlabelled))
                    if n == 0:
                        raise DataError(f"round {r}: no readable unlabelled sample is left in the pool") from e
            ids, scores = sel.ids, sel.scores
            pool_scores = sel.pool_scores if self.strategy.scores_are_uncertainty else None
        select_s = time.perf_counter() - t0
        guesses = self._guesses(ids) if r > 0 and self.config.task != REGRESSION else None
        t1 = time.perf_counter()
        self.store.record_query(
            st.run_id, r, ids, scores, pool_scores=pool_scores, select_seconds=select_s, guesses=guesses
        )
        self._store_s = time.perf_counter() - t1
        crash_point("after-query", r)

    #: How many of the model's top classes are recorded for each queried sample (shown to whoever labels it).
    n_guesses: int = 3

    def _guesses(self, ids: np.ndarray) -> dict[int, list[tuple[int, float]]] | None:
        """The model's top classes for the queried ``ids`` (the model that chose them), or None when it cannot
        say (a file that became unreadable since: the guesses are a help to the labeller, not a result)."""
        if len(ids) == 0:
            return None
        try:
            p = self.learner.predict_proba(self.inputs_of(ids))
        except (UnreadableSamples, ModelError):
            return None
        k = min(self.n_guesses, p.shape[1])
        top = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return {int(i): [(int(y), float(p[j, y])) for y in top[j]] for j, i in enumerate(ids)}

    def _select(self, st: RunState, r: int, n: int, unlabelled: np.ndarray) -> Any:
        c = self.config
        rng_sub = round_rng(c.seed, r, "pool-subset")
        cand = unlabelled
        if c.pool_subset and c.pool_subset < len(unlabelled):
            cand = np.sort(rng_sub.choice(unlabelled, size=max(c.pool_subset, n), replace=False))
        ctx = Context(
            cand,
            self._trainable(st.labelled_ids()),
            learner=self.learner,
            inputs_of=self.inputs_of,
            mc_samples=c.mc_samples,
            rng_for=lambda purpose: round_rng(c.seed, r, purpose),
            n_classes=self.dataset.n_classes,
            task=c.task,
        )
        try:
            return self.strategy(ctx, n, round_rng(c.seed, r, "select"))
        except ModelError as e:  # nothing of round r is stored yet; the run stops at its query
            raise ModelError(f"round {r}, choosing its query with the model of round {r - 1}: {e}") from e

    def _trainable(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` without samples that can no longer be read (files gone or unreadable); their labels stay."""
        ok = self.dataset.available
        return ids[ok[ids]] if not ok.all() else ids

    @property
    def uses_pool_labels(self) -> bool:
        """Whether round 0 takes the pool's own labels (a labelled folder or a label column of a user's pool), as
        it does unless the oracle is a simulation answering from those same labels (ground-truth, noisy)."""
        return self.dataset.keys is not None and self.dataset.has_labels and not self._simulated_oracle

    @property
    def _simulated_oracle(self) -> bool:
        """Whether the oracle is a simulation answering from the pool's true labels (ground-truth, noisy:...)."""
        return self.config.oracle == "ground-truth" or self.config.oracle.startswith("noisy")

    def _initial_ids(self, n: int) -> np.ndarray:
        if self.uses_pool_labels:
            y = self.dataset.labels
            assert y is not None
            return np.flatnonzero(known_answers(y) & self.dataset.available)
        rng = round_rng(self.config.seed, 0, "init")
        available = self.dataset.available
        if not self.config.init_balanced:
            if available.all():  # the draw built-in runs have always made
                return rng.choice(self.dataset.n_pool, size=n, replace=False)
            return rng.choice(np.flatnonzero(available), size=n, replace=False)
        # Class-balanced initial set (the BatchBALD protocol's 2 per class): uses the true labels, as a
        # simulation protocol does; a real labeller would need them from a first random batch.
        if not self.dataset.fully_labelled:
            raise ConfigError(
                "--init-balanced draws the initial set by the true labels, but the pool is not fully labelled; "
                "drop --init-balanced"
            )
        y = self.dataset.labels
        assert y is not None
        k = self.dataset.n_classes
        per = [rng.permutation(np.flatnonzero(y == c)) for c in range(k)]
        out = [p[i] for i in range(max(len(p) for p in per)) for p in per if i < len(p)]
        return np.array(out[:n], dtype=np.int64)

    def _label(self, st: RunState, r: int) -> None:
        """Ask the oracle for round ``r``'s pending labels (see :class:`al.labelling.LabellingSession`); round 0 of
        a pool with its own labels takes them (recorded as oracle ``pool``)."""
        if r == 0 and self.uses_pool_labels:
            y = self.dataset.labels
            assert y is not None
            pending = [int(i) for i in self.store.pending(st.run_id, 0)]
            if self.config.task == REGRESSION:
                self.store.record_targets(st.run_id, 0, {i: float(y[i]) for i in pending}, oracle="pool")
            else:
                self.store.record_labels(st.run_id, 0, {i: int(y[i]) for i in pending}, oracle="pool")
            return
        session = LabellingSession(
            self.oracle,
            self.store,
            n_classes=self.dataset.n_classes,
            timeout=self.oracle_timeout,
            task=self.config.task,
        )
        outcome = session.label_round(st, r)
        self._store_s += outcome.store_seconds
        crash_point("after-labels", r)
        outcome.conclude()  # LabelsPending while samples still await a label

    def _train(self, st: RunState, r: int) -> float:
        t0 = time.perf_counter()
        while True:
            ids = self._trainable(st.labelled_ids(up_to_round=r))
            try:
                x = self.dataset.tensor_inputs(ids)
                break
            except UnreadableSamples as e:  # a labelled file became unreadable: its label stays, it is not used
                self._exclude(st, e)
        if self.config.task == REGRESSION:
            y = np.array([st.targets[i] for i in ids], dtype=np.float64)
        else:
            y = np.array([st.labels[i] for i in ids], dtype=np.int64)
        try:
            seed = torch_seed(round_rng(self.config.seed, r, "train")) % 2**62
            val = self._val_set()
            if val is None:  # the call every stored run made
                self.learner.fit(x, y, seed=seed)
            else:
                self.learner.fit(x, y, seed=seed, val=val)
        except ModelError as e:  # diverged: the round stays as stored (its query and labels), the run stops
            raise ModelError(f"round {r}, training on {len(ids)} labels: {e}") from e
        self._model_round = r
        return time.perf_counter() - t0

    def _checkpoint_predictions(self, r: int, x: torch.Tensor) -> np.ndarray | None:
        """Predicted classes of round ``r``'s saved model on ``x``, or None without its checkpoint."""
        if self.checkpoint_dir is None:
            return None
        from .checkpoints import checkpoint_path, load_model, run_checkpoint_folder

        path = checkpoint_path(run_checkpoint_folder(self.name, self.checkpoint_dir), r)
        if not path.exists():
            return None
        with torch.no_grad():
            return load_model(path).predict_proba(x).argmax(1)

    def _save_checkpoint(self, r: int, n_labelled: int) -> None:
        """The model of round ``r`` under ``<checkpoint_dir>/<run>/`` (skipped when already saved: a resumed
        round retrains the same weights)."""
        if self.checkpoint_dir is None:
            return
        from .checkpoints import ModelCard, checkpoint_path, run_checkpoint_folder, save_checkpoint

        folder = run_checkpoint_folder(self.name, self.checkpoint_dir)
        if checkpoint_path(folder, r).exists():
            return
        pool = self.dataset
        card = ModelCard(
            model=str(self.config.model),
            n_classes=pool.n_classes,
            input=pool.input_card(),
            classes=tuple(pool.classes),
            freeze_backbone=self.config.freeze_backbone,
            run=self.name,
            round_idx=r,
            n_labelled=n_labelled,
        )
        save_checkpoint(folder, r, self.learner.network, card)

    def _ensure_model(self, st: RunState, r: int) -> None:
        # A resumed process retrains round r's model from the same labels and seed: the same weights. With
        # --warm-start the fine-tuning history is not stored, so a resumed run refits from scratch once.
        if self._model_round != r:
            self._train(st, r)

    def _fit_and_evaluate(self, st: RunState, r: int) -> None:
        train_s = self._train(st, r)
        crash_point("after-train", r)
        self._save_checkpoint(r, len(st.labelled_ids(up_to_round=r)))
        t0 = time.perf_counter()
        m = self._evaluate(r)
        eval_s = time.perf_counter() - t0
        criteria = self.stop_rounds.record(st, r, self._unlabelled(st))  # st holds round r's labels
        n = len(st.labelled_ids(up_to_round=r))
        # Time spent writing this round's query and labels (the metrics write itself is the last, unmeasured one).
        store_s, self._store_s = self._store_s, 0.0
        self.store.record_metrics(
            st.run_id,
            r,
            n_labelled=n,
            accuracy=m.get("accuracy"),
            nll=m["nll"],
            train_seconds=train_s,
            eval_seconds=eval_s,
            store_seconds=store_s,
            rmse=m.get("rmse"),
        )
        crash_point("after-metrics", r)
        if self.on_round is not None:
            select_s = (st.last_round.select_seconds if st.last_round is not None else None) or 0.0
            rep = RoundReport(
                r, n, m.get("accuracy"), m["nll"], train_s, select_s, store_s, self._eta(n), criteria, m.get("rmse")
            )
            self.on_round(rep)

    def _evaluate(self, r: int) -> dict[str, float | None]:
        """Accuracy and NLL on the test split (a regression task: RMSE and Gaussian NLL; None without one); test
        files that cannot be read are left out."""
        while True:
            split = self.dataset.test
            if split is None:
                return {"accuracy": None, "nll": None, "rmse": None}
            try:
                return dict(self.learner.evaluate(split.inputs, split.labels))
            except ModelError as e:  # no metrics are recorded: the round stays labelled, to be trained again
                raise ModelError(f"round {r}, evaluating on the test set: {e}") from e
            except UnreadableSamples as e:
                self._drop_test(split, e)

    def _drop_test(self, split: TestSplit, e: UnreadableSamples) -> None:
        from .pool import FilePool, LoaderInputs

        if not isinstance(self.dataset, FilePool) or not isinstance(split.inputs, LoaderInputs):
            raise e
        keep = np.array([i for i in range(len(split)) if int(split.inputs.ids[i]) not in e.reasons], dtype=np.int64)
        x = split.inputs
        self.dataset.replace_test(
            TestSplit(LoaderInputs(x.reader, x.ids[keep], x.positions[keep], workers=x.workers), split.labels[keep])
        )
        self.notices.append(f"left out of the test set: {e}")
        if self.progress:
            print(f"warning: left out of the test set: {e}", flush=True)

    def _eta(self, n_labelled: int) -> float | None:
        """Seconds the remaining rounds should take, from the mean of the last three rounds' train, select and
        eval times (the labelling time is the person's, not estimated)."""
        c = self.config
        st = self.store.state(self.name)  # read once: this round's metrics have just been recorded
        left = min(c.budget, n_labelled + len(self._unlabelled(st))) - n_labelled
        if left <= 0:
            return 0.0
        rounds = [x for x in st.rounds if x.state == "complete"][-3:]
        times = [(x.train_seconds or 0) + (x.select_seconds or 0) + (x.eval_seconds or 0) for x in rounds]
        if not times:
            return None
        per_round = float(np.mean(times))
        return per_round * -(-left // resolved_int(c.query_size, "query_size"))
