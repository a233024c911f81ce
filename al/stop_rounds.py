"""The loop's side of a label-free stopping criterion (:mod:`al.stopping` holds the criteria themselves, pure
functions of arrays): computing what the criterion declares it needs once a round's model is trained, recording
its values in the store, and replaying the recorded values to decide whether a run is done.

A resumed run decides as an uninterrupted one: the decision is replayed from the stored values, and
``stabilising-predictions``, which compares with the previous round's predictions on its stop set, gets those
back from the previous round's checkpoint (without checkpoints its streak starts again).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .config import ExperimentConfig
from .learner import TorchLearner
from .pool import Pool
from .seeding import round_rng
from .stopping import StoppingCriterion, stop_set_ids
from .store import RunState, Store


class StoppingRounds:
    """Round by round evaluation of ``criterion`` for the run named ``run`` in ``store``.

    previous_model: ``previous_model(r, x)`` gives round ``r``'s saved model's predicted classes on ``x`` (None
    without a checkpoint); used once after a resume.
    """

    def __init__(
        self,
        criterion: StoppingCriterion,
        config: ExperimentConfig,
        store: Store,
        pool: Pool,
        learner: TorchLearner,
        previous_model: Callable[[int, torch.Tensor], np.ndarray | None],
    ) -> None:
        self.criterion, self.config, self.store = criterion, config, store
        self.pool, self.learner, self.previous_model = pool, learner, previous_model
        self._stop_preds: np.ndarray | None = None

    @property
    def active(self) -> bool:
        """False for ``--stop budget``, which never stops early and records nothing."""
        return self.config.stop != "budget"

    def _history(self, st: RunState, before: int | None = None) -> list[float | None]:
        values = self.store.round_values(st.run_id)
        name = self.criterion.name
        return [
            values.get(r.round_idx, {}).get(name)
            for r in st.rounds
            if r.state == "complete" and (before is None or r.round_idx < before)
        ]

    def decided(self, st: RunState) -> str | None:
        """The criterion's message when, replayed over the stored values, it has decided to stop; else None."""
        if not self.active:
            return None
        last = self.criterion.from_history(self._history(st)).last
        return last.message if last is not None and last.stop else None

    def record(self, st: RunState, r: int, unlabelled: np.ndarray) -> dict[str, float | None]:
        """The criterion's value for round ``r`` (its model trained), from what it needs, recorded in the store (a
        resumed round records the same values again: a no-op). unlabelled: (n,) ids of the unlabelled pool."""
        if not self.active:
            return {}
        c, needs = self.config, self.criterion.needs
        kw: dict[str, np.ndarray] = {}
        if "stop_set_predictions" in needs:
            size = int(self.criterion.settings.get("stop_set_size", 1000))
            ids = stop_set_ids(np.flatnonzero(self.pool.available), size, round_rng(c.seed, 0, "stop-set"))
            x = self.pool.tensor_inputs(ids)  # a stop set is small: read once, used twice after a resume
            kw["stop_set_predictions"] = self.learner.predict(x)
            if self._stop_preds is None and r > 0:
                self._stop_preds = self.previous_model(r - 1, x)
        if "pool_probs" in needs:
            cand = unlabelled
            if c.pool_subset and c.pool_subset < len(cand):
                cand = np.sort(round_rng(c.seed, r, "stop-pool").choice(cand, size=c.pool_subset, replace=False))
            kw["pool_probs"] = self.learner.predict_proba(self.pool.inputs(cand))
        history = self._history(st, before=r)
        if "stop_set_predictions" in needs:
            self.criterion.from_history(history, previous_predictions=self._stop_preds)
        else:
            self.criterion.from_history(history)
        verdict = self.criterion.update(r, **kw)
        self._stop_preds = kw.get("stop_set_predictions")
        self.store.record_round_values(st.run_id, r, self.criterion.round_values(verdict))
        return {self.criterion.name: verdict.value}
