"""What determines a run's results: ``ExperimentConfig``, the per-dataset defaults, and the record stored for a run.

The loop reads a resolved config (every ``None`` replaced by its dataset's default); the store keeps
``config_record``, the config plus the strategy's own settings, and refuses to continue a run under another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .data import Dataset
    from .strategy import Strategy

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

    def resolved(self, dataset: Dataset | None = None) -> ExperimentConfig:
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
            raise ConfigError(
                f"--budget {self.budget} is below --init-size {self.init_size}; the budget counts the "
                f"initial labels too, so raise the budget or lower --init-size"
            )
        if self.query_size is not None and self.query_size < 1:
            raise ConfigError(f"--query-size must be at least 1, got {self.query_size}")
        if self.pool_subset is not None and self.pool_subset < 0:
            raise ConfigError(f"--pool-subset must be 0 (whole pool) or positive, got {self.pool_subset}")
        if self.pool_subset and self.query_size and self.query_size > self.pool_subset:
            raise ConfigError(
                f"--query-size {self.query_size} exceeds --pool-subset {self.pool_subset}; each round "
                f"picks from the subset, so enlarge the subset or lower the query size"
            )
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
                raise ConfigError(
                    f"--budget {self.budget} exceeds the pool of {n_pool} samples in {self.dataset!r}; "
                    f"lower it to at most {n_pool}"
                )
            if self.query_size is not None and self.query_size > n_pool:
                raise ConfigError(f"--query-size {self.query_size} exceeds the pool of {n_pool} samples")

    def default_run_name(self) -> str:
        return f"{self.dataset}-{self.strategy}-seed{self.seed}"


def config_record(config: ExperimentConfig, strategy: Strategy) -> dict[str, Any]:
    """The run's stored configuration: the resolved config and the strategy's settings, as JSON values."""
    d = asdict(config)
    d["strategy_params"] = {k: _jsonable(v) for k, v in strategy.params().items()}
    return d


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def resolved_int(value: int | None, name: str) -> int:
    """A setting that :meth:`ExperimentConfig.resolved` has filled in; None means the config was never resolved."""
    if value is None:
        raise ConfigError(f"{name} is unset: resolve the config first (ExperimentConfig.resolved(dataset))")
    return value
