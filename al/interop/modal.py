"""Any registered strategy as a modAL query strategy.

modAL (Danka & Horvath, 2018) calls ``query_strategy(learner, X_pool, n_instances=...)`` with its
``ActiveLearner`` (the estimator is ``learner.estimator``) and a pool whose rows it deletes as they get
labelled, so positions shift every round. This adapter speaks modAL's language at the edge: it builds a
:class:`al.strategy.Context` over *positions* into the ``X_pool`` it is given, runs the strategy, and returns
positions. Labelled rows (``learner.X_training``) get ids after the pool's, so strategies that read the
labelled set (core-set) see it.

Like modAL's own strategies it returns ``(positions, scores)``: modAL's ``query`` first tries to unpack
``(result, metrics)`` under a bare ``except``; a strategy returning bare indices is called a second time, and
one returning exactly two indices is silently unpacked into one index plus "metrics".

Usage::

    from modAL.models import ActiveLearner
    from al import TorchLearner
    from al.interop.modal import query_strategy

    learner = ActiveLearner(estimator=TorchLearner("mlp", 10, (1, 8, 8)), X_training=X0, y_training=y0,
                            query_strategy=query_strategy("batchbald"))
    pos, x = learner.query(X_pool, n_instances=10)

modAL 0.4.2 (the latest release) calls scikit-learn's ``check_X_y`` with an argument removed in
scikit-learn 1.8, which breaks ``ActiveLearner.teach``; importing this module patches that one call site
(see :func:`patch_modal_for_current_sklearn`).

References: Danka & Horvath, "modAL: A modular active learning framework for Python" (arXiv 1805.00979).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, IncompatibleStrategyError
from ..learner import TorchLearner, as_tensor
from ..seeding import round_rng
from ..strategy import Context, Strategy


def patch_modal_for_current_sklearn() -> bool:
    """Let modAL 0.4.2's ``ActiveLearner.teach`` run on scikit-learn >= 1.8. Returns True if it patched.

    modAL passes ``force_all_finite=`` to ``sklearn.utils.check_X_y``; scikit-learn renamed it
    ``ensure_all_finite`` (1.6) and removed the old name (1.8), so ``teach`` raises TypeError. This rebinds the
    name ``check_X_y`` inside ``modAL.models.learners`` only (scikit-learn itself is untouched) to a wrapper
    that renames the argument. Idempotent; a no-op when modAL is absent or scikit-learn still accepts the name.
    Called when this module is imported.
    """
    import inspect

    try:
        import modAL.models.learners as learners
        from sklearn.utils import check_X_y
    except ImportError:
        return False
    current = learners.check_X_y
    if getattr(current, "_al_patched", False) or "force_all_finite" in inspect.signature(check_X_y).parameters:
        return False

    def check_X_y_compat(*args: Any, **kwargs: Any) -> Any:
        if "force_all_finite" in kwargs:
            kwargs["ensure_all_finite"] = kwargs.pop("force_all_finite")
        return check_X_y(*args, **kwargs)

    check_X_y_compat._al_patched = True  # type: ignore[attr-defined]
    learners.check_X_y = check_X_y_compat
    return True


patch_modal_for_current_sklearn()


class ModalQueryStrategy:
    """A callable ``(learner, X_pool, n_instances=1) -> (positions (n,), scores (n,))`` for modAL.

    strategy: a registered name or a Strategy instance. mc_samples: MC-dropout passes for bald/batchbald.
    seed: the k-th call draws from ``round_rng(seed, k, ...)``, so a fresh adapter replays the same picks.
    """

    def __init__(
        self, strategy: str | Strategy, *, mc_samples: int = 20, seed: int = 0, **strategy_kwargs: Any
    ) -> None:
        from ..registry import build_strategy

        if isinstance(strategy, Strategy):
            if strategy_kwargs:
                raise ConfigError("pass strategy keyword arguments with a strategy name, not with an instance")
            self.strategy = strategy
        else:
            self.strategy = build_strategy(strategy, **strategy_kwargs)
        if mc_samples < 1:
            raise ConfigError(f"mc_samples must be at least 1, got {mc_samples}")
        self.mc_samples = mc_samples
        self.seed = seed
        self.calls = 0
        self.__name__ = f"al:{self.strategy.name}"  # modAL and loggers print query_strategy.__name__

    def __call__(self, learner: Any, X_pool: Any, n_instances: int = 1) -> tuple[np.ndarray, np.ndarray]:
        est = getattr(learner, "estimator", learner)
        if not isinstance(est, TorchLearner):
            raise IncompatibleStrategyError(
                f"al strategies need an al.TorchLearner as the modAL estimator, got {type(est).__name__}; "
                f"wrap your torch model as TorchLearner(model_factory, n_classes, input_shape)"
            )
        self.strategy.check_learner(est)
        pool = as_tensor(X_pool)
        n_pool = len(pool)
        x_train = getattr(learner, "X_training", None)
        train = as_tensor(x_train) if x_train is not None else pool[:0]
        # ids 0..n_pool-1 are pool positions; labelled rows follow them.
        everything = torch.cat([pool, train]) if len(train) else pool

        def inputs_of(ids: np.ndarray) -> torch.Tensor:
            return everything[torch.from_numpy(np.asarray(ids, dtype=np.int64))]

        k = self.calls
        self.calls += 1
        # Call k is round k: the same (seed, round, purpose) generators as the loop's, MC-dropout masks included.
        ctx = Context(
            np.arange(n_pool),
            np.arange(n_pool, n_pool + len(train)),
            learner=est,
            inputs_of=inputs_of,
            mc_samples=self.mc_samples,
            rng_for=lambda purpose: round_rng(self.seed, k, purpose),
            n_classes=est.n_classes,
        )
        sel = self.strategy(ctx, int(n_instances), ctx.rng_for("select"))
        return np.asarray(sel.ids, dtype=np.int64), np.asarray(sel.scores, dtype=np.float64)

    def __repr__(self) -> str:
        return f"query_strategy({self.strategy!r}, mc_samples={self.mc_samples}, seed={self.seed})"


def query_strategy(
    strategy: str | Strategy, *, mc_samples: int = 20, seed: int = 0, **strategy_kwargs: Any
) -> ModalQueryStrategy:
    """A modAL query strategy running ``strategy`` (a registered name or instance). See the module docstring."""
    return ModalQueryStrategy(strategy, mc_samples=mc_samples, seed=seed, **strategy_kwargs)


__all__ = ["query_strategy", "ModalQueryStrategy", "patch_modal_for_current_sklearn"]
