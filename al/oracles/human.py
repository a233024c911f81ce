"""Oracles for a person: a CSV file hand-off and a terminal prompt.

``--oracle csv --oracle-dir DIR`` writes each round's query to ``DIR/queries-round-N.csv`` (columns
``id,rank,score,image``; every queried image saved as a PNG under ``DIR/images-round-N/``) and reads the
person's answers from ``DIR/answers-round-N.csv`` (columns ``id,label``, one row per answered sample, any
order, any number at a time). ``--oracle prompt`` shows each queried image in the terminal in grey-scale
block characters and asks for its label, one sample at a time.

Answer-file policy (why: a person's work must never be lost, and a wrong row must never be stored):

* The whole file is read and every row checked before anything is written; the valid rows for samples still
  awaiting a label are stored in one transaction, the refused rows are named by file and line with the reason.
* A refused row is never stored and never "fixed" for the person: it stays in the file (this code never
  writes to an answers file that exists) until the person corrects or deletes it; the run waits for it.
* Refused: a label outside the class set, NaN, an empty or non-integer value, an id that was not queried in
  this round, an id that was queried in an earlier round, an id given on more than one row (all its rows: we
  cannot know which one the person meant), a label for a sample already labelled differently (labels are
  final), and rows in an earlier round's answers file that the store does not hold.
* A row that repeats a label already stored (the person keeps adding to the same file, and the rows taken on
  an earlier run are still there) is expected and silently accepted.

Taking the valid rows, rather than refusing the whole file for one typo, is the choice that loses nothing: the
good answers are stored at once, and the bad ones are still in the file, named in the message, to be fixed.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from ..errors import OracleError
from .base import Answers, LabellingStopped, Oracle, RoundInfo

if TYPE_CHECKING:
    from ..pool import Pool as Dataset

#: Five grey levels, dark to light; two characters per pixel keep the image's aspect ratio in a terminal.
BLOCKS = " ░▒▓█"


def to_unit_image(dataset: Dataset, sample_id: int) -> np.ndarray:
    """Pixel values in [0, 1] of one pool sample: (H, W) for grey images, (H, W, 3) for colour ones."""
    x = dataset.preview(int(sample_id))  # (C, H, W)
    return x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0))


def png_bytes(img: np.ndarray, min_side: int = 112) -> bytes:
    """A [0, 1] image (H, W) or (H, W, 3) as PNG, enlarged by an integer factor (nearest neighbour) to at least
    ``min_side`` pixels so that an 8x8 or 28x28 sample is readable in any image viewer."""
    import matplotlib.image  # no pyplot: works headless, and matplotlib is already a dependency

    k = max(1, math.ceil(min_side / min(img.shape[:2])))
    big = np.clip(np.repeat(np.repeat(img, k, axis=0), k, axis=1), 0.0, 1.0)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, big, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return buf.getvalue()


def save_png(path: str | os.PathLike, img: np.ndarray, min_side: int = 112) -> None:
    """Save :func:`png_bytes` of ``img`` at ``path``."""
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(png_bytes(img, min_side))
    os.replace(tmp, path)  # a reader never sees half a file


def handoff_folder(oracle_dir: str | os.PathLike, *subfolders: str) -> Path:
    """``--oracle-dir`` of a file hand-off oracle, created (with ``subfolders``) and checked writable; an
    OracleError naming the fix otherwise."""
    folder = Path(oracle_dir).expanduser()
    try:
        for sub in subfolders or ("",):
            (folder / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OracleError(f"cannot create --oracle-dir {folder} ({e}); pass a writable folder") from e
    if not os.access(folder, os.W_OK):
        raise OracleError(f"--oracle-dir {folder} is not writable; pass a writable folder")
    return folder


def render_blocks(img: np.ndarray, max_side: int = 40) -> str:
    """Grey-scale block-character picture of a [0, 1] image (H, W) or (H, W, 3); images larger than
    ``max_side`` are shrunk by averaging blocks of pixels."""
    g = img.mean(axis=2) if img.ndim == 3 else img
    k = max(1, math.ceil(max(g.shape) / max_side))
    if k > 1:
        h, w = (g.shape[0] // k) * k, (g.shape[1] // k) * k
        g = g[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    idx = np.clip((g * len(BLOCKS)).astype(int), 0, len(BLOCKS) - 1)
    return "\n".join("".join(BLOCKS[i] * 2 for i in row) for row in idx)


_INT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: str.isdigit() also takes "²" and "٣"


def _parse_int(text: str) -> int | None:
    """``text`` as an integer ("3", " +3 ", "-1"), or None ("3.0", "1e0", "x", "", or over 4000 digits)."""
    t = text.strip()
    return int(t) if len(t) <= 4000 and _INT.fullmatch(t) else None


def _show(text: str, limit: int = 40) -> str:
    """A cell's text for a message: quoted, and cut short when long."""
    t = text.strip()
    return repr(t) if len(t) <= limit else repr(t[:limit]) + f"... ({len(t)} characters)"


#: Byte-order marks we read, longest first (a UTF-32-LE mark begins with the UTF-16-LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SAVE_AS = "save it as UTF-8 CSV (in a spreadsheet: 'CSV UTF-8') and run the same command again"


def decode_answers(data: bytes, name: str) -> str:
    """The text of an answers file: UTF-8 (with or without a BOM), or UTF-16/UTF-32 with a BOM. Anything else
    raises ValueError with a one-line message naming the file, the encoding problem and the fix."""
    enc = next((e for bom, e in _BOMS if data.startswith(bom)), None)
    if enc is None and b"\x00" in data:
        raise ValueError(
            f"{name} contains NUL bytes: it looks like UTF-16 or UTF-32 without a byte-order mark, which cannot "
            f"be read reliably; {_SAVE_AS}; nothing in this file was read"
        )
    try:
        return data.decode(enc or "utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start].decode(enc or "utf-8", errors="replace")
        line = 1 + len(re.findall(r"\r\n|\r|\n", before))
        byte = data[min(e.start, len(data) - 1)]
        raise ValueError(
            f"{name} line {line} is not {'UTF-8' if enc in (None, 'utf-8-sig') else enc.upper()} text (byte "
            f"0x{byte:02x}: {e.reason}; it was probably saved in another encoding, such as Windows-1252); "
            f"{_SAVE_AS}; nothing in this file was read"
        ) from e


class CsvOracle(Oracle):
    """File hand-off: queries out as CSV and PNGs, answers in as CSV. See the module docstring for the policy.

    Files in ``oracle_dir`` (one folder per run): ``queries-round-N.csv`` (rewritten from the store on each
    call), ``images-round-N/<id>.png`` (for a pool of files, the ``image`` column is the file's own path
    instead; for a table, the columns are ``id, rank, score, key`` and the row's values), and
    ``answers-round-N.csv``, created with just its header when missing and never written to by this code once
    it exists. A label is a class index or a class name (case-insensitive; a name wins where both could match).
    """

    name = "csv"

    def __init__(self, oracle_dir: str | os.PathLike, dataset: Dataset) -> None:
        self.dir = handoff_folder(oracle_dir)
        self.dataset = dataset
        self.info: RoundInfo | None = None

    def queries_path(self, round_idx: int) -> Path:
        return self.dir / f"queries-round-{round_idx}.csv"

    def answers_path(self, round_idx: int) -> Path:
        return self.dir / f"answers-round-{round_idx}.csv"

    def begin_round(self, info: RoundInfo) -> None:
        """Write the round's query file and images (idempotent), and an empty answers file if there is none."""
        self.info = info
        r = info.round_idx
        img_dir = self.dir / f"images-round-{r}"
        rows = []
        header = ["id", "rank", "score", "image"]
        for sid, rank, score in info.query[["sample_id", "rank", "score"]].itertuples(index=False):
            s = "" if score is None or (isinstance(score, float) and math.isnan(score)) else repr(float(score))
            row = self.dataset.row_of(int(sid))
            if row is not None:  # a table row: its key (the table's id) and its values, to label it by
                keys = self.dataset.keys
                header = ["id", "rank", "score", "key", *row]
                rows.append([int(sid), int(rank), s, keys[int(sid)] if keys else "", *(repr(v) for v in row.values())])
                continue
            original = self.dataset.path_of(int(sid))
            if original is not None:  # a pool of files: the person opens the file itself, at full resolution
                rows.append([int(sid), int(rank), s, str(original.resolve())])
                continue
            png = img_dir / f"{int(sid)}.png"
            if not png.exists():
                img_dir.mkdir(exist_ok=True)
                save_png(png, to_unit_image(self.dataset, int(sid)))
            rows.append([int(sid), int(rank), s, png.relative_to(self.dir).as_posix()])
        buf = io.StringIO(newline="")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        path = self.queries_path(r)
        # Rewritten only when missing or different: the person may have it open (a spreadsheet can lock it).
        if not path.exists() or path.read_text() != buf.getvalue():
            tmp = path.with_suffix(".csv.tmp")
            tmp.write_text(buf.getvalue())
            os.replace(tmp, path)
        ans = self.answers_path(r)
        if not ans.exists():
            with open(ans, "x", newline="") as f:  # "x": never truncate a file a person may have just created
                f.write("id,label\n")

    def how_to_answer(self, round_idx: int) -> str:
        return (
            f"add rows 'id,label' to {self.answers_path(round_idx)} (the queried samples and their images are "
            f"listed in {self.queries_path(round_idx)}), then run the same command again"
        )

    def label(self, ids: np.ndarray) -> Answers:
        """Valid answers for ``ids`` (the pending ids) from the current round's file; refused rows listed."""
        if self.info is None:
            raise OracleError(
                "CsvOracle.label was called before begin_round; the loop calls begin_round(info) "
                "first so that the oracle knows the round and its query"
            )
        info = self.info
        pending = {int(i) for i in ids}
        queried = {int(i) for i in info.query["sample_id"]}
        refused: list[str] = []
        rows = self._read(self.answers_path(info.round_idx), info.n_classes, refused, self._class_index())
        taken: dict[int, int] = {}
        for sid, (lines, labels) in rows.items():
            where = f"{self.answers_path(info.round_idx).name} line {', '.join(map(str, lines))}"
            if len(lines) > 1:
                refused.append(
                    f"{where}: id {sid} is given {len(lines)} times (labels "
                    f"{', '.join(map(str, labels))}); keep exactly one row per id"
                )
                continue
            y = labels[0]
            if sid in info.labels and info.labels[sid] != y:
                refused.append(f"{where}: {self._final(info, sid)}")
                continue
            if sid not in queried:
                if sid in info.label_round:
                    refused.append(
                        f"{where}: id {sid} was queried in round {info.label_round[sid]}, not in round "
                        f"{info.round_idx}; its label ({info.labels[sid]}) is already stored, so delete this row"
                    )
                else:
                    refused.append(
                        f"{where}: id {sid} was not queried in round {info.round_idx} (see "
                        f"{self.queries_path(info.round_idx).name})"
                    )
                continue
            # The same label again is a row taken on an earlier run (expected); only pending ids are taken.
            if sid in pending and sid not in info.labels:
                taken[sid] = y
        refused += self._check_earlier_files(info)
        return Answers(taken, refused)

    def _class_index(self) -> dict[str, int]:
        """Class names (lower case) -> index: an answer may name its class instead of giving its index."""
        return {str(c).strip().lower(): k for k, c in enumerate(self.dataset.classes)}

    @staticmethod
    def _read(
        path: Path, n_classes: int, refused: list[str], names: dict[str, int] | None = None
    ) -> dict[int, tuple[list[int], list[int]]]:
        """Parse an answers file: {id: ([line numbers], [labels])} of rows that are well formed; the malformed
        rows are appended to ``refused``. Blank lines and lines starting with '#' are skipped."""
        out: dict[int, tuple[list[int], list[int]]] = {}
        if not path.exists():
            return out
        try:
            text = decode_answers(path.read_bytes(), path.name)
        except OSError as e:
            refused.append(f"{path.name}: cannot be read ({e.strerror or e}); nothing in this file was read")
            return {}
        except ValueError as e:
            refused.append(str(e))
            return {}
        reader = csv.reader(io.StringIO(text, newline=""))  # newline="": \n, \r\n and \r all end a line
        header = None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                refused.append(
                    f"{path.name} line {reader.line_num}: not valid CSV ({e}); fix that line; nothing in this file "
                    f"was read"
                )
                return {}
            line = reader.line_num
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip().lower() for c in row]
                if "id" not in header or "label" not in header:
                    refused.append(
                        f"{path.name} line {line}: the first row must be the header 'id,label', "
                        f"found {_show(','.join(row), 80)}; nothing in this file was read"
                    )
                    return {}
                i_id, i_lab = header.index("id"), header.index("label")
                continue
            where = f"{path.name} line {line}"
            raw_id = row[i_id] if i_id < len(row) else ""
            raw_y = row[i_lab] if i_lab < len(row) else ""
            sid = _parse_int(raw_id)
            if not raw_id.strip():
                refused.append(f"{where}: empty id")
                continue
            if sid is None:
                refused.append(f"{where}: id {_show(raw_id)} is not an integer sample id")
                continue
            t = raw_y.strip()
            if not t:
                refused.append(f"{where}: id {sid} has an empty label")
                continue
            if t.lower() in ("nan", "+nan", "-nan"):
                refused.append(f"{where}: id {sid} has label NaN; give a class index 0..{n_classes - 1}")
                continue
            # A class's name first (a pool whose classes are "1", "2", "3" means the name "1", not index 1).
            y = (names or {}).get(t.lower())
            if y is None:
                y = _parse_int(t)
            if y is None:
                refused.append(
                    f"{where}: id {sid} has label {_show(t)}, which is neither a class name nor an integer class "
                    f"index 0..{n_classes - 1}"
                )
                continue
            if not 0 <= y < n_classes:
                shown = str(y) if len(t) <= 40 else _show(t)
                refused.append(f"{where}: id {sid} has label {shown}, outside the classes 0..{n_classes - 1}")
                continue
            lines, labels = out.setdefault(sid, ([], []))
            lines.append(line)
            labels.append(y)
        return out

    @staticmethod
    def _final(info: RoundInfo, sid: int) -> str:
        return (
            f"id {sid} is already labelled {info.labels[sid]} in round {info.label_round[sid]}; stored labels are "
            f"final, so fix or delete this row"
        )

    def _check_earlier_files(self, info: RoundInfo) -> list[str]:
        """Rows in answers files of closed rounds that disagree with the store: a changed label (stored labels
        are final), or an answer given too late or written into the wrong round's file. They are reported, never
        stored; a row that repeats a stored label is fine, whichever file it is in."""
        out: list[str] = []
        current = self.answers_path(info.round_idx).name
        queried_now = {int(i) for i in info.query["sample_id"]}
        for r in range(info.round_idx):
            path = self.answers_path(r)
            if not path.exists():
                continue
            problems: list[str] = []
            for sid, (lines, labels) in self._read(path, info.n_classes, problems, self._class_index()).items():
                if sid in info.labels:
                    wrong = [ln for ln, y in zip(lines, labels, strict=True) if y != info.labels[sid]]
                    if wrong:
                        out.append(f"{path.name} line {', '.join(map(str, wrong))}: {self._final(info, sid)}")
                    continue
                where = f"{path.name} line {', '.join(map(str, lines))}"
                if sid in queried_now:
                    out.append(
                        f"{where}: id {sid} is queried in round {info.round_idx}, not in round {r} (closed); move "
                        f"the row to {current}"
                    )
                else:
                    out.append(f"{where}: id {sid} was not queried in round {r}; delete this row")
            # malformed rows of closed rounds were already reported while those rounds were open, but a file that
            # cannot be read at all is named again: its rows cannot be checked
            out += [p for p in problems if "nothing in this file was read" in p]
        return out


class PromptOracle(Oracle):
    """A person at the terminal: each queried image drawn in block characters, its label typed in.

    Typing a class index (or a class name) answers; ``s`` skips the sample (it stays pending); ``q``, or the end
    of input, stops labelling; what was answered before is kept, because the loop stores every answer as it is
    given (``one_at_a_time``).
    """

    name = "prompt"
    one_at_a_time = True

    def __init__(self, dataset: Dataset, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        self.dataset = dataset
        self.stdin = stdin
        self.stdout = stdout
        self.info: RoundInfo | None = None
        self._names = {c.strip().lower(): k for k, c in enumerate(dataset.classes)} if dataset.classes else {}

    def begin_round(self, info: RoundInfo) -> None:
        self.info = info
        out = self.stdout or sys.stdout
        n_left = sum(1 for i in info.query["sample_id"] if int(i) not in info.labels)
        out.write(
            f"\nround {info.round_idx}: {n_left} of {len(info.query)} queried samples to label. "
            f"Type a class, s to skip, q to quit.\n"
        )
        if any(c != str(k) for k, c in enumerate(self.dataset.classes)):
            out.write("classes: " + ", ".join(f"{k}={c}" for k, c in enumerate(self.dataset.classes)) + "\n")
        out.flush()

    def _class_of(self, text: str, n_classes: int) -> int | None:
        y = _parse_int(text)
        if y is None:
            y = self._names.get(text.strip().lower())
        return y if y is not None and 0 <= y < n_classes else None

    def label(self, ids: np.ndarray) -> dict[int, int]:
        inp, out = self.stdin or sys.stdin, self.stdout or sys.stdout
        n_classes = self.info.n_classes if self.info is not None else self.dataset.n_classes
        answers: dict[int, int] = {}
        for sid in (int(i) for i in ids):
            row = self.dataset.row_of(sid)
            if row is not None:  # a table row: its key and values
                keys = self.dataset.keys
                key = keys[sid] if keys is not None else sid
                shown = ", ".join(f"{k}={v:g}" for k, v in row.items())
                out.write(f"\nsample {sid} ({key}): {shown}\n")
            else:
                path = self.dataset.path_of(sid)
                where = f" ({path})" if path is not None else ""
                out.write(f"\nsample {sid}{where}\n{render_blocks(to_unit_image(self.dataset, sid))}\n")
            while True:
                out.write(f"label for sample {sid} (0-{n_classes - 1}, s = skip, q = quit): ")
                out.flush()
                line = inp.readline()
                if line == "":  # end of input: stop as if the person typed q
                    out.write("\n")
                    raise LabellingStopped("end of input")
                text = line.strip()
                if text.lower() in ("q", "quit"):
                    raise LabellingStopped("quit")
                if text.lower() in ("s", "skip"):
                    break
                y = self._class_of(text, n_classes)
                if y is None:
                    out.write(
                        f"  {text!r} is not a class; type 0-{n_classes - 1}"
                        f"{' or a class name' if self._names else ''}, s or q\n"
                    )
                    continue
                answers[sid] = y
                break
        return answers
