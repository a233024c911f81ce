"""Store URLs that point at something that is not (or not yet) an al store: a folder, another application's
SQLite file, an empty file opened by a reader. Each is a one-line StoreError with the fix, and the file is left
exactly as it was. Through the real CLIs where the fault was seen there."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from al.errors import StoreError
from al.store import Store, display_url

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_folder_as_store_is_a_one_line_error(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    with pytest.raises(StoreError, match="is a folder") as e:
        Store(f"sqlite:///{folder}")
    assert f"sqlite:///{folder}/al-runs.db" in str(e.value) and "\n" not in str(e.value)
    assert list(folder.iterdir()) == []


def test_a_folder_as_store_exits_2_from_the_cli(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    r = _cli("-m", "al.bench", "--dataset", "digits", "--budget", "40", "--store", f"sqlite:///{folder}", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert err.startswith("error: ") and "is a folder" in err and "\n" not in err and "Traceback" not in err
    assert list(folder.iterdir()) == []


def _foreign_file(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    con.execute("INSERT INTO invoices (amount) VALUES (12.5), (99.0)")
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize("must_exist", [False, True])
def test_another_applications_sqlite_file_is_refused_and_left_unchanged(tmp_path, must_exist):
    path = _foreign_file(tmp_path / "app.db")
    before = _digest(path)
    with pytest.raises(StoreError, match="another application") as e:
        Store(f"sqlite:///{path}", must_exist=must_exist)
    assert "invoices" in str(e.value) and "--store" in str(e.value) and "\n" not in str(e.value)
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]  # no -wal, -shm or backup left behind
    con = sqlite3.connect(path)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["invoices"]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    con.close()


def test_an_empty_file_still_becomes_a_store_for_a_writer(tmp_path):
    """``touch runs.db`` then ``--store sqlite:///runs.db``: an empty file is a new store for a writer."""
    path = tmp_path / "runs.db"
    path.touch()
    Store(f"sqlite:///{path}").open_run("r", {"dataset": "digits"})
    assert Store(f"sqlite:///{path}", must_exist=True).runs()["run"].tolist() == ["r"]


def test_report_on_an_empty_file_is_refused_and_writes_nothing(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(StoreError, match="empty"):
        Store(f"sqlite:///{path}", must_exist=True)
    r = _cli("-m", "al.report", "--store", f"sqlite:///{path}", "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert err.startswith("error: ") and "empty" in err and "al.bench" in err and "\n" not in err
    assert path.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]  # no report folder, no -wal or -shm


def test_report_on_another_applications_file_is_refused(tmp_path):
    path = _foreign_file(tmp_path / "app.db")
    before = _digest(path)
    r = _cli("-m", "al.report", "--store", f"sqlite:///{path}", "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert r.returncode == 2 and "another application" in r.stderr, r.stderr
    assert _digest(path) == before


def test_display_url_hides_the_password():
    assert display_url("postgresql://bob:s3cret@db.example:5432/al") == "postgresql://bob:***@db.example:5432/al"
    assert display_url("sqlite:///al-runs.db") == "sqlite:///al-runs.db"
    assert "s3cret" not in display_url("postgresql://bob:s3cret@db example/::bad")  # even when it cannot parse
    with pytest.raises(StoreError) as e:
        Store("postgresql://bob:s3cret@[::1/al")
    assert "s3cret" not in str(e.value)
