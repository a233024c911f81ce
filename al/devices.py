"""Which torch device a run uses: ``--device auto|cpu|cuda|cuda:N|mps``, checked once, with a fix in every error.

:func:`resolve_device` turns the user's words into a ``torch.device`` and refuses, with a one-line
:class:`~al.errors.ConfigError`, a device this machine does not have; :func:`to_device` moves a batch there,
asynchronously when the batch sits in pinned memory (a copy from pageable memory is synchronous anyway).
"""

from __future__ import annotations

import torch

from .errors import ConfigError

#: What ``--device`` accepts (``cuda:N`` picks the N-th CUDA device).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")

_FIX = "use --device cpu or --device auto"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def auto_device() -> torch.device:
    """CUDA when available, else MPS (Apple GPUs) when available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """The ``torch.device`` for ``spec`` (``None`` and ``"auto"``: :func:`auto_device`).

    ``"cuda"`` stays index-less (torch's current CUDA device); ``"cuda:N"`` must exist. A ConfigError names the
    problem and the fix for an unknown word, an unavailable backend or an index beyond the device count.
    """
    if spec is None:
        return auto_device()
    if isinstance(spec, torch.device):
        word = str(spec)
    elif isinstance(spec, str):
        word = spec.strip().lower()
    else:
        raise ConfigError(
            f"--device must be a string, one of {', '.join(DEVICE_CHOICES)}; got {type(spec).__name__} {spec!r}"
        )
    if word == "auto":
        return auto_device()
    if word == "cpu":
        return torch.device("cpu")
    if word == "mps":
        if not _mps_available():
            raise ConfigError(
                f"--device mps: MPS is not available on this machine (torch.backends.mps.is_available() is "
                f"False); {_FIX}"
            )
        return torch.device("mps")
    if word == "cuda" or word.startswith("cuda:"):
        index: int | None = None
        if word != "cuda":
            tail = word[len("cuda:") :]
            if not tail.isdigit():
                raise ConfigError(
                    f"--device {spec}: the CUDA device index must be a whole number >= 0, as in cuda:0; "
                    f"or use --device cuda (the current CUDA device) or --device auto"
                )
            index = int(tail)
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {word}: CUDA is not available on this machine (torch.cuda.is_available() is False); {_FIX}"
            )
        n = torch.cuda.device_count()
        if index is not None and index >= n:
            raise ConfigError(
                f"--device {word}: this machine has {n} CUDA device{'s' if n != 1 else ''} (cuda:0..cuda:{n - 1}); "
                f"pick one of those, or use --device cuda or --device auto"
            )
        return torch.device("cuda", index) if index is not None else torch.device("cuda")
    raise ConfigError(f"--device {spec!r} is not a device; use one of {', '.join(DEVICE_CHOICES)}")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` lives: the device of its first parameter (or buffer); the CPU for a model without any."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``: itself when already there, else a copy, ``non_blocking`` when ``x`` is pinned (the
    host may then fill the next batch while this one is copied; a pageable copy cannot overlap anyway)."""
    if x.device == device:
        return x
    return x.to(device, non_blocking=x.device.type == "cpu" and x.is_pinned())
