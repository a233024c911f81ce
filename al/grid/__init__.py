"""Grids of dataset x strategy x seed: the cells of protocol files, run on a local process pool or on Dask
distributed, every worker writing to one shared store (``python -m al.grid``; see its module docstring).

Modules: ``cells`` (protocol files -> cells, each a run identified by its configuration; their state in the
store), ``executors`` (the local pool and Dask, both through the ``concurrent.futures`` interface), ``worker``
(what one cell runs in a worker: threads, the claim, failures recorded in the store), ``runner`` (submitting the
unfinished cells and following them), ``progress`` (the bar and the per-run log files).
"""

from .cells import Cell, CellState, Grid, cell_states, cells_of, grid_cells, load_protocol
from .runner import GridResult, run_grid
from .worker import CellOptions, CellOutcome, run_cell

__all__ = [
    "Cell",
    "CellOptions",
    "CellOutcome",
    "CellState",
    "Grid",
    "GridResult",
    "cell_states",
    "cells_of",
    "grid_cells",
    "load_protocol",
    "run_cell",
    "run_grid",
]
