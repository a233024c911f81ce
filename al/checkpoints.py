"""Per-round model checkpoints and the models loaded back from them (``al.load_model``).

A checkpoint folder (by default ``al-checkpoints/<run name>/``) holds, per round ``r``, ``round-{r:03d}.pt`` (the
network's state dict, CPU tensors) and ``round-{r:03d}.json`` (its :class:`ModelCard`: what to build and how to
read inputs). Both are written to a temporary file first and moved into place (``os.replace``), so a crash leaves
either the old pair or the new one; a round counts only when both files exist.

An exported model (``python -m al.export --model model.pt``) is one file: ``{"al_model_card": card,
"state_dict": ...}``, so it travels alone. :func:`load_model` reads either, and a plain state dict of an exported
model is also a ``--weights`` file (its ``state_dict`` wrapper is unwrapped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .models import build_model, resolve_model, state_dict_mismatch
from .seeding import torch_rng_scope

#: Parent of the per-run checkpoint folders when ``--checkpoints`` is not given.
DEFAULT_CHECKPOINTS = "al-checkpoints"
#: Key of the card in an exported model file.
CARD_KEY = "al_model_card"
CARD_FORMAT = 1
_ROUND_FILE = re.compile(r"^round-(\d{3,})\.pt$")
INPUT_KINDS = ("image", "table", "tensor")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _al_version() -> str:
    # Read when a card is made, not at import: al/__init__ imports this module before it sets __version__.
    import al

    return str(getattr(al, "__version__", "unknown"))


@dataclass(frozen=True)
class ModelCard:
    """What a saved network is and how it reads inputs; JSON-able (:meth:`to_json` / :meth:`from_json`).

    model: the model name as ``--model`` takes it (``"cnn"``, ``"torchvision:resnet18"``, ``"pkg.mod:factory"``);
    the weights file it started from is not kept, the checkpoint holds the trained weights. input: an
    ``ImageSpec.to_json()`` (``kind: image``), ``{"kind": "table", "columns", "mean", "std"}`` or ``{"kind":
    "tensor", "shape"}`` (built-in datasets; a pool's ``input_card()`` gives it). classes: class names, index
    order (empty when the data has none: predictions then name classes by number).
    """

    model: str
    n_classes: int
    input: dict[str, Any]
    classes: tuple[str, ...] = ()
    freeze_backbone: bool = False
    run: str | None = None
    round_idx: int | None = None
    n_labelled: int | None = None
    created_at: str = field(default_factory=_now)
    al_version: str = field(default_factory=_al_version)
    format: int = CARD_FORMAT

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "input", dict(self.input))
        kind = self.input.get("kind")
        if kind not in INPUT_KINDS:
            raise ConfigError(f"model card: input kind must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")
        if self.n_classes < 1:
            raise ConfigError(f"model card: n_classes must be positive, got {self.n_classes}")
        if self.classes and len(self.classes) != self.n_classes:
            raise ConfigError(f"model card: {len(self.classes)} class names for {self.n_classes} classes")

    @property
    def input_kind(self) -> str:
        return str(self.input["kind"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The network's input shape for one sample."""
        if self.input_kind == "image":
            return self.image_spec().input_shape
        if self.input_kind == "table":
            return (len(self.input["columns"]),)
        return tuple(int(s) for s in self.input["shape"])

    def image_spec(self) -> Any:
        """The card's :class:`al.pool.images.ImageSpec` (image models only)."""
        from .pool.images import ImageSpec

        if self.input_kind != "image":
            raise ConfigError(f"this model reads {self.input_kind} inputs, not image files")
        return ImageSpec.from_json(self.input)

    def class_name(self, idx: int) -> str:
        return self.classes[idx] if self.classes else str(idx)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "model card") -> ModelCard:
        """A card from its JSON; ConfigError naming ``where`` for anything missing or malformed."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} is not a model card (a JSON object), got {type(d).__name__}")
        missing = [k for k in ("model", "n_classes", "input") if k not in d]
        if missing:
            raise ConfigError(f"{where} is not a model card: it lacks {', '.join(missing)}")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})  # keys of later versions are ignored
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
        except (TypeError, ValueError, KeyError) as e:
            raise ConfigError(f"{where} is not a valid model card ({type(e).__name__}: {e})") from e


# --- the checkpoint folder ------------------------------------------------------------------------------------
def run_checkpoint_folder(run_name: str, parent: str | os.PathLike[str] | None = None) -> Path:
    """``<parent>/<run name>/``, the parent defaulting to ``al-checkpoints`` in the current directory."""
    return Path(parent if parent is not None else DEFAULT_CHECKPOINTS) / run_name


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it; a one-line ConfigError otherwise.
    Meant to be called before a run starts, so a bad ``--checkpoints`` fails before any round is trained."""
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".al-write-check-"):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(
            f"checkpoint folder {str(p)!r} cannot be written ({type(e).__name__}: {reason}): pass --checkpoints DIR "
            f"with a writable folder"
        ) from e
    return p


def checkpoint_path(folder: str | os.PathLike[str], round_idx: int) -> Path:
    """The state-dict file of round ``round_idx`` (its card is the same name with ``.json``)."""
    return Path(folder) / f"round-{int(round_idx):03d}.pt"


def checkpoint_rounds(folder: str | os.PathLike[str]) -> list[int]:
    """Rounds with a complete checkpoint (both files) in ``folder``, ascending; [] for a missing folder."""
    p = Path(folder)
    if not p.is_dir():
        return []
    rounds = []
    for f in p.iterdir():
        m = _ROUND_FILE.match(f.name)
        if m and f.with_suffix(".json").is_file():
            rounds.append(int(m.group(1)))
    return sorted(rounds)


def latest_round(folder: str | os.PathLike[str]) -> int | None:
    """The last round with a complete checkpoint in ``folder``, or None."""
    rounds = checkpoint_rounds(folder)
    return rounds[-1] if rounds else None


def _atomic_write(path: Path, write: Any) -> None:
    """``write(file_object)`` into a temporary file next to ``path``, then move it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def save_checkpoint(folder: str | os.PathLike[str], round_idx: int, net: nn.Module, card: ModelCard) -> Path:
    """Write round ``round_idx``'s state dict and card into ``folder`` (created if needed); the ``.pt`` path.

    The card's ``round_idx`` is set to ``round_idx``. The ``.pt`` is written before the ``.json``: a round whose
    card is missing does not count (see :func:`checkpoint_rounds`) and is overwritten by the next save."""
    p = check_writable(folder)
    card = dataclasses.replace(card, round_idx=int(round_idx))
    pt = checkpoint_path(p, round_idx)
    state = _cpu_state(net)
    text = json.dumps(card.to_json(), indent=2).encode()
    try:
        _atomic_write(pt, lambda f: torch.save(state, f))
        _atomic_write(pt.with_suffix(".json"), lambda f: f.write(text))
    except OSError as e:
        raise ConfigError(
            f"checkpoint folder {str(p)!r} cannot be written ({type(e).__name__}: {e.strerror or e}): pass "
            f"--checkpoints DIR with a writable folder"
        ) from e
    return pt


def export_model(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> ModelCard:
    """Copy the checkpoint or exported model ``src`` to the single file ``dest`` (card embedded), atomically."""
    card, state = read_model_file(src)
    out = Path(dest)
    payload = {CARD_KEY: card.to_json(), "state_dict": state}
    _atomic_write(out, lambda f: torch.save(payload, f))
    return card


# --- loading --------------------------------------------------------------------------------------------------
def read_model_file(path: str | os.PathLike[str]) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """The card and state dict of a checkpoint (``round-NNN.pt`` + ``round-NNN.json``) or an exported model
    (card embedded). One-line ConfigErrors: a missing file, a file torch cannot read, no card."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model file {str(p)!r} does not exist; give a checkpoint or a file from python -m al.export")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip and runtime errors alike for a file that is not its own
        reason = " ".join(str(e).split())[:200]
        raise ConfigError(f"{str(p)!r} is not an al model: torch cannot read it ({type(e).__name__}: {reason})") from e
    if isinstance(obj, Mapping) and CARD_KEY in obj:
        card = ModelCard.from_json(obj[CARD_KEY], f"the model card in {str(p)!r}")
        state = obj.get("state_dict")
    else:
        side = p.with_suffix(".json")
        if not side.is_file():
            raise ConfigError(
                f"{str(p)!r} is not an al model: it holds no model card and there is no {side.name} next to it; "
                f"export one with python -m al.export --model"
            )
        try:
            card_json = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"model card {str(side)!r} cannot be read ({type(e).__name__}: {e})") from e
        card, state = ModelCard.from_json(card_json, f"model card {str(side)!r}"), obj
    if not (isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ConfigError(f"{str(p)!r} is not an al model: it holds no state dict of named tensors")
    return card, dict(state)


def build_network(card: ModelCard) -> nn.Module:
    """The card's network with fresh weights (seeded, so the caller's torch RNG is untouched)."""
    with torch_rng_scope(0):
        factory = resolve_model(card.model, freeze_backbone=card.freeze_backbone)
        if isinstance(factory, str):
            return build_model(factory, card.n_classes, card.input_shape)
        return factory(n_classes=card.n_classes, input_shape=card.input_shape)


@dataclass(frozen=True)
class Prediction:
    """One input's prediction; ``error`` says why a file or row could not be read (the other fields None)."""

    path: str
    class_idx: int | None
    class_name: str | None
    confidence: float | None
    error: str | None = None


class LoadedModel:
    """A trained network rebuilt from its card, in eval mode; see :func:`load_model`."""

    def __init__(self, card: ModelCard, net: nn.Module, path: Path | None = None) -> None:
        self.card = card
        self.network = net.eval()
        self.path = path

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Softmax probabilities ``(n, n_classes)`` float64 of inputs ``(n, *card.input_shape)``, already
        normalised as the card's input says (``predict_files`` and ``predict_table`` do that)."""
        t = (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))).float()
        if tuple(t.shape[1:]) != self.card.input_shape:
            raise ConfigError(
                f"the model takes inputs of shape {self.card.input_shape}, got {tuple(t.shape[1:])} per sample"
            )
        self.network.eval()
        out = [torch.softmax(self.network(t[i : i + batch_size]).double(), 1) for i in range(0, len(t), batch_size)]
        return torch.cat(out).numpy() if out else np.empty((0, self.card.n_classes))

    def _predictions(self, names: Sequence[str], x: torch.Tensor, batch_size: int) -> list[Prediction]:
        p = self.predict_proba(x, batch_size)
        idx = p.argmax(1) if len(p) else np.empty(0, dtype=np.int64)
        return [
            Prediction(n, int(i), self.card.class_name(int(i)), float(p[r, i]))
            for r, (n, i) in enumerate(zip(names, idx, strict=True))
        ]

    def predict_files(self, paths: Iterable[str | os.PathLike[str]], batch_size: int = 64) -> list[Prediction]:
        """One prediction per image file, in the order given; an unreadable file gets its error, not an
        exception. Files are decoded by the card's ImageSpec, as the pool read them when the model was trained."""
        spec = self.card.image_spec()
        files = [str(p) for p in paths]
        results: list[Prediction | None] = [None] * len(files)
        for start in range(0, len(files), batch_size):
            chunk, xs, where = files[start : start + batch_size], [], []
            for j, path in enumerate(chunk):
                try:
                    xs.append(spec.load(path))
                    where.append(start + j)
                except Exception as e:  # noqa: BLE001 - Pillow and the OS raise many kinds on a bad file
                    msg = " ".join(str(e).split()) or type(e).__name__
                    results[start + j] = Prediction(path, None, None, None, f"cannot read image: {msg}")
            if xs:
                preds = self._predictions([files[k] for k in where], torch.stack(xs), batch_size)
                for k, pred in zip(where, preds, strict=True):
                    results[k] = pred
        return [r for r in results if r is not None]

    def predict_table(self, df: Any, batch_size: int = 256, id_column: str | None = None) -> list[Prediction]:
        """One prediction per row of a DataFrame holding the card's feature columns (others ignored), normalised
        with the card's mean and std. ``path`` is the row's ``id_column`` value, or its index. A row with an
        empty or non-numeric feature gets an error; a missing column is a ConfigError."""
        import pandas as pd

        if self.card.input_kind != "table":
            raise ConfigError(f"this model reads {self.card.input_kind} inputs, not table rows")
        cols = [str(c) for c in self.card.input["columns"]]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ConfigError(
                f"the table lacks the model's feature columns {', '.join(map(repr, missing[:5]))}"
                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            )
        names = [str(v) for v in (df[id_column] if id_column else df.index)]
        values = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(values).all(1)
        mean = np.asarray(self.card.input["mean"], dtype=np.float64)
        std = np.asarray(self.card.input["std"], dtype=np.float64)
        x = torch.from_numpy(((values[ok] - mean) / std).astype(np.float32))
        good = iter(self._predictions([n for n, g in zip(names, ok, strict=True) if g], x, batch_size))
        out = []
        for n, row, g in zip(names, values, ok, strict=True):
            if g:
                out.append(next(good))
            else:
                bad = [c for c, v in zip(cols, row, strict=True) if not math.isfinite(v)]
                out.append(Prediction(n, None, None, None, f"empty or non-numeric value in {', '.join(bad[:5])}"))
        return out


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """The model of a checkpoint (``round-NNN.pt``, its card next to it) or of an exported file, rebuilt from
    its card (``resolve_model`` with no weights file, then the saved state dict), in eval mode.

    ``load_model("model.pt").predict_files(["a.png"])``; ConfigError with one line for anything unusable."""
    card, state = read_model_file(path)
    net = build_network(card)
    problem = state_dict_mismatch(net, state)
    if problem is not None:
        raise ConfigError(f"{str(path)!r} does not fit the model its card describes ({card.model!r}): {problem}")
    net.load_state_dict(state)
    return LoadedModel(card, net, Path(path))
