"""Helpers of the web page's tests (tests/test_serve.py, tests/test_serve_browser.py): a real loop labelled through a
real server, and a real ``al.bench`` process whose printed URL is read."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from al.data import load_dataset
from al.loop import Experiment, ExperimentConfig
from al.serve.oracle import WebOracle

ROOT = Path(__file__).resolve().parents[1]
URL_LINE = re.compile(r"labelling page: (http://\S+)")


class LoopWithPage:
    """A digits run whose oracle is the web page: the loop runs in a thread of this process and the page's server
    in the oracle's thread, both on a real SQLite store in ``tmp_path``. Use as a context manager: on the way out
    the oracle is closed (the loop, if still waiting, stops with the run ``waiting``) and both threads are joined.
    """

    def __init__(
        self, tmp_path: Path, *, token: str | None = None, dataset: Any = None, truth: Any = None, **config: Any
    ) -> None:
        """``dataset``/``truth``: another pool and its true labels by id (default: digits and its labels)."""
        self.store_url = f"sqlite:///{tmp_path / 'web.db'}"
        self.dataset = dataset if dataset is not None else load_dataset("digits")
        self.truth = truth if truth is not None else self.dataset.train_y.numpy()
        self.token = token
        self.printed = io.StringIO()
        self.oracle = WebOracle(self.dataset, self.store_url, port=0, token=token, out=self.printed)
        settings = dict(
            dataset=self.dataset.name,
            strategy="entropy",
            budget=16,
            init_size=8,
            query_size=4,
            epochs=2,
            min_steps=10,
            seed=0,
            oracle="web",
        )
        settings.update(config)
        self.exp = Experiment(ExperimentConfig(**settings), self.store_url, dataset=self.dataset, oracle=self.oracle)
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, name="test-loop", daemon=True)
        self.client: httpx.Client | None = None

    def _run(self) -> None:
        try:
            self.outcome["state"] = self.exp.run()
        except BaseException as e:  # noqa: BLE001 - inspected by the test
            self.outcome["error"] = e

    def __enter__(self) -> LoopWithPage:
        self.thread.start()
        deadline = time.monotonic() + 60
        while self.oracle.url is None:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"the web oracle did not start: {self.outcome}")
            time.sleep(0.02)
        headers = {"X-AL-Token": self.token} if self.token else {}
        self.client = httpx.Client(base_url=self.oracle.url, headers=headers, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        self.oracle.close()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the loop thread did not end"

    @property
    def url(self) -> str:
        assert self.oracle.url is not None
        return self.oracle.url

    @property
    def http(self) -> httpx.Client:
        assert self.client is not None
        return self.client

    def view(self) -> dict[str, Any]:
        r = self.http.get("/api/label")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_for(self, round_idx: int | None, state: str = "labelling", timeout: float = 60) -> dict[str, Any]:
        return wait_for_view(self.view, round_idx, state, timeout, lambda: self.outcome)

    def answer(self, round_idx: int, sample_id: int, label: int | None = None, client: httpx.Client | None = None):
        y = int(self.truth[sample_id]) if label is None else label
        r = (client or self.http).post(
            "/api/label/answers", json={"round": round_idx, "sample_id": sample_id, "label": y}
        )
        assert r.status_code == 200, r.text
        return r.json()

    def label_round(self, round_idx: int) -> None:
        v = self.wait_for(round_idx)
        for card in v["cards"]:
            assert self.answer(round_idx, card["sample_id"])["status"] == "stored"


def wait_for_view(view, round_idx, state, timeout, why=lambda: "") -> dict[str, Any]:  # noqa: ANN001
    """Poll ``view()`` until it shows ``state`` (and ``round_idx`` unless None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = view()
        if v["state"] == state and (round_idx is None or v["round"] == round_idx):
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for round {round_idx} {state}; last view {v}; {why()}")
        time.sleep(0.05)


class BenchProcess:
    """``python -m al.bench ... --oracle web --web-port 0`` as a child process; ``url`` is read from its output."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "al.bench", *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._url: str | None = None
        self._seen = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = URL_LINE.search(line)
            if m and self._url is None:
                self._url = m.group(1)
                self._seen.set()
        self._seen.set()

    def url(self, timeout: float = 90) -> str:
        self._seen.wait(timeout)
        if self._url is None:
            raise AssertionError(f"al.bench printed no labelling URL: {''.join(self.lines)[-3000:]}")
        return self._url

    def output(self) -> str:
        self._reader.join(10)
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(10)
