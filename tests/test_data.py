import os
import stat

import numpy as np
import pytest
import torch

from al import data
from al.errors import DataError


def test_digits_split(digits):
    assert digits.n_pool == 1437 and len(digits.test_y) == 360
    assert digits.input_shape == (1, 8, 8) and digits.n_classes == 10
    assert abs(float(digits.train_x.mean())) < 0.1 and abs(float(digits.train_x.std()) - 1) < 0.1
    x01 = digits.denormalise(digits.train_x[:5])
    assert float(x01.min()) >= 0 and float(x01.max()) <= 1


def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("AL_DATA_DIR", str(tmp_path))
    assert data.resolve_root(None) == tmp_path
    assert data.resolve_root("/x/y") == data.Path("/x/y")
    monkeypatch.delenv("AL_DATA_DIR")
    assert data.resolve_root(None) == data.DEFAULT_ROOT


def test_read_only_root_is_mirrored_not_written(tmp_path, monkeypatch):
    raw = tmp_path / "ro" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "a.gz").write_bytes(b"x" * 10)
    raw.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    cache = tmp_path / "cache"
    monkeypatch.setenv("AL_CACHE_DIR", str(cache))
    try:
        got = data._writable_root(tmp_path / "ro", "MNIST")
        assert got == cache and (cache / "MNIST" / "raw" / "a.gz").read_bytes() == b"x" * 10
        assert sorted(os.listdir(raw)) == ["a.gz"]
    finally:
        raw.chmod(0o755)


@pytest.mark.parametrize(
    "name,tv_class,folder,extra",
    [
        ("mnist", "MNIST", ("MNIST", "raw"), ["AL_DATA_DIR"]),
        # CIFAR-10 has no raw/ folder of .gz files: the fix names the archive and its unpacked folder
        ("cifar10", "CIFAR10", ("cifar-10-batches-py",), ["cifar-10-python.tar.gz"]),
    ],
)
def test_missing_dataset_error_names_folders_and_fixes(tmp_path, monkeypatch, name, tv_class, folder, extra):
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("Error downloading")

    monkeypatch.setattr(torchvision.datasets, tv_class, offline)
    with pytest.raises(DataError) as e:
        data.load_dataset(name, tmp_path)
    msg = str(e.value)
    assert str(tmp_path.joinpath(*folder)) in msg and "--data-dir" in msg and all(s in msg for s in extra)
    if "raw" not in folder:
        assert "raw" not in msg


def test_unknown_dataset_suggests():
    with pytest.raises(
        data.UnknownNameError if hasattr(data, "UnknownNameError") else Exception, match="did you mean 'mnist'"
    ):
        data.load_dataset("mnsit")


def test_subset_is_seeded(digits):
    a, b = digits.subset(100, 50, seed=1), digits.subset(100, 50, seed=1)
    assert torch.equal(a.train_x, b.train_x) and a.n_pool == 100 and len(a.test_y) == 50


@pytest.mark.slow
def test_mnist_from_shared_data(shared_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AL_CACHE_DIR", str(tmp_path))
    ds = data.load_dataset("mnist", shared_data_dir)
    assert ds.n_pool == 60000 and len(ds.test_y) == 10000 and ds.input_shape == (1, 28, 28)
    assert np.bincount(ds.train_y.numpy()).min() > 5000
