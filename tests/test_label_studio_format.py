"""Label Studio's formats without a server (issue 14, part 2): the labelling config and the check that a project's
config fits the classes, a round's tasks with the model's prediction, the answer policy over JSON exports, and
the ``label-studio`` oracle's one-line errors that need no server (no URL, no token, nothing listening)."""

from __future__ import annotations

import base64
import json

import pandas as pd
import pytest

from al.bench import main
from al.errors import OracleError
from al.oracles import RoundInfo
from al.oracles import label_studio_format as fmt
from al.store import Store

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def digits():
    from al.data import load_dataset

    return load_dataset("digits")


def info(round_idx=1, ids=(5, 7, 9), labels=None, guesses=None, run="run-a"):
    query = pd.DataFrame(
        {"sample_id": list(ids), "rank": range(len(ids)), "score": [0.9, 0.5, float("nan")][: len(ids)]}
    )
    labels = labels or {}
    return RoundInfo(round_idx, query, labels, dict.fromkeys(labels, 0), 3, guesses=guesses or {}, run_name=run)


def annotation(aid, choice=None, cancelled=False, names=fmt.IMAGE_NAMES):
    result = [] if choice is None else [{"from_name": names.from_name, "to_name": names.to_name, "type": "choices"}]
    if choice is not None:
        result[0]["value"] = {"choices": choice if isinstance(choice, list) else [choice]}
    return {"id": aid, "was_cancelled": cancelled, "result": result}


def test_config_round_trip_and_what_does_not_fit():
    assert fmt.config_names(fmt.labelling_config(CLASSES), CLASSES, text=False) == fmt.IMAGE_NAMES
    assert fmt.config_names(fmt.labelling_config(CLASSES, fmt.TEXT_NAMES), CLASSES, text=True) == fmt.TEXT_NAMES
    # A person's own config: other names, choices in another order, an alias (what annotations record).
    own = (
        '<View><Header value="Which?"/><Image name="photo" value="$img"/><Choices name="animal" toName="photo">'
        '<Choice value="Fox" alias="fox"/><Choice value="cat"/><Choice value="dog"/></Choices></View>'
    )
    assert fmt.config_names(own, CLASSES, text=False) == fmt.ConfigNames("animal", "photo", "img", "Image")
    with pytest.raises(ValueError, match=r"exactly the classes cat, dog, fox .*its Choices: cat, dog\)"):
        fmt.config_names(fmt.labelling_config(["cat", "dog"]), CLASSES, text=False)
    with pytest.raises(ValueError, match="a table row as text"):
        fmt.config_names(fmt.labelling_config(CLASSES), CLASSES, text=True)
    with pytest.raises(ValueError, match="not XML"):
        fmt.config_names("<View><Image", CLASSES, text=False)


def test_round_tasks_carry_the_sample_its_place_and_the_models_guess(digits):
    guesses = {5: ((2, 0.75), (0, 0.2), (1, 0.05)), 7: ((0, 0.4), (1, 0.35), (2, 0.25))}
    tasks = fmt.round_tasks(
        info(guesses=guesses), digits, fmt.ConfigNames("animal", "photo", "img", "Image"), only=[5, 9, 7]
    )
    assert [t["data"]["al_id"] for t in tasks] == [5, 7, 9]  # rank order
    d = tasks[0]["data"]
    assert base64.b64decode(d["img"].split(",", 1)[1])[:4] == b"\x89PNG"
    assert (d["al_run"], d["al_round"], d["al_rank"], d["uncertainty"]) == ("run-a", 1, 0, 0.9)
    assert "uncertainty" not in tasks[2]["data"]  # no score (NaN): nothing to sort by
    (p,) = tasks[0]["predictions"]
    assert p["score"] == 0.75 and p["model_version"] == "al round 1"
    assert p["result"] == [{"from_name": "animal", "to_name": "photo", "type": "choices", "value": {"choices": ["2"]}}]
    assert "predictions" not in tasks[2]  # no guess recorded for it (round 0, or an old run)
    assert [t["data"]["al_id"] for t in fmt.round_tasks(info(), digits, fmt.IMAGE_NAMES, only=[9])] == [9]


def test_answer_policy():
    i = info(labels={9: 1})
    export = [
        {"id": 1, "data": {"al_id": 5, "al_run": "run-a"}, "annotations": [annotation(1, None, cancelled=True)]},
        {"id": 2, "data": {"al_id": 7, "al_run": "run-a"}, "annotations": [annotation(2, "cat"), annotation(3, "dog")]},
        {"id": 3, "data": {"al_id": 9, "al_run": "run-a"}, "annotations": [annotation(4, "fox")]},  # stored: dog
        {"id": 4, "data": {"al_id": 11, "al_run": "run-b"}, "annotations": [annotation(5, "cat")]},  # another run
        {"id": 5, "data": {"image": "x"}, "annotations": [annotation(6, "cat")]},  # not al's
        {"id": 6, "data": {"al_id": 12}, "annotations": [annotation(7, "cow"), annotation(8, ["cat", "dog"])]},
    ]
    refused: list[str] = []
    choices: dict = {}
    fmt.read_choices(export, "export.json", "run-a", refused, choices)
    assert choices == {7: {2: "cat", 3: "dog"}, 9: {4: "fox"}, 12: {7: "cow"}}
    assert refused == ["export.json: sample 12: one annotation chooses ['cat', 'dog']; choose one class"]
    answers = fmt.answers_from_choices(choices, i, CLASSES, [5, 7], refused, "export again")
    assert dict(answers) == {}
    text = " | ".join(answers.refused)
    assert "sample 7: its annotations disagree (cat, dog); keep one answer in Label Studio and export again" in text
    assert "sample 9: annotated 'fox', but its label 'dog' is stored (round 0); stored labels are final" in text
    assert "sample 12: 'cow' is not one of the classes" in text
    # The skipped sample is pending, with nothing to report; a later annotation that agrees is taken.
    ok = fmt.answers_from_choices({5: {9: "fox", 10: "fox"}, 9: {4: "dog"}}, i, CLASSES, [5, 7], [], "x")
    assert dict(ok) == {5: 2} and ok.refused == []
    refused = []
    fmt.read_choices({"tasks": []}, "bad.json", "run-a", refused, {})
    assert "not a Label Studio JSON export" in refused[0]


def test_label_studio_files_tasks_carry_the_prediction(tmp_path, capsys, digits):
    """The files oracle uses the same builder: round 1's tasks JSON holds the model's top guess, as recorded."""
    truth = digits.train_y.numpy()
    ls, db = tmp_path / "ls", tmp_path / "r.db"
    args = ["--dataset", "digits", "--strategy", "margin", "--budget", "12", "--init-size", "8", "--query-size", "4"]
    args += ["--epochs", "1", "--min-steps", "5", "--no-progress", "--oracle", "label-studio-files"]
    args += ["--oracle-dir", str(ls), "--store", f"sqlite:///{db}"]
    assert main(args) == 3
    r0 = json.loads((ls / "tasks-round-0.json").read_text())
    assert all("predictions" not in t for t in r0)
    out = [
        {"id": k, "data": t["data"], "annotations": [annotation(k, str(truth[t["data"]["al_id"]]))]}
        for k, t in enumerate(r0)
    ]
    (ls / "exports" / "e.json").write_text(json.dumps(out))
    assert main(args) == 3, capsys.readouterr().err
    r1 = json.loads((ls / "tasks-round-1.json").read_text())
    store = Store(f"sqlite:///{db}")
    st = store.state("digits-margin-seed0")
    guesses = store.guesses(st.run_id, 1)
    assert len(r1) == 4 and set(guesses) == {t["data"]["al_id"] for t in r1}
    for t in r1:
        (p,) = t["predictions"]
        k, prob = guesses[t["data"]["al_id"]][0]
        assert p["result"][0]["value"]["choices"] == [str(k)] and p["score"] == pytest.approx(prob)
        assert 0 < p["score"] <= 1


def test_live_oracle_errors_that_need_no_server(tmp_path, monkeypatch, digits):
    pytest.importorskip("label_studio_sdk")
    from al.oracles.label_studio import build
    from al.oracles.registry import OracleContext
    from tests.ls_server import free_port

    def ctx(**options):
        return OracleContext(labels=None, n_classes=10, dataset=digits, options=options)

    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(OracleError, match="needs --label-studio-url URL"):
        build("", ctx())
    with pytest.raises(OracleError, match="needs an API token for http://x:1: set LABEL_STUDIO_API_KEY"):
        build("", ctx(label_studio_url="http://x:1"))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "some-token")
    with pytest.raises(OracleError, match="not an http"):
        build("", ctx(label_studio_url="127.0.0.1:8080"))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(OracleError) as e:
        build("", ctx(label_studio_url=url))
    msg = str(e.value)
    assert "\n" not in msg and f"cannot reach Label Studio at {url}" in msg and "--label-studio-url" in msg
