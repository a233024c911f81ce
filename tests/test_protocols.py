"""benchmarks/run_protocol.py: protocol files checked, jobs seed-major, runs resumable through the store."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from factories import failing_after

from al.errors import ConfigError, OracleError
from al.loop import Experiment, ExperimentConfig
from al.store import Store

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_protocol", ROOT / "benchmarks" / "run_protocol.py")
rp = importlib.util.module_from_spec(_spec)
sys.modules["run_protocol"] = rp  # dataclasses look their module up there
_spec.loader.exec_module(rp)

TINY = {
    "name": "tiny",
    "config": {
        "dataset": "digits",
        "budget": 60,
        "init_size": 20,
        "init_balanced": True,
        "query_size": 20,
        "epochs": 5,
        "min_steps": 30,
    },
    "runs": [{"strategy": "entropy", "seeds": [0, 1]}, {"strategy": "random", "seeds": [0]}],
}


@pytest.fixture
def proto_file(tmp_path: Path) -> Path:
    f = tmp_path / "tiny.json"
    f.write_text(json.dumps(TINY))
    return f


@pytest.mark.parametrize(
    "text,msg",
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        (json.dumps({"name": "x", "config": {}}), "no 'runs' field"),
        (json.dumps({"name": "x", "config": {"budgt": 3}, "runs": []}), "unknown config field(s) ['budgt']"),
    ],
)
def test_bad_protocol_files_are_named(tmp_path, text, msg):
    f = tmp_path / "p.json"
    if text is not None:
        f.write_text(text)
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        rp.load_protocol(f)


def test_shipped_protocols_load_and_name_their_jobs_seed_major():
    for f in sorted((ROOT / "benchmarks" / "protocols").glob("*.json")):
        proto = rp.load_protocol(f)
        jobs = rp.jobs_of(proto)
        assert len({j.name for j in jobs}) == len(jobs) == sum(len(r["seeds"]) for r in proto["runs"])
        ranks = [[r["strategy"] for r in proto["runs"]].index(j.strategy) for j in jobs]
        seeds_rank = [
            next(r["seeds"].index(j.seed) for r in proto["runs"] if r["strategy"] == j.strategy) for j in jobs
        ]
        assert seeds_rank == sorted(seeds_rank)  # every strategy's first seed before any second seed
        assert ranks[: len(proto["runs"])] == list(range(len(proto["runs"])))
    jobs = rp.jobs_of(TINY, strategies=["entropy"], seeds=[1])
    assert [j.name for j in jobs] == ["tiny-entropy-seed1"]


def test_runs_every_job_then_resumes_a_stopped_one_and_skips_finished(proto_file, tmp_path, capsys, digits):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    # A run of the protocol stopped after its first round (its oracle failed), as a killed session leaves it.
    cfg = ExperimentConfig(**TINY["config"], strategy="entropy", seed=1)
    with pytest.raises(OracleError, match="session ended"):
        Experiment(cfg, url, name="tiny-entropy-seed1", oracle=failing_after(digits.train_y, 1, "session ended")).run()
    assert Store(url).state("tiny-entropy-seed1").status == "stopped"

    assert rp.main([str(proto_file), "--store", url]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 jobs finished" in out
    runs = Store(url).runs().set_index("run")
    assert set(runs.index) == {"tiny-entropy-seed0", "tiny-entropy-seed1", "tiny-random-seed0"}
    assert (runs["status"] == "finished").all()
    curves = Store(url).curves()
    assert curves.groupby("run")["n_labelled"].apply(list).map(lambda v: v == [20, 40, 60]).all()
    # the resumed run equals one made in a single go
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    Experiment(cfg, fresh, name="tiny-entropy-seed1").run()
    a = Store(fresh).labels("tiny-entropy-seed1")
    b = Store(url).labels("tiny-entropy-seed1")
    assert a[["sample_id", "round_idx"]].equals(b[["sample_id", "round_idx"]])

    before = Store(url).curves()
    assert rp.main([str(proto_file), "--store", url]) == 0  # nothing left: no new rounds
    assert Store(url).curves().equals(before)
    assert rp.main([str(proto_file), "--store", url, "--list"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("finished") >= 3 and "tiny-random-seed0" in listed


def test_list_does_not_create_a_store_and_bad_flags_exit_2(proto_file, tmp_path, capsys):
    missing = tmp_path / "none.db"
    assert rp.main([str(proto_file), "--store", f"sqlite:///{missing}", "--list"]) == 0
    assert "not started" in capsys.readouterr().out and not missing.exists()
    assert rp.main([str(proto_file), "--store", f"sqlite:///{missing}", "--until", "8"]) == 2
    assert "--until takes a UTC time as HH:MM" in capsys.readouterr().err
    assert rp.main([str(tmp_path / "nope.json"), "--store", f"sqlite:///{missing}"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not missing.exists()


def test_list_reads_an_older_store_without_upgrading_it(proto_file, tmp_path, capsys):
    import hashlib

    from test_store import _write_v1_run

    path = tmp_path / "old.db"
    _write_v1_run(f"sqlite:///{path}")  # a schema-1 store with one run named "r"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert rp.main([str(proto_file), "--store", f"sqlite:///{path}", "--list"]) == 0
    assert "not started" in capsys.readouterr().out
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and not list(tmp_path.glob("*.bak"))
