"""Run every (strategy, seed) of one or more active-learning protocols into a store; resumable.

    python benchmarks/run_protocol.py benchmarks/protocols/mnist_batchbald.json \
        --store sqlite:///benchmarks/results/protocols.db

A protocol is a JSON file: ``name`` (prefix of every run name), ``title``, ``config`` (the ExperimentConfig
fields shared by all its runs) and ``runs`` (a list of ``{"strategy": ..., "seeds": [...],
"strategy_kwargs": {...}}``). Runs are named ``<protocol>-<strategy>-seed<seed>``.

Jobs go seed-major (seed 0 of every strategy, then seed 1, ...), so that a run cut short leaves every strategy
with the same number of seeds. Everything lives in the store: running the same command again continues each
unfinished run from its last completed round and skips the finished ones. Two processes may run the same
command side by side: a run claimed by a live process is skipped by the other (``Store.claim``).
Strategies not registered yet (another engineer's module not merged) are skipped with a note.

Exit codes: 0 every job finished; 4 some jobs were skipped or failed (run the command again later); 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

DEFAULT_STORE = f"sqlite:///{ROOT / 'benchmarks' / 'results' / 'protocols.db'}"


@dataclass(frozen=True)
class Job:
    protocol: str
    strategy: str
    seed: int
    config: dict[str, Any]
    strategy_kwargs: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.strategy}-seed{self.seed}"


def load_protocol(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a protocol file; raises ConfigError naming the problem."""
    from al.errors import ConfigError
    from al.loop import ExperimentConfig

    try:
        proto = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"protocol file {path} not found; see benchmarks/protocols/ for the shipped ones") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"protocol file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    for key in ("name", "config", "runs"):
        if key not in proto:
            raise ConfigError(f"protocol file {path} has no {key!r} field; it needs name, config and runs")
    fields = set(ExperimentConfig.__dataclass_fields__)
    bad = sorted(set(proto["config"]) - fields)
    if bad:
        raise ConfigError(f"protocol {path}: unknown config field(s) {bad}; valid: {sorted(fields)}")
    return proto


def jobs_of(
    proto: dict[str, Any], strategies: Sequence[str] | None = None, seeds: Sequence[int] | None = None
) -> list[Job]:
    """The protocol's jobs in seed-major order, optionally restricted to some strategies or seeds."""
    out: list[tuple[int, int, Job]] = []
    for order, spec in enumerate(proto["runs"]):
        if strategies and spec["strategy"] not in strategies:
            continue
        for rank, s in enumerate(spec["seeds"]):
            if seeds is not None and s not in seeds:
                continue
            out.append(
                (
                    rank,
                    order,
                    Job(
                        proto["name"],
                        spec["strategy"],
                        int(s),
                        dict(proto["config"]),
                        dict(spec.get("strategy_kwargs", {})),
                    ),
                )
            )
    return [j for _, _, j in sorted(out, key=lambda t: (t[0], t[1]))]


def run_job(job: Job, store: Any, dataset: Any, log: Any = print) -> str:
    """Run or continue one job; returns 'finished', 'skipped: why' or 'failed: why'. Never raises ALError."""
    from al.errors import ALError, ConfigMismatchError, StoreError
    from al.loop import Experiment, ExperimentConfig
    from strategies import STRATEGIES

    if job.strategy not in STRATEGIES.names():
        return "skipped: strategy not registered yet"
    cfg = ExperimentConfig(**job.config, strategy=job.strategy, strategy_kwargs=job.strategy_kwargs, seed=job.seed)
    t0 = time.perf_counter()

    def on_round(rep: Any) -> None:
        log(
            f"  {job.name} round {rep.round_idx:3d} labels {rep.n_labelled:5d} acc {rep.accuracy:.4f} "
            f"train {rep.train_seconds:5.1f}s select {rep.select_seconds:5.1f}s"
        )

    try:
        exp = Experiment(cfg, store, name=job.name, dataset=dataset, on_round=on_round)
        if exp.open_run().status == "finished":
            return "finished"
        exp.run()
    except ConfigMismatchError as e:
        return f"skipped: {e}"
    except StoreError as e:  # claimed by another live process
        return f"skipped: {e}"
    except ALError as e:
        return f"failed: {type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - a bug in one strategy must not stop the others; the store keeps it
        traceback.print_exc()
        return f"failed: {type(e).__name__}: {e}"
    log(f"{job.name} finished in {time.perf_counter() - t0:.0f}s")
    return "finished"


def _registered(strategy: str) -> bool:
    from strategies import STRATEGIES

    return strategy in STRATEGIES.names()


def _import_new_strategy_modules() -> None:
    """Import strategy modules that appeared in strategies/ since start-up (each registers its strategies)."""
    import importlib

    import strategies

    for f in sorted(Path(strategies.__file__).parent.glob("*.py")):
        mod = f"strategies.{f.stem}"
        if f.stem.startswith("_") or mod in sys.modules:
            continue
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - a module being written may not import yet; try again later
            sys.modules.pop(mod, None)
            print(f"note: {mod} does not import yet ({type(e).__name__}: {e})", flush=True)


def _parse_until(until: str | None) -> float | None:
    if not until:
        return None
    import datetime as dt

    from al.errors import ConfigError

    try:
        h, m = map(int, until.split(":"))
        if not (0 <= h < 24 and 0 <= m < 60):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--until takes a UTC time as HH:MM, e.g. 08:30; got {until!r}") from None
    now = dt.datetime.now(dt.timezone.utc)
    t = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return t.timestamp()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/run_protocol.py", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    p.add_argument("protocols", nargs="+", help="protocol JSON files, run in the order given")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"SQLAlchemy URL (default {DEFAULT_STORE})")
    p.add_argument("--strategies", nargs="+", help="only these strategies")
    p.add_argument("--seeds", type=int, nargs="+", help="only these seeds")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    p.add_argument("--data-dir", help="data root (default $AL_DATA_DIR)")
    p.add_argument("--list", action="store_true", help="list the jobs and their state in the store, run nothing")
    p.add_argument(
        "--wait",
        action="store_true",
        help="when only jobs of unregistered strategies are left, wait for their modules to appear",
    )
    p.add_argument("--until", metavar="HH:MM", help="start no new job after this UTC time")
    args = p.parse_args(argv)

    import torch

    from al.data import load_dataset
    from al.errors import ALError
    from al.store import Store, sqlite_file_missing

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        protos = [load_protocol(f) for f in args.protocols]
        deadline = _parse_until(args.until)
        # --list only reads: it neither creates a missing store nor upgrades an older one.
        store = None if args.list and sqlite_file_missing(args.store) else Store(args.store, upgrade=not args.list)
    except ALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list:  # a store that does not exist yet is listed as empty, not created
        states = {} if store is None else {r.run: r.status for r in store.runs().itertuples()}
        for proto in protos:
            for j in jobs_of(proto, args.strategies, args.seeds):
                print(f"{j.name:40s} {states.get(j.name, 'not started')}")
        return 0
    outcome: dict[str, str] = {}
    datasets: dict[str, Any] = {}
    jobs = [j for proto in protos for j in jobs_of(proto, args.strategies, args.seeds)]
    print(f"{len(jobs)} jobs in {', '.join(p['name'] for p in protos)}", flush=True)
    while True:
        # Rescanned after every job: a strategy merged meanwhile is picked up at its seed-major place.
        _import_new_strategy_modules()
        states = {r.run: r.status for r in store.runs().itertuples()}
        job = next(
            (j for j in jobs if states.get(j.name) != "finished" and j.name not in outcome and _registered(j.strategy)),
            None,
        )
        if job is None:
            waiting = [j for j in jobs if states.get(j.name) != "finished" and not _registered(j.strategy)]
            if not (args.wait and waiting) or (deadline and time.time() > deadline):
                break
            time.sleep(60)
            continue
        if deadline and time.time() > deadline:
            break
        if job.config["dataset"] not in datasets:
            try:
                datasets[job.config["dataset"]] = load_dataset(job.config["dataset"], args.data_dir)
            except ALError as e:  # missing data, unknown dataset: nothing of this job was written
                print(f"error: {e}", file=sys.stderr)
                return 2
        print(f"{job.name}: start or continue", flush=True)
        outcome[job.name] = run_job(job, store, datasets[job.config["dataset"]], log=lambda m: print(m, flush=True))
        if outcome[job.name] != "finished":
            print(f"{job.name}: {outcome[job.name]}", flush=True)
    states = {r.run: r.status for r in store.runs().itertuples()}
    for j in jobs:
        if states.get(j.name) == "finished":
            outcome[j.name] = "finished"
        elif j.name not in outcome:
            outcome[j.name] = (
                "skipped: strategy not registered yet" if not _registered(j.strategy) else "not reached (deadline)"
            )
    left = {k: v for k, v in outcome.items() if v != "finished"}
    print(
        f"\n{len(outcome) - len(left)} of {len(outcome)} jobs finished"
        + ("" if not left else "; not finished:\n" + "\n".join(f"  {k}: {v[:200]}" for k, v in left.items()))
    )
    if left:
        print("run the same command again to continue them", flush=True)
    return 4 if left else 0


if __name__ == "__main__":
    sys.exit(main())
