"""``--oracle label-studio-files``: labelling in Label Studio without a live connection, through files.

The CSV hand-off's workflow in Label Studio's formats. In ``oracle_dir`` (one folder per run):

- ``label-config.xml``: the project's labelling configuration (an image and one single choice per class,
  the class names as the choices); paste it into the project's *Labeling Interface* once.
- ``tasks-round-N.json``: the round's queries as Label Studio tasks, to import. Each task's ``data`` holds the
  image (a data URI: the file's own bytes for a pool of files, an enlarged PNG for built-in datasets),
  ``al_id`` (the sample id), ``al_round`` and ``uncertainty`` (the acquisition score, so that the Data Manager
  can sort by it), and ``al_key`` (the file's path) when there is one.
- ``exports/``: put the project's JSON export here (Label Studio's *Export* -> *JSON*, any file name; several
  exports may lie there, each task's annotations are read from all of them).

Policy, the CSV oracle's: a cancelled (skipped) annotation is ignored; a task whose annotations choose different
classes is refused for that sample (reported with the choices; fix it in Label Studio and export again); an
answer that contradicts a stored label, names no class, or belongs to a sample not queried in this round is
refused and reported; a queried sample without a task in the export (deleted in Label Studio) stays pending. Only
valid answers for pending samples are returned, through the same validation as every oracle's.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import numpy as np

from ..errors import OracleError
from .base import Answers, Oracle, RoundInfo
from .human import handoff_folder, png_bytes, to_unit_image

if TYPE_CHECKING:
    from ..pool import Pool


def labelling_config(classes: Iterable[str]) -> str:
    """Label Studio's labelling configuration for single-choice image classification into ``classes``."""
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    return (
        '<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
        '  <Choices name="label" toName="image" choice="single" showInline="true">\n'
        f"{choices}\n  </Choices>\n</View>\n"
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class LabelStudioFilesOracle(Oracle):
    """Tasks out and exports in, as files (see the module docstring)."""

    name = "label-studio-files"

    def __init__(self, oracle_dir: str | os.PathLike, dataset: Pool) -> None:
        if len(dataset.input_shape) != 3:
            raise OracleError(
                "--oracle label-studio-files shows images, but this pool holds table rows; label them with --oracle "
                "csv (its queries list each row's values)"
            )
        self.dir = handoff_folder(oracle_dir, "exports")
        self.dataset = dataset
        self.info: RoundInfo | None = None

    @property
    def config_path(self) -> Path:
        return self.dir / "label-config.xml"

    def tasks_path(self, round_idx: int) -> Path:
        return self.dir / f"tasks-round-{round_idx}.json"

    @property
    def exports_dir(self) -> Path:
        return self.dir / "exports"

    def _image(self, sid: int) -> str:
        path = self.dataset.path_of(sid)
        if path is not None:
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            data = path.read_bytes()
        else:
            mime, data = "image/png", png_bytes(to_unit_image(self.dataset, sid))
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def begin_round(self, info: RoundInfo) -> None:
        """Write the labelling config and the round's tasks (rewritten only when different)."""
        self.info = info
        config = labelling_config(self.dataset.classes)
        if not self.config_path.exists() or self.config_path.read_text(encoding="utf-8") != config:
            _atomic_write(self.config_path, config)
        keys = self.dataset.keys
        tasks = []
        for sid, rank, score in info.query[["sample_id", "rank", "score"]].itertuples(index=False):
            sid = int(sid)
            data: dict[str, Any] = {"image": self._image(sid), "al_id": sid, "al_round": info.round_idx}
            data["al_rank"] = int(rank)
            if score is not None and not (isinstance(score, float) and np.isnan(score)):
                data["uncertainty"] = float(score)
            if keys is not None and keys[sid] is not None:
                data["al_key"] = keys[sid]
            tasks.append({"data": data})
        text = json.dumps(tasks, indent=1)
        path = self.tasks_path(info.round_idx)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            _atomic_write(path, text)

    def how_to_answer(self, round_idx: int) -> str:
        return (
            f"import {self.tasks_path(round_idx)} into a Label Studio project whose labelling interface is "
            f"{self.config_path}, annotate, export the project as JSON into {self.exports_dir}/, then run the same "
            f"command again"
        )

    def _exported_choices(self, refused: list[str]) -> dict[int, dict[Any, str]]:
        """{sample id: {annotation id: chosen class name}} over every export file; cancelled annotations left out."""
        out: dict[int, dict[Any, str]] = {}
        for f in sorted(self.exports_dir.glob("*.json")):
            try:
                tasks = json.loads(f.read_text(encoding="utf-8-sig"))
            except (OSError, ValueError) as e:
                refused.append(f"{f.name}: not a Label Studio JSON export ({type(e).__name__}: {e}); export again")
                continue
            if not isinstance(tasks, list):
                refused.append(f"{f.name}: not a Label Studio JSON export (a list of tasks); export as JSON")
                continue
            for t in tasks:
                data = t.get("data", {}) if isinstance(t, dict) else {}
                sid = data.get("al_id")
                if not isinstance(sid, int):
                    continue  # a task al did not make
                for k, a in enumerate(t.get("annotations") or []):
                    if a.get("was_cancelled"):
                        continue
                    names = [
                        c
                        for r in a.get("result") or []
                        if r.get("type") == "choices"
                        for c in (r.get("value") or {}).get("choices") or []
                    ]
                    if not names:
                        continue  # an annotation without a choice (a draft): nothing to read
                    if len(names) > 1:
                        refused.append(f"{f.name}: sample {sid}: one annotation chooses {names}; choose one class")
                        continue
                    out.setdefault(sid, {})[a.get("id", (f.name, k))] = str(names[0])
        return out

    def label(self, ids: np.ndarray) -> Answers:
        if self.info is None:
            raise OracleError("LabelStudioFilesOracle.label was called before begin_round")
        info = self.info
        pending = {int(i) for i in ids}
        queried = {int(i) for i in info.query["sample_id"]}
        index = {str(c): k for k, c in enumerate(self.dataset.classes)}
        refused: list[str] = []
        taken: dict[int, int] = {}
        for sid, by_annotation in sorted(self._exported_choices(refused).items()):
            names = sorted(set(by_annotation.values()))
            if len(names) > 1:
                refused.append(
                    f"sample {sid}: its annotations disagree ({', '.join(names)}); keep one answer in Label Studio "
                    f"and export again"
                )
                continue
            name = names[0]
            if name not in index:
                refused.append(f"sample {sid}: {name!r} is not one of the classes {list(index)}")
                continue
            y = index[name]
            if sid in info.labels:
                if info.labels[sid] != y:
                    refused.append(
                        f"sample {sid}: annotated {name!r}, but its label {self.dataset.classes[info.labels[sid]]!r} "
                        f"is stored (round {info.label_round.get(sid)}); stored labels are final"
                    )
                continue
            if sid not in queried:
                refused.append(f"sample {sid}: was not queried in round {info.round_idx}")
                continue
            if sid in pending:
                taken[sid] = y
        return Answers(taken, refused)
