"""Asking the oracle for one round's labels: the ``queried -> labelled`` step of a round.

A :class:`LabellingSession` tells the oracle the round is starting, asks it (one id per call for a
one-at-a-time oracle, each call bounded by the optional timeout), checks every answer, stores each batch as it
arrives and collects the rows the oracle refused. It returns a :class:`LabellingOutcome`; its
:meth:`~LabellingOutcome.conclude` raises LabelsPending while samples still await a label. The two are apart so
that the caller can mark a point between the last store write and that verdict (the crash tests do).
"""

from __future__ import annotations

import atexit
import ctypes
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import LabelsPending, OracleError, StoreError
from .oracles import Answers, LabellingStopped, Oracle, RefusedAnswersWarning, RoundInfo, validate_answers
from .oracles.base import _as_int, validate_targets
from .tasks import CLASSIFICATION, REGRESSION

if TYPE_CHECKING:
    from .store import RunState, Store

#: Refused rows named in one message at most; the rest are counted.
MAX_REFUSED_SHOWN = 50


@dataclass
class LabellingOutcome:
    """What one labelling attempt of round ``round_idx`` achieved.

    awaited: queried samples still without a label; refused: the rows the oracle refused (messages);
    stopped: the person quit; store_seconds: time spent in store writes; hint: how to answer the rest.
    """

    round_idx: int
    n_queried: int
    awaited: int
    refused: list[str] = field(default_factory=list)
    stopped: bool = False
    store_seconds: float = 0.0
    hint: str = ""

    def problems(self) -> str:
        """The refused rows as a message tail ("" when there are none)."""
        if not self.refused:
            return ""
        shown = self.refused[:MAX_REFUSED_SHOWN]
        return (
            f"\n{len(self.refused)} answer row(s) refused (nothing of them was stored):\n  "
            + "\n  ".join(shown)
            + ("\n  ..." if len(self.refused) > MAX_REFUSED_SHOWN else "")
        )

    def conclude(self) -> None:
        """Raise LabelsPending while any queried sample lacks a label; otherwise warn about refused rows
        (RefusedAnswersWarning: every sample has a label, so the run goes on, but the person should know)."""
        r = self.round_idx
        if self.awaited:
            raise LabelsPending(
                f"round {r}: {self.awaited} of {self.n_queried} queried samples still await a label"
                f"{' (labelling stopped by the user)' if self.stopped else ''}; {self.hint}"
                f"{self.problems()}",
                awaited=self.awaited,
            )
        if self.refused:
            warnings.warn(f"round {r} is fully labelled, but{self.problems()}", RefusedAnswersWarning, stacklevel=2)


class LabellingSession:
    """Asks ``oracle`` for the labels of one round at a time and stores them through ``store``.

    n_classes: the valid labels are 0..n_classes - 1. timeout: seconds to wait for one ``label`` call (per
    answer for a one-at-a-time oracle) before giving up with an OracleError; None waits for ever. task
    ``"regression"``: the answers are finite numbers (:func:`al.oracles.base.validate_targets`), stored as the
    run's targets (``Store.record_targets``).
    """

    def __init__(
        self,
        oracle: Oracle,
        store: Store,
        *,
        n_classes: int,
        timeout: float | None = None,
        task: str = CLASSIFICATION,
    ) -> None:
        self.oracle = oracle
        self.store = store
        self.n_classes = n_classes
        self.timeout = timeout
        self.task = task

    def label_round(self, st: RunState, r: int) -> LabellingOutcome:
        """Ask for round ``r``'s pending labels and store every valid answer. Raises OracleError when the oracle
        fails, hangs past the timeout or gives an invalid answer (the answers stored before are kept)."""
        oracle, name = self.oracle, self.oracle.name
        info = RoundInfo(
            r,
            self.store.queried(st.run_id, r),
            dict(st.labels),
            dict(st.label_round),
            self.n_classes,
            guesses=self.store.guesses(st.run_id, r),
            run_name=st.run.name,
        )
        # The round's queried ids without a label, in rank order: derived from the query just read and the state's
        # labels (what Store.pending would select again).
        pending = np.array([i for i in info.query["sample_id"].tolist() if i not in st.labels], dtype=np.int64)
        try:
            oracle.begin_round(info)
        except OracleError:
            raise
        except Exception as e:  # e.g. the hand-off folder became unwritable: a clear error, the query is kept
            raise OracleError(
                f"the oracle {name!r} could not prepare round {r} ({type(e).__name__}: {e}); the "
                f"query is saved, so fix the cause and run the same command again"
            ) from e
        # One-at-a-time oracles (a person at a terminal) get one id per call and each answer is stored at once.
        batches = [pending[k : k + 1] for k in range(len(pending))] if oracle.one_at_a_time else [pending]
        out = LabellingOutcome(r, info.n_queried, awaited=len(pending))
        for ids in batches:
            try:
                raw = self._ask(ids, r)
            except LabellingStopped:
                out.stopped = True
                break
            if isinstance(raw, Answers):
                out.refused += raw.refused
            answers = self._validated(raw, ids, st)
            # A single batch is written even when empty: the store then says how many still await (and closes
            # the round if none does); one-at-a-time skips write nothing.
            if answers or len(batches) == 1:
                t0 = time.perf_counter()
                record = self.store.record_targets if self.task == REGRESSION else self.store.record_labels
                out.awaited = record(st.run_id, r, answers, name)
                out.store_seconds += time.perf_counter() - t0
        if out.awaited:
            out.hint = oracle.how_to_answer(r)
        return out

    def _validated(self, raw: Mapping, ids: np.ndarray, st: RunState) -> dict[int, Any]:
        """The oracle's answers checked: class indices, or a regression task's numbers."""
        if self.task == REGRESSION:
            return validate_targets(raw, ids, st.targets, st.label_round)
        return validate_answers(raw, ids, self.n_classes, st.labels, st.label_round)

    def _ask(self, ids: np.ndarray, r: int) -> Mapping[int, int]:
        """``oracle.label(ids)``, bounded by the timeout when one is set; failures become OracleError."""
        name = self.oracle.name
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["answer"] = self.oracle.label(ids)
            except OracleCallAbandoned:
                raise
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
                box["error"] = e

        if self.timeout is None:
            call()
        else:
            # A thread, not a subprocess: the oracle may hold state (a file, a socket, a GUI) that a child process
            # would not share. Its late answer is dropped: nothing it returns after the timeout is recorded.
            t = _OracleThread(call, name=f"al-oracle-round-{r}")
            t.start()
            timed_out = False
            try:
                t.join(self.timeout)
            finally:  # also on Ctrl-C while waiting: no oracle call is left running behind the caller's back
                if t.is_alive():
                    timed_out = True
                    t.abandon()
            if timed_out:
                raise OracleError(
                    f"the oracle {name!r} gave no answer within {self.timeout:g}s on round {r}"
                    f"; the query is saved, so run the same command again (raise --oracle-timeout if "
                    f"the oracle is just slow)"
                )
        err = box.get("error")
        if isinstance(err, (LabellingStopped, KeyboardInterrupt)):
            raise err
        if err is not None:
            raise OracleError(
                f"the oracle {name!r} failed on round {r} ({type(err).__name__}: {err}); the query "
                f"is saved, so run the same command again to ask for its labels"
            ) from err
        return box["answer"]


@dataclass
class Submission:
    """What :func:`submit_answers` did with each answer.

    stored: the answers recorded now; repeated: answers equal to the label already stored (a double submission:
    nothing to do, not an error); refused: id -> the reason, in one line; pending: queried samples of the round
    still without a label after this submission.
    """

    stored: dict[int, int] = field(default_factory=dict)
    repeated: dict[int, int] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    pending: int = 0


def submit_answers(
    store: Store, run_name: str, round_idx: int, answers: Mapping[Any, Any], *, oracle: str, n_classes: int
) -> Submission:
    """Store answers given outside the loop (a person on the web page) for round ``round_idx`` of ``run_name``,
    each through the oracles' validation (:func:`al.oracles.validate_answers`) and ``Store.record_labels``.

    Answers are judged one by one: an answer equal to the stored label is ``repeated`` (idempotent); one for a
    round that is not the open one, a sample the round did not query, a label outside the classes, or a sample
    already labelled differently is ``refused`` with the reason ("the first stored answer stands"). Two writers
    answering the same sample at once: the store's UNIQUE label decides, and the later one is told the first's
    label.
    """
    st = store.state(run_name)
    out = Submission()
    last = st.last_round
    open_round = last.round_idx if last is not None and last.state == "queried" else None
    if open_round != round_idx:
        why = (
            f"round {round_idx} is closed; the open round is {open_round}"
            if open_round is not None
            else f"round {round_idx} is not waiting for labels (no round is open)"
        )
        for raw_id, raw_y in answers.items():
            i = _id_key(raw_id)
            stored = st.labels.get(i) if isinstance(i, int) else None
            # e.g. the round's last answer, sent twice: repeated, nothing to do
            if not _against_stored(
                out,
                i,
                raw_y,
                stored,
                f"id {i}: is already labelled {stored} in round {st.label_round.get(i)}; the first stored answer "
                f"stands ({why})",
            ):
                out.refused[i] = why
        out.pending = 0 if open_round is None else len(store.pending(st.run_id, open_round))
        return out
    queried = store.queried(st.run_id, round_idx)["sample_id"].tolist()
    for raw_id, raw_y in answers.items():
        i = _id_key(raw_id)
        stored = st.labels.get(i) if isinstance(i, int) else None
        if stored is not None and _same_label(raw_y, stored):
            out.repeated[i] = stored
            continue
        try:
            one = validate_answers({raw_id: raw_y}, queried, n_classes, st.labels, st.label_round)
        except OracleError as e:
            out.refused[i] = _reason(str(e))
            continue
        try:
            store.record_labels(st.run_id, round_idx, one, oracle)
        except StoreError:
            # Another writer got there first (or the round closed meanwhile): say what stands now.
            st = store.state(run_name)
            first = st.labels.get(i)
            if not _against_stored(
                out,
                i,
                raw_y,
                first,
                f"id {i}: was just labelled {first} by another answer; the first stored answer stands",
            ):
                out.refused[i] = f"id {i}: round {round_idx} closed while this answer was sent"
            continue
        out.stored.update(one)
        st = store.state(run_name)
    out.pending = len(store.pending(st.run_id, round_idx))
    return out


def _id_key(raw_id: Any) -> Any:
    """``raw_id`` as an int when it is one ("3" -> 3), else as it came (for the refusal's message)."""
    i = _as_int(raw_id)
    return raw_id if i is None else i


def _against_stored(out: Submission, i: Any, raw_y: Any, stored: int | None, refusal: str) -> bool:
    """Judge an answer for a sample that has a stored label: the same label is ``repeated`` (idempotent), another
    is refused with ``refusal`` (the first stored answer stands). False, recording nothing, when none is stored."""
    if stored is None:
        return False
    if _same_label(raw_y, stored):
        out.repeated[i] = stored
    else:
        out.refused[i] = refusal
    return True


def _same_label(raw_y: Any, stored: int) -> bool:
    return _as_int(raw_y) == stored


def _reason(message: str) -> str:
    """validate_answers' message for one answer, without its "1 invalid answer(s), nothing recorded: " head."""
    head, sep, rest = message.partition(": ")
    return rest if sep and "invalid answer" in head else message


class OracleCallAbandoned(BaseException):
    """Raised inside an oracle call that ran past its timeout, to end the thread it runs in (a BaseException, so
    that an oracle's own ``except Exception`` does not swallow it)."""


#: Seconds to wait for an abandoned oracle call to end: right after its timeout, and again at interpreter exit.
ABANDON_GRACE_S = 1.0
#: Timed-out oracle calls still running: stopped again, and waited for briefly, when the interpreter exits.
_ABANDONED: list[_OracleThread] = []


class _OracleThread(threading.Thread):
    """Runs one oracle call; :meth:`abandon` stops it once it has run past its timeout.

    Why stop it: a thread cannot be killed, and a daemon thread still running native code (a torch operation, say)
    when the interpreter shuts down is ended by Python's pthread_exit, whose unwinding through C++ frames aborts
    the process ("terminate called without an active exception": exit code 134 instead of the promised 1). The
    exception reaches the thread at its next Python bytecode, so a busy oracle stops at once; one blocked in a
    system call (a socket, a lock) stays blocked, which is harmless at exit.
    """

    def __init__(self, fn: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = fn
        self._lock = threading.Lock()
        self._finished = False

    def run(self) -> None:
        try:
            try:
                self._fn()
            finally:
                with self._lock:
                    self._finished = True
                # An exception sent just before _finished was set is delivered by now or cleared here, inside
                # this try, so it never escapes into the thread machinery as a stray traceback.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)
        except OracleCallAbandoned:
            pass

    def _send_stop(self) -> None:
        with self._lock:
            if not self._finished and self.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.ident), ctypes.py_object(OracleCallAbandoned)
                )

    def abandon(self) -> None:
        """Raise OracleCallAbandoned in the call and wait up to ABANDON_GRACE_S for it to end; if it does not,
        try again at interpreter exit."""
        self._send_stop()
        self.join(ABANDON_GRACE_S)
        if self.is_alive():
            if not _ABANDONED:
                atexit.register(_stop_abandoned)
            _ABANDONED.append(self)


def _stop_abandoned() -> None:
    """At interpreter exit: ask every abandoned oracle call to stop once more and give them a moment to end."""
    deadline = time.monotonic() + ABANDON_GRACE_S
    for t in _ABANDONED:
        while t.is_alive() and time.monotonic() < deadline:
            t._send_stop()  # again: the oracle may have caught the first one
            t.join(0.05)
