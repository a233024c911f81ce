"""Datasets: a train pool with stable integer sample ids (the row index) and a test split.

Every image dataset is loaded once into memory as normalised float32 tensors ``(N, C, H, W)``; MNIST's
60k pool is 188 MB, which is far cheaper than decoding images every round.

The data root is ``--data-dir``, else ``$AL_DATA_DIR``, else ``~/.cache/al/data``. A root that cannot be
written (CI's ``../shared/data``) is mirrored into ``$AL_CACHE_DIR`` (default ``~/.cache/al/data``) before
torchvision unpacks it: torchvision sees the ``.gz`` files with the right md5, skips the download and only
gunzips them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .pool.base import Pool, TestSplit
from .registry import Registry
from .tasks import CLASSIFICATION, REGRESSION

DEFAULT_ROOT = Path("~/.cache/al/data").expanduser()


@dataclass
class Dataset(Pool):
    """A labelled pool and a test split held in memory (a built-in dataset): a :class:`al.pool.Pool` whose ids are
    row indices.

    train_x: (n_pool, C, H, W) float32, normalised; train_y: (n_pool,) int64.
    test_x: (n_test, C, H, W); test_y: (n_test,). Sample ids are row indices of ``train_x``.
    task: ``"regression"`` for a regression dataset (:mod:`al.tasks`): ``train_x`` is then ``(n_pool, d)``
    standardised features, ``train_y``/``test_y`` float64 targets in their own units, ``n_classes`` 1 (the model's
    output width) and ``classes`` empty.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    default_model: str
    classes: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    task: str = CLASSIFICATION
    # data_fingerprint's cache: (the tensors' storage and in-place version counters, fingerprint).
    _fingerprint: tuple[tuple[int, ...], str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.train_x) != len(self.train_y) or len(self.test_x) != len(self.test_y):
            raise DataError(f"dataset {self.name!r}: inputs and labels differ in length")

    @property
    def n_pool(self) -> int:
        return len(self.train_y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def labels(self) -> np.ndarray:
        return self.train_y.numpy()

    @property
    def test(self) -> TestSplit:
        return TestSplit(self.test_x, self.test_y.numpy())

    def inputs(self, ids: np.ndarray) -> torch.Tensor:
        return self.train_x[torch.from_numpy(np.array(ids, dtype=np.int64))]  # a copy: ids may be read-only

    def tensor_inputs(self, ids: np.ndarray) -> torch.Tensor:
        return self.inputs(ids)

    def preview(self, sample_id: int) -> np.ndarray:
        return self.denormalise(self.train_x[int(sample_id)].unsqueeze(0))[0].numpy()

    def fingerprint(self) -> str:
        return data_fingerprint(self)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixel values, for saving or showing images. x: (N, C, H, W)."""
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def subset(self, n_pool: int | None = None, n_test: int | None = None, seed: int = 0) -> Dataset:
        """A seeded random subset (ids renumbered), for quick experiments."""
        g = np.random.default_rng(seed)
        tr = np.sort(g.permutation(self.n_pool)[:n_pool]) if n_pool else np.arange(self.n_pool)
        te = np.sort(g.permutation(len(self.test_y))[:n_test]) if n_test else np.arange(len(self.test_y))
        return Dataset(
            self.name,
            self.train_x[tr],
            self.train_y[tr],
            self.test_x[te],
            self.test_y[te],
            self.n_classes,
            self.default_model,
            self.classes,
            self.mean,
            self.std,
            self.task,
        )


def data_fingerprint(ds: Dataset) -> str:
    """What ``ds`` is, in at most 128 characters: part of a run's identity, checked when a run is resumed.

    ``<name>:<n_pool>x<sample shape>:<n_classes>c:test<n_test>:sha256-<hash>``. The hash is SHA-256 over the
    name, the shapes and dtypes and the bytes of the pool and test tensors (inputs and labels): the pool's ids
    are row indices, so the bytes say which samples each id is. Every byte, not a sample: measured on a 2-core
    CPU, 0.3 s for MNIST's 219 MB (about 7% of loading it), and it is computed once per dataset object (cached;
    an in-place change of a tensor, or assigning another one, is noticed through torch's version counter).
    """
    tensors = (ds.train_x, ds.train_y, ds.test_x, ds.test_y)
    key = tuple(v for t in tensors for v in (id(t), t.data_ptr(), t._version))
    if ds._fingerprint is not None and ds._fingerprint[0] == key:
        return ds._fingerprint[1]
    h = hashlib.sha256()
    h.update(f"{ds.name}\0{ds.n_classes}\0".encode())
    for t in tensors:
        a = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{a.dtype.str}{a.shape}\0".encode())
        h.update(a.reshape(-1).view(np.uint8).data)  # no copy; hashlib releases the GIL over large buffers
    shape = "x".join(str(d) for d in (ds.n_pool, *ds.input_shape))
    tail = f":{shape}:{ds.n_classes}c:test{len(ds.test_y)}:sha256-{h.hexdigest()[:32]}"
    fp = ds.name[: 128 - len(tail)] + tail  # a very long name is cut here; the hash holds all of it
    ds._fingerprint = (key, fp)
    return fp


DatasetLoader = Callable[[Path], Dataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset")
# Test-only sets used as out-of-distribution inputs: loader returns (x, y) normalised by the caller.
OOD_SETS: Registry[Callable[[Path], tuple[np.ndarray, np.ndarray]]] = Registry("OOD dataset")


def resolve_root(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("AL_DATA_DIR")
    return Path(env).expanduser() if env else DEFAULT_ROOT


def _cache_root() -> Path:
    return Path(os.environ.get("AL_CACHE_DIR", str(DEFAULT_ROOT))).expanduser()


def _is_writable(folder: Path) -> bool:
    # os.access alone says yes to root even on a folder without write bits (CI runs as root on a shared copy
    # of the data that must stay untouched), so the mode bits are checked too.
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o200)


def _writable_root(root: Path, folder: str) -> Path:
    """``root`` if torchvision may unpack into it, else a writable mirror holding copies of its .gz files."""
    src = root / folder / "raw"
    if not src.is_dir() or _is_writable(src):
        return root
    cache = _cache_root()
    if cache.resolve() == root.resolve():
        raise DataError(f"data root {root} is read-only; set AL_CACHE_DIR to a writable folder")
    dst = cache / folder / "raw"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        target = dst / f.name
        if not target.exists() or target.stat().st_size != f.stat().st_size:
            shutil.copyfile(f, target)
    return cache


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    loader = DATASETS.get(name)
    return loader(resolve_root(data_dir))


def _missing(name: str, folder: str, root: Path, err: Exception, files: str | None = None) -> DataError:
    """``files``: what the user should put under ``<root>``; default torchvision's ``<folder>/raw/*.gz`` layout."""
    where = root / folder if files else root / folder / "raw"
    files = files or f"the torchvision raw files in <root>/{folder}/raw/"
    return DataError(
        f"dataset {name!r} is not available: looked for {where} and the download failed "
        f"({type(err).__name__}: {err}). Fix: put {files} and pass "
        f"--data-dir <root> (or set AL_DATA_DIR), or run once on a machine with internet access."
    )


def _normalise(x_uint8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = x_uint8.float().div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def _torchvision_grey(name: str, cls_name: str, folder: str, mean: float, std: float) -> DatasetLoader:
    def load(root: Path) -> Dataset:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        wroot = _writable_root(root, folder)
        try:
            tr = cls(str(wroot), train=True, download=True)
            te = cls(str(wroot), train=False, download=True)
        except Exception as e:  # noqa: BLE001 - torchvision raises many kinds when offline
            raise _missing(name, folder, root, e) from e
        return Dataset(
            name,
            _normalise(tr.data, (mean,), (std,)),
            tr.targets.long(),
            _normalise(te.data, (mean,), (std,)),
            te.targets.long(),
            10,
            "cnn",
            list(tr.classes),
            (mean,),
            (std,),
        )

    return load


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
DATASETS.register("mnist", _torchvision_grey("mnist", "MNIST", "MNIST", MNIST_MEAN, MNIST_STD))
DATASETS.register("fashion-mnist", _torchvision_grey("fashion-mnist", "FashionMNIST", "FashionMNIST", 0.2860, 0.3530))


@DATASETS.register("cifar10")
def _cifar10(root: Path) -> Dataset:
    import torchvision

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    try:
        tr = torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        te = torchvision.datasets.CIFAR10(str(root), train=False, download=True)
    except Exception as e:  # noqa: BLE001
        raise _missing(
            "cifar10",
            "cifar-10-batches-py",
            root,
            e,
            files="cifar-10-python.tar.gz (from https://www.cs.toronto.edu/~kriz/cifar.html) in <root>/, "
            "or its unpacked folder as <root>/cifar-10-batches-py/,",
        ) from e

    def conv(a: np.ndarray) -> torch.Tensor:
        return _normalise(torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(), mean, std)

    return Dataset(
        "cifar10",
        conv(tr.data),
        torch.tensor(tr.targets),
        conv(te.data),
        torch.tensor(te.targets),
        10,
        "resnet18",
        list(tr.classes),
        mean,
        std,
    )


DIGITS_MEAN, DIGITS_STD = 0.3064, 0.3797


@DATASETS.register("digits")
def _digits(root: Path) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images): the offline tiny dataset. 1437 pool / 360 test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    x = (x - DIGITS_MEAN) / DIGITS_STD
    y = torch.from_numpy(d.target.astype(np.int64))
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=d.target)
    idx_tr, idx_te = np.sort(idx_tr), np.sort(idx_te)
    return Dataset(
        "digits",
        x[idx_tr],
        y[idx_tr],
        x[idx_te],
        y[idx_te],
        10,
        "mlp",
        [str(i) for i in range(10)],
        (DIGITS_MEAN,),
        (DIGITS_STD,),
    )


def _regression_dataset(name: str, x_pool: np.ndarray, y_pool: np.ndarray, x_test: np.ndarray, y_test: np.ndarray):
    """A regression :class:`Dataset`: features standardised with the pool's mean and std (as table pools are),
    targets float64 in their own units."""
    mean, std = x_pool.mean(0), x_pool.std(0)
    std[std == 0] = 1.0

    def feats(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32))

    return Dataset(
        name,
        feats(x_pool),
        torch.from_numpy(np.asarray(y_pool, dtype=np.float64)),
        feats(x_test),
        torch.from_numpy(np.asarray(y_test, dtype=np.float64)),
        1,
        "mlp-regressor",
        [],
        tuple(float(v) for v in mean),
        tuple(float(v) for v in std),
        REGRESSION,
    )


@DATASETS.register("diabetes")
def _diabetes(root: Path) -> Dataset:
    """scikit-learn's bundled diabetes data (Efron et al. 2004): 442 patients, 10 features (age, sex, BMI, blood
    pressure, six serum measurements, as recorded: ``scaled=False``), target a measure of disease progression one
    year later (25..346). A regression task: 353 pool / 89 test rows (a fixed random split)."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    d = load_diabetes(scaled=False)
    tr, te = train_test_split(np.arange(len(d.target)), test_size=0.2, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    x = d.data.astype(np.float64)
    return _regression_dataset("diabetes", x[tr], d.target[tr], x[te], d.target[te])


#: synthetic-gap: the gap of inputs the pool hardly covers, and the share of pool rows drawn inside it.
SYNTHETIC_GAP, SYNTHETIC_GAP_SHARE = (-1.0, 1.0), 0.02


def synthetic_gap_function(x: np.ndarray) -> np.ndarray:
    """The noiseless target of ``synthetic-gap``: ``sin(2x) + 0.5 x`` (``x: (n,)``)."""
    return np.sin(2.0 * x) + 0.5 * x


@DATASETS.register("synthetic-gap")
def _synthetic_gap(root: Path) -> Dataset:
    """A 1-D regression task with a gap (seeded, the same in every process): ``y = sin(2x) + 0.5x + N(0, 0.1^2)``.
    Pool: 600 inputs on [-4, 4], only 2% of them (12) inside the gap (-1, 1), the rest uniform outside it; test:
    400 inputs uniform over [-4, 4], gap included. A model trained on random labels rarely sees the gap, so its
    test error there is large: a strategy that finds where the model is unsure should label the gap's few rows."""
    g = np.random.default_rng(20240617)
    lo, hi = SYNTHETIC_GAP
    n_pool, n_in = 600, round(600 * SYNTHETIC_GAP_SHARE)
    side = g.uniform(0.0, 3.0, n_pool - n_in)  # distance into the outer part, then a side for each
    outer = np.where(g.random(n_pool - n_in) < 0.5, lo - side, hi + side)
    x_pool = np.concatenate([outer, g.uniform(lo, hi, n_in)])
    x_pool = x_pool[g.permutation(n_pool)]
    x_test = g.uniform(-4.0, 4.0, 400)
    y_pool = synthetic_gap_function(x_pool) + 0.1 * g.standard_normal(n_pool)
    y_test = synthetic_gap_function(x_test) + 0.1 * g.standard_normal(400)
    return _regression_dataset("synthetic-gap", x_pool[:, None], y_pool, x_test[:, None], y_test)


def _read_idx_gz(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    if path.suffix == ".gz":
        raw = path.with_suffix("")
        cache = _cache_root() / path.parent.parent.name / "raw"
        target = raw if _is_writable(path.parent) else cache / raw.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "rb") as fi, open(target, "wb") as fo:
                shutil.copyfileobj(fi, fo)
        path = target
    return read_sn3_pascalvincent_tensor(str(path), strict=False).numpy()


def load_test_images(
    name: str, data_dir: str | os.PathLike | None = None, mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images of a grey 28x28 set, normalised with the *in-distribution* statistics given.

    name: "mnist", "fashion-mnist" or "notmnist". Used for OOD detection, where the OOD set must go through the
    in-distribution model's own normalisation. Returns x: (N, 1, 28, 28) float32, y: (N,) int64.
    """
    folders = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "notmnist": "notMNIST"}
    if name not in folders:
        raise DataError(f"no grey 28x28 test set {name!r}; choose one of {sorted(folders)}")
    root = resolve_root(data_dir)
    raw = root / folders[name] / "raw"
    imgs, labels = raw / "t10k-images-idx3-ubyte.gz", raw / "t10k-labels-idx1-ubyte.gz"
    if not imgs.exists():
        if name != "notmnist":
            ds = load_dataset(name, data_dir)
            x01 = ds.denormalise(ds.test_x)
            return (x01 - mean) / std, ds.test_y
        raise DataError(
            f"notMNIST test set not found at {raw}; pass --data-dir pointing at a folder with "
            f"notMNIST/raw/t10k-*-ubyte.gz"
        )
    x = torch.from_numpy(_read_idx_gz(imgs).astype(np.uint8))
    y = torch.from_numpy(_read_idx_gz(labels).astype(np.int64))
    return _normalise(x, (mean,), (std,)), y


REPEATED_MNIST_COPIES, REPEATED_MNIST_NOISE = 3, 0.1


@DATASETS.register("repeated-mnist")
def _repeated_mnist(root: Path) -> Dataset:
    """Repeated-MNIST (Kirsch et al., BatchBALD, NeurIPS 2019): every MNIST training image 3 times, each copy with
    its own fixed Gaussian noise (std 0.1 on the normalised pixels), so that near-copies fill the pool.

    Ids are copy-major and stable: id ``k * 60000 + i`` is copy k of MNIST training image i (so ``id % 60000``
    is the source image). The noise is drawn from a fixed seed, identical in every process. The test split is
    MNIST's, unchanged. Pool 180k images (564 MB as float32).
    """
    return repeat_with_noise(load_dataset("mnist", root), name="repeated-mnist")


def repeat_with_noise(
    base: Dataset,
    copies: int = REPEATED_MNIST_COPIES,
    noise: float = REPEATED_MNIST_NOISE,
    seed: int = 20191208,
    name: str | None = None,
) -> Dataset:
    """``copies`` noisy copies of every pool image of ``base`` (Repeated-MNIST's construction, any dataset).

    Copy-major ids: id ``k * base.n_pool + i`` is copy k of base image i. noise: std of the Gaussian added to
    the normalised pixels, drawn from ``seed`` (fixed, so every process builds the same pool). Test split
    unchanged. References: Kirsch et al., "BatchBALD" (NeurIPS 2019), section 5.1.
    """
    if copies < 1 or noise < 0:
        raise DataError(f"copies must be >= 1 and noise >= 0, got {copies} and {noise}")
    g = torch.Generator().manual_seed(seed)
    xs = [base.train_x + noise * torch.randn(base.train_x.shape, generator=g) for _ in range(copies)]
    return Dataset(
        name or f"{base.name}-x{copies}",
        torch.cat(xs),
        base.train_y.repeat(copies),
        base.test_x,
        base.test_y,
        base.n_classes,
        base.default_model,
        base.classes,
        base.mean,
        base.std,
    )
