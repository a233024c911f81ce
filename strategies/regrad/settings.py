"""REGrad's settings, validated once, in the user's terms (:class:`REGradSettings`).

Every entry point (:func:`~strategies.regrad.regrad_scores`, :func:`~strategies.regrad.gradient_norms`, the
``REGrad`` / ``ExGrad`` strategies and so ``--strategy-kwargs``) builds one of these, so a bad value is refused by
the same check with the same message wherever it comes from.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from al.errors import ConfigError

ClassWeighting = Literal["root", "expected", "predicted", "uniform"]
Aggregate = Literal["mean-grad", "mean-norm"]
Combine = Literal["linear", "squared"]
Perturb = Literal["input", "params"]

CLASS_WEIGHTINGS = ("root", "expected", "predicted", "uniform")
AGGREGATES = ("mean-grad", "mean-norm")
COMBINES = ("linear", "squared")
PERTURBS = ("input", "params")

# Defaults, chosen by benchmarks/regrad_ood.py on MNIST vs Fashion-MNIST (see benchmarks/results/regrad_ood.md):
# the best Fashion AUROC was root / alpha -10 / M 4 / sigma 0.5 / mean-norm (0.9750); "predicted" / alpha -10 /
# M 0 reached 0.9699 with one backward pass instead of 50, and the rule takes the cheapest setting within 0.01.
# Negative alpha (shallow layers weigh more) is our finding on this CNN, not the paper's (deeper layers). sigma and
# aggregate are the best values for when perturbations are switched on (in normalised input units).
DEFAULT_CLASS_WEIGHTING: ClassWeighting = "predicted"
DEFAULT_LAYER_ALPHA = -10.0
DEFAULT_N_PERTURBATIONS = 0
DEFAULT_SIGMA = 0.5
DEFAULT_AGGREGATE: Aggregate = "mean-norm"
DEFAULT_COMBINE: Combine = "linear"
DEFAULT_PERTURB: Perturb = "input"
DEFAULT_BATCH_SIZE = 256


# --------------------------------------------------------------------------------------------------------------
# value checks shared by every setting (also used by GradNorm)
# --------------------------------------------------------------------------------------------------------------
def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def real(name: str, value: Any, *, minimum: float | None = None, strict: bool = False, hint: str = "") -> float:
    """``value`` as a finite float; refuses strings, booleans, NaN and infinities with the fix in the message."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise ConfigError(
            f"{name} must be a number{hint}, got {value!r} ({type(value).__name__}); "
            f"write it without quotes, e.g. {name}=0.5"
        )
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be a finite number{hint}, got {value!r}")
    if minimum is not None and (out <= minimum if strict else out < minimum):
        raise ConfigError(f"{name}{hint} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return out


def count(name: str, value: Any, *, minimum: int, what: str = "a whole number") -> int:
    """``value`` as an int >= ``minimum``; an integral float (``4.0`` from JSON) is accepted, 1.7 and True are not."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise ConfigError(
            f"{name} must be {what}, got {value!r} ({type(value).__name__}); write it without "
            f"quotes, e.g. {name}={max(minimum, 1)}"
        )
    if isinstance(value, numbers.Integral):
        out = int(value)
    else:
        f = float(value)
        if not (math.isfinite(f) and f.is_integer()):
            raise ConfigError(f"{name} must be {what}, got {value!r}; round it, e.g. {name}={max(minimum, 1)}")
        out = int(f)
    if out < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def choice(name: str, value: Any, choices: tuple[str, ...], hint: str = "") -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {choices}{hint}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------------------
# the settings
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class REGradSettings:
    """Every setting of the REGrad family; checked and normalised once, in ``__post_init__``.

    class_weighting: "root" (sqrt(p_k)/sum_j sqrt(p_j)), "expected" (p_k, ExGrad), "predicted" (argmax only),
    "uniform" (1/C). layer_alpha: layer weights softmax(alpha (l-1)/(L-1)), any finite number. n_perturbations (M):
    perturbed copies per sample, a whole number >= 0. sigma: noise std >= 0 (input units for ``perturb="input"``,
    relative to each parameter tensor's std for ``"params"``). aggregate: "mean-grad" averages the M+1 gradients
    before the norm, "mean-norm" their norms. combine: "linear" or "squared". top_k: None (every class) or a whole
    number >= 1. seed: a whole number >= 0, salted into every noise draw. batch_size: rows (copies included) per
    chunk, >= 1. last_layer_only: a bool. perturb: "input" or "params".

    Numbers become ``float``/``int`` (``layer_alpha=-10`` is stored as -10.0, ``n_perturbations=4.0`` as 4), so
    that the values a strategy reports in ``params()`` do not depend on how they were spelt.
    """

    class_weighting: ClassWeighting = DEFAULT_CLASS_WEIGHTING
    layer_alpha: float = DEFAULT_LAYER_ALPHA
    n_perturbations: int = DEFAULT_N_PERTURBATIONS
    sigma: float = DEFAULT_SIGMA
    aggregate: Aggregate = DEFAULT_AGGREGATE
    combine: Combine = DEFAULT_COMBINE
    top_k: int | None = None
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    last_layer_only: bool = False
    perturb: Perturb = DEFAULT_PERTURB

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)  # frozen: normalise in place, once

        choice("class_weighting", self.class_weighting, CLASS_WEIGHTINGS)
        choice("aggregate", self.aggregate, AGGREGATES)
        choice("combine", self.combine, COMBINES)
        choice("perturb", self.perturb, PERTURBS, " (noise on the inputs or on the trainable parameters)")
        put("layer_alpha", real("layer_alpha", self.layer_alpha))
        put("n_perturbations", count("n_perturbations", self.n_perturbations, minimum=0))
        unit = (
            " relative to each parameter tensor's std" if self.perturb == "params" else " in the normalised input space"
        )
        put("sigma", real("sigma", self.sigma, minimum=0.0, hint=f" (noise std{unit})"))
        if self.top_k is not None:
            put("top_k", count("top_k", self.top_k, minimum=1, what="None (all classes) or a whole number >= 1"))
        put("seed", count("seed", self.seed, minimum=0, what="a whole number >= 0 (the noise salt)"))
        put("batch_size", count("batch_size", self.batch_size, minimum=1))
        if not _is_bool(self.last_layer_only):
            raise ConfigError(f"last_layer_only must be true or false, got {self.last_layer_only!r}")
        put("last_layer_only", bool(self.last_layer_only))
        if self.perturb == "params" and self.aggregate == "mean-grad" and self.draws_noise:
            raise ConfigError(
                'perturb="params" supports aggregate="mean-norm" only (the average of the per-layer '
                'gradient norms over the perturbed models); use aggregate="mean-norm", or '
                'perturb="input" for "mean-grad"'
            )

    @property
    def draws_noise(self) -> bool:
        """True when perturbations are drawn at all (M > 0 and sigma > 0; with sigma = 0 every copy is the clean
        input or model, so the copies change nothing and are skipped)."""
        return self.n_perturbations > 0 and self.sigma > 0

    @property
    def effective_perturbations(self) -> int:
        """M as the engine uses it: 0 when no noise is drawn."""
        return self.n_perturbations if self.draws_noise else 0
