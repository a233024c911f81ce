"""Settings checked by their declared type and range, once, before anything runs.

One mechanism for every setting a user gives: the fields of :class:`~al.config.ExperimentConfig` (from Python or
the ``al.bench`` flags) and each strategy's constructor settings (``--strategy-kwargs``). A :class:`Setting`
declares what one value may be (a whole number, a finite number, true/false, text, one of some choices, a JSON
object; a minimum; whether None is allowed); :func:`check_settings` checks values against such declarations and
returns them normalised, so that what a run stores does not depend on how a value was spelt: ``4.0`` or
``np.int64(4)`` become ``4`` for a whole number, ``-10`` becomes ``-10.0`` for a number, ``np.bool_`` a bool.

A strategy declares ``settings_spec`` and calls :meth:`al.strategy.Strategy.checked_settings` in its constructor;
:func:`settings_of` names the owner (``strategy 'regrad': ...``) in any message raised inside it.

The messages are written in the user's terms: what the value must be, what was given, and an example of a value
that would be accepted. Booleans are never counts (``true`` is not 1), and NaN or an infinity is never a number
here: each would otherwise pass a ``<`` comparison unnoticed and change the run silently.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import ConfigError

Kind = Literal["int", "float", "bool", "str", "choice", "dict"]
KINDS: tuple[str, ...] = ("int", "float", "bool", "str", "choice", "dict")


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _example(name: str, example: Any) -> str:
    return f"e.g. {name}={example}"


def _how(name: str, value: Any, example: Any) -> str:
    if isinstance(value, str):
        return f"write it without quotes, {_example(name, example)}"
    return _example(name, example)


# --------------------------------------------------------------------------------------------------------------
# the value checks (also usable on their own, e.g. for a function's keyword arguments)
# --------------------------------------------------------------------------------------------------------------
def real(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    strict: bool = False,
    hint: str = "",
    too_small: str = "",
    example: Any = 0.5,
) -> float:
    """``value`` as a finite float; refuses strings, booleans, NaN and infinities with the fix in the message.

    minimum: the smallest value allowed (excluded too when ``strict``). too_small: the message's wording when the
    value is below it (default ``must be >= minimum``).
    """
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise ConfigError(
            f"{name} must be a number{hint}, got {value!r} ({type(value).__name__}); {_how(name, value, example)}"
        )
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be a finite number{hint}, got {value!r}")
    if minimum is not None and (out <= minimum if strict else out < minimum):
        rule = too_small or f"must be {'>' if strict else '>='} {minimum:g}"
        raise ConfigError(f"{name}{hint} {rule}, got {value!r}")
    return out


def count(
    name: str, value: Any, *, minimum: int, what: str = "a whole number", too_small: str = "", example: Any = None
) -> int:
    """``value`` as an int >= ``minimum``; an integral float (``4.0`` from JSON) is accepted, 1.7 and True are not."""
    example = max(minimum, 1) if example is None else example
    if _is_bool(value) or not isinstance(value, numbers.Real):
        how = _how(name, value, example)
        raise ConfigError(f"{name} must be {what}, got {value!r} ({type(value).__name__}); {how}")
    if isinstance(value, numbers.Integral):
        out = int(value)
    else:
        f = float(value)
        if not (math.isfinite(f) and f.is_integer()):
            raise ConfigError(f"{name} must be {what}, got {value!r}; round it, {_example(name, example)}")
        out = int(f)
    if out < minimum:
        raise ConfigError(f"{name} {too_small or f'must be >= {minimum}'}, got {value!r}")
    return out


def choice(name: str, value: Any, choices: tuple[str, ...], hint: str = "") -> str:
    """``value`` if it is one of ``choices`` (exactly, as text)."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {choices}{hint}, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool; 0, 1 and "true" are refused (a typo must not pass as a truth value)."""
    if not _is_bool(value):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def text(name: str, value: Any, *, example: Any = "name") -> str:
    """``value`` if it is a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty text, got {value!r} ({type(value).__name__}); e.g. {example}")
    return value


def json_object(name: str, value: Any) -> dict[str, Any]:
    """``value`` as a dict with text keys (what a JSON object parses to)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(
            f"{name} must be a JSON object of setting names to values, got {value!r}; e.g. '{{\"layer_alpha\": 2}}'"
        )
    return dict(value)


# --------------------------------------------------------------------------------------------------------------
# declarations
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """What one setting may be.

    kind: "int" (a whole number; an integral float such as 4.0 is accepted and becomes 4), "float" (a finite
    number), "bool", "str" (non-empty text), "choice" (one of ``choices``) or "dict" (a JSON object).
    minimum: smallest allowed value of an int or float (excluded too when ``strict``). optional: None is allowed
    (and kept as None). hint: words inserted after the name in messages (`` (noise std in input units)``).
    what: how a valid int is described when the type is wrong (default "a whole number"). too_small: wording of
    the range message (default ``must be >= minimum``). example: a valid value shown in messages. keep_int: a
    Python int given for a "float" stays an int (for values whose spelling is already recorded, such as
    ``ExperimentConfig.lr``: ``lr=1`` has always been stored as 1).
    """

    kind: Kind
    minimum: float | None = None
    strict: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    hint: str = ""
    what: str = ""
    too_small: str = ""
    example: Any = None
    keep_int: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TypeError(f"Setting kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise TypeError("a choice Setting needs its choices")

    def check(self, name: str, value: Any) -> Any:
        """``value`` checked and normalised; ConfigError naming ``name`` otherwise."""
        if value is None and self.optional:
            return None
        if self.kind == "int":
            minimum = int(self.minimum) if self.minimum is not None else -(2**63)
            what = self.what or ("a whole number (or None)" if self.optional else "a whole number")
            return count(name, value, minimum=minimum, what=what, too_small=self.too_small, example=self.example)
        if self.kind == "float":
            if self.keep_int and type(value) is int:
                real(name, value, minimum=self.minimum, strict=self.strict, hint=self.hint, too_small=self.too_small)
                return value
            return real(
                name,
                value,
                minimum=self.minimum,
                strict=self.strict,
                hint=self.hint,
                too_small=self.too_small,
                example=0.5 if self.example is None else self.example,
            )
        if self.kind == "bool":
            return flag(name, value)
        if self.kind == "choice":
            return choice(name, value, self.choices, self.hint)
        if self.kind == "dict":
            return json_object(name, value)
        return text(name, value, example=self.example or "name")


def check_settings(values: Mapping[str, Any], spec: Mapping[str, Setting], *, label: Any = None) -> dict[str, Any]:
    """Each value checked against its declaration in ``spec`` and normalised, in ``spec``'s order; values with no
    declaration pass unchanged. ``label(name)`` is the name messages use (default: the name itself)."""
    out = dict(values)
    for name, setting in spec.items():
        if name in values:
            out[name] = setting.check(label(name) if label is not None else name, values[name])
    return out


@contextmanager
def settings_of(owner: str) -> Iterator[None]:
    """Prefix ``owner: `` to a ConfigError raised inside (once: nested owners do not repeat it)."""
    try:
        yield
    except ConfigError as e:
        msg = str(e)
        if msg.startswith(f"{owner}: "):
            raise
        raise type(e)(f"{owner}: {msg}") from None
