"""Fault injection for the crash tests: the process kills itself at a named point of a round."""

from __future__ import annotations

import os
import signal


def crash_point(point: str, round_idx: int | None = None) -> None:
    """SIGKILL this process at a named point when ``AL_CRASH_AT`` asks for it.

    ``AL_CRASH_AT=<point>`` or ``<point>:<round_idx>`` names where. Points: ``after-query``, ``after-labels``,
    ``after-train``, ``after-metrics`` (between transactions, in the loop) and ``in-query-commit``,
    ``in-labels-commit``, ``in-metrics-commit``, ``in-upgrade-commit`` (inside a transaction, its statements
    sent, before COMMIT). SIGKILL, not an exception, so that no ``finally`` or ``except`` runs: the process dies
    as under the OOM killer or a power cut. Unset (always, outside tests) it costs one environment lookup.
    """
    spec = os.environ.get("AL_CRASH_AT")
    if not spec:
        return
    name, _, r = spec.partition(":")
    if name == point and (not r or (round_idx is not None and int(r) == round_idx)):
        os.kill(os.getpid(), signal.SIGKILL)
