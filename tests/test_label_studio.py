"""``--oracle label-studio`` against a real Label Studio server (issue 14, part 2).

One server for the module (tests/ls_server.py: its own virtual environment, loopback, a free port, a throw-away
data folder; skipped with the reason when there is none). The tests run ``al.bench`` on a small folder pool and
annotate through Label Studio's API as a person would (choices, a skip, two annotators who disagree, a changed
answer, deleted tasks), then check what landed in Label Studio and what the store holds.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from al.bench import main
from al.store import Store
from tests.ls_server import LEGACY_TOKEN, REPO, LabelStudioUnavailable, free_port, start_server

pytestmark = [
    pytest.mark.label_studio,
    pytest.mark.slow,
    # The SDK's token refresh calls a pydantic v1 method (label-studio-sdk 2.1).
    pytest.mark.filterwarnings("ignore::DeprecationWarning:label_studio_sdk.*"),
]

CLASSES = ["cat", "dog", "fox"]
FAST = ["--model", "mlp", "--epochs", "1", "--min-steps", "5", "--no-progress", "--no-checkpoints"]


@pytest.fixture(scope="module")
def ls(tmp_path_factory, request):
    try:
        server = start_server(tmp_path_factory.mktemp("label-studio"))
    except LabelStudioUnavailable as e:
        pytest.skip(str(e))
    failed = request.session.testsfailed
    yield server
    server.stop()
    if request.session.testsfailed > failed:  # the server's side of a failure
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(f"\n--- label-studio log (last lines) ---\n{server.log_tail()}")


@pytest.fixture(scope="module")
def person(ls):
    """A person's client, with the legacy token."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=ls.url, api_key=LEGACY_TOKEN)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """15 PNGs (digits 0, 1, 2 as cat, dog, fox) in a flat folder; returns the folder and file name -> class."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("photos") / "photos"
    root.mkdir()
    d = load_digits()
    rng = np.random.default_rng(0)
    truth = {}
    for k in range(15):
        c = k % 3
        i = int(rng.choice(np.flatnonzero(d.target == c)))
        Image.fromarray((d.images[i] / 16 * 255).astype(np.uint8)).resize((12, 12)).save(root / f"img{k:02d}.png")
        truth[f"img{k:02d}.png"] = c
    return root, truth


def bench_args(photos: Path, url: str, db: Path, run: str, *extra: str) -> list[str]:
    args = ["--pool", str(photos), "--classes", ",".join(CLASSES), "--oracle", "label-studio"]
    args += ["--label-studio-url", url, "--budget", "9", "--init-size", "6", "--query-size", "3"]
    return args + ["--store", f"sqlite:///{db}", "--run-name", run, *FAST, *extra]


def project_of(person, run: str) -> int:
    (pid,) = [p.id for p in person.projects.list() if p.description == f"al run: {run}"]
    return int(pid)


def tasks_of(person, pid: int, round_idx: int | None = None) -> list:
    tasks = [t for t in person.tasks.list(project=pid, fields="all")]
    return [t for t in tasks if round_idx is None or t.data["al_round"] == round_idx]


def choose(person, task_id: int, name: str, from_name: str = "label", to_name: str = "image") -> int:
    result = [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [name]}}]
    return int(person.annotations.create(task_id, result=result).id)


def skip(person, task_id: int) -> None:
    """What Label Studio's Skip button records: a cancelled annotation without a result."""
    person.annotations.create(task_id, result=[], was_cancelled=True)


def one_line_error(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, err


def test_round_trip_through_a_live_label_studio(ls, person, photos, tmp_path, monkeypatch, capsys):
    root, truth = photos
    db = tmp_path / "r.db"
    args = bench_args(root, ls.url, db, "trip")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", LEGACY_TOKEN)
    assert main(args) == 3
    err = capsys.readouterr().err
    pid = project_of(person, "trip")
    assert f"imported 6 tasks of round 0 into project {pid}" in err and f"{ls.url}/projects/{pid}/data" in err
    config = person.projects.get(pid).label_config
    assert all(f'<Choice value="{c}"/>' in config for c in CLASSES) and '<Image name="image"' in config

    # What landed: the file itself, al's ids and the round's order; no prediction in round 0 (no model chose it).
    tasks = tasks_of(person, pid, 0)
    assert len(tasks) == 6
    for t in tasks:
        d = t.data
        assert base64.b64decode(d["image"].split(",", 1)[1]) == (root / d["al_key"]).read_bytes()
        assert (d["al_run"], d["al_round"]) == ("trip", 0) and isinstance(d["al_id"], int)
        assert not t.predictions
    assert sorted(t.data["al_rank"] for t in tasks) == list(range(6))
    store = Store(f"sqlite:///{db}")
    st = store.state("trip")
    assert {t.data["al_id"] for t in tasks} == set(store.queried(st.run_id, 0)["sample_id"])

    # The same command again imports nothing.
    assert main(args) == 3
    assert "imported" not in capsys.readouterr().err and len(tasks_of(person, pid, 0)) == 6

    # A person: skips A, two annotators disagree on B, C is deleted, D, E, F are answered.
    by_rank = sorted(tasks, key=lambda t: t.data["al_rank"])
    a, b, c, d, e, f = by_rank
    y = {t.id: CLASSES[truth[t.data["al_key"]]] for t in by_rank}
    wrong = {t.id: CLASSES[(truth[t.data["al_key"]] + 1) % 3] for t in by_rank}
    skip(person, a.id)
    choose(person, b.id, y[b.id])
    b_wrong = choose(person, b.id, wrong[b.id])
    person.tasks.delete(str(c.id))
    d_ann = choose(person, d.id, y[d.id])
    for t in (e, f):
        choose(person, t.id, y[t.id])
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "round 0: 3 of 6 queried samples still await a label" in err
    assert f"sample {b.data['al_id']}: its annotations disagree" in err
    assert f"sample {c.data['al_id']} ({c.data['al_key']}): its task in round 0 was deleted in Label Studio" in err
    labels = store.labels("trip")
    assert set(labels["sample_id"]) == {t.data["al_id"] for t in (d, e, f)}
    assert (labels["oracle"] == "label-studio").all()

    # B's wrong annotation is deleted, A is answered after all, and D's answer is changed: refused, D's stands.
    person.annotations.delete(b_wrong)
    choose(person, a.id, y[a.id])
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [wrong[d.id]]}}]
    person.annotations.update(d_ann, result=result)
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "round 0: 1 of 6 queried samples still await a label" in err
    assert f"sample {d.data['al_id']}: annotated {wrong[d.id]!r}, but its label {y[d.id]!r} is stored" in err

    # The deleted task comes back once every task of its round is gone: al imports the pending one again.
    for t in tasks_of(person, pid, 0):
        person.tasks.delete(str(t.id))
    assert main(args) == 3
    assert "imported 1 tasks of round 0" in capsys.readouterr().err
    (c2,) = tasks_of(person, pid, 0)
    assert c2.data["al_id"] == c.data["al_id"]
    choose(person, c2.id, y[c.id])

    # Round 0 complete: round 1's tasks carry the model's guess (its top class, score = its probability).
    assert main(args) == 3
    capsys.readouterr()
    st = store.state("trip")
    guesses = store.guesses(st.run_id, 1)
    query = store.queried(st.run_id, 1).set_index("sample_id")
    r1 = tasks_of(person, pid, 1)
    assert len(r1) == 3 and {t.data["al_id"] for t in r1} == set(guesses) == set(query.index)
    for t in r1:
        (p,) = t.predictions
        k, prob = guesses[t.data["al_id"]][0]
        assert p.result[0]["value"]["choices"] == [CLASSES[k]] and p.score == pytest.approx(prob)
        assert t.data["uncertainty"] == pytest.approx(query.loc[t.data["al_id"], "score"])

    # The last round with --label-studio-poll, as a person would run it: one task disagrees at first; al says so
    # while it waits, the person fixes it, and the run finishes without being started again.
    r1 = sorted(r1, key=lambda t: t.data["al_rank"])
    y1 = {t.id: CLASSES[truth[t.data["al_key"]]] for t in r1}
    choose(person, r1[0].id, y1[r1[0].id])
    choose(person, r1[1].id, y1[r1[1].id])
    bad = choose(person, r1[1].id, CLASSES[(CLASSES.index(y1[r1[1].id]) + 1) % 3])
    env = {**os.environ, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN}
    stdout = tmp_path / "stdout.txt"
    with open(stdout, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "al.bench", *args, "--label-studio-poll", "0.5"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("annotations disagree" in ln for ln in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.2)
        assert any(f"sample {r1[1].data['al_id']}: its annotations disagree" in ln for ln in lines), "".join(lines)
        assert proc.poll() is None  # still waiting for labels
        person.annotations.delete(bad)
        choose(person, r1[2].id, y1[r1[2].id])
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    assert proc.returncode == 0, "".join(lines)
    assert "run 'trip' finished" in stdout.read_text()
    st = store.state("trip")
    assert st.status == "finished" and len(st.labels) == 9
    keys = store.sample_keys(st.run_id)
    assert all(st.labels[i] == truth[keys[i]] for i in st.labels)


def test_tokens_projects_and_errors(ls, person, photos, tmp_path, monkeypatch, capsys):
    root, truth = photos
    db = tmp_path / "r.db"
    args = bench_args(root, ls.url, db, "tokens")
    # A personal access token (a JWT refresh token the SDK exchanges for access tokens).
    pat = ls.personal_access_token()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    assert main(args) == 3
    assert "imported 6 tasks of round 0" in capsys.readouterr().err
    pid = project_of(person, "tokens")
    store = Store(f"sqlite:///{db}")
    (t0,) = [t for t in tasks_of(person, pid, 0) if t.data["al_rank"] == 0]
    choose(person, t0.id, CLASSES[truth[t0.data["al_key"]]])
    assert main(args) == 3
    capsys.readouterr()
    before = store.state("tokens")
    query = store.queries("tokens")
    assert len(before.labels) == 1

    # A bad token, a tampered JWT, a server that is not there: one line naming the URL and the fix, exit 2,
    # nothing recorded lost.
    for token in ("not-a-token-at-all", pat[:-4] + ("AAAA" if not pat.endswith("AAAA") else "BBBB")):
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
        assert main(args) == 2
        one_line_error(
            capsys.readouterr().err, f"Label Studio at {ls.url} refused the API token", "LABEL_STUDIO_API_KEY"
        )
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert main([*args, "--label-studio-url", nowhere]) == 2  # the last --label-studio-url counts
    one_line_error(capsys.readouterr().err, f"cannot reach Label Studio at {nowhere}", "--label-studio-url")
    after = store.state("tokens")
    assert dict(after.labels) == dict(before.labels) and after.status == before.status
    pd.testing.assert_frame_equal(store.queries("tokens"), query)
    # ... and the same command with a good token goes on where it was, importing nothing again.
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "imported" not in err and "5 of 6 queried samples still await" in err
    assert len(tasks_of(person, pid, 0)) == 6

    # --label-studio-project: a project whose config does not fit is refused; one that does is used with its names.
    other = person.projects.create(title="wrong classes", label_config=_config(["cat", "dog"]))
    assert main(bench_args(root, ls.url, tmp_path / "w.db", "w", "--label-studio-project", str(other.id))) == 2
    one_line_error(capsys.readouterr().err, f"project {other.id} at {ls.url} does not fit this run", "cat, dog, fox")
    assert not (tmp_path / "w.db").exists()
    assert main(bench_args(root, ls.url, tmp_path / "m.db", "m", "--label-studio-project", "99999")) == 2
    one_line_error(capsys.readouterr().err, "has no project 99999")
    given = person.projects.create(title="my animals", label_config=_config(CLASSES, "animal", "photo", "img"))
    gargs = bench_args(root, ls.url, tmp_path / "g.db", "given", "--label-studio-project", str(given.id))
    assert main(gargs) == 3
    capsys.readouterr()
    tasks = tasks_of(person, int(given.id), 0)
    assert len(tasks) == 6 and all(t.data["img"].startswith("data:image/png;base64,") for t in tasks)
    for t in tasks:
        choose(person, t.id, CLASSES[truth[t.data["al_key"]]], "animal", "photo")
    assert main(gargs) == 3  # round 1 queried, its tasks in the same project
    capsys.readouterr()
    r1 = tasks_of(person, int(given.id), 1)
    assert len(r1) == 3 and all(t.predictions[0].result[0]["from_name"] == "animal" for t in r1)
    assert len(Store(f"sqlite:///{tmp_path / 'g.db'}").state("given").labels) == 6


def test_table_rows_are_labelled_as_text(ls, person, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"id": [f"r{k}" for k in range(12)], "x": rng.normal(size=12), "y": rng.normal(size=12)})
    table.to_csv(tmp_path / "t.csv", index=False)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", LEGACY_TOKEN)
    args = ["--pool", str(tmp_path / "t.csv"), "--id-column", "id", "--classes", "a,b", "--oracle", "label-studio"]
    args += ["--label-studio-url", ls.url, "--budget", "6", "--init-size", "4", "--query-size", "2"]
    args += ["--store", f"sqlite:///{tmp_path / 'r.db'}", "--run-name", "table", *FAST]
    assert main(args) == 3, capsys.readouterr().err
    pid = project_of(person, "table")
    assert '<Text name="text" value="$text"' in person.projects.get(pid).label_config
    tasks = tasks_of(person, pid, 0)
    assert len(tasks) == 4
    t = tasks[0]
    row = table.set_index("id").loc[t.data["al_key"]]
    assert t.data["text"].splitlines()[0] == t.data["al_key"] and f"x = {row['x']:g}" in t.data["text"]
    choose(person, t.id, "b", to_name="text")
    assert main(args) == 3
    assert Store(f"sqlite:///{tmp_path / 'r.db'}").labels("table")["label"].tolist() == [1]


def _config(classes, from_name="label", to_name="image", key="image") -> str:
    choices = "".join(f'<Choice value="{c}"/>' for c in classes)
    return (
        f'<View><Image name="{to_name}" value="${key}"/><Choices name="{from_name}" toName="{to_name}" '
        f'choice="single">{choices}</Choices></View>'
    )
