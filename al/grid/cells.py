"""Protocol files -> cells: each cell is one run, named and identified by its configuration.

A protocol is a JSON file: ``name`` (prefix of every run name), ``title``, ``config`` (the ExperimentConfig fields
shared by all its runs) and ``runs`` (a list of ``{"strategy": ..., "seeds": [...], "strategy_kwargs": {...}}``).
Its cells are named ``<protocol>-<strategy>-seed<seed>`` (the names the committed stores hold) and go seed-major
(seed 0 of every strategy, then seed 1, ...), so that a grid cut short leaves every strategy with the same number
of seeds.

A cell is identified by its configuration: the store refuses to continue a run under another one
(``Store.open_run``), and two cells of the same name with different settings are refused before anything runs.
Two names with the same settings are two runs, as they always were: a protocol may rerun another's settings under
its own names on purpose (after a strategy's defaults changed, say, which the protocol file does not show).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..loop import ExperimentConfig
    from ..store import Store


@dataclass(frozen=True)
class Cell:
    """One run of a grid: a protocol's shared ``config`` with one strategy, its settings and one seed."""

    protocol: str
    strategy: str
    seed: int
    config: dict[str, Any]
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)
    #: The protocol file it came from (for messages); not part of its identity.
    source: str = ""

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.strategy}-seed{self.seed}"

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset", "mnist"))

    def experiment_config(self) -> ExperimentConfig:
        """The run's ExperimentConfig; a ConfigError names a bad setting."""
        from ..loop import ExperimentConfig

        return ExperimentConfig(
            **self.config, strategy=self.strategy, strategy_kwargs=dict(self.strategy_kwargs), seed=self.seed
        )

    def identity(self) -> str:
        """The cell's settings as canonical JSON: equal for two cells exactly when they would make the same run."""
        return json.dumps(asdict(self.experiment_config()), sort_keys=True, default=str)


def load_protocol(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a protocol file; raises ConfigError naming the problem."""
    from ..loop import ExperimentConfig

    try:
        proto = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"protocol file {path} not found; see benchmarks/protocols/ for the shipped ones") from None
    except IsADirectoryError:
        raise ConfigError(f"protocol file {path} is a folder; give the JSON files in it") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"protocol file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"protocol file {path} is not UTF-8 text; a protocol is a JSON file") from None
    if not isinstance(proto, dict):
        raise ConfigError(f"protocol file {path} must hold a JSON object with name, config and runs")
    for key in ("name", "config", "runs"):
        if key not in proto:
            raise ConfigError(f"protocol file {path} has no {key!r} field; it needs name, config and runs")
    if not isinstance(proto["config"], dict) or not isinstance(proto["runs"], list):
        raise ConfigError(f"protocol file {path}: config must be an object and runs a list")
    fields = set(ExperimentConfig.__dataclass_fields__)
    bad = sorted(set(proto["config"]) - fields)
    if bad:
        raise ConfigError(f"protocol {path}: unknown config field(s) {bad}; valid: {sorted(fields)}")
    shared = sorted({"strategy", "strategy_kwargs", "seed"} & set(proto["config"]))
    if shared:
        raise ConfigError(f"protocol {path}: {shared} belong in each entry of runs, not in config")
    for i, spec in enumerate(proto["runs"]):
        if not isinstance(spec, dict) or "strategy" not in spec or not isinstance(spec.get("seeds"), list):
            raise ConfigError(f"protocol {path}: runs[{i}] needs a strategy and a list of seeds")
    return proto


def cells_of(
    proto: dict[str, Any],
    strategies: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    *,
    source: str = "",
) -> list[Cell]:
    """The protocol's cells in seed-major order, optionally restricted to some strategies or seeds."""
    out: list[tuple[int, int, Cell]] = []
    for order, spec in enumerate(proto["runs"]):
        if strategies and spec["strategy"] not in strategies:
            continue
        for rank, s in enumerate(spec["seeds"]):
            if seeds is not None and s not in seeds:
                continue
            cell = Cell(
                str(proto["name"]),
                str(spec["strategy"]),
                int(s),
                dict(proto["config"]),
                dict(spec.get("strategy_kwargs", {})),
                source,
            )
            out.append((rank, order, cell))
    return [c for _, _, c in sorted(out, key=lambda t: (t[0], t[1]))]


@dataclass(frozen=True)
class Grid:
    """The cells to run, in order (a name given twice with the same settings appears once)."""

    cells: list[Cell]


def grid_cells(
    files: Iterable[str | os.PathLike],
    *,
    strategies: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> Grid:
    """The cells of every protocol file, in the order given (each file seed-major), checked.

    ``names``: keep only cells whose name matches one of these shell patterns (``mnist-p1-random-*``). A cell
    name given twice with different settings is a ConfigError (with the same settings it is one cell)."""
    cells: list[Cell] = []
    for f in files:
        cells += cells_of(load_protocol(f), strategies, seeds, source=str(f))
    if names:
        unmatched = [p for p in names if not any(fnmatch.fnmatchcase(c.name, p) for c in cells)]
        if unmatched:
            raise ConfigError(f"--cells {' '.join(unmatched)} matches no cell of the protocols given")
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in names)]
    by_name: dict[str, tuple[Cell, str]] = {}
    kept: list[Cell] = []
    for c in cells:
        ident = check_cell(c)
        if c.name in by_name:
            first, first_ident = by_name[c.name]
            if first_ident != ident:
                raise ConfigError(
                    f"cell {c.name} is defined twice with different settings ({first.source} and {c.source}); a "
                    f"run name is one configuration: rename one protocol"
                )
            continue
        by_name[c.name] = (c, ident)
        kept.append(c)
    return Grid(kept)


def check_cell(cell: Cell) -> str:
    """Check a cell before anything is submitted: its settings and its strategy (registered, settings accepted).

    Returns its identity. Data is not loaded here: a dataset missing on a worker fails that cell there."""
    from ..registry import build_strategy, check_strategy_task

    try:
        cfg = cell.experiment_config()
        check_strategy_task(cfg.strategy, cfg.task, cfg.strategy_kwargs)
        build_strategy(cfg.strategy, **cfg.strategy_kwargs)
    except ConfigError as e:
        raise ConfigError(f"cell {cell.name} ({cell.source or 'protocol'}): {e}") from None
    except TypeError as e:  # a strategy setting it does not take
        raise ConfigError(f"cell {cell.name} ({cell.source or 'protocol'}): strategy_kwargs: {e}") from None
    return cell.identity()


@dataclass(frozen=True)
class CellState:
    """What the store holds about a cell's run."""

    status: str  # "not started" or one of the store's run statuses
    rounds: int = 0  # completed rounds
    n_labelled: int | None = None
    accuracy: float | None = None
    message: str | None = None
    owner: str | None = None
    holder_gone: bool = False  # status running, but its claimant is dead (rerunning takes it over)
    rmse: float | None = None  # a regression run's last test RMSE (instead of an accuracy)


def cell_states(store: Store | None, cells: Sequence[Cell]) -> dict[str, CellState]:
    """Each cell's state as the store says (a missing store: every cell not started). Reads, never writes."""
    from ..store.claims import STALE_AFTER_S, owner_gone

    if store is None:
        return {c.name: CellState("not started") for c in cells}
    wanted = {c.name for c in cells}
    runs = store.runs()
    runs = runs[runs["run"].isin(wanted)]
    curves = store.curves()
    curves = curves[curves["run"].isin(wanted)]
    last = curves.sort_values("round_idx").groupby("run").tail(1).set_index("run")
    count = curves.groupby("run").size()
    out: dict[str, CellState] = {}
    for r in runs.itertuples():
        owner, gone = None, False
        if r.status == "running":
            rec = store.run(r.run)
            owner = rec.owner
            gone = owner is not None and owner_gone(owner, rec.heartbeat, STALE_AFTER_S)
        acc = last["accuracy"].get(r.run) if r.run in last.index else None
        rmse = last["rmse"].get(r.run) if r.run in last.index else None
        out[r.run] = CellState(
            r.status,
            int(count.get(r.run, 0)),
            int(last["n_labelled"][r.run]) if r.run in last.index else None,
            None if acc is None or acc != acc else float(acc),
            r.message,
            owner,
            gone,
            None if rmse is None or rmse != rmse else float(rmse),
        )
    for c in cells:
        out.setdefault(c.name, CellState("not started"))
    return out
