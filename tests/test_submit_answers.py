"""Answers given outside the loop (the web page): ``al.labelling.submit_answers``, ``Store.withdraw_label`` (undo),
the model's guesses recorded with each query (schema 4), and the upgrade of a schema-3 store.

The tests that take only ``store_url`` run on SQLite here; the submission path is the same on PostgreSQL.
"""

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import fast_config
from old_stores import store_package

from al.errors import StoreError
from al.labelling import submit_answers
from al.loop import Experiment
from al.oracles import Oracle, RoundInfo
from al.store import SCHEMA_VERSION, Store, StoreUpgradedWarning

CFG = {"dataset": "digits", "strategy": "entropy", "seed": 0, "model": "mlp", "budget": 10}


def _open_round(url: str) -> tuple[Store, int]:
    """A run whose round 0 is complete (ids 0, 1) and whose round 1 queried ids 2, 3, 4 with guesses."""
    s = Store(url)
    run = s.open_run("r", CFG).run_id
    s.record_query(run, 0, np.array([0, 1]), None)
    s.record_labels(run, 0, {0: 0, 1: 1}, "ground-truth")
    s.record_metrics(run, 0, n_labelled=2, accuracy=0.5, nll=1.0, train_seconds=0.1)
    guesses = {2: [(1, 0.7), (0, 0.2), (2, 0.1)], 3: [(2, 0.5), (1, 0.5)], 4: [(0, 0.9)]}
    s.record_query(run, 1, np.array([3, 2, 4]), np.array([0.9, 0.8, 0.1]), guesses=guesses)
    return s, run


def _submit(s: Store, answers, round_idx: int = 1):
    return submit_answers(s, "r", round_idx, answers, oracle="web", n_classes=3)


def test_guesses_round_trip(store_url):
    s, run = _open_round(store_url)
    assert s.guesses(run, 0) == {}
    assert s.guesses(run, 1) == {2: ((1, 0.7), (0, 0.2), (2, 0.1)), 3: ((2, 0.5), (1, 0.5)), 4: ((0, 0.9),)}


def test_each_answer_is_judged_on_its_own(store_url):
    s, run = _open_round(store_url)
    out = _submit(s, {3: 2, "2": 1, 7: 0, 4: 5, 0: 1})
    assert out.stored == {3: 2, 2: 1} and out.repeated == {} and out.pending == 1
    assert set(out.refused) == {7, 4, 0}
    assert "not queried in this round" in out.refused[7]
    assert "not a class in 0..2" in out.refused[4]
    assert "already labelled 0 in round 0" in out.refused[0]
    assert s.state("r").labels == {0: 0, 1: 1, 3: 2, 2: 1}


def test_a_double_submission_is_idempotent_and_a_contradiction_refused(store_url):
    s, run = _open_round(store_url)
    assert _submit(s, {3: 2}).stored == {3: 2}
    again = _submit(s, {3: "2"})
    assert again.stored == {} and again.repeated == {3: 2} and again.refused == {}
    other = _submit(s, {3: 1})
    assert other.stored == {} and "already labelled 2 in round 1" in other.refused[3]
    assert s.state("r").labels[3] == 2


def test_answers_for_a_closed_round_are_refused(store_url):
    s, run = _open_round(store_url)
    out = _submit(s, {3: 2}, round_idx=0)
    assert out.refused == {3: "round 0 is closed; the open round is 1"} and out.pending == 3
    assert _submit(s, {3: 2, 2: 1, 4: 0}).pending == 0
    assert _submit(s, {3: 2}).repeated == {3: 2}  # the round's answer sent again after it closed: nothing to do
    late = _submit(s, {3: 1})
    assert "already labelled 2 in round 1; the first stored answer stands" in late.refused[3]
    assert "not waiting for labels" in late.refused[3]
    assert s.state("r").last_round.state == "labelled"


def test_two_writers_on_one_sample_the_first_stored_answer_stands(tmp_path):
    """Two tabs (two Store objects, as two server threads would hold) answer the same samples differently at the
    same moment: the store's UNIQUE label lets one in; the other is told which label stands."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    _open_round(url)[0].close()
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def tab(name: str, label: int) -> None:
        with Store(url) as s:
            barrier.wait()
            results[name] = [_submit(s, {i: label}) for i in (3, 2, 4)]

    threads = [threading.Thread(target=tab, args=("a", 0)), threading.Thread(target=tab, args=("b", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = Store(url).state("r").labels
    for k, i in enumerate((3, 2, 4)):
        a, b = results["a"][k], results["b"][k]  # type: ignore[index]
        winners = [x for x in (a, b) if x.stored]
        assert len(winners) == 1, (a, b)
        loser = b if winners[0] is a else a
        assert i in loser.refused and str(labels[i]) in loser.refused[i]
        assert "stands" in loser.refused[i] or "already labelled" in loser.refused[i]


def test_withdraw_label_only_in_the_open_round_and_only_its_own(store_url):
    s, run = _open_round(store_url)
    _submit(s, {3: 2})
    s.record_labels(run, 1, {2: 1}, "someone-else")
    s.withdraw_label(run, 1, 3, "web")
    assert 3 not in s.state("r").labels and s.pending(run, 1).tolist() == [3, 4]
    with pytest.raises(StoreError, match="has no label to withdraw"):
        s.withdraw_label(run, 1, 3, "web")
    with pytest.raises(StoreError, match="labelled in round 1 by 'someone-else'"):
        s.withdraw_label(run, 1, 2, "web")
    with pytest.raises(StoreError, match="round 0 is closed"):
        s.withdraw_label(run, 0, 0, "ground-truth")
    assert _submit(s, {3: 0, 4: 0}).pending == 0
    with pytest.raises(StoreError, match="round 1 is closed .labelled.; the labels of a closed round are final"):
        s.withdraw_label(run, 1, 3, "web")
    assert s.state("r").labels[3] == 0


def test_an_empty_record_on_a_labelled_round_is_a_no_op(store_url):
    s, run = _open_round(store_url)
    _submit(s, {3: 2, 2: 1, 4: 0})
    assert s.record_labels(run, 1, {}, "web") == 0
    with pytest.raises(StoreError, match="not waiting for labels"):
        s.record_labels(run, 1, {3: 2}, "web")


class _Watching(Oracle):
    """Answers from the true labels and keeps what each round told it."""

    name = "ground-truth"

    def __init__(self, y):
        self.y, self.infos = y, []

    def begin_round(self, info: RoundInfo) -> None:
        self.infos.append(info)

    def label(self, ids):
        return {int(i): int(self.y[i]) for i in ids}


def test_the_loop_records_the_models_top_guesses_and_tells_the_oracle(digits, store_url):
    oracle = _Watching(digits.train_y.numpy())
    exp = Experiment(fast_config(budget=60), store_url, dataset=digits, oracle=oracle, name="g")
    st = exp.run()
    assert [i.round_idx for i in oracle.infos] == [0, 1, 2] and {i.run_name for i in oracle.infos} == {"g"}
    assert oracle.infos[0].guesses == {}
    for info in oracle.infos[1:]:
        queried = set(info.query["sample_id"].tolist())
        assert set(info.guesses) == queried
        for top in info.guesses.values():
            ps = [p for _, p in top]
            assert len(top) == 3 and ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1 + 1e-9
            assert len({y for y, _ in top}) == 3 and all(0 <= y < 10 for y, _ in top)
        assert exp.store.guesses(st.run_id, info.round_idx) == info.guesses


# --- upgrading a schema-3 store -----------------------------------------------------------------------------------
#: The last commit whose store wrote schema 3.
V3_COMMIT = "8e62958"


def test_schema_3_store_is_upgraded_and_reads_without_guesses(tmp_path):
    path = tmp_path / "v3.db"
    url = f"sqlite:///{path}"
    old = store_package(V3_COMMIT, 3).Store(url)
    run = old.open_run("r", CFG).run_id
    old.record_query(run, 0, np.array([0, 1]), None)
    old.record_labels(run, 0, {0: 0, 1: 1}, "ground-truth")
    old.record_metrics(run, 0, n_labelled=2, accuracy=0.5, nll=1.0, train_seconds=0.1)
    old.record_query(run, 1, np.array([2, 3]), np.array([0.9, 0.8]))
    old.close()
    reader = Store(url, must_exist=True)  # a reader leaves it as it is
    assert reader.schema_version == 3 and reader.guesses(run, 1) == {}
    reader.close()
    with pytest.warns(StoreUpgradedWarning, match="from schema 3 to 5 .*al_guesses.*al_labels.target"):
        s = Store(url)
    assert s.schema_version == SCHEMA_VERSION == 5 and Path(f"{path}.v3.bak").exists()
    assert s.guesses(run, 1) == {} and s.pending(run, 1).tolist() == [2, 3]
    assert _submit(s, {2: 1, 3: 0}).pending == 0
    s.record_metrics(run, 1, n_labelled=4, accuracy=0.75, nll=0.9, train_seconds=0.1)
    s.record_query(run, 2, np.array([4]), np.array([0.5]), guesses={4: [(2, 0.6), (1, 0.4)]})
    assert s.guesses(run, 2) == {4: ((2, 0.6), (1, 0.4))}
    s.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Store(url).close()
    eng = sa.create_engine(url)
    with eng.connect() as c:
        assert c.exec_driver_sql("SELECT COUNT(*) FROM al_guesses").scalar() == 2
    eng.dispose()
