"""``--oracle label-studio-files`` (issue 14, part 2, without a live server): tasks out in Label Studio's import
format, answers in from its JSON export, through the CLI and the store. The export files are written here in the
shape Label Studio 1.x exports (tasks with ``annotations``, each with ``was_cancelled`` and a ``choices`` result)."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from al.bench import main
from al.store import Store

CLASSES = [str(i) for i in range(10)]
ARGS = ["--dataset", "digits", "--strategy", "margin", "--budget", "16", "--init-size", "8", "--query-size", "4"]
ARGS += ["--epochs", "1", "--min-steps", "5", "--no-progress", "--oracle", "label-studio-files"]


def annotation(aid: int, choice: str | None, cancelled: bool = False) -> dict:
    result = (
        []
        if choice is None
        else [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
    )
    return {"id": aid, "was_cancelled": cancelled, "result": result, "completed_by": 1}


def export(folder: Path, name: str, tasks: list[dict]) -> None:
    (folder / "exports").mkdir(exist_ok=True)
    (folder / "exports" / name).write_text(json.dumps(tasks))


def test_round_trip_through_label_studio_files(tmp_path, capsys):
    from al.data import load_dataset

    truth = load_dataset("digits").train_y.numpy()
    ls = tmp_path / "ls"
    args = ARGS + ["--oracle-dir", str(ls), "--store", f"sqlite:///{tmp_path / 'r.db'}"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "tasks-round-0.json" in err and "exports" in err
    config = ET.fromstring((ls / "label-config.xml").read_text())
    assert [c.get("value") for c in config.iter("Choice")] == CLASSES
    tasks = json.loads((ls / "tasks-round-0.json").read_text())
    assert len(tasks) == 8 and all(t["data"]["al_round"] == 0 for t in tasks)
    png = base64.b64decode(tasks[0]["data"]["image"].split(",", 1)[1])
    assert tasks[0]["data"]["image"].startswith("data:image/png;base64,") and png[:4] == b"\x89PNG"
    ids = [t["data"]["al_id"] for t in tasks]

    # Round 0 as Label Studio exports it: one skipped task (cancelled), one with two disagreeing annotations,
    # one deleted (absent), the rest answered; a task al did not make is ignored.
    out = []
    for k, sid in enumerate(ids):
        y = str(truth[sid])
        if k == 0:
            anns = [annotation(100, None, cancelled=True)]
        elif k == 1:
            anns = [annotation(101, y), annotation(102, str((truth[sid] + 1) % 10))]
        elif k == 2:
            continue
        else:
            anns = [annotation(103 + k, y)]
        out.append({"id": k + 1, "data": {**tasks[k]["data"]}, "annotations": anns})
    out.append({"id": 99, "data": {"image": "x"}, "annotations": [annotation(999, "3")]})
    export(ls, "project-1-at-2026-12-01.json", out)
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "annotations disagree" in err and "3 of 8 queried samples still await a label" in err
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    labels = store.labels("digits-margin-seed0")
    assert sorted(labels["sample_id"]) == sorted(ids[3:])
    assert (labels["label"].to_numpy() == truth[labels["sample_id"].to_numpy()]).all()
    assert (labels["oracle"] == "label-studio-files").all()

    # The person fixes the three in Label Studio and exports again (a second file: both are read); a later
    # annotation that contradicts a stored label is refused, the stored label stands.
    fixed = [
        {"id": 1, "data": tasks[0]["data"], "annotations": [annotation(200, str(truth[ids[0]]))]},
        {"id": 2, "data": tasks[1]["data"], "annotations": [annotation(101, str(truth[ids[1]]))]},
        {"id": 3, "data": tasks[2]["data"], "annotations": [annotation(201, str(truth[ids[2]]))]},
        {"id": 4, "data": tasks[3]["data"], "annotations": [annotation(202, str((truth[ids[3]] + 1) % 10))]},
    ]
    (ls / "exports" / "project-1-at-2026-12-01.json").unlink()
    export(ls, "project-1-later.json", fixed)
    assert main(args) == 3  # round 1 queried and awaiting
    err = capsys.readouterr().err
    assert "is stored (round 0); stored labels are final" in err and "tasks-round-1.json" in err
    labels = store.labels("digits-margin-seed0")
    assert len(labels) == 8 and (labels["label"].to_numpy() == truth[labels["sample_id"].to_numpy()]).all()
    r1 = json.loads((ls / "tasks-round-1.json").read_text())
    assert len(r1) == 4 and all("uncertainty" in t["data"] for t in r1)
    assert [t["data"]["uncertainty"] for t in r1] == sorted((t["data"]["uncertainty"] for t in r1), reverse=True)


def test_folder_pool_tasks_carry_the_file_and_its_path(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    photos = tmp_path / "photos"
    g = np.random.default_rng(0)
    for k in range(12):
        (photos / f"d{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 256, (12, 12), dtype=np.uint8)).save(photos / f"d{k % 2}" / f"{k}.png")
    ls = tmp_path / "ls"
    args = ["--pool", str(photos), "--classes", "cat,dog", "--pool-labels", "none", "--oracle", "label-studio-files"]
    args += ["--oracle-dir", str(ls), "--budget", "6", "--init-size", "4", "--query-size", "2", "--no-progress"]
    args += ["--store", f"sqlite:///{tmp_path / 'r.db'}", "--no-checkpoints", "--epochs", "1", "--min-steps", "2"]
    assert main(args) == 3, capsys.readouterr().err
    tasks = json.loads((ls / "tasks-round-0.json").read_text())
    t = tasks[0]["data"]
    assert base64.b64decode(t["image"].split(",", 1)[1]) == (photos / t["al_key"]).read_bytes()
    assert "cat" in (ls / "label-config.xml").read_text()


def test_bad_uses_are_one_line_errors(tmp_path, capsys):
    import pandas as pd

    assert main(ARGS + ["--store", f"sqlite:///{tmp_path / 'a.db'}"]) == 2
    err = capsys.readouterr().err
    assert "needs --oracle-dir DIR" in err and err.count("\n") == 1 and not (tmp_path / "a.db").exists()
    pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0.0, 1.0, 0.0, 1.0]}).to_csv(tmp_path / "t.csv", index=False)
    args = ["--pool", str(tmp_path / "t.csv"), "--classes", "a,b", "--oracle", "label-studio-files"]
    args += ["--oracle-dir", str(tmp_path / "ls"), "--budget", "3", "--store", f"sqlite:///{tmp_path / 'b.db'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds table rows" in err and "--oracle csv" in err and not (tmp_path / "b.db").exists()
