"""al: pool-based deep active learning, with REGrad gradient-based epistemic uncertainty."""

from .checkpoints import LoadedModel, ModelCard, load_model
from .data import DATASETS, Dataset, load_dataset
from .errors import (
    ALError,
    ConfigError,
    ConfigMismatchError,
    DataError,
    IncompatibleStrategyError,
    LabelsPending,
    ModelError,
    OracleError,
    StoreError,
    StrategyError,
    UnknownNameError,
)
from .learner import TorchLearner
from .loop import Experiment, ExperimentConfig
from .models import MODELS, build_model
from .oracles import CallbackOracle, CsvOracle, GroundTruthOracle, NoisyOracle, Oracle, PromptOracle, as_oracle
from .pool import FilePool, Pool
from .store import Store
from .strategy import Context, Selection, Strategy

__version__ = "0.1.0"
__all__ = [
    "ALError",
    "CallbackOracle",
    "ConfigError",
    "ConfigMismatchError",
    "Context",
    "DATASETS",
    "DataError",
    "CsvOracle",
    "Dataset",
    "Experiment",
    "ExperimentConfig",
    "GroundTruthOracle",
    "IncompatibleStrategyError",
    "LabelsPending",
    "MODELS",
    "ModelError",
    "NoisyOracle",
    "Oracle",
    "OracleError",
    "PromptOracle",
    "Selection",
    "Store",
    "StoreError",
    "Strategy",
    "StrategyError",
    "TorchLearner",
    "UnknownNameError",
    "as_oracle",
    "build_model",
    "load_dataset",
    "load_model",
    "LoadedModel",
    "ModelCard",
    "Pool",
    "FilePool",
]
