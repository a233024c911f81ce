"""What a grid shows while it runs: one bar on the terminal, and one log file per run.

The bar counts cells done / running / failed / waiting (running as the store says: a cell whose run is claimed)
with an ETA from the cells finished so far (tqdm's average rate). The per-round lines of every cell go to
``<log folder>/<run name>.log``, written by the worker that runs it, so that parallel cells never interleave on
the terminal; a cell that fails adds one line to the terminal naming its log file.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import IO, Any


class CellLog:
    """Appends timestamped lines to ``<folder>/<name>.log`` (nothing when ``folder`` is None).

    Each line is opened, written and closed: a worker killed mid-cell leaves every line it wrote, and two
    attempts of a cell (a killed worker's and its retry's) append to the same file in order."""

    def __init__(self, folder: str | os.PathLike | None, name: str) -> None:
        self.path = None if folder is None else Path(folder) / f"{name}.log"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, line: str) -> None:
        if self.path is None:
            return
        stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as f:
            for part in line.rstrip("\n").split("\n"):
                f.write(f"{stamp} {part}\n")


class GridProgress:
    """One tqdm bar for the grid: ``done`` (finished cells, those finished before the command included) over
    the total, with ``running``, ``failed`` and ``waiting`` beside it. ``enabled=False``: nothing is drawn."""

    def __init__(self, total: int, done: int, *, enabled: bool = True, file: IO[str] | None = None) -> None:
        self.enabled = enabled
        self._file = file if file is not None else sys.stderr
        self._bar: Any = None
        self._shown = done
        if enabled:
            from tqdm import tqdm

            # smoothing=0: the rate (and so the ETA) is the average over every cell finished by this command;
            # initial: cells finished before it started do not count as instantly done.
            self._bar = tqdm(
                total=total, initial=done, unit="cell", smoothing=0, file=self._file, dynamic_ncols=True, leave=True
            )

    def update(self, *, done: int, running: int, failed: int, waiting: int) -> None:
        if self._bar is None:
            return
        if done + failed != self._shown:
            self._bar.update(done + failed - self._shown)
            self._shown = done + failed
        self._bar.set_postfix_str(f"done {done}, running {running}, failed {failed}, waiting {waiting}")

    def note(self, line: str) -> None:
        """One line on the terminal above the bar (a failed cell, a lost worker)."""
        if self._bar is not None:
            self._bar.write(line, file=self._file)
        else:
            print(line, file=self._file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
