"""Positional randomness: every draw is derived from (seed, round_idx, purpose).

A resumed run needs no saved RNG state: round r of seed s always gets the same generator for the same
purpose, whatever happened in the process before it.

Torch's global RNG is only ever used inside :func:`torch_rng_scope`, which seeds it for the duration and restores
the caller's state afterwards, so nothing here changes what a caller's own ``torch.rand`` calls return.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import torch

#: ``rng_for(purpose)``: a fresh numpy generator for one purpose of one round (see :func:`round_rng`).
RngFor = Callable[[str], np.random.Generator]


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


def mc_dropout_seed(rng: np.random.Generator) -> int:
    """The torch seed of one round's MC-dropout masks, drawn from that round's ``"mc"`` generator.

    The one path from a round's randomness to MC dropout: ``Context.mc_probs`` calls
    ``mc_dropout_seed(rng_for("mc"))``. The draw (one integer below 2**31) is the one the loop has always made, so
    stored BALD and BatchBALD runs keep their masks.
    """
    return int(rng.integers(2**31))


@contextlib.contextmanager
def torch_rng_scope(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Seed torch's global RNG with ``seed`` for the body, then restore the caller's RNG state.

    Model initialisation and dropout draw from the global RNG (torch has no per-module generator), so the learner
    seeds it here. Inside, the CPU generator is in exactly the state ``torch.manual_seed(seed)`` leaves it. The
    CUDA generators are forked and seeded only when CUDA is already initialised: seeding them otherwise would
    queue a seed that lands at CUDA's later start-up, a change to the caller's state after the scope has ended.

    device: the device the body computes on. A CUDA device's generator is forked and seeded even when CUDA is
    not initialised yet (the body is about to start it: dropout masks on the GPU draw from that generator, so a
    GPU run is reproducible on the same GPU); an MPS device's generator likewise. The CPU (or None) changes
    nothing above.
    """
    dev = torch.device(device) if device is not None else None
    devices = set(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else set()
    if dev is not None and dev.type == "cuda":
        devices.add(dev.index if dev.index is not None else torch.cuda.current_device())
    with torch.random.fork_rng(devices=sorted(devices)):
        torch.default_generator.manual_seed(int(seed))
        for d in sorted(devices):
            torch.cuda.default_generators[d].manual_seed(int(seed))
        if dev is not None and dev.type == "mps":
            with _mps_rng_scope(int(seed)):
                yield
        else:
            yield


@contextlib.contextmanager
def _mps_rng_scope(seed: int) -> Iterator[None]:
    # fork_rng forks CUDA only (one device_type per call); the MPS generator is saved and restored by hand.
    state = torch.mps.get_rng_state()
    torch.mps.manual_seed(seed)
    try:
        yield
    finally:
        torch.mps.set_rng_state(state)
