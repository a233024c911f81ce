"""``python -m al.bench``: run (or continue) active-learning runs and print their learning curves.

Exit codes: 0 done, 2 bad usage or configuration, 3 waiting for labels (a human oracle answered part of a
query), 130 interrupted (Ctrl-C), 1 any other failure (the store keeps everything recorded so far; run the same
command again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from .cli_parser import OneLineParser
from .errors import ALError, ConfigError, DataError, LabelsPending, OracleError, StoreError, StrategyError
from .loop import DATASET_DEFAULTS, Experiment, ExperimentConfig, RoundReport
from .store import DEFAULT_URL, Store
from .tasks import CLASSIFICATION, REGRESSION, TASKS

EPILOG = """\
examples:
  python -m al.bench --strategy regrad --budget 2000                      # MNIST, the default protocol
  python -m al.bench --dataset digits --strategy entropy --budget 200 --init-size 20 --query-size 30
  python -m al.bench --strategy regrad --strategy-kwargs '{"layer_alpha": 2}' --seeds 0 1 2
  python -m al.bench --pool photos/ --classes cat,dog,fox --test photos-test/ --strategy regrad --budget 500 \
      --oracle csv --oracle-dir labels/ --device auto                     # your own images, labelled by you
  python -m al.bench --pool table.csv --label-column label --id-column id --oracle csv --oracle-dir labels/
  python -m al.bench --dataset diabetes --task regression --strategy mc-variance --budget 120
  python -m al.bench --pool houses.csv --test houses-test.csv --label-column price --task regression \
      --strategy coreset --budget 200                                     # a numeric target column

Running the same command again continues the run from the store; a finished run is reported, not repeated.
Dataset defaults (init-size / query-size / pool-subset / epochs / min-steps):
""" + "\n".join(
    f"  {k}: {v['init_size']} / {v['query_size']} / {v['pool_subset']} / {v['epochs']} / {v['min_steps']}"
    for k, v in DATASET_DEFAULTS.items()
)


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .registry import STRATEGIES

    p = OneLineParser(
        prog="python -m al.bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        allow_abbrev=False,  # --pool must not be read as --pool-subset (nor a future flag's prefix as an old flag)
    )
    a = p.add_argument
    a("--dataset", help=f"built-in dataset to learn ({', '.join(DATASETS.names())}); default mnist")
    own = p.add_argument_group("your own data (instead of --dataset)")
    o = own.add_argument
    o(
        "--pool",
        metavar="PATH",
        help="a folder of images (any depth; <class>/<file> = labelled) or a .csv/.parquet/.npy table",
    )
    o("--classes", help="class names, comma-separated, or a file with one per line (default: the class folders)")
    o("--test", metavar="PATH", help="labelled test folder or table; without it rounds record no accuracy")
    o(
        "--pool-labels",
        choices=["auto", "folders", "none"],
        default="auto",
        help="folder pools: labels from <class>/<file> folders (auto: when every image is one folder deep)",
    )
    o("--image-size", metavar="HxW", help="resize every image to HxW (needed when sizes differ)")
    o("--channels", type=int, choices=[1, 3], help="1 grey or 3 RGB (default: 3 if any image is in colour)")
    o(
        "--normalise",
        choices=["half", "imagenet", "none"],
        default="half",
        help="pixel normalisation: (x-0.5)/0.5, ImageNet statistics (for pre-trained backbones), none",
    )
    o(
        "--label-column",
        help="table pools: the column of labels (empty cells = unlabelled); with --task regression the numeric target",
    )
    o("--id-column", help="table pools: the column of unique sample ids (default the row number)")
    o("--loader-workers", type=int, default=2, help="DataLoader worker processes reading image files (default 2)")
    a(
        "--task",
        choices=TASKS,
        default=CLASSIFICATION,
        help="classification (default) or regression: numeric targets, MSE training, RMSE and Gaussian NLL recorded "
        "(strategies random, coreset, mc-variance, regrad; datasets diabetes, synthetic-gap, or a table)",
    )
    a("--strategy", default="entropy", help=f"acquisition strategy ({', '.join(STRATEGIES.names())})")
    a(
        "--strategy-kwargs",
        default="{}",
        metavar="JSON",
        help="JSON object of strategy parameters, e.g. '{\"layer_alpha\": 2}'",
    )
    a("--budget", type=int, default=2000, help="total labels including the initial set (default 2000)")
    a("--init-size", type=int, help="random labels before the first query (dataset default)")
    a("--init-balanced", action="store_true", help="draw the initial set class-balanced (BatchBALD protocol)")
    a("--query-size", type=int, help="labels acquired per round (dataset default)")
    a("--seed", type=int, default=0, help="seed of the run (default 0)")
    a("--seeds", type=int, nargs="+", help="several seeds, run one after the other (overrides --seed)")
    a(
        "--model",
        help="registered model (cnn, lenet5, mlp, resnet18, patch-transformer), torchvision:<builder> (e.g. "
        "torchvision:resnet18, with --weights FILE), or package.module:factory",
    )
    a("--epochs", type=int, help="training epochs per round (at least --min-steps steps are taken)")
    a("--min-steps", type=int, help="minimum optimiser steps per round")
    a("--batch-size", type=int, default=64, help="SGD mini-batch size (default 64)")
    a("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    a("--pool-subset", type=int, help="score a random subset of N unlabelled samples per round; 0 = whole pool")
    a("--mc-samples", type=int, default=20, help="MC-dropout passes for bald/batchbald (default 20)")
    a(
        "--early-stopping",
        action="store_true",
        help="train each round until a validation split of the labelled set stops improving (best weights kept) "
        "instead of the fixed --epochs/--min-steps schedule",
    )
    a("--val-size", type=float, default=0.2, help="--early-stopping: held-out fraction (<1) or count (default 0.2)")
    a("--patience", type=int, default=3, help="--early-stopping: epochs without improvement before stopping (3)")
    a("--max-epochs", type=int, default=100, help="--early-stopping: at most this many epochs (default 100)")
    a(
        "--val-held-out",
        type=int,
        default=0,
        help="--early-stopping on N samples set aside from the pool and labelled by the simulation, not counted in "
        "the budget (the BatchBALD paper's 1024; a benchmark setting: it needs the true labels); default 0: carve "
        "--val-size from the labelled set",
    )
    a(
        "--eval-mc-samples",
        type=int,
        default=0,
        help="test accuracy and NLL from the mean of N MC-dropout passes (the BatchBALD paper's 100; default 0: "
        "dropout off)",
    )
    a("--warm-start", action="store_true", help="fine-tune last round's model instead of retraining from scratch")
    a(
        "--oracle",
        default="ground-truth",
        help="who labels: ground-truth, noisy:<fraction>, csv (file hand-off, needs --oracle-dir), prompt (you, at "
        "this terminal), web (you, in the browser: the page at --web-host:--web-port), label-studio (a Label Studio "
        "server at --label-studio-url), label-studio-files (Label Studio tasks and exports as files, needs "
        "--oracle-dir), or package.module:factory (default ground-truth)",
    )
    a(
        "--oracle-dir",
        metavar="DIR",
        help="--oracle csv: folder for queries-round-N.csv (with the images) and "
        "answers-round-N.csv; one folder per run",
    )
    a(
        "--oracle-timeout",
        type=float,
        metavar="SECONDS",
        help="stop the run (the query stays saved) if the oracle gives no answer within SECONDS",
    )
    a("--web-host", default="127.0.0.1", help="--oracle web: address the page binds to (default 127.0.0.1)")
    a("--web-port", type=int, default=8000, help="--oracle web: port of the page (default 8000; 0 = any free port)")
    a(
        "--web-token",
        default=os.environ.get("AL_WEB_TOKEN"),
        help="--oracle web: token the page asks for (default $AL_WEB_TOKEN; generated when --web-host is not loopback)",
    )
    a("--label-studio-url", metavar="URL", help="--oracle label-studio: the server, e.g. http://127.0.0.1:8080")
    a(
        "--label-studio-project",
        type=int,
        metavar="ID",
        help="--oracle label-studio: the project to use (default: one created for the run); the API token comes "
        "from $LABEL_STUDIO_API_KEY",
    )
    a(
        "--label-studio-poll",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="--oracle label-studio: look for new annotations every SECONDS until the round is labelled (default 0: "
        "look once; the run then waits, exit 3, and the same command continues it)",
    )
    a("--store", default=DEFAULT_URL, help=f"SQLAlchemy URL of the store (default {DEFAULT_URL})")
    a("--run-name", help="name of the run in the store (default <dataset or pool folder>-<strategy>-seed<seed>)")
    a("--data-dir", help="data root (default $AL_DATA_DIR, else ~/.cache/al/data)")
    a("--no-progress", action="store_true", help="no progress bars")
    a("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default cpu; auto: CUDA, else MPS, else CPU)")
    a("--weights", metavar="FILE", help="--model torchvision:<builder>: a local state-dict file to start from")
    a("--freeze-backbone", action="store_true", help="train only the classifier head of --model")
    a(
        "--checkpoints",
        metavar="DIR",
        help="save each round's model under DIR/<run> (default al-checkpoints for --pool)",
    )
    a("--no-checkpoints", action="store_true", help="save no model checkpoints")
    a(
        "--stop",
        default="budget",
        help="label-free stopping criterion: budget, stabilising-predictions, max-uncertainty, "
        "overall-uncertainty (see README)",
    )
    a("--stop-kwargs", default="{}", metavar="JSON", help="settings of --stop, e.g. '{\"threshold\": 0.99}'")
    return p


def _json_object(text: str, flag: str, example: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{flag} is not valid JSON ({e.msg} at column {e.colno}); give an object such as '{example}'"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object, e.g. '{example}'")
    return value


def load_pool(args: argparse.Namespace):  # noqa: ANN201 - a Pool
    """The pool of ``--pool`` (a folder of images or a table), every bad input a one-line DataError."""
    import os

    from .pool import from_folder, from_table, parse_size

    if args.dataset:
        raise ConfigError(f"--pool and --dataset both name the data; give one (--pool {args.pool} is your own)")
    image_flags = [f for f, v in (("--image-size", args.image_size), ("--channels", args.channels)) if v]
    if os.path.isdir(args.pool):
        if args.task == REGRESSION:
            raise ConfigError(
                f"--task regression takes a table (--pool table.csv with its numeric --label-column); --pool "
                f"{args.pool} is a folder of images, which have no numeric targets"
            )
        if args.label_column or args.id_column:
            raise ConfigError("--label-column/--id-column are for table pools; a folder is labelled by its folders")
        return from_folder(
            args.pool,
            args.classes,
            test=args.test,
            labels=args.pool_labels,
            image_size=parse_size(args.image_size) if args.image_size else None,
            channels=args.channels,
            normalise=args.normalise,
            workers=args.loader_workers,
        )
    if image_flags and os.path.isfile(args.pool):
        raise ConfigError(f"{image_flags[0]} is for folders of images; --pool {args.pool} is a table")
    return from_table(
        args.pool,
        args.classes,
        label_column=args.label_column,
        id_column=args.id_column,
        test=args.test,
        task=args.task,
    )


def _configs(args: argparse.Namespace) -> list[ExperimentConfig]:
    kwargs = _json_object(args.strategy_kwargs, "--strategy-kwargs", '{"layer_alpha": 2}')
    seeds = args.seeds if args.seeds else [args.seed]
    if args.run_name and len(seeds) > 1:
        raise ConfigError("--run-name names one run; drop it when giving several --seeds")
    out = []
    for s in seeds:
        out.append(
            ExperimentConfig(
                dataset=args.dataset or "mnist",
                strategy=args.strategy,
                strategy_kwargs=kwargs,
                budget=args.budget,
                init_size=args.init_size,
                query_size=args.query_size,
                seed=s,
                model=args.model,
                epochs=args.epochs,
                min_steps=args.min_steps,
                batch_size=args.batch_size,
                lr=args.lr,
                pool_subset=args.pool_subset,
                warm_start=args.warm_start,
                init_balanced=args.init_balanced,
                oracle=args.oracle,
                mc_samples=args.mc_samples,
                weights=args.weights,
                freeze_backbone=args.freeze_backbone,
                early_stopping=args.early_stopping,
                val_size=args.val_size,
                patience=args.patience,
                max_epochs=args.max_epochs,
                val_held_out=args.val_held_out,
                eval_mc_samples=args.eval_mc_samples,
                stop=args.stop,
                stop_settings=_json_object(args.stop_kwargs, "--stop-kwargs", '{"threshold": 0.99}'),
                task=args.task,
            )
        )
    return out


def _check_store_url(url: str) -> None:
    """Refuse an in-memory SQLite store: the runs would vanish when the command ends, so nothing could be continued
    or reported. (``Store("sqlite://")`` stays allowed from Python, where a session may want a scratch store.)"""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: e.g. an unclosed [ in an IPv6 host
        return  # Store reports an unparsable URL with its own message
    in_memory = parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    if parsed.get_backend_name() == "sqlite" and in_memory:
        raise ConfigError(
            f"--store {url} keeps the runs in memory, so they vanish when this command ends and nothing could be "
            f"continued or reported; give a file, e.g. --store sqlite:///al-runs.db"
        )


def _print_round(rep: RoundReport) -> None:
    acc = f"accuracy {rep.accuracy:.4f}" if rep.accuracy is not None else "accuracy    -  "
    if rep.rmse is not None:  # a regression round: its RMSE (in the target's units) and Gaussian NLL
        acc = f"rmse {rep.rmse:.4g}  nll {rep.nll:.4g}" if rep.nll is not None else f"rmse {rep.rmse:.4g}"
    stop = "".join(f"  {k} {v:.4g}" if v is not None else f"  {k} -" for k, v in rep.criteria.items())
    eta = f"  left ~{_duration(rep.eta_seconds)}" if rep.eta_seconds else ""
    print(
        f"round {rep.round_idx:3d}  labels {rep.n_labelled:6d}  {acc}  "
        f"train {rep.train_seconds:6.1f}s  select {rep.select_seconds:6.1f}s  store {rep.store_seconds:5.2f}s"
        f"{stop}{eta}",
        flush=True,
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' hook
    from .oracles import RefusedAnswersWarning

    if issubclass(category, RefusedAnswersWarning):  # meant for the person labelling: no source location
        print(f"warning: {message}", file=sys.stderr)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # catch_warnings puts the caller's hook (pytest's, a notebook's) back when main returns or raises.
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return _run(args)
        except KeyboardInterrupt:
            # The loop has marked the run "stopped"; every completed transition is in the store.
            print("\ninterrupted; run the same command to continue", file=sys.stderr)
            return 130


def _run(args: argparse.Namespace) -> int:
    try:
        from .data import DATASETS
        from .registry import STRATEGIES

        configs = _configs(args)
        _check_store_url(args.store)
        if args.oracle_dir and args.oracle not in ("csv", "label-studio-files"):
            # Without this, a person who forgot --oracle csv would get a simulated run instead of their labels.
            raise ConfigError(
                f"--oracle-dir is only used by --oracle csv and label-studio-files, but --oracle is {args.oracle!r}; "
                f"add --oracle csv to label through files, or drop --oracle-dir"
            )
        # Names are checked before anything is loaded or written.
        STRATEGIES.get(args.strategy)
        if not args.pool:
            for flag in ("classes", "test", "label_column", "id_column", "image_size", "channels"):
                if getattr(args, flag):
                    raise ConfigError(f"--{flag.replace('_', '-')} describes your own data: give it with --pool PATH")
            DATASETS.get(args.dataset or "mnist")
        for c in configs:
            c.check()
        from .data import load_dataset
        from .devices import resolve_device

        device = resolve_device(args.device)
        dataset = load_pool(args) if args.pool else load_dataset(args.dataset or "mnist", args.data_dir)
        checkpoints = None
        if args.checkpoints and args.task == REGRESSION:
            raise ConfigError(
                "--checkpoints saves models for al.export and al.predict, which take classifiers; saving a "
                "regression task's models is not supported yet: drop --checkpoints"
            )
        # --pool saves them by default, but not for regression models (not supported yet)
        by_default = bool(args.pool) and args.task != REGRESSION
        if not args.no_checkpoints and (args.checkpoints or by_default):
            from .checkpoints import check_writable

            checkpoints = args.checkpoints or "al-checkpoints"
            check_writable(checkpoints)
        experiments: list[Experiment] = []
        for c in configs:
            # The first experiment checks everything and only then opens the store; the others share it.
            experiments.append(
                Experiment(
                    c,
                    experiments[0].store if experiments else args.store,
                    name=args.run_name,
                    dataset=dataset,
                    progress=not args.no_progress,
                    on_round=_print_round,
                    oracle_dir=args.oracle_dir,
                    oracle_timeout=args.oracle_timeout,
                    device=device,
                    checkpoint_dir=checkpoints,
                    oracle_options=_oracle_options(args),
                )
            )
        store = experiments[0].store
    except (ConfigError, StoreError, DataError, OracleError, StrategyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names: list[str] = []
    for exp in experiments:
        try:
            code = _run_one(exp)
        finally:  # an oracle that started a server (--oracle web) stops it before the next run or the exit
            exp.oracle.close()
        if code is not None:
            return code
        names.append(exp.name)
    _print_table(store, names)
    return 0


def _run_one(exp: Experiment) -> int | None:
    """Run one experiment with its messages; an exit code to stop with, or None when it finished."""
    t0 = time.perf_counter()
    try:
        before = exp.open_run().status
    except StoreError as e:  # a changed config under the same name: bad usage, nothing written
        print(f"error: {e}", file=sys.stderr)
        return 2
    if before == "finished":
        print(f"run {exp.name!r} is already finished in {exp.store.shown_url}; nothing to do")
    else:
        print(
            f"run {exp.name!r}: {exp.config.dataset}, strategy {exp.strategy!r}, budget {exp.config.budget}, "
            f"query size {exp.config.query_size}, pool subset {exp.config.pool_subset or 'all'}",
            flush=True,
        )
    try:
        exp.run()
    except LabelsPending as e:
        for notice in exp.notices:
            print(f"note: {notice}", file=sys.stderr)
        print(f"waiting: {e}", file=sys.stderr)
        return 3
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for notice in exp.notices:
        print(f"note: {notice}", file=sys.stderr)
    if before != "finished":
        print(f"run {exp.name!r} finished in {time.perf_counter() - t0:.1f}s", flush=True)
    return None


def _oracle_options(args: argparse.Namespace) -> dict[str, Any]:
    """The --oracle kind's settings (al.oracles.OracleContext.options); each kind reads the ones it needs."""
    return {
        "web_host": args.web_host,
        "web_port": args.web_port,
        "web_token": args.web_token,
        "label_studio_url": args.label_studio_url,
        "label_studio_project": args.label_studio_project,
        "label_studio_poll": args.label_studio_poll,
    }


def _print_table(store: Store, names: list[str]) -> None:
    curves = store.curves()
    curves = curves[curves["run"].isin(names)]
    # runs without a test set have neither; a regression run has an RMSE instead of an accuracy
    for metric, what in (("accuracy", "test accuracy"), ("rmse", "test RMSE (lower is better)")):
        df = curves.dropna(subset=[metric])
        if df.empty:
            continue
        table = df.pivot_table(index="n_labelled", columns="run", values=metric)
        print(f"\n{what} by number of labels")
        print(table.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    sys.exit(main())
