"""Issue 12 items 6 and 7 (part): python -m al.bench answers a fault with one line, the fix and the right exit code,
and loses nothing recorded: Ctrl-C (130, through a real subprocess), a model or oracle factory that raises, a model
whose input does not fit the data, an in-memory store (2); no flag is taken as an abbreviation of another."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from al.bench import main
from al.store import Store

ROOT = Path(__file__).resolve().parent.parent

DIGITS = [
    "--dataset",
    "digits",
    "--strategy",
    "entropy",
    "--budget",
    "40",
    "--init-size",
    "20",
    "--query-size",
    "10",
    "--epochs",
    "1",
    "--min-steps",
    "5",
    "--no-progress",
]

FACTORIES = """
from torch import nn


def broken_model(n_classes, input_shape):
    raise ValueError("no weights file\\nfound here")


def too_narrow(n_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(10, 10))  # digits have 64 features


def unflattened(n_classes, input_shape):
    return nn.Linear(8, n_classes)  # keeps the (N, 1, 8, ...) axes: logits of the wrong shape


def broken_oracle(labels, n_classes):
    raise RuntimeError("the labelling service is down")
"""


@pytest.fixture
def factories(tmp_path, monkeypatch) -> Path:
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "userfactories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(mod))
    return mod


def _one_line_exit_2(capsys, args: list[str], db: Path) -> str:
    assert main(DIGITS + ["--store", f"sqlite:///{db}"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert not db.exists()  # refused before the store was opened
    return err


def test_model_factory_that_raises_is_one_line_exit_2(tmp_path, capsys, factories):
    err = _one_line_exit_2(capsys, ["--model", "userfactories:broken_model"], tmp_path / "X.db")
    assert "model 'userfactories:broken_model' could not be built: ValueError: no weights file found here" in err
    assert "fix the factory" in err


def test_model_whose_input_does_not_fit_the_data_is_one_line_exit_2(tmp_path, capsys, factories):
    err = _one_line_exit_2(capsys, ["--model", "userfactories:too_narrow"], tmp_path / "X.db")
    assert (
        "model 'userfactories:too_narrow' cannot take the data: its input does not match the data's shape (1, 8, 8)"
        in err
    )
    assert "input_shape=(1, 8, 8)" in err
    err = _one_line_exit_2(capsys, ["--model", "userfactories:unflattened"], tmp_path / "X.db")
    assert "must output logits of shape (batch, n_classes) = (2, 10)" in err


def test_oracle_factory_that_raises_is_one_line_exit_2(tmp_path, capsys, factories):
    err = _one_line_exit_2(capsys, ["--oracle", "userfactories:broken_oracle"], tmp_path / "X.db")
    assert "--oracle 'userfactories:broken_oracle'" in err
    assert "the oracle factory raised RuntimeError: the labelling service is down" in err


def test_factory_errors_in_a_real_process_have_no_traceback(tmp_path, factories):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(factories), str(ROOT)])}
    for flag, name in (("--model", "broken_model"), ("--oracle", "broken_oracle")):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "al.bench",
                *DIGITS,
                "--store",
                f"sqlite:///{tmp_path / 'X.db'}",
                flag,
                f"userfactories:{name}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip().startswith("error:") and "\n" not in r.stderr.strip(), r.stderr[-2000:]
        assert not (tmp_path / "X.db").exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"])
def test_in_memory_store_refused_by_the_cli(tmp_path, capsys, url):
    assert main(DIGITS + ["--store", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "keeps the runs in memory" in err and "--store sqlite:///al-runs.db" in err
    Store("sqlite://").close()  # still allowed from Python (a scratch store in a session)


def test_no_flag_is_an_abbreviation_of_another(tmp_path, capsys):
    """--pool-sub must not be read as --pool-subset (nor --stor as --store) in any of the command-line tools."""
    with pytest.raises(SystemExit) as e:
        main(DIGITS + ["--store", f"sqlite:///{tmp_path / 'X.db'}", "--pool-sub", "5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --pool-sub 5" in err
    assert not (tmp_path / "X.db").exists()

    from al.report import main as report_main

    with pytest.raises(SystemExit) as e:
        report_main(["--stor", f"sqlite:///{tmp_path / 'X.db'}", "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    assert "--store" in capsys.readouterr().err  # required and not given: --stor was not taken for it

    spec = importlib.util.spec_from_file_location("run_protocol_abbrev", ROOT / "benchmarks" / "run_protocol.py")
    assert spec is not None and spec.loader is not None
    run_protocol = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run_protocol  # dataclasses look their module up there
    spec.loader.exec_module(run_protocol)
    with pytest.raises(SystemExit) as e:
        run_protocol.main(
            [str(ROOT / "benchmarks" / "protocols" / "mnist_default.json"), "--stor", "sqlite://", "--list"]
        )
    assert e.value.code == 2
    assert "unrecognized arguments: --stor" in capsys.readouterr().err


SLOW_ORACLE = """
import os
import pathlib
import time


def hangs_once(labels, n_classes):
    \"\"\"Ground truth, except that the third call (round 2) hangs the first time it is made, as a person who
    walks away from the terminal; it writes the marker file first, so the test knows when to press Ctrl-C.\"\"\"
    calls = {"n": 0}

    def label(ids):
        calls["n"] += 1
        marker = pathlib.Path(os.environ["AL_TEST_MARKER"])
        if calls["n"] == 3 and not marker.exists():
            marker.write_text("asked")
            time.sleep(300)
        return {int(i): int(labels[i]) for i in ids}

    return label
"""


def test_ctrl_c_exits_130_keeps_the_rounds_and_the_run_continues(tmp_path):
    """SIGINT to a real `python -m al.bench` mid-run (round 2's query is saved and its oracle is being asked):
    exit 130 with the message and no traceback, the store keeps every completed round and the saved query (status
    "stopped"), and the same command continues the run to the end with all of it unchanged."""
    (tmp_path / "slowmod.py").write_text(SLOW_ORACLE)
    marker = tmp_path / "asked"
    url = f"sqlite:///{tmp_path / 'X.db'}"
    cmd = [sys.executable, "-m", "al.bench", *DIGITS, "--budget", "50", "--oracle", "slowmod:hangs_once"]
    cmd += ["--store", url]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "AL_TEST_MARKER": str(marker)}
    # A shell without job control starts background commands with SIGINT ignored, and children inherit that (Python
    # then installs no KeyboardInterrupt handler): give the child the default disposition, as a terminal would.
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the oracle was never asked for round 2"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted; run the same command to continue"
    assert "Traceback" not in err
    s = Store(url)
    st = s.state("digits-entropy-seed0")
    assert st.status == "stopped" and st.last_round is not None
    assert (st.last_round.round_idx, st.last_round.state) == (2, "queried")
    query = s.queried(st.run_id, 2)
    kept = s.curves().drop(columns="status")
    assert kept["n_labelled"].tolist() == [20, 30]  # rounds 0 and 1 complete
    labels = dict(st.labels)

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    s = Store(url)
    after = s.curves().drop(columns="status")
    assert after["n_labelled"].tolist() == [20, 30, 40, 50]
    assert after.head(len(kept)).equals(kept)
    st = s.state("digits-entropy-seed0")
    assert st.status == "finished" and list(s.queried(st.run_id, 2)) == list(query)
    assert {i: y for i, y in st.labels.items() if i in labels} == labels
