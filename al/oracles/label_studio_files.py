"""``--oracle label-studio-files``: labelling in Label Studio without a live connection, through files.

The CSV hand-off's workflow in Label Studio's formats. In ``oracle_dir`` (one folder per run):

- ``label-config.xml``: the project's labelling configuration (an image and one single choice per class,
  the class names as the choices); paste it into the project's *Labeling Interface* once.
- ``tasks-round-N.json``: the round's queries as Label Studio tasks, to import. Each task's ``data`` holds the
  image (a data URI: the file's own bytes for a pool of files, an enlarged PNG for built-in datasets),
  ``al_id`` (the sample id), ``al_run``, ``al_round``, ``al_rank`` and ``uncertainty`` (the acquisition score, so
  that the Data Manager can sort by it), and ``al_key`` (the file's path) when there is one; from round 1 on, a
  ``prediction`` with the model's top class and ``score`` = its probability
  (:mod:`al.oracles.label_studio_format`).
- ``exports/``: put the project's JSON export here (Label Studio's *Export* -> *JSON*, any file name; several
  exports may lie there, each task's annotations are read from all of them).

Policy, the CSV oracle's: a cancelled (skipped) annotation is ignored; a task whose annotations choose different
classes is refused for that sample (reported with the choices; fix it in Label Studio and export again); an
answer that contradicts a stored label, names no class, or belongs to a sample not queried in this round is
refused and reported; a queried sample without a task in the export (deleted in Label Studio) stays pending. Only
valid answers for pending samples are returned, through the same validation as every oracle's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import OracleError
from .base import Answers, Oracle, RoundInfo
from .human import handoff_folder
from .label_studio_format import IMAGE_NAMES, answers_from_choices, labelling_config, read_choices, round_tasks

if TYPE_CHECKING:
    from ..pool import Pool


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

    def begin_round(self, info: RoundInfo) -> None:
        """Write the labelling config and the round's tasks (rewritten only when different)."""
        self.info = info
        config = labelling_config(self.dataset.classes)
        if not self.config_path.exists() or self.config_path.read_text(encoding="utf-8") != config:
            _atomic_write(self.config_path, config)
        text = json.dumps(round_tasks(info, self.dataset, IMAGE_NAMES), indent=1)
        path = self.tasks_path(info.round_idx)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            _atomic_write(path, text)

    def how_to_answer(self, round_idx: int) -> str:
        return (
            f"import {self.tasks_path(round_idx)} into a Label Studio project whose labelling interface is "
            f"{self.config_path}, annotate, export the project as JSON into {self.exports_dir}/, then run the same "
            f"command again"
        )

    def _exported_choices(self, run_name: str, refused: list[str]) -> dict[int, dict[Any, str]]:
        """{sample id: {annotation id: chosen class name}} over every export file; cancelled annotations left out."""
        out: dict[int, dict[Any, str]] = {}
        for f in sorted(self.exports_dir.glob("*.json")):
            try:
                tasks = json.loads(f.read_text(encoding="utf-8-sig"))
            except (OSError, ValueError) as e:
                refused.append(f"{f.name}: not a Label Studio JSON export ({type(e).__name__}: {e}); export again")
                continue
            read_choices(tasks, f.name, run_name, refused, out)
        return out

    def label(self, ids: np.ndarray) -> Answers:
        if self.info is None:
            raise OracleError("LabelStudioFilesOracle.label was called before begin_round")
        info = self.info
        refused: list[str] = []
        choices = self._exported_choices(info.run_name, refused)
        return answers_from_choices(choices, info, self.dataset.classes, ids, refused, "export again")
