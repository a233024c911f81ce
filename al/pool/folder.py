"""Pools from a folder of image files, any depth, flat (unlabelled) or in torchvision's ``ImageFolder`` layout
(``<class>/<file>``: labelled).

A sample's key is its path relative to the folder, with ``/`` separators, so ids survive a re-scan with files
added (see :meth:`al.pool.base.Pool.align`). Files are found by suffix (:data:`IMAGE_SUFFIXES`), hidden files and
folders skipped, in sorted order. Images are decoded only when read (:class:`ImageReader`, through a DataLoader).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import DataError
from .base import UNLABELLED, TestSplit
from .files import FilePool, LoaderInputs, Reader
from .images import IMAGE_SUFFIXES, NORMALISATIONS, ImageSpec

LabelLayout = Literal["auto", "folders", "none"]


class ImageReader(Reader):
    """Reads source position ``i`` (``paths[i]``) as uint8 pixels with ``spec`` (normalised per batch in
    :meth:`finish`); a file that fails gives zeros and the reason."""

    def __init__(self, paths: Sequence[str], spec: ImageSpec, keys: Sequence[str]) -> None:
        self.paths, self.spec, self.keys = list(paths), spec, list(keys)
        self.input_shape = spec.input_shape
        # Imports transforms.v2 here, in the parent: forked loader workers inherit it instead of each importing it
        # (seconds per worker, on every pass).
        spec.transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            return self.spec.read(self.paths[i]), ""
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds on a corrupt file; each is reported
            return torch.zeros(self.input_shape, dtype=torch.uint8), f"{type(e).__name__}: {' '.join(str(e).split())}"

    def describe(self, i: int) -> str:
        return self.keys[i]

    def finish(self, batch: torch.Tensor) -> torch.Tensor:
        return self.spec.normalise(batch)


def scan_images(root: Path) -> list[str]:
    """Relative POSIX paths of the image files under ``root``, sorted; hidden files and folders skipped."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for f in sorted(filenames):
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                out.append((rel / f).as_posix())
    out.sort()
    return out


def read_classes(spec: str | Sequence[str] | None) -> list[str] | None:
    """``--classes``: a comma-separated list, or a file with one class per line (blank lines and ``#`` skipped)."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        names = [str(c).strip() for c in spec]
    elif os.path.isfile(spec):
        lines = Path(spec).read_text(encoding="utf-8-sig").splitlines()
        names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    else:
        names = [c.strip() for c in spec.split(",")]
    names = [c for c in names if c]
    if len(names) < 2:
        raise DataError(f"--classes needs at least two classes, got {names}; write --classes cat,dog or a file")
    dup = [c for c, k in Counter(names).items() if k > 1]
    if dup:
        raise DataError(f"--classes names {dup[0]!r} twice; give each class once")
    return names


def _folder(path: str | os.PathLike, what: str) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{what} {path}: no such folder; give the folder holding the images")
    if not root.is_dir():
        raise DataError(f"{what} {path} is a file, not a folder; give the folder holding the images")
    return root


def _layout(files: list[str], layout: LabelLayout, classes: list[str] | None) -> bool:
    """True when the files are in ImageFolder layout (labelled by their folder)."""
    if layout == "none":
        return False
    depth_one = all(f.count("/") == 1 for f in files)
    folders = {f.split("/", 1)[0] for f in files} if depth_one else set()
    if layout == "folders":
        if not depth_one:
            deep = next(f for f in files if f.count("/") != 1)
            raise DataError(
                f"--pool-labels folders needs every image at <class>/<file>, but {deep!r} is not; move it, or use "
                f"--pool-labels none for an unlabelled pool"
            )
        return True
    # auto: one level of folders, and (with --classes) every folder a class.
    return depth_one and len(folders) >= 2 and (classes is None or folders <= set(classes))


def _probe(
    root: Path, files: list[str], channels: int | None, size: tuple[int, int] | None
) -> tuple[int, tuple[int, int]]:
    """Channels and size from the files' headers when not declared; mixed sizes without ``size`` are refused."""
    from PIL import Image, UnidentifiedImageError

    sizes: Counter[tuple[int, int]] = Counter()
    colour = False
    look = files if size is None else files[:64]
    for f in look:
        try:
            with Image.open(root / f) as im:
                sizes[(im.height, im.width)] += 1
                colour = colour or im.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P")
                if im.mode == "P":
                    colour = colour or _palette_has_colour(im)
        except (OSError, UnidentifiedImageError, ValueError):
            continue  # unreadable: excluded with its reason when it is first read
    if not sizes:
        raise DataError(f"none of the {len(files)} image files under {root} could be read; check the files")
    if size is None:
        if len(sizes) > 1:
            (a, na), (b, nb) = sizes.most_common(2)
            raise DataError(
                f"the images under {root} have {len(sizes)} different sizes ({na} are {a[0]}x{a[1]}, {nb} are "
                f"{b[0]}x{b[1]}, ...); declare the model's input size with --image-size HxW (e.g. --image-size "
                f"{a[0]}x{a[1]}) and every image is resized to it"
            )
        size = next(iter(sizes))
    return (channels if channels is not None else 3 if colour else 1), size


def _palette_has_colour(im) -> bool:  # noqa: ANN001
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def from_folder(
    path: str | os.PathLike,
    classes: str | Sequence[str] | None = None,
    *,
    test: str | os.PathLike | None = None,
    labels: LabelLayout = "auto",
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    normalise: str | tuple[Sequence[float], Sequence[float]] = "half",
    workers: int = 2,
    name: str | None = None,
) -> FilePool:
    """A pool of the image files under ``path``.

    classes: the class names (a list, ``"cat,dog"`` or a file with one per line); from the folders when omitted
    for a labelled folder. labels: ``"auto"`` (ImageFolder layout when every image is at ``<folder>/<file>`` in
    two or more folders, all of them classes when ``classes`` is given), ``"folders"`` or ``"none"``. test: a
    labelled folder (ImageFolder layout, same classes) to evaluate on; without it rounds record no accuracy.
    image_size: (height, width) every image is resized to; needed when sizes differ. channels: 1 or 3 (default:
    3 when any image is in colour). normalise: ``"half"`` ((x - 0.5) / 0.5), ``"imagenet"`` (for pre-trained
    torchvision backbones), ``"none"``, or (mean, std). workers: DataLoader worker processes reading the files.
    """
    root = _folder(path, "--pool")
    wanted = read_classes(classes)
    files = scan_images(root)
    if not files:
        raise DataError(
            f"no images under {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} at any depth); check the path"
        )
    labelled = _layout(files, labels, wanted)
    if labelled:
        folders = sorted({f.split("/", 1)[0] for f in files})
        if wanted is not None:
            strange = [d for d in folders if d not in wanted]
            if strange:
                raise DataError(
                    f"folder {strange[0]!r} under {root} is not one of the classes {wanted}; rename it or add it to "
                    f"--classes"
                )
        class_names = wanted or folders
        y = np.array([class_names.index(f.split("/", 1)[0]) for f in files], dtype=np.int64)
    else:
        if wanted is None:
            raise DataError(
                f"the images under {root} are not sorted into class folders, so the classes are unknown; pass "
                f"--classes cat,dog,... (or a file with one class per line)"
            )
        class_names, y = wanted, None
    ch, size = _probe(root, files, channels, image_size)
    mean, std = NORMALISATIONS[normalise] if isinstance(normalise, str) else normalise
    spec = ImageSpec(ch, size, tuple(mean), tuple(std))
    split = _test_split(test, class_names, spec, workers) if test is not None else None
    reader = ImageReader([str(root / f) for f in files], spec, files)
    return FilePool(
        name or root.resolve().name or "folder",
        "folder",
        reader,
        files,
        class_names,
        labels=y,
        test=split,
        card=spec.to_json(),
        default_model="cnn" if min(size) >= 10 else "mlp",
        root=root,
        preview_mean=spec.mean,
        preview_std=spec.std,
        workers=workers,
    )


def _test_split(path: str | os.PathLike, classes: list[str], spec: ImageSpec, workers: int) -> TestSplit:
    root = _folder(path, "--test")
    files = scan_images(root)
    if not files:
        raise DataError(f"no images under the test folder {root}; check the path")
    if not _layout(files, "auto", classes):
        raise DataError(
            f"the test folder {root} must be labelled: one folder per class ({', '.join(classes)}) holding its "
            f"images, as <class>/<file>"
        )
    strange = sorted({f.split("/", 1)[0] for f in files} - set(classes))
    if strange:
        raise DataError(f"test folder {strange[0]!r} is not one of the classes {classes}")
    y = np.array([classes.index(f.split("/", 1)[0]) for f in files], dtype=np.int64)
    reader = ImageReader([str(root / f) for f in files], spec, [f"test/{f}" for f in files])
    idx = np.arange(len(files))
    return TestSplit(LoaderInputs(reader, idx, idx, workers=workers), y, tuple(files))


__all__ = ["UNLABELLED", "ImageReader", "from_folder", "read_classes", "scan_images"]
