"""``python -m al.export`` and ``python -m al.predict`` through real subprocesses, checkpoints and
``al.checkpoints.load_model``: the labels CSV against the store, the exported model against the checkpointed
network, every one-line error (exit 2, nothing written), and predictions on image files the test writes."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fast_config
from PIL import Image

from al.checkpoints import (
    ModelCard,
    check_writable,
    checkpoint_path,
    checkpoint_rounds,
    latest_round,
    load_model,
    save_checkpoint,
)
from al.errors import ConfigError
from al.export import main as export_main
from al.loop import Experiment
from al.models import build_model
from al.pool.images import ImageSpec
from al.predict import main as predict_main
from al.store import Store

ROOT = Path(__file__).resolve().parents[1]


def cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's al, not whichever is installed
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def in_process(main, *args: object, cwd: Path, monkeypatch, capsys) -> subprocess.CompletedProcess[str]:
    """``main(args)`` in this process with ``cwd`` as the current folder, as a CompletedProcess (argparse's exit
    included), so that the many error cases need no interpreter each."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["main", *map(str, args)], rc, out, err)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error:"), err
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits):
    """A real 3-round digits run, with a checkpoint saved for rounds 0 and 2 (the loop will save them itself)."""
    tmp = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{tmp / 'runs.db'}"
    exp = Experiment(fast_config(budget=60, init_size=20, query_size=20), url, dataset=digits)
    exp.run()
    nets = {}
    for r in (0, 2):
        torch.manual_seed(r)
        net = build_model("mlp", digits.n_classes, digits.input_shape).eval()
        card = ModelCard(
            "mlp",
            digits.n_classes,
            {"kind": "tensor", "shape": list(digits.input_shape)},
            classes=tuple(digits.classes),
            run=exp.name,
            n_labelled=20 * (r + 1),
        )
        save_checkpoint(tmp / "al-checkpoints" / exp.name, r, net, card)
        nets[r] = net
    return tmp, url, exp.name, nets


def test_checkpoint_folder_helpers(tmp_path):
    net = build_model("mlp", 3, (4,))
    card = ModelCard("mlp", 3, {"kind": "table", "columns": ["a", "b", "c", "d"], "mean": [0] * 4, "std": [1] * 4})
    assert latest_round(tmp_path / "none") is None
    p = save_checkpoint(tmp_path / "ck", 7, net, card)
    assert p == checkpoint_path(tmp_path / "ck", 7) and p.name == "round-007.pt"
    assert p.with_suffix(".json").is_file() and checkpoint_rounds(tmp_path / "ck") == [7]
    assert not [f for f in (tmp_path / "ck").iterdir() if f.name.startswith(".")]  # no temporary file left
    checkpoint_path(tmp_path / "ck", 9).write_bytes(b"")  # a .pt without its card does not count
    assert latest_round(tmp_path / "ck") == 7
    assert load_model(p).card.round_idx == 7


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_checkpoint_folder_is_a_one_line_config_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(
            ConfigError, match=r"checkpoint folder .* cannot be written \(PermissionError: .*--checkpoints"
        ):
            check_writable(ro / "run")
    finally:
        ro.chmod(0o700)


def test_checkpoint_folder_under_a_file_is_a_one_line_config_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"checkpoint folder .* cannot be written \((FileExists|NotADirectory)Error"):
        check_writable(tmp_path / "f" / "run")
    with pytest.raises(ConfigError, match="cannot be written"):
        save_checkpoint(
            tmp_path / "f", 0, build_model("mlp", 3, (4,)), ModelCard("mlp", 3, {"kind": "tensor", "shape": [4]})
        )


def test_export_labels_and_model(run, digits):
    tmp, url, name, nets = run
    res = cli("al.export", "--store", url, "--run", name, "--labels", "out/labels.csv", "--model", "out/m.pt", cwd=tmp)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((tmp / "out/labels.csv").open()))
    stored = Store(url).labels(name)
    assert len(rows) == len(stored) == 60
    assert list(rows[0]) == ["sample_id", "key", "label", "class_name", "round_idx", "oracle"]
    got = [(int(r["sample_id"]), int(r["label"]), int(r["round_idx"]), r["oracle"]) for r in rows]
    assert got == sorted(got, key=lambda t: (t[2], t[0]))
    assert sorted(got) == sorted(stored.itertuples(index=False, name=None))
    assert all(r["key"] == "" and r["class_name"] == r["label"] for r in rows)  # built-in digits: no keys, no names
    m = load_model(tmp / "out/m.pt")
    assert m.card.round_idx == 2 and m.card.run == name and m.card.classes == tuple(digits.classes)
    x = digits.test_x[:20]
    with torch.no_grad():
        want = torch.softmax(nets[2](x).double(), 1).numpy()
    np.testing.assert_allclose(m.predict_proba(x), want, rtol=1e-6)


def test_export_of_an_earlier_round(run, digits):
    tmp, url, name, nets = run
    res = cli("al.export", "--store", url, "--run", name, "--model", "r0.pt", "--round", "0", cwd=tmp)
    assert res.returncode == 0, res.stderr
    m = load_model(tmp / "r0.pt")
    with torch.no_grad():
        want = torch.softmax(nets[0](digits.test_x[:5]).double(), 1).numpy()
    np.testing.assert_allclose(m.predict_proba(digits.test_x[:5]), want, rtol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to export"),
        (["--run-x"], None),
        (["--run", "digits-entropy-seed1", "--labels", "x.csv"], "no run named 'digits-entropy-seed1'.*did you mean"),
        (["--model", "x.pt", "--round", "5"], "has no round 5; its rounds are 0-2 and those with a checkpoint 0, 2"),
        (["--model", "x.pt", "--round", "1"], "round 1 .* has no checkpoint .*rounds with one: 0, 2"),
        (["--model", "x.pt", "--checkpoints", "elsewhere"], "has no checkpoint in 'elsewhere/"),
        (["--labels", "{file}/x.csv"], "cannot be written"),
        (["--labels", "x.csv", "--model", "{file}/sub/x.pt"], "cannot be written"),
        (["--labels", "."], "is a folder"),
    ],
)
def test_export_errors_are_one_line_and_write_nothing(run, args, message, tmp_path, monkeypatch, capsys):
    tmp, url, name, _ = run
    a_file = tmp / "a-file"  # a path under a regular file cannot be written, even by root
    a_file.write_text("")
    full = ["--store", url]
    if "--run" not in args and "--run-x" not in args:
        full += ["--run", name]
    if "--checkpoints" not in args:
        full += ["--checkpoints", str(tmp / "al-checkpoints")]
    argv = [*full, *[a.format(file=a_file) for a in args]]
    res = in_process(export_main, *argv, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    if message is None:  # an unknown flag: argparse's own one line
        assert res.returncode == 2 and res.stderr.count("\n") == 1
        return
    err = one_line_error(res)
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_missing_store_is_a_one_line_error(tmp_path):
    res = cli(
        "al.export", "--store", f"sqlite:///{tmp_path / 'no.db'}", "--run", "x", "--labels", "l.csv", cwd=tmp_path
    )
    one_line_error(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture
def image_model(tmp_path) -> Path:
    spec = ImageSpec(1, (8, 8), (0.5,), (0.5,))
    torch.manual_seed(0)
    net = build_model("mlp", 3, spec.input_shape)
    card = ModelCard("mlp", 3, spec.to_json(), classes=("cat", "dog", "owl"), run="imgs", n_labelled=12)
    return save_checkpoint(tmp_path / "ck", 4, net, card)


def test_predict_image_files(tmp_path, image_model):
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 12, 3), dtype=np.uint8)).save(p)  # RGB, other size: converted
        files.append(p)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    res = cli("al.predict", "--model", image_model, *files, bad, cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3
    m = load_model(image_model)
    for line, f in zip(lines, files, strict=True):
        path, cls, conf = line.split("\t")
        p = m.predict_proba(m.card.image_spec().load(f)[None])[0]
        assert (
            path == str(f)
            and cls == m.card.classes[int(p.argmax())]
            and float(conf) == pytest.approx(p.max(), abs=1e-4)
        )
    assert "corrupt.png" in res.stderr and res.stderr.count("\n") == 1
    # the CSV holds every file, the corrupt one with its error
    res = cli("al.predict", "--model", image_model, *files, bad, "--output", "o/p.csv", cwd=tmp_path)
    assert res.returncode == 1
    rows = list(csv.DictReader((tmp_path / "o/p.csv").open()))
    assert [r["path"] for r in rows] == [str(f) for f in [*files, bad]]
    assert rows[-1]["error"].startswith("cannot read image") and rows[-1]["class"] == ""
    assert all(r["class"] in ("cat", "dog", "owl") and not r["error"] for r in rows[:3])


def test_predict_table_rows(tmp_path):
    card = ModelCard("mlp", 2, {"kind": "table", "columns": ["a", "b"], "mean": [1.0, 2.0], "std": [2.0, 4.0]})
    torch.manual_seed(0)
    net = build_model("mlp", 2, (2,))
    ck = save_checkpoint(tmp_path, 0, net, card)
    (tmp_path / "rows.csv").write_text("id,b,a,extra\nr1,2,1,x\nr2,,3,y\nr3,10,5,z\n")
    res = cli("al.predict", "--model", ck, "rows.csv", "--id-column", "id", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert [line.split("\t")[0] for line in res.stdout.splitlines()] == ["r1", "r3"]
    assert "r2: empty or non-numeric value in b" in res.stderr
    m = load_model(ck)
    want = m.predict_proba(torch.tensor([[0.0, 0.0]]))[0]
    assert float(res.stdout.splitlines()[0].split("\t")[2]) == pytest.approx(want.max(), abs=1e-4)


def test_predict_errors_are_one_line(tmp_path, image_model, monkeypatch, capsys):
    def predict(*args: object) -> subprocess.CompletedProcess[str]:
        return in_process(predict_main, *args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)

    (tmp_path / "a.png").write_bytes(b"")
    assert "does not exist" in one_line_error(predict("--model", tmp_path / "missing.pt", "a.png"))
    assert "no input files" in one_line_error(predict("--model", image_model))
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    assert "is not an al model" in one_line_error(predict("--model", junk, "a.png"))
    plain = tmp_path / "plain.pt"
    torch.save(build_model("mlp", 3, (1, 8, 8)).state_dict(), plain)  # a state dict without a card
    assert "holds no model card" in one_line_error(predict("--model", plain, "a.png"))
    assert "is a folder" in one_line_error(predict("--model", image_model, "a.png", "--output", "."))
    assert not (tmp_path / "o").exists()


def test_labels_of_a_keyed_run_name_files_and_classes(tmp_path, monkeypatch, capsys):
    """A run of a pool of files: each label's key (the file's path) and class name, from the store's sample keys
    and the run's stored classes (the run is recorded with the store's API, as the loop records a folder pool)."""
    url = f"sqlite:///{tmp_path / 'keyed.db'}"
    with Store(url) as st:
        rec = st.open_run("photos", {"dataset": "photos", "seed": 0, "classes": ["cat", "dog"]})
        st.record_sample_keys(rec.run.run_id, {i: f"{'cat' if i % 2 else 'dog'}/img{i}.png" for i in range(6)})
        st.record_query(rec.run.run_id, 0, np.array([4, 1, 2]), None)
        st.record_labels(rec.run.run_id, 0, {4: 1, 1: 0, 2: 1}, "human")
    res = in_process(
        export_main,
        "--store",
        url,
        "--run",
        "photos",
        "--labels",
        "l.csv",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert res.returncode == 0, res.stderr
    rows = [tuple(r.values()) for r in csv.DictReader((tmp_path / "l.csv").open())]
    assert rows == [
        ("1", "cat/img1.png", "0", "cat", "0", "human"),
        ("2", "dog/img2.png", "1", "dog", "0", "human"),
        ("4", "dog/img4.png", "1", "dog", "0", "human"),
    ]
