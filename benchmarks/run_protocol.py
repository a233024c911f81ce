"""Run every (strategy, seed) of one or more active-learning protocols into a store; resumable.

    python benchmarks/run_protocol.py benchmarks/protocols/mnist_batchbald.json \
        --store sqlite:///benchmarks/results/protocols.db

A thin wrapper over ``python -m al.grid`` (which reads the protocol files, names the runs
``<protocol>-<strategy>-seed<seed>``, runs them seed-major and resumes them from the store: see al/grid/) with
this script's old defaults: the committed store, one worker process, torch's own thread count. Every flag of
al.grid is accepted (``--workers 2``, ``--executor dask``, ``--list``, ...).

Exit codes: 0 every job finished; 4 some jobs failed or were not reached (run the command again later); 2 usage;
130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from al.grid import Cell, cells_of, load_protocol  # noqa: E402 - after the sys.path line above
from al.grid.__main__ import build_parser  # noqa: E402
from al.grid.__main__ import main as grid_main  # noqa: E402

DEFAULT_STORE = f"sqlite:///{ROOT / 'benchmarks' / 'results' / 'protocols.db'}"

# The names this script has always offered (tests and older notes use them).
Job = Cell
jobs_of = cells_of
__all__ = ["DEFAULT_STORE", "Job", "jobs_of", "load_protocol", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(prog="python benchmarks/run_protocol.py", default_store=DEFAULT_STORE)
    parser.description = __doc__.splitlines()[0]
    parser.set_defaults(workers=1, threads=0)
    code = grid_main(argv, parser=parser, noun="jobs")
    return 4 if code == 1 else code


if __name__ == "__main__":
    sys.exit(main())
