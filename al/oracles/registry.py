"""Oracle kinds: how an ``--oracle`` spec becomes an oracle.

A spec is ``kind`` or ``kind:argument``: ``ground-truth``, ``noisy:0.1``, ``csv``, ``prompt``. A spec
``package.module:factory`` whose first part is no registered kind goes to the ``import`` kind (``import:`` may
also be written out, for a module whose name is a kind's). Each kind is one builder registered in
:data:`ORACLES`, which refuses a duplicate name and answers a typo with suggestions; a new oracle (a web page,
a labelling tool) is one module that defines its Oracle subclass and registers one kind::

    @register_oracle_kind("my-tool", usage="my-tool:<queue>", takes_argument=True)
    def _my_tool(arg: str, ctx: OracleContext) -> Oracle:
        return MyToolOracle(arg, ctx.dataset, url=ctx.options.get("my_tool_url"))

or, from another package (or a part of al that sits above the oracles, such as ``al.serve``'s ``web`` kind),
declares an :class:`OracleKind` in the ``al.oracles`` entry-point group of its ``pyproject.toml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import OracleError, UnknownNameError
from ..registry import Registry
from ..tasks import known_answers
from .adapt import as_oracle
from .base import Oracle
from .human import CsvOracle, PromptOracle
from .simulated import GroundTruthOracle, NoisyOracle

if TYPE_CHECKING:
    from ..pool import Pool as Dataset


@dataclass(frozen=True)
class OracleContext:
    """What a builder may use besides its spec's argument.

    labels: (n_pool,) int64 true labels of the pool (for simulated oracles), -1 where unknown, or None for an
    unlabelled pool; seed: the run's seed; dataset: the
    loaded dataset (None from callers that have none: the human oracles refuse that); oracle_dir: the hand-off
    folder given with ``--oracle-dir``; spec: the whole spec, for messages; options: kind-specific settings from
    the command line (``store_url``, ``web_host``, ``web_port``, ``web_token``, ``label_studio_url``,
    ``label_studio_project``, ``label_studio_poll``; a kind reads the ones it needs, with its own defaults).
    """

    labels: np.ndarray | None
    n_classes: int
    seed: int = 0
    dataset: Dataset | None = None
    oracle_dir: str | None = None
    spec: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


#: A builder gets the text after ``kind:`` ("" when there is none) and the context, and returns an Oracle.
OracleBuilder = Callable[[str, OracleContext], Oracle]


class OracleKind:
    """One registered way of building an oracle: its name, its builder, and how its spec is written."""

    def __init__(
        self, name: str, build: OracleBuilder, *, usage: str | None = None, takes_argument: bool = False
    ) -> None:
        self.name = name
        self.build = build
        self.usage = usage or name
        self.takes_argument = takes_argument
        # The registry names whoever holds a clashing name by __module__ and __qualname__: name the builder.
        self.__module__ = build.__module__
        self.__qualname__ = build.__qualname__

    def __repr__(self) -> str:
        return f"OracleKind({self.name!r}, usage={self.usage!r})"


ORACLES: Registry[OracleKind] = Registry("oracle", entry_point_group="al.oracles")
#: The kind that a spec ``package.module:factory`` goes to.
IMPORT_KIND = "import"


def register_oracle_kind(
    name: str, *, usage: str | None = None, takes_argument: bool = False
) -> Callable[[OracleBuilder], OracleBuilder]:
    """Decorator: register ``builder(arg, ctx) -> Oracle`` as the oracle kind ``name``.

    ``usage`` is how the spec is written in messages (default: the name); ``takes_argument``: whether the kind
    reads the text after ``name:`` (a kind that does not refuses one, so that a typo is not silently dropped).
    A name already registered raises DuplicateNameError.
    """

    def deco(build: OracleBuilder) -> OracleBuilder:
        ORACLES.register(name, OracleKind(name, build, usage=usage, takes_argument=takes_argument))
        return build

    return deco


def make_oracle(
    spec: str,
    labels: np.ndarray | None,
    n_classes: int,
    seed: int = 0,
    *,
    dataset: Dataset | None = None,
    oracle_dir: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Oracle:
    """Build an oracle from a CLI spec.

    ``ground-truth``; ``noisy:0.1`` (10% of answers wrong); ``csv`` (file hand-off in ``oracle_dir``, see
    :mod:`al.oracles.human`); ``prompt`` (a person at this terminal); ``package.module:factory`` where
    ``factory(labels=..., n_classes=...)`` returns an Oracle or a function ``ids -> labels``; or any kind
    registered with :func:`register_oracle_kind`. The human oracles need ``dataset`` to show the queried images.
    """
    kind_name, sep, arg = spec.partition(":")
    if sep and kind_name not in ORACLES:
        kind_name, arg = IMPORT_KIND, spec
    try:
        kind = ORACLES.get(kind_name)
    except UnknownNameError as e:
        usages = [ORACLES.get(n).usage for n in ORACLES.names() if n != IMPORT_KIND]
        raise OracleError(f"{e}; use {', '.join(usages)} or package.module:factory") from None
    if arg and not kind.takes_argument:
        raise OracleError(f"--oracle {kind.name} takes no argument, got {spec!r}; write --oracle {kind.name}")
    ctx = OracleContext(
        labels=labels,
        n_classes=n_classes,
        seed=seed,
        dataset=dataset,
        oracle_dir=oracle_dir,
        spec=spec,
        options=dict(options or {}),
    )
    return kind.build(arg, ctx)


# --- the built-in kinds ----------------------------------------------------------------------------------------
def _true_labels(kind: str, ctx: OracleContext) -> np.ndarray:
    """The pool's labels, every one known: a simulation answers every query from them."""
    y = ctx.labels
    missing = "the pool has no labels" if y is None else f"{int((~known_answers(y)).sum())} pool samples have no label"
    if y is None or not known_answers(y).all():
        raise OracleError(
            f"--oracle {kind} answers from the pool's true labels, but {missing}; label through --oracle csv (with "
            f"--oracle-dir) or prompt, or give a labelled pool (class folders, a label column with every cell filled)"
        )
    return y


@register_oracle_kind("ground-truth")
def _ground_truth(arg: str, ctx: OracleContext) -> Oracle:
    return GroundTruthOracle(_true_labels("ground-truth", ctx))


@register_oracle_kind("noisy", usage="noisy:<fraction>", takes_argument=True)
def _noisy(arg: str, ctx: OracleContext) -> Oracle:
    try:
        noise = float(arg)
    except ValueError:
        raise OracleError(f"--oracle noisy:<fraction> needs a number, got {arg!r} (e.g. noisy:0.1)") from None
    return NoisyOracle(_true_labels("noisy", ctx), noise, ctx.n_classes, ctx.seed)


def _dataset_for(kind: str, ctx: OracleContext) -> Dataset:
    if ctx.dataset is None:
        raise OracleError(f"--oracle {kind} shows the queried images, so it needs the dataset; pass dataset=")
    return ctx.dataset


def _oracle_dir_for(kind: str, ctx: OracleContext, what: str) -> str:
    """``--oracle-dir`` of a file hand-off kind; an OracleError saying what the folder is for when missing."""
    if not ctx.oracle_dir:
        raise OracleError(f"--oracle {kind} needs --oracle-dir DIR: the folder where {what}")
    return ctx.oracle_dir


@register_oracle_kind("csv")
def _csv(arg: str, ctx: OracleContext) -> Oracle:
    dataset = _dataset_for("csv", ctx)
    return CsvOracle(
        _oracle_dir_for("csv", ctx, "queries-round-N.csv is written and answers-round-N.csv is read"), dataset
    )


@register_oracle_kind("label-studio-files")
def _label_studio_files(arg: str, ctx: OracleContext) -> Oracle:
    from .label_studio_files import LabelStudioFilesOracle

    dataset = _dataset_for("label-studio-files", ctx)
    folder = _oracle_dir_for(
        "label-studio-files",
        ctx,
        "tasks-round-N.json and label-config.xml are written and Label Studio's JSON exports are read (from "
        "DIR/exports/)",
    )
    return LabelStudioFilesOracle(folder, dataset)


@register_oracle_kind("label-studio")
def _label_studio(arg: str, ctx: OracleContext) -> Oracle:
    from . import label_studio

    _dataset_for("label-studio", ctx)
    return label_studio.build(arg, ctx)


@register_oracle_kind("prompt")
def _prompt(arg: str, ctx: OracleContext) -> Oracle:
    return PromptOracle(_dataset_for("prompt", ctx))


@register_oracle_kind(IMPORT_KIND, usage="package.module:factory", takes_argument=True)
def _import(arg: str, ctx: OracleContext) -> Oracle:
    """``arg`` is ``package.module:factory``; ``factory(labels=..., n_classes=...)`` returns an Oracle, an
    object with ``label(ids)``, or a function ``ids -> labels`` (recorded under the name ``arg``)."""
    module, _, attr = arg.partition(":")
    try:
        if not module or not attr:
            raise ImportError(f"{arg!r} is not of the form package.module:factory")
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise OracleError(f"cannot import oracle {arg!r} ({e}); give it as package.module:function") from e
    made = factory(labels=ctx.labels, n_classes=ctx.n_classes)
    try:
        return as_oracle(made, name=arg)
    except OracleError:
        raise OracleError(
            f"oracle factory {arg!r} returned {type(made).__name__}; return an object with "
            f"label(ids) or a function ids -> labels"
        ) from None
