"""Acquisition strategies, one module per family; REGrad (``strategies.regrad``) is the flagship.

This package builds on the framework's strategy contract and registry (:mod:`al.strategy`, :mod:`al.registry`),
re-exported here so that ``from strategies import Strategy, register_strategy, top_n`` works. The built-in
strategies reach ``al`` through the ``al.strategies`` entry-point group declared in ``pyproject.toml``, the same
way a third party's do; importing this package registers nothing by itself.
"""

from __future__ import annotations

from al.registry import STRATEGIES, build_strategy, register_strategy
from al.strategy import Context, Selection, Strategy, top_n

__all__ = ["STRATEGIES", "register_strategy", "build_strategy", "Strategy", "Selection", "Context", "top_n"]
