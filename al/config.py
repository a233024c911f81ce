"""What determines a run's results: ``ExperimentConfig``, the per-dataset defaults, and the record stored for a run.

The loop reads a resolved config (every ``None`` replaced by its dataset's default); the store keeps
``config_record``, the config plus the strategy's own settings, and refuses to continue a run under another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .settings import Setting, check_settings
from .tasks import CLASSIFICATION, REGRESSION, TASKS

if TYPE_CHECKING:
    from .pool import Pool as Dataset
    from .strategy import Strategy

#: Per-dataset defaults for settings left unset; chosen so a run is practical on a 2-core CPU (see README).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": dict(init_size=100, query_size=100, pool_subset=10_000, epochs=30, min_steps=300),
    "fashion-mnist": dict(init_size=100, query_size=100, pool_subset=10_000, epochs=30, min_steps=300),
    "cifar10": dict(init_size=1000, query_size=1000, pool_subset=10_000, epochs=30, min_steps=1000),
    "digits": dict(init_size=20, query_size=30, pool_subset=0, epochs=30, min_steps=200),
    # regression (al.data): a few hundred rows; every candidate is scored, the small MLP trains in a second
    "diabetes": dict(init_size=20, query_size=10, pool_subset=0, epochs=30, min_steps=100),
    "synthetic-gap": dict(init_size=10, query_size=10, pool_subset=0, epochs=30, min_steps=300),
}
#: The --oracle kinds through which a person answers with class labels (refused for a regression task).
HUMAN_ORACLES = frozenset({"csv", "prompt", "web", "label-studio", "label-studio-files"})
FALLBACK_DEFAULTS: dict[str, Any] = dict(init_size=100, query_size=100, pool_subset=10_000, epochs=30, min_steps=300)

#: The declared type and range of every ExperimentConfig field (see :mod:`al.settings`), named in messages by its
#: al.bench flag. Checked when a config is made and again by ``check()`` (a field may have been changed since).
_OR_DEFAULT = "a whole number (or None for the dataset's default)"
CONFIG_SETTINGS: dict[str, Setting] = {
    "dataset": Setting("str", example="--dataset=digits"),
    "strategy": Setting("str", example="--strategy=entropy"),
    "strategy_kwargs": Setting("dict"),
    "budget": Setting("int", minimum=1, too_small="must be a positive number of labels", example=200),
    "init_size": Setting(
        "int",
        minimum=1,
        optional=True,
        what=_OR_DEFAULT,
        too_small="must be at least 1 (strategies need a trained model)",
        example=20,
    ),
    "query_size": Setting(
        "int", minimum=1, optional=True, what=_OR_DEFAULT, too_small="must be at least 1", example=30
    ),
    "seed": Setting("int", minimum=0, too_small="must be 0 or positive (it seeds NumPy and torch)", example=0),
    "model": Setting("str", optional=True, example="--model=cnn"),
    "epochs": Setting("int", minimum=1, optional=True, what=_OR_DEFAULT, too_small="must be at least 1", example=30),
    "min_steps": Setting(
        "int", minimum=0, optional=True, what=_OR_DEFAULT, too_small="must be 0 or positive", example=200
    ),
    "batch_size": Setting("int", minimum=1, too_small="must be at least 1", example=64),
    "lr": Setting("float", minimum=0.0, strict=True, too_small="must be positive", example=0.001, keep_int=True),
    "pool_subset": Setting(
        "int", minimum=0, optional=True, what=_OR_DEFAULT, too_small="must be 0 (whole pool) or positive", example=10000
    ),
    "warm_start": Setting("bool"),
    "init_balanced": Setting("bool"),
    "oracle": Setting("str", example="--oracle=ground-truth"),
    "mc_samples": Setting("int", minimum=1, too_small="must be at least 1", example=20),
    "weights": Setting("str", optional=True, example="--weights=resnet18.pt"),
    "freeze_backbone": Setting("bool"),
    "stop": Setting("str", example="--stop=stabilising-predictions"),
    "stop_settings": Setting("dict"),
    "early_stopping": Setting("bool"),
    "val_size": Setting(
        "float",
        minimum=0.0,
        strict=True,
        too_small="must be a fraction of the labelled set (0 < f < 1) or a count (>= 1)",
        example=0.2,
        keep_int=True,
    ),
    "patience": Setting("int", minimum=1, too_small="must be at least 1 epoch", example=3),
    "max_epochs": Setting("int", minimum=1, too_small="must be at least 1", example=100),
    "val_held_out": Setting("int", minimum=0, too_small="must be 0 (carve --val-size) or a count", example=1024),
    "eval_mc_samples": Setting("int", minimum=0, too_small="must be 0 (no dropout) or a count", example=100),
    "task": Setting("choice", choices=TASKS, example="--task=regression"),
}

#: Fields added after runs were stored, with the value those runs ran with: ``config_record`` leaves a field out
#: while it has that value, so a stored run's record (and its resume check) is unchanged.
CONFIG_ADDED: dict[str, Any] = {
    "weights": None,
    "freeze_backbone": False,
    "stop": "budget",
    "stop_settings": {},
    "early_stopping": False,
    "val_size": 0.2,
    "patience": 3,
    "max_epochs": 100,
    "task": CLASSIFICATION,
    "val_held_out": 0,
    "eval_mc_samples": 0,
}


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


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
    weights: str | None = None
    freeze_backbone: bool = False
    stop: str = "budget"
    stop_settings: dict[str, Any] = field(default_factory=dict)
    #: Train until a validation split carved from the labelled set stops improving (see TorchLearner), instead of
    #: the fixed schedule (epochs, min_steps), which stays the default and that of every stored protocol.
    early_stopping: bool = False
    val_size: float = 0.2
    patience: int = 3
    max_epochs: int = 100
    #: Early stopping on this many samples set aside from the pool before round 0 (after the initial set is drawn)
    #: and labelled by the simulation, never queried and not counted in the budget: the BatchBALD paper's protocol
    #: (1024 on MNIST). A benchmark device: it needs the pool's true labels. 0: carve ``val_size`` from the labelled
    #: set, as a real labelling job must.
    val_held_out: int = 0
    #: Test accuracy and NLL from the mean of this many MC-dropout passes (the BatchBALD paper's test metrics use
    #: 100); 0: the deterministic model (dropout off), the default and that of every stored run.
    eval_mc_samples: int = 0
    #: What the answers are (:mod:`al.tasks`): class indices (the default, that of every stored run) or numbers
    #: (regression: MSE training, RMSE and Gaussian NLL recorded; see :class:`al.regression.TorchRegressor`).
    task: str = CLASSIFICATION

    def __post_init__(self) -> None:
        self._check_fields()

    def _check_fields(self) -> None:
        """Every field by its declared type and range (CONFIG_SETTINGS), normalised in place (``epochs=30.0`` ->
        30, NumPy scalars -> Python ones), so the stored config is the same however it was spelt."""
        values = check_settings({k: getattr(self, k) for k in CONFIG_SETTINGS}, CONFIG_SETTINGS, label=_flag)
        for k, v in values.items():
            setattr(self, k, v)

    def resolved(self, dataset: Dataset | None = None) -> ExperimentConfig:
        """A copy with dataset defaults filled in and every setting checked."""
        # A user's pool (keyed samples) gets the general defaults even when its folder is called "mnist".
        own = dataset is not None and dataset.keys is not None
        d = FALLBACK_DEFAULTS if own else DATASET_DEFAULTS.get(self.dataset, FALLBACK_DEFAULTS)
        filled = {k: v for k, v in d.items() if getattr(self, k) is None}
        if own:  # a person's budget may be smaller than a benchmark's initial set: the defaults fit within it
            for k in ("init_size", "query_size"):
                if k in filled:
                    filled[k] = min(filled[k], self.budget)
        out = ExperimentConfig(**{**asdict(self), **filled})
        if out.model is None:
            out.model = dataset.default_model if dataset is not None else "cnn"
        out.check(dataset.n_pool if dataset is not None else None)
        return out

    def check(self, n_pool: int | None = None) -> None:
        """Every field by its type and range, then the fields against each other (and the pool of ``n_pool``)."""
        self._check_fields()
        if self.init_size is not None and self.budget < self.init_size:
            raise ConfigError(
                f"--budget {self.budget} is below --init-size {self.init_size}; the budget counts the "
                f"initial labels too, so raise the budget or lower --init-size"
            )
        if self.pool_subset and self.query_size and self.query_size > self.pool_subset:
            raise ConfigError(
                f"--query-size {self.query_size} exceeds --pool-subset {self.pool_subset}; each round "
                f"picks from the subset, so enlarge the subset or lower the query size"
            )
        if self.val_size >= 1 and float(self.val_size) != int(self.val_size):
            raise ConfigError(
                f"--val-size {self.val_size} is neither a fraction (below 1) nor a whole count; write e.g. 0.2 or 20"
            )
        if self.val_held_out and not self.early_stopping:
            raise ConfigError(
                f"--val-held-out {self.val_held_out} sets a validation set aside for early stopping, but early "
                f"stopping is off; add --early-stopping or drop --val-held-out"
            )
        if self.task == REGRESSION:
            self._check_regression()
        if n_pool is not None:
            if self.val_held_out and self.budget + self.val_held_out > n_pool:
                raise ConfigError(
                    f"--budget {self.budget} and --val-held-out {self.val_held_out} together exceed the pool of "
                    f"{n_pool} samples; lower one of them"
                )
            if self.budget > n_pool:
                raise ConfigError(
                    f"--budget {self.budget} exceeds the pool of {n_pool} samples in {self.dataset!r}; "
                    f"lower it to at most {n_pool}"
                )
            if self.query_size is not None and self.query_size > n_pool:
                raise ConfigError(f"--query-size {self.query_size} exceeds the pool of {n_pool} samples")

    def _check_regression(self) -> None:
        """What a regression run cannot do (yet): each refusal names the flag and the way out."""
        if self.init_balanced:
            raise ConfigError(
                "--init-balanced draws the initial set class by class, but --task regression has no classes; drop it"
            )
        if self.stop != "budget":
            raise ConfigError(
                f"--stop {self.stop} judges class predictions (their entropy or agreement), which a regression task "
                f"does not make; use --stop budget (the default) with --task regression"
            )
        for flag, value in (("--val-held-out", self.val_held_out), ("--eval-mc-samples", self.eval_mc_samples)):
            if value:
                raise ConfigError(f"{flag} is for classification runs (the BatchBALD protocol); drop it")
        kind = self.oracle.partition(":")[0]
        if kind in HUMAN_ORACLES or kind == "noisy":
            raise ConfigError(
                f"--oracle {self.oracle} answers with class labels; a regression task needs numbers: use --oracle "
                f"ground-truth (a simulation from the target column) or your own oracle (package.module:factory, "
                f"or an object from Python) that returns numbers. Numeric answers from a person (csv, prompt, "
                f"web, Label Studio) are not supported yet"
            )

    def default_run_name(self) -> str:
        return f"{self.dataset}-{self.strategy}-seed{self.seed}"


def config_record(config: ExperimentConfig, strategy: Strategy) -> dict[str, Any]:
    """The run's stored configuration: the resolved config and the strategy's settings, as JSON values."""
    d = asdict(config)
    for k, old in CONFIG_ADDED.items():
        if d[k] == old:
            del d[k]
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
