"""Shared fixtures: the tiny offline digits dataset and fast settings."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch

from al.data import Dataset, load_dataset
from al.loop import ExperimentConfig

torch.set_num_threads(1)  # tests run small models; one thread avoids oversubscribing 2 cores under xdist/CI


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture
def store_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


def fast_config(**kw) -> ExperimentConfig:
    """A digits run that trains in well under a second per round."""
    base = dict(
        dataset="digits", strategy="entropy", budget=80, init_size=20, query_size=20, epochs=5, min_steps=30, seed=0
    )
    base.update(kw)
    return ExperimentConfig(**base)


@pytest.fixture
def shared_data_dir() -> str:
    d = os.environ.get("AL_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    if not os.path.isdir(os.path.join(d, "MNIST", "raw")):
        pytest.skip(f"MNIST raw files not found under {d}; set AL_DATA_DIR")
    return d


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def run_forked(run: Callable[[], object], crash_at: str | None) -> int:
    """``run()`` (an experiment's run) in a forked child (cheap: torch is already imported) with AL_CRASH_AT set there
    only (see al.store.crash_point). Returns the child's exit status, or -signal when it was killed."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if crash_at:
                os.environ["AL_CRASH_AT"] = crash_at
            run()
            code = 0
        except BaseException:  # noqa: BLE001 - the child must never return into pytest
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)  # reaped, so the dead pid no longer holds the run
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
