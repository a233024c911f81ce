"""Oracles: whoever answers a query with labels.

``base`` holds the contract (:class:`Oracle` with a default for every optional feature, :class:`Answers`,
:class:`RoundInfo`, validation); ``simulated`` the oracles that need no person (ground truth, noisy, a
function); ``human`` the CSV hand-off and the terminal prompt; ``label_studio_files`` and ``label_studio``
labelling in Label Studio (through files, or a live server) in the formats of ``label_studio_format``; ``adapt``
the one place where a user's object becomes an Oracle (:func:`as_oracle`); ``registry`` the ``--oracle`` kinds
and :func:`make_oracle`.
"""

from .adapt import WrappedOracle, as_oracle
from .base import (
    Answers,
    LabellingStopped,
    Oracle,
    RefusedAnswersWarning,
    RoundInfo,
    validate_answers,
    validate_targets,
)
from .human import CsvOracle, PromptOracle
from .registry import ORACLES, OracleContext, OracleKind, make_oracle, register_oracle_kind
from .simulated import CallbackOracle, GroundTruthOracle, NoisyOracle

__all__ = [
    "ORACLES",
    "Answers",
    "CallbackOracle",
    "CsvOracle",
    "GroundTruthOracle",
    "LabellingStopped",
    "NoisyOracle",
    "Oracle",
    "OracleContext",
    "OracleKind",
    "PromptOracle",
    "RefusedAnswersWarning",
    "RoundInfo",
    "WrappedOracle",
    "as_oracle",
    "make_oracle",
    "register_oracle_kind",
    "validate_answers",
    "validate_targets",
]
