"""A strategy default that changes (REGrad's class weighting and layer alpha, issue 17) changes new runs only.

A run stored under the previous defaults, killed in the middle, continues under them and ends exactly as a run that
was never interrupted; a new run takes the new defaults; a run given other settings is still refused with the
differences. The old run is written as the old code wrote it: ``strategy_kwargs`` empty, ``strategy_params`` at the
previous defaults.
"""

from __future__ import annotations

import os
import signal

import pytest
from conftest import fast_config, run_forked

from al.errors import ConfigMismatchError
from al.loop import Experiment
from al.store import Store
from strategies.regrad.settings import PREVIOUS_DEFAULTS
from strategies.regrad.strategy import REGrad

CFG = dict(strategy="regrad", budget=80, query_size=20)  # rounds 0 (random) .. 3
RUN = "digits-regrad-seed0"


def old_code_regrad() -> REGrad:
    """REGrad as the code before the change built it with no settings given."""
    return REGrad(**PREVIOUS_DEFAULTS)


def killed_after_round(digits, url: str, r: int) -> int:
    """The old code's run in a forked child, SIGKILLed after round r's metrics; returns -signal."""
    return run_forked(
        lambda: Experiment(fast_config(**CFG), url, dataset=digits, strategy=old_code_regrad()).run(),
        f"after-metrics:{r}",
    )


def test_the_change_is_declared():
    assert REGrad.previous_defaults == {"class_weighting": "predicted", "layer_alpha": -10.0}
    now = REGrad().params()
    assert all(now[k] != v for k, v in PREVIOUS_DEFAULTS.items())  # each declared default did change
    assert build_params_of_old() == {**now, **PREVIOUS_DEFAULTS}


def build_params_of_old() -> dict:
    return old_code_regrad().params()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_run_stored_under_the_previous_defaults_continues_under_them(digits, tmp_path):
    ref_url = f"sqlite:///{tmp_path / 'ref.db'}"
    Experiment(fast_config(**CFG), ref_url, dataset=digits, strategy=old_code_regrad()).run()
    ref = Store(ref_url)

    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert killed_after_round(digits, url, 1) == -signal.SIGKILL
    stored = Store(url).run(RUN).config
    assert stored["strategy_kwargs"] == {} and stored["strategy_params"] == build_params_of_old()
    assert [r.state for r in Store(url).state(RUN).rounds] == ["complete", "complete"]

    exp = Experiment(fast_config(**CFG), url, dataset=digits)  # the same command, under the new code
    assert exp.strategy.params()["class_weighting"] == "root"  # built with the new defaults...
    st = exp.run()
    assert exp.strategy.params() == build_params_of_old()  # ...and rebuilt with the run's own on opening it
    assert st.status == "finished" and Store(url).run(RUN).config == stored
    got, want = Store(url).queries(RUN), ref.queries(RUN)
    assert got[["round_idx", "rank", "sample_id"]].equals(want[["round_idx", "rank", "sample_id"]])
    assert Store(url).curves()["accuracy"].tolist() == ref.curves()["accuracy"].tolist()

    # the run is not silently given other settings: an explicit setting is still a difference, and refused
    with pytest.raises(ConfigMismatchError, match="strategy_kwargs"):
        Experiment(fast_config(**CFG, strategy_kwargs={"layer_alpha": 0.0}), url, dataset=digits).run()


def test_a_new_run_takes_the_new_defaults(digits, tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    Experiment(fast_config(**{**CFG, "budget": 40}), url, dataset=digits).run()
    params = Store(url).run(RUN).config["strategy_params"]
    assert (params["class_weighting"], params["layer_alpha"]) == ("root", 0.0)
