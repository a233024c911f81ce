"""Pools: the samples active learning chooses from. ``Pool.from_folder``, ``Pool.from_table``,
``Pool.from_arrays`` and ``Pool.from_torch`` build a user's pool; built-in datasets are pools too
(:class:`al.data.Dataset`). See :mod:`al.pool.base` for the interface."""

from .base import UNLABELLED, Alignment, Pool, TestSplit
from .files import FilePool, LoaderInputs, Reader
from .folder import from_folder, read_classes, scan_images
from .images import IMAGE_SUFFIXES, NORMALISATIONS, ImageSpec, parse_size
from .table import from_arrays, from_table, from_torch, read_table

Pool.from_folder = staticmethod(from_folder)  # type: ignore[attr-defined]
Pool.from_table = staticmethod(from_table)  # type: ignore[attr-defined]
Pool.from_arrays = staticmethod(from_arrays)  # type: ignore[attr-defined]
Pool.from_torch = staticmethod(from_torch)  # type: ignore[attr-defined]

__all__ = [
    "IMAGE_SUFFIXES",
    "NORMALISATIONS",
    "UNLABELLED",
    "Alignment",
    "FilePool",
    "ImageSpec",
    "LoaderInputs",
    "Pool",
    "Reader",
    "TestSplit",
    "from_arrays",
    "from_folder",
    "from_table",
    "from_torch",
    "parse_size",
    "read_classes",
    "read_table",
    "scan_images",
]
