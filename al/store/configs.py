"""A run's stored configuration: one canonical text per config, and the diff a refusal shows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def canonical(config: Mapping[str, Any]) -> str:
    """The text stored and compared: sorted keys, no spaces, so equal configs give equal text."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def with_absent(stored: dict[str, Any], absent_means: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``stored`` with each setting of ``absent_means`` filled in where its sub-dict lacks it."""
    out = dict(stored)
    for key, added in absent_means.items():
        if isinstance(out.get(key), dict) and added:
            out[key] = {**added, **out[key]}
    return out


def same_config(stored_text: str, config: Mapping[str, Any], absent_means: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether a stored config (as text) is ``config``, counting settings added later at their old value."""
    text = canonical(config)
    return stored_text == text or canonical(with_absent(json.loads(stored_text), absent_means)) == text


def mismatch_message(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    diffs = [
        f"{k}: stored {old.get(k)!r}, now {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    return (
        f"run {name!r} already exists in the store with a different configuration ({'; '.join(diffs)}). "
        f"Pass --run-name to start a separate run, or repeat the original settings to continue it"
    )
