"""The labelling desk: the state of the one run a web server labels, and every answer given on its page.

The desk holds no labelling state of its own that could be lost: the open round, its query, what is answered and
the model's guesses are read from the store on every request, and every answer goes to the store at once through
:func:`al.labelling.submit_answers` (the one validation path the CSV oracle's answers take as well). What it keeps
in memory is only what never changes once recorded: a round's queried ids (for the image check) and the PNGs of
its samples.

Card order: the query's rank order, which is the strategy's (rank 0 = most informative). Skipping a card (``s``)
happens on the page only; the sample stays pending in the store.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..labelling import submit_answers

if TYPE_CHECKING:
    from ..pool import Pool
    from ..store import RunState, Store

#: Keys the page keeps for itself: skip and undo.
RESERVED_KEYS = frozenset({"s", "u"})
#: PNGs kept in memory (a few rounds' worth of cards).
PNG_CACHE = 512
#: Smallest side of a card's image in pixels: an 8x8 digit is shown 28 times enlarged, pixel for pixel.
CARD_SIDE = 224


def class_keys(names: Sequence[str]) -> list[str | None]:
    """A keyboard shortcut per class (None: no key left; its button still works).

    Classes named by one character each (``0``..``9``, ``a``, ``b``...) are typed as themselves; otherwise up to
    10 classes get the digits 1-9 then 0 in order; more classes get the first free letter or digit of their name.
    ``s`` and ``u`` are never a class key (skip and undo)."""
    singles = [n.strip().lower() for n in names]
    if (
        all(len(n) == 1 and n.isalnum() for n in singles)
        and len(set(singles)) == len(singles)
        and not RESERVED_KEYS & set(singles)
    ):
        return list(singles)
    if len(names) <= 10:
        return list("1234567890"[: len(names)])
    taken: set[str] = set(RESERVED_KEYS)
    out: list[str | None] = []
    spare = "abcdefghijklmnopqrtvwxyz0123456789"
    for n in names:
        key = next((c for c in n.lower() if c.isascii() and c.isalnum() and c not in taken), None)
        if key is None:
            key = next((c for c in spare if c not in taken), None)
        if key is not None:
            taken.add(key)
        out.append(key)
    return out


def _finite(v: Any) -> float | None:
    """A float for JSON: None for missing, NaN and infinite values."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


class LabelDesk:
    """Labelling of run ``run_name`` in ``store``, whose pool is ``dataset``; answers are recorded as oracle
    ``oracle`` ("web"). ``n_classes`` defaults to the pool's. ``on_answer`` is called after each stored answer (the
    web oracle waits on it instead of its next look at the store)."""

    def __init__(
        self,
        store: Store,
        run_name: str,
        dataset: Pool,
        *,
        oracle: str = "web",
        n_classes: int | None = None,
        on_answer: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.run_name = run_name
        self.dataset = dataset
        self.oracle = oracle
        self.on_answer = on_answer
        self.n_classes = int(n_classes if n_classes is not None else dataset.n_classes)
        names = [str(c) for c in dataset.classes] if dataset.classes else [str(k) for k in range(self.n_classes)]
        names += [str(k) for k in range(len(names), self.n_classes)]
        self.class_names = names[: self.n_classes]
        keys = class_keys(self.class_names)
        self.classes = [
            {"index": k, "name": n, "key": key} for k, (n, key) in enumerate(zip(self.class_names, keys, strict=True))
        ]
        self._lock = threading.Lock()
        self._queried: dict[int, frozenset[int]] = {}  # round -> its queried ids (a query never changes)
        self._cards: dict[int, list[dict[str, Any]]] = {}  # round -> every card of its query
        self._pngs: OrderedDict[int, bytes] = OrderedDict()
        self._render = threading.Lock()  # one image rendered at a time: matplotlib and file reads are not shared

    # --- reading ------------------------------------------------------------------------------------------------
    def _state(self) -> RunState:
        return self.store.state(self.run_name)

    @staticmethod
    def open_round(st: RunState) -> int | None:
        """The round waiting for labels, or None."""
        last = st.last_round
        return last.round_idx if last is not None and last.state == "queried" else None

    def queried_ids(self, st: RunState, r: int) -> frozenset[int]:
        with self._lock:
            ids = self._queried.get(r)
        if ids is None:
            ids = frozenset(int(i) for i in self.store.queried(st.run_id, r)["sample_id"])
            with self._lock:
                self._queried[r] = ids
        return ids

    def progress(self, st: RunState, r: int | None) -> dict[str, int]:
        """``{answered, total}`` of round ``r`` (of the last round when None; zeros before any round)."""
        if r is None:
            last = st.last_round
            if last is None:
                return {"answered": 0, "total": 0}
            r = last.round_idx
        ids = self.queried_ids(st, r)
        return {"answered": sum(1 for i in ids if i in st.labels), "total": len(ids)}

    def view(self) -> dict[str, Any]:
        """What the labelling page shows (``GET /api/label``): the run, the round, its state, the classes, the
        round's progress and the pending cards in rank order (most informative first)."""
        st = self._state()
        r = self.open_round(st)
        last = st.last_round
        budget = st.config.get("budget")
        out: dict[str, Any] = {
            "run": st.name,
            "round": r if r is not None else (last.round_idx if last is not None else None),
            "state": "labelling",
            "message": "",
            "classes": self.classes,
            "labels": len(st.labels),
            "budget": budget,
            "progress": self.progress(st, r),
            "cards": [],
        }
        if st.status == "finished":
            out["state"] = "finished"
            out["message"] = f"run {st.name} finished with {len(st.labels)} labels; nothing left to label"
        elif r is not None:
            out["cards"] = self.cards(st, r)
            n = out["progress"]
            out["message"] = f"round {r}: {n['answered']} of {n['total']} answered"
        elif st.status in ("stopped", "failed"):
            out["state"] = "stopped"
            out["message"] = f"run {st.name} is {st.status}: {st.run.message or 'no reason recorded'}"
        else:
            out["state"] = "training"
            if last is None:
                out["message"] = "choosing the first round's samples"
            elif last.state == "labelled":
                out["message"] = f"round {last.round_idx} complete, training round {last.round_idx + 1}"
            else:
                out["message"] = f"round {last.round_idx} complete, choosing round {last.round_idx + 1}'s samples"
        return out

    def cards(self, st: RunState, r: int) -> list[dict[str, Any]]:
        """The pending samples of open round ``r`` as cards, in rank order."""
        return [c for c in self.round_cards(st, r) if c["sample_id"] not in st.labels]

    def round_cards(self, st: RunState, r: int) -> list[dict[str, Any]]:
        """Every queried sample of round ``r`` as a card, in rank order; built once per round (a query and its
        guesses never change once recorded), so that the page's refresh after each answer costs a state read."""
        with self._lock:
            hit = self._cards.get(r)
        if hit is not None:
            return hit
        q = self.store.queried(st.run_id, r)
        guesses = self.store.guesses(st.run_id, r)
        keys = self.dataset.keys
        out = []
        for sid, rank, score in q[["sample_id", "rank", "score"]].itertuples(index=False):
            sid = int(sid)
            row = self.dataset.row_of(sid)
            key = keys[sid] if keys is not None and 0 <= sid < len(keys) else None
            out.append(
                {
                    "sample_id": sid,
                    "rank": int(rank),
                    "score": _finite(score),
                    "guesses": [
                        {"label": int(y), "name": self._name(int(y)), "p": float(p)} for y, p in guesses.get(sid, ())
                    ],
                    "image": None if row is not None else f"/api/label/samples/{sid}.png",
                    "row": None if row is None else {str(k): _finite(v) for k, v in row.items()},
                    "key": key,
                }
            )
        with self._lock:
            self._cards = {k: v for k, v in self._cards.items() if k >= r - 1}  # this round and the one before
            self._cards[r] = out
        return out

    def _name(self, y: int) -> str:
        return self.class_names[y] if 0 <= y < len(self.class_names) else str(y)

    # --- images -------------------------------------------------------------------------------------------------
    def image(self, sample_id: int, st: RunState | None = None) -> bytes | None:
        """The PNG of ``sample_id`` when it was queried in the open round (answered or not) and is an image; None
        otherwise. Samples are addressed by id only: no path ever comes from a request. ``st``: the run's state
        if the caller has just read it."""
        st = st if st is not None else self._state()
        r = self.open_round(st)
        if r is None or sample_id not in self.queried_ids(st, r) or self.dataset.row_of(sample_id) is not None:
            return None
        with self._lock:
            png = self._pngs.get(sample_id)
            if png is not None:
                self._pngs.move_to_end(sample_id)
                return png
        from ..oracles.human import png_bytes, to_unit_image

        with self._render:
            img = to_unit_image(self.dataset, sample_id)
            png = png_bytes(img, min_side=CARD_SIDE)
        with self._lock:
            self._pngs[sample_id] = png
            while len(self._pngs) > PNG_CACHE:
                self._pngs.popitem(last=False)
        return png

    def warm(self, ids: Sequence[int]) -> None:
        """Render the PNGs of ``ids`` into the cache (the web oracle does it while it waits, so that the page's
        images come at once)."""
        st = self._state()
        for i in ids:
            try:
                self.image(int(i), st)
            except Exception:  # noqa: BLE001 - an unreadable file is reported when the page asks for it
                pass

    # --- writing ------------------------------------------------------------------------------------------------
    def answer(self, round_idx: int, sample_id: int, label: int) -> dict[str, Any]:
        """Store one answer (``POST /api/label/answers``): ``{status: stored|repeated|refused, reason, progress}``."""
        sub = submit_answers(
            self.store, self.run_name, round_idx, {sample_id: label}, oracle=self.oracle, n_classes=self.n_classes
        )
        if sample_id in sub.stored:
            status, reason = "stored", ""
            if self.on_answer is not None:
                self.on_answer()
        elif sample_id in sub.repeated:
            status, reason = (
                "repeated",
                f"sample {sample_id} already has this label ({self._name(sub.repeated[sample_id])})",
            )
        else:
            status = "refused"
            reason = next(iter(sub.refused.values()), f"sample {sample_id}: refused")
        if status == "refused":  # perhaps for a round that is not the open one: the open (or last) round's progress
            progress = self.progress(self._state(), None)
        else:  # the open round, whose pending samples submit_answers has just counted
            with self._lock:
                ids = self._queried.get(round_idx)
            total = len(ids) if ids is not None else len(self.queried_ids(self._state(), round_idx))
            progress = {"answered": total - sub.pending, "total": total}
        return {"status": status, "reason": reason, "progress": progress}

    def undo(self, round_idx: int, sample_id: int) -> dict[str, Any]:
        """Withdraw this oracle's answer for ``sample_id`` while round ``round_idx`` is open (``POST
        /api/label/undo``): ``{status: withdrawn|refused, reason, progress}``."""
        st = self._state()
        try:
            self.store.withdraw_label(st.run_id, round_idx, sample_id, self.oracle)
            status, reason = "withdrawn", ""
        except StoreError as e:
            status, reason = "refused", f"cannot undo: {e}"
        return {"status": status, "reason": reason, "progress": self.progress(self._state(), round_idx)}
