"""The ``al.store`` package of an older commit, loaded from git, so that upgrade tests build their old stores with
the very code that wrote them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def store_package(commit: str, version: int) -> ModuleType:
    """``al/store`` at ``commit`` as the module ``al._store_v<version>`` (skips if git cannot give it)."""
    name = f"al._store_v{version}"
    if name in sys.modules:
        return sys.modules[name]
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{commit}:al/store"], capture_output=True, text=True
    )
    if names.returncode != 0:
        pytest.skip(f"the schema-{version} store code ({commit}:al/store) is not in this checkout's git history")
    folder = Path(tempfile.mkdtemp()) / f"store_v{version}"
    folder.mkdir()
    for file in names.stdout.split():
        out = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:al/store/{file}"], capture_output=True)
        (folder / file).write_bytes(out.stdout)
    # A subpackage of al, so that its ``from ..errors import`` finds al.errors.
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    assert mod.SCHEMA_VERSION == version
    return mod
