"""Oracle faults, human oracles (CSV hand-off, terminal prompt), every invalid answer, bad configuration.

Each test checks what is in the store afterwards: nothing lost, nothing wrong stored, and a later run finishes
the job with the same result as a run that never failed.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_config

from al import CsvOracle, PromptOracle  # the public names a user imports
from al.bench import main
from al.errors import LabelsPending, OracleError
from al.loop import Experiment
from al.oracles import CallbackOracle
from al.oracles.human import render_blocks
from al.store import SCHEMA_VERSION, Store
from al.strategy import Strategy, top_n

RUN = "digits-entropy-seed0"


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    """An uninterrupted ground-truth run of fast_config(): (labels DataFrame, curves DataFrame)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('ref') / 'ref.db'}"
    Experiment(fast_config(), url, dataset=digits).run()
    s = Store(url)
    return s.labels(RUN), s.curves()


def assert_same_as_reference(url: str, reference) -> None:
    labels, curves = reference
    s = Store(url)
    got = s.labels(RUN)
    assert got[["sample_id", "round_idx", "label"]].equals(labels[["sample_id", "round_idx", "label"]])
    c = s.curves()
    assert c["n_labelled"].tolist() == curves["n_labelled"].tolist()
    np.testing.assert_allclose(c["accuracy"], curves["accuracy"])


def truth(digits, i: int) -> int:
    return int(digits.train_y[int(i)])


# --- oracles that fail --------------------------------------------------------------------------------------------
def test_oracle_that_raises_keeps_the_query_and_a_later_run_finishes(digits, store_url, reference):
    def broken(ids):
        raise ConnectionError("labelling service unreachable")

    with pytest.raises(OracleError, match="labelling service unreachable.*run the same command again"):
        Experiment(fast_config(), store_url, dataset=digits, oracle=CallbackOracle(broken)).run()
    st = Store(store_url).state(RUN)
    assert st.status == "stopped" and "unreachable" in Store(store_url).runs()["message"].iloc[0]
    assert st.last_round.state == "queried" and st.labels == {}
    queried = Store(store_url).queries(RUN)[["sample_id", "rank"]]
    Experiment(fast_config(), store_url, dataset=digits).run()
    # the waiting query was asked again, not recomputed
    assert Store(store_url).queries(RUN).query("round_idx == 0")[["sample_id", "rank"]].equals(queried)
    assert_same_as_reference(store_url, reference)


def test_oracle_that_hangs_times_out(digits, store_url, reference):
    release = threading.Event()

    def hangs(ids):
        release.wait(60)  # a labelling service that never answers
        return [truth(digits, i) for i in ids]

    t0 = time.perf_counter()
    try:
        with pytest.raises(OracleError, match=r"no answer within 0.3s on round 0.*--oracle-timeout"):
            Experiment(fast_config(), store_url, dataset=digits, oracle=CallbackOracle(hangs), oracle_timeout=0.3).run()
        assert time.perf_counter() - t0 < 20
        st = Store(store_url).state(RUN)
        assert st.status == "stopped" and st.last_round.state == "queried" and st.labels == {}
    finally:
        release.set()  # the abandoned thread's late answer must not be stored
    time.sleep(0.1)
    assert Store(store_url).state(RUN).labels == {}
    Experiment(fast_config(), store_url, dataset=digits, oracle_timeout=30).run()
    assert_same_as_reference(store_url, reference)


def test_oracle_timeout_must_be_positive(digits, store_url):
    with pytest.raises(Exception, match="--oracle-timeout must be a positive"):
        Experiment(fast_config(), store_url, dataset=digits, oracle_timeout=0)


# --- an invalid answer from a programmatic oracle: refused whole, nothing recorded -------------------------------
@pytest.mark.parametrize(
    "bad,msg",
    [
        (lambda ids: {int(ids[0]): 10}, "is not a class in 0..9"),
        (lambda ids: {int(ids[0]): float("nan")}, "nan"),
        (lambda ids: {int(ids[0]): ""}, "label '' is not a class"),
        (lambda ids: {int(ids[0]): "three"}, "label 'three' is not a class"),
        (lambda ids: {99999: 1}, "id 99999: was not queried"),
    ],
)
def test_invalid_answer_from_an_oracle_records_nothing(digits, store_url, bad, msg):
    def oracle(ids):
        good = {int(i): truth(digits, i) for i in ids[1:]}
        return {**good, **bad(ids)}

    with pytest.raises(OracleError, match=msg):
        Experiment(fast_config(), store_url, dataset=digits, oracle=CallbackOracle(oracle)).run()
    st = Store(store_url).state(RUN)
    assert st.labels == {} and st.last_round.state == "queried"


def test_label_for_an_already_labelled_sample_is_refused(digits, store_url):
    calls = []

    def oracle(ids):
        calls.append(ids)
        if len(calls) == 1:
            return {int(i): truth(digits, i) for i in ids}
        return {**{int(i): truth(digits, i) for i in ids[1:]}, int(calls[0][0]): 0}  # relabel a round-0 sample

    with pytest.raises(OracleError, match=f"id {0}|was not queried|already labelled"):
        Experiment(fast_config(), store_url, dataset=digits, oracle=CallbackOracle(oracle)).run()
    st = Store(store_url).state(RUN)
    assert len(st.labels) == 20 and st.last_round.round_idx == 1 and st.last_round.state == "queried"
    assert st.labels[int(calls[0][0])] == truth(digits, calls[0][0])  # the stored label was not changed


# --- the CSV hand-off ----------------------------------------------------------------------------------------------
def csv_experiment(digits, url, folder):
    return Experiment(fast_config(oracle="csv"), url, dataset=digits, oracle_dir=str(folder))


def queried_ids(folder: Path, r: int) -> list[int]:
    lines = (folder / f"queries-round-{r}.csv").read_text().splitlines()
    assert lines[0] == "id,rank,score,image"
    return [int(line.split(",")[0]) for line in lines[1:]]


def append(folder: Path, r: int, rows: list[str]) -> None:
    with open(folder / f"answers-round-{r}.csv", "a") as f:
        f.write("".join(row + "\n" for row in rows))


def test_csv_handoff_in_pieces_equals_the_ground_truth_run(digits, tmp_path, reference):
    """A person answering each round's file in several sittings, in shuffled order, ends with exactly the run
    the ground-truth oracle makes; every partial sitting stops with the number still awaited."""
    url, folder = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "labels"
    rng = np.random.default_rng(0)
    sittings = 0
    while True:
        try:
            st = csv_experiment(digits, url, folder).run()
            break
        except LabelsPending as e:
            sittings += 1
            assert sittings < 30
            st = Store(url).state(RUN)
            r = st.last_round.round_idx
            todo = [i for i in queried_ids(folder, r) if i not in st.labels]
            assert e.awaited == len(todo) and f"{len(todo)} of 20 queried samples still await" in str(e)
            assert f"answers-round-{r}.csv" in str(e)
            # images exist for every queried id
            assert all((folder / f"images-round-{r}" / f"{i}.png").stat().st_size > 0 for i in queried_ids(folder, r))
            part = rng.permutation(todo)[: max(1, len(todo) // 2)]
            append(folder, r, [f"{i},{truth(digits, i)}" for i in part])
    assert st.status == "finished" and sittings >= 8  # 4 rounds, each answered in at least 2 sittings
    assert_same_as_reference(url, reference)
    assert set(Store(url).labels(RUN)["oracle"]) == {"csv"}


def start_round_0(digits, tmp_path) -> tuple[str, Path, list[int]]:
    url, folder = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "labels"
    with pytest.raises(LabelsPending, match="20 of 20"):
        csv_experiment(digits, url, folder).run()
    assert (folder / "answers-round-0.csv").read_text() == "id,label\n"
    return url, folder, queried_ids(folder, 0)


@pytest.mark.parametrize(
    "case", ["out-of-range", "nan", "empty", "non-numeric", "not-queried", "twice", "empty-id", "bad-header"]
)
def test_csv_invalid_row_refused_by_line_valid_rows_taken(digits, tmp_path, case):
    url, folder, ids = start_round_0(digits, tmp_path)
    good = [f"{i},{truth(digits, i)}" for i in ids[:5]]
    a, b = ids[5], ids[6]
    bad, msg = {
        "out-of-range": ([f"{a},10"], f"line 7: id {a} has label 10, outside the classes 0..9"),
        "nan": ([f"{a},NaN"], f"line 7: id {a} has label NaN"),
        "empty": ([f"{a},"], f"line 7: id {a} has an empty label"),
        "non-numeric": (
            [f"{a},seven"],
            f"line 7: id {a} has label 'seven', which is neither a class name nor an integer class index",
        ),
        "not-queried": (["99999,3"], "line 7: id 99999 was not queried in round 0"),
        "twice": ([f"{a},1", f"{b},{truth(digits, b)}", f"{a},2"], f"line 7, 9: id {a} is given 2 times"),
        "empty-id": ([",3"], "line 7: empty id"),
        "bad-header": (None, "line 1: the first row must be the header 'id,label'"),
    }[case]
    if bad is None:
        (folder / "answers-round-0.csv").write_text("sample,class\n" + "".join(g + "\n" for g in good))
    else:
        append(folder, 0, good + bad)
    before = (folder / "answers-round-0.csv").read_bytes()
    with pytest.raises(LabelsPending) as e:
        csv_experiment(digits, url, folder).run()
    assert msg in str(e.value) and "refused" in str(e.value)
    st = Store(url).state(RUN)
    expected = {} if case == "bad-header" else {i: truth(digits, i) for i in ids[:5]}
    if case == "twice":
        expected[b] = truth(digits, b)
    assert st.labels == expected  # the valid rows were stored, the invalid ones not
    assert (folder / "answers-round-0.csv").read_bytes() == before  # the person's file was not touched
    assert st.status == "waiting"


def test_csv_conflicting_relabel_and_earlier_round_answers_refused(digits, tmp_path):
    url, folder, ids0 = start_round_0(digits, tmp_path)
    append(folder, 0, [f"{i},{truth(digits, i)}" for i in ids0])
    with pytest.raises(LabelsPending):
        csv_experiment(digits, url, folder).run()  # round 0 complete, round 1 queried and waiting
    ids1 = queried_ids(folder, 1)
    late = next(i for i in ids1[1:])  # a round-1 sample answered in round 0's file (the wrong file)
    append(folder, 0, [f"{ids0[0]},{(truth(digits, ids0[0]) + 1) % 10}", f"{late},{truth(digits, late)}"])
    append(
        folder,
        1,
        [
            f"{ids1[0]},{truth(digits, ids1[0])}",
            f"{ids0[1]},{(truth(digits, ids0[1]) + 1) % 10}",  # relabels a round-0 sample
            f"{ids0[2]},{truth(digits, ids0[2])}",
        ],
    )  # a round-0 sample in round 1's file
    with pytest.raises(LabelsPending) as e:
        csv_experiment(digits, url, folder).run()
    msg = str(e.value)
    assert "19 of 20" in msg
    # a changed label says what happened (issue 12 item 7), in the open round's file and in a closed one's
    y0, y1 = truth(digits, ids0[0]), truth(digits, ids0[1])
    assert (
        f"answers-round-1.csv line 3: id {ids0[1]} is already labelled {y1} in round 0; stored labels are final" in msg
    )
    assert (
        f"answers-round-0.csv line 22: id {ids0[0]} is already labelled {y0} in round 0; stored labels are final" in msg
    )
    assert "line 2, 22" not in msg  # line 2 is the row that was stored; only the changed one is named
    assert (
        f"id {ids0[2]} was queried in round 0, not in round 1; its label ({truth(digits, ids0[2])}) is already" in msg
    )
    assert f"answers-round-0.csv line 23: id {late} is queried in round 1, not in round 0 (closed); move the row" in msg
    assert "if id" not in msg  # no conditional advice: the message knows where the id belongs
    st = Store(url).state(RUN)
    assert {i: st.labels[i] for i in ids0} == {i: truth(digits, i) for i in ids0}  # nothing relabelled
    assert late not in st.labels and st.labels[ids1[0]] == truth(digits, ids1[0])


def encode(text: str, how: str) -> bytes:
    import codecs

    return {
        "utf-8": lambda: text.encode("utf-8"),
        "utf-8-bom": lambda: codecs.BOM_UTF8 + text.encode("utf-8"),
        "utf-16-le-bom": lambda: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
        "utf-16-be-bom": lambda: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
        "utf-32-bom": lambda: text.encode("utf-32"),
        "utf-16-le": lambda: text.encode("utf-16-le"),
        "utf-16-be": lambda: text.encode("utf-16-be"),
        "cp1252": lambda: text.encode("cp1252"),
    }[how]()


@pytest.mark.parametrize("how", ["utf-8", "utf-8-bom", "utf-16-le-bom", "utf-16-be-bom", "utf-32-bom"])
@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_csv_answers_file_in_any_unicode_encoding_is_read(digits, tmp_path, how, eol):
    """A spreadsheet's 'Unicode text' (UTF-16 with a BOM), UTF-8 with or without a BOM, any line ending."""
    url, folder, ids = start_round_0(digits, tmp_path)
    rows = ["# étiquettes, première séance", "id,label"] + [f"{i},{truth(digits, i)}" for i in ids[:10]]
    (folder / "answers-round-0.csv").write_bytes(encode(eol.join(rows) + eol, how))
    with pytest.raises(LabelsPending, match="10 of 20") as e:
        csv_experiment(digits, url, folder).run()
    assert "refused" not in str(e.value)
    assert Store(url).state(RUN).labels == {i: truth(digits, i) for i in ids[:10]}


@pytest.mark.parametrize(
    "how,problem",
    [
        ("utf-16-le", "contains NUL bytes: it looks like UTF-16 or UTF-32 without a byte-order mark"),
        ("utf-16-be", "contains NUL bytes: it looks like UTF-16 or UTF-32 without a byte-order mark"),
        ("cp1252", "line 1 is not UTF-8 text (byte 0xe9: invalid continuation byte"),
    ],
)
def test_csv_undecodable_answers_file_is_one_line_with_the_fix_exit_3(digits, tmp_path, capsys, how, problem):
    """Issue 12 item 6: the message named a UnicodeDecodeError and said to run again, which cannot help. Now one
    line names the file, the encoding problem and the fix; the run waits (exit 3) and loses nothing stored."""
    folder, url = tmp_path / "lab", f"sqlite:///{tmp_path / 's.db'}"
    args = DIGITS + ["--store", url, "--oracle", "csv", "--oracle-dir", str(folder)]
    assert main(args) == 3
    ids = queried_ids(folder, 0)
    append(folder, 0, [f"{i},{truth(digits, i)}" for i in ids[:5]])
    assert main(args) == 3
    stored = Store(url).state(RUN).labels
    assert stored == {i: truth(digits, i) for i in ids[:5]}
    capsys.readouterr()
    rows = ["# étiquettes", "id,label"] + [f"{i},{truth(digits, i)}" for i in ids[:12]]  # re-saved, 7 more rows
    (folder / "answers-round-0.csv").write_bytes(encode("\r\n".join(rows) + "\r\n", how))
    before = (folder / "answers-round-0.csv").read_bytes()
    assert main(args) == 3
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "save it as UTF-8 CSV" in x)
    assert line.strip().startswith("answers-round-0.csv ") and problem in line, err
    assert "nothing in this file was read" in line and "run the same command again" in line
    assert "UnicodeDecodeError" not in err and "Traceback" not in err and "15 of 20" in err
    st = Store(url).state(RUN)
    assert st.labels == stored and st.status == "waiting"  # nothing lost, nothing taken from the unreadable file
    assert (folder / "answers-round-0.csv").read_bytes() == before


def test_csv_bad_row_beside_a_complete_round_is_reported_and_the_run_goes_on(digits, tmp_path, capsys):
    folder, url = tmp_path / "lab", f"sqlite:///{tmp_path / 's.db'}"
    args = [
        "--dataset",
        "digits",
        "--budget",
        "40",
        "--init-size",
        "20",
        "--query-size",
        "20",
        "--epochs",
        "5",
        "--min-steps",
        "30",
        "--no-progress",
        "--store",
        url,
        "--oracle",
        "csv",
        "--oracle-dir",
        str(folder),
    ]
    assert main(args) == 3
    append(folder, 0, [f"{i},{truth(digits, i)}" for i in queried_ids(folder, 0)] + ["77777,1"])
    assert main(args) == 3  # round 0 complete, round 1 waiting
    err = capsys.readouterr().err
    assert "warning: round 0 is fully labelled, but\n1 answer row(s) refused" in err
    assert "answers-round-0.csv line 22: id 77777 was not queried in round 0" in err
    assert Store(url).state(RUN).rounds[0].state == "complete"


def test_csv_rows_already_taken_are_not_reported_again(digits, tmp_path):
    url, folder, ids = start_round_0(digits, tmp_path)
    q = folder / "queries-round-0.csv"
    os.utime(q, (1, 1))  # the queries file is left alone when unchanged (it may be open in a spreadsheet)
    append(folder, 0, [f"{i},{truth(digits, i)}" for i in ids[:10]])
    with pytest.raises(LabelsPending) as e1:
        csv_experiment(digits, url, folder).run()
    with pytest.raises(LabelsPending) as e2:
        csv_experiment(digits, url, folder).run()
    assert "10 of 20" in str(e1.value) and "10 of 20" in str(e2.value)
    assert "refused" not in str(e2.value)
    assert q.stat().st_mtime == 1


def test_csv_cli_exit_3_then_finishes(digits, tmp_path, capsys):
    folder, url = tmp_path / "lab", f"sqlite:///{tmp_path / 's.db'}"
    args = [
        "--dataset",
        "digits",
        "--budget",
        "40",
        "--init-size",
        "20",
        "--query-size",
        "20",
        "--epochs",
        "5",
        "--min-steps",
        "30",
        "--no-progress",
        "--store",
        url,
        "--oracle",
        "csv",
        "--oracle-dir",
        str(folder),
    ]
    for r in range(2):
        assert main(args) == 3
        assert "20 of 20 queried samples still await" in capsys.readouterr().err
        append(folder, r, [f"{i},{truth(digits, i)}" for i in queried_ids(folder, r)])
    assert main(args) == 0
    assert len(Store(url).state(RUN).labels) == 40


def test_csv_folder_made_unwritable_mid_run_is_a_clear_error(digits, tmp_path, monkeypatch):
    url, folder, ids = start_round_0(digits, tmp_path)

    def broken(self, info):
        raise PermissionError(13, "Permission denied", str(folder / "queries-round-0.csv"))

    monkeypatch.setattr(CsvOracle, "begin_round", broken)
    with pytest.raises(OracleError, match="could not prepare round 0 .*Permission denied.*query is saved"):
        csv_experiment(digits, url, folder).run()
    st = Store(url).state(RUN)
    assert st.status == "stopped" and st.last_round.state == "queried"


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--oracle", "csv"], "--oracle csv needs --oracle-dir"),
        (["--oracle-dir", "somewhere"], "--oracle-dir is only used by --oracle csv"),
        (["--oracle-timeout", "0"], "--oracle-timeout must be a positive"),
        (["--oracle", "csvv"], "unknown oracle 'csvv'"),
    ],
)
def test_bad_oracle_settings_exit_2_nothing_written(tmp_path, capsys, extra, msg):
    assert main(["--dataset", "digits", "--budget", "40", "--store", f"sqlite:///{tmp_path / 's.db'}"] + extra) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


# --- the terminal prompt --------------------------------------------------------------------------------------------
class Keyboard(io.StringIO):
    """Fake stdin that fails (as a closed terminal would) once its lines are used up, if told to."""

    def __init__(self, text: str, fail_at_end: bool = False) -> None:
        super().__init__(text)
        self.fail_at_end = fail_at_end

    def readline(self, *a):
        line = super().readline(*a)
        if line == "" and self.fail_at_end:
            raise OSError("terminal closed")
        return line


def test_prompt_skip_quit_and_each_answer_saved(digits, store_url):
    out = io.StringIO()
    exp = Experiment(
        fast_config(),
        store_url,
        dataset=digits,
        oracle=PromptOracle(digits, Keyboard("3\nseven\n\n12\n7\ns\n1\nq\n"), out),
    )
    with pytest.raises(LabelsPending, match="17 of 20.*stopped by the user"):
        exp.run()
    ids = Store(store_url).queries(RUN)["sample_id"].tolist()
    st = Store(store_url).state(RUN)
    # as typed: 3, (junk, empty, 12 refused and asked again) 7, skip, 1, quit
    assert st.labels == {ids[0]: 3, ids[1]: 7, ids[3]: 1}
    text = out.getvalue()
    assert "'seven' is not a class" in text and "'12' is not a class" in text and "'' is not a class" in text
    assert f"sample {ids[0]}" in text and "█" in text
    assert text.count("label for sample") == 8


def test_prompt_answers_survive_a_dead_terminal(digits, store_url):
    """Each answer is stored as it is given: when the terminal dies after two answers, both are in the store."""
    exp = Experiment(
        fast_config(),
        store_url,
        dataset=digits,
        oracle=PromptOracle(digits, Keyboard("4\n5\n", fail_at_end=True), io.StringIO()),
    )
    with pytest.raises(OracleError, match="terminal closed"):
        exp.run()
    ids = Store(store_url).queries(RUN)["sample_id"].tolist()
    assert Store(store_url).state(RUN).labels == {ids[0]: 4, ids[1]: 5}


def test_prompt_end_of_input_is_quit_and_class_names_accepted(digits, store_url):
    ds = digits.subset(n_pool=200, n_test=50)
    ds.classes = [f"digit-{k}" for k in range(10)]
    out = io.StringIO()
    with pytest.raises(LabelsPending, match="18 of 20"):
        Experiment(
            fast_config(), store_url, dataset=ds, oracle=PromptOracle(ds, Keyboard("digit-4\nDIGIT-2\n"), out)
        ).run()
    assert sorted(Store(store_url).state(RUN).labels.values()) == [2, 4]
    assert "0=digit-0" in out.getvalue()


def test_render_blocks_shape_and_levels():
    img = np.linspace(0, 1, 28 * 28).reshape(28, 28)
    pic = render_blocks(img).splitlines()
    assert len(pic) == 28 and all(len(r) == 56 for r in pic)
    assert pic[0].startswith("  ") and pic[-1].endswith("██")
    big = render_blocks(np.zeros((100, 60)))
    assert len(big.splitlines()) == 33 and len(big.splitlines()[0]) == 40  # 3x3 pixel blocks averaged


# --- bad configuration: a clear error before anything is written --------------------------------------------------
DIGITS = [
    "--dataset",
    "digits",
    "--budget",
    "40",
    "--init-size",
    "20",
    "--query-size",
    "20",
    "--epochs",
    "5",
    "--min-steps",
    "30",
    "--no-progress",
]


def test_model_with_wrong_output_size_cli(tmp_path, capsys):
    assert (
        main(DIGITS + ["--store", f"sqlite:///{tmp_path / 's.db'}", "--model", "tests.factories:three_class_mlp"]) == 2
    )
    assert "outputs 3 classes but dataset 'digits' has 10" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("kind", ["corrupt", "newer-schema", "truncated"])
def test_unusable_store_file_refused_and_never_replaced(tmp_path, capsys, kind):
    path = tmp_path / "s.db"
    if kind == "corrupt":
        path.write_bytes(os.urandom(4096))
    else:
        Store(f"sqlite:///{path}").close()
        con = sqlite3.connect(path)
        if kind == "newer-schema":
            con.execute("UPDATE al_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
        con.commit()
        con.close()
        if kind == "truncated":  # a valid header, then garbage: sqlite only notices when it reads the schema
            data = path.read_bytes()
            path.write_bytes(data[:100] + os.urandom(len(data) - 100))
    before = path.read_bytes()
    assert main(DIGITS + ["--store", f"sqlite:///{path}"]) == 2
    err = capsys.readouterr().err
    assert {
        "corrupt": "not an SQLite database",
        "newer-schema": "written by a newer al",
        "truncated": "cannot open store",
    }[kind] in err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) in (["s.db"], ["s.db", "s.db-shm", "s.db-wal"])


@pytest.fixture
def open_tmp():
    """A temporary folder every user can enter (pytest's tmp_path lies under a folder private to root)."""
    d = tempfile.mkdtemp(prefix="al-unwritable-")
    os.chmod(d, 0o755)
    yield Path(d)
    for root, dirs, _ in os.walk(d):
        for x in dirs:
            os.chmod(os.path.join(root, x), 0o755)
    shutil.rmtree(d)


def test_unwritable_store_refused(open_tmp):
    """Checked as an ordinary user: root may write anywhere, so a forked child drops to uid 'nobody' first."""
    ro = open_tmp / "ro"
    ro.mkdir()
    existing = ro / "old.db"
    Store(f"sqlite:///{existing}").close()
    before = existing.read_bytes()
    os.chmod(existing, 0o444)
    os.chmod(ro, 0o555)
    for target, msg in [(existing, "not readable and writable"), (ro / "new.db", "is not writable")]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: no exec, so it needs no access to the virtualenv as another user
            code = 1
            try:
                os.close(r)
                if os.geteuid() == 0:
                    import pwd

                    nobody = pwd.getpwnam("nobody")
                    os.setgid(nobody.pw_gid)
                    os.setuid(nobody.pw_uid)
                try:
                    Store(f"sqlite:///{target}")
                    os.write(w, b"opened")
                except Exception as e:  # noqa: BLE001
                    os.write(w, f"{type(e).__name__}: {e}".encode()[:4000])
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            got = f.read().decode()
        os.waitpid(pid, 0)
        assert got.startswith("StoreError") and msg in got, got
    assert existing.read_bytes() == before and sorted(p.name for p in ro.iterdir()) == ["old.db"]


# --- determinism: ties broken by sample id ---------------------------------------------------------------------------
class Constant(Strategy):
    """Every candidate but the last id scores the same: the rest of the pick must be the smallest ids, whatever
    order candidates come in. (Not all equal: scores equal on every candidate are a ModelError, see
    test_divergence.py.)"""

    name = "constant-test"
    needs = frozenset()

    def select(self, ctx, n, rng):
        cand = rng.permutation(ctx.candidates)  # a shuffled pool must not change the pick
        return top_n((cand == ctx.candidates.max()).astype(float), cand, n)


def test_ties_broken_by_sample_id(digits, store_url):
    exp = Experiment(fast_config(budget=60), store_url, dataset=digits, strategy=Constant())
    exp.run()
    q = Store(store_url).queries(RUN)
    init = set(q.query("round_idx == 0")["sample_id"])
    for r in (1, 2):  # noqa: B007 - read by DataFrame.query as @r
        labelled = set(q.query("round_idx < @r")["sample_id"])
        unlabelled = [i for i in range(digits.n_pool) if i not in labelled]
        expected = [unlabelled[-1], *unlabelled[:19]]
        assert q.query("round_idx == @r")["sample_id"].tolist() == expected
    assert init.isdisjoint(q.query("round_idx > 0")["sample_id"])
