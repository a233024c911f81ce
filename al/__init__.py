"""al: pool-based deep active learning, with REGrad gradient-based epistemic uncertainty."""
from .data import DATASETS, Dataset, load_dataset
from .errors import (ALError, ConfigError, ConfigMismatchError, DataError, IncompatibleStrategyError, LabelsPending,
                     OracleError, StoreError, UnknownNameError)
from .human import CsvOracle, PromptOracle
from .learner import TorchLearner
from .loop import Experiment, ExperimentConfig
from .models import MODELS, build_model
from .oracle import CallbackOracle, GroundTruthOracle, NoisyOracle, Oracle
from .store import Store
from .strategy import Context, Selection, Strategy

__version__ = "0.1.0"
__all__ = ["ALError", "CallbackOracle", "ConfigError", "ConfigMismatchError", "Context", "DATASETS", "DataError",
           "CsvOracle", "Dataset", "Experiment", "ExperimentConfig", "GroundTruthOracle", "IncompatibleStrategyError",
           "LabelsPending", "MODELS", "NoisyOracle", "Oracle", "OracleError", "PromptOracle", "Selection", "Store", "StoreError",
           "Strategy", "TorchLearner", "UnknownNameError", "build_model", "load_dataset"]
