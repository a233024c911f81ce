"""A run's identity includes what its data is: the dataset's own name and a fingerprint of its pool and test
split. A run is never filed under a dataset name it was not run on, nor resumed on other data."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import fast_config

from al.data import Dataset, data_fingerprint, load_dataset
from al.errors import ConfigMismatchError, LabelsPending
from al.loop import Experiment, ExperimentConfig
from al.store import Store

# Same settings for both datasets, model included, as a user repeating a command would give them.
SETTINGS = dict(strategy="random", budget=40, init_size=20, query_size=20, epochs=2, min_steps=10, model="mlp")


def _like_mnist(digits: Dataset) -> Dataset:
    """A small dataset that calls itself "mnist" (28x28 images), standing in for the real MNIST pool."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 28, 28, generator=g)
    y = torch.arange(300) % 10
    return Dataset("mnist", x, y, x[:50].clone(), y[:50].clone(), 10, "mlp")


def test_dataset_object_files_the_run_under_its_own_name(digits, store_url):
    """The issue's scenario: digits passed with config.dataset left at its default "mnist" was stored as
    mnist-random-seed0, and a later MNIST run with the same settings was then reported "already finished"."""
    store = Store(store_url)
    cfg = ExperimentConfig(**SETTINGS)
    assert cfg.dataset == "mnist"  # the default, left as it is
    st = Experiment(cfg, store, dataset=digits).run()
    assert st.status == "finished"
    assert st.run.name == "digits-random-seed0" and st.run.dataset == "digits"
    assert store.run("digits-random-seed0").data_fingerprint == data_fingerprint(digits)
    assert store.runs()["dataset"].tolist() == ["digits"]

    later = Experiment(ExperimentConfig(**SETTINGS), store, dataset=_like_mnist(digits))
    assert later.name == "mnist-random-seed0" and later.config.dataset == "mnist"
    assert later.open_run().status == "running"  # a new run, not the digits one


def test_same_name_on_other_data_is_refused(digits, store_url):
    """Forcing the same run name onto a pool of another dataset is refused like a changed config."""
    store = Store(store_url)
    Experiment(fast_config(**SETTINGS), store, name="r", dataset=digits).run()
    other = _like_mnist(digits)
    with pytest.raises(ConfigMismatchError):
        Experiment(fast_config(**SETTINGS), store, name="r", dataset=other).run()


def test_changed_pool_on_resume_is_refused(digits, store_url):
    """The same dataset name and size but another subset: refused on resume, and nothing is written."""
    store = Store(store_url)
    a = digits.subset(n_pool=600, n_test=100, seed=0)
    b = digits.subset(n_pool=600, n_test=100, seed=1)
    cfg = fast_config(**{**SETTINGS, "budget": 60})

    def half(ids):  # answers half of each query: the run stops waiting for the rest
        return {int(i): int(a.train_y[i]) for i in ids[: len(ids) // 2]}

    exp = Experiment(cfg, store, dataset=a, oracle=half)
    with pytest.raises(LabelsPending):
        exp.run()
    before = store.state(exp.name)
    with pytest.raises(ConfigMismatchError, match="other data") as e:
        Experiment(cfg, store, dataset=b).run()
    assert "digits:600x1x8x8" in str(e.value) and "--run-name" in str(e.value)
    after = store.state(exp.name)
    assert after.labels == before.labels and after.rounds == before.rounds
    # the same pool again continues
    assert Experiment(cfg, store, dataset=a).run().status == "finished"


def test_run_stored_without_a_fingerprint_resumes_and_gets_one(digits, store_url):
    """Every committed run predates the fingerprint: it resumes, and the first resume fills the fingerprint in."""
    store = Store(store_url)
    exp = Experiment(fast_config(**SETTINGS), store, dataset=digits)
    store.open_run(exp.name, exp.config_record(), absent_means={"strategy_params": exp.strategy.params_added})
    assert store.run(exp.name).data_fingerprint is None
    assert exp.run().status == "finished"
    assert store.run(exp.name).data_fingerprint == data_fingerprint(digits)


def test_fingerprint_says_what_the_data_is(digits):
    fp = data_fingerprint(digits)
    assert fp.startswith("digits:1437x1x8x8:10c:test360:sha256-") and len(fp) <= 128
    assert data_fingerprint(load_dataset("digits")) == fp  # stable across loads (and processes: bytes only)
    assert data_fingerprint(digits.subset(n_pool=600, seed=0)) != data_fingerprint(digits.subset(n_pool=600, seed=1))
    changed = digits.subset(n_pool=600, seed=0)
    before = data_fingerprint(changed)
    changed.train_y[5] = (changed.train_y[5] + 1) % 10  # one label changed in place: the cache notices
    assert data_fingerprint(changed) != before
    long = Dataset("x" * 300, digits.train_x, digits.train_y, digits.test_x, digits.test_y, 10, "mlp")
    assert len(data_fingerprint(long)) <= 128


def test_fingerprint_is_cheap_on_mnist(shared_data_dir):
    """Full SHA-256 of the pool and test tensors: about 0.3 s for MNIST's 219 MB on this CPU, computed once per
    dataset object (cached), against ~4 s to load it."""
    ds = load_dataset("mnist", shared_data_dir)
    t0 = time.perf_counter()
    fp = data_fingerprint(ds)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert data_fingerprint(ds) == fp
    assert time.perf_counter() - t0 < 0.01  # cached
    assert first < 2.0, first  # generous: shared 2-core machines
    assert fp.startswith("mnist:60000x1x28x28:10c:test10000:")
