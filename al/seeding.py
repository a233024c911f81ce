"""Positional randomness: every draw is derived from (seed, round_idx, purpose).

A resumed run needs no saved RNG state: round r of seed s always gets the same generator for the same
purpose, whatever happened in the process before it.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch


def _purpose_key(purpose: str) -> int:
    # crc32 is stable across processes, unlike hash(str) under PYTHONHASHSEED.
    return zlib.crc32(purpose.encode("utf-8"))


def seed_sequence(seed: int, round_idx: int, purpose: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), int(round_idx) + 1, _purpose_key(purpose)])


def round_rng(seed: int, round_idx: int, purpose: str) -> np.random.Generator:
    """The numpy generator for one purpose ("init", "select", "train", "oracle", ...) of one round."""
    return np.random.default_rng(seed_sequence(seed, round_idx, purpose))


def torch_seed(rng: np.random.Generator) -> int:
    """Draw a 63-bit seed for torch from a numpy generator."""
    return int(rng.integers(0, 2**63 - 1))


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(torch_seed(rng))
    return g
