"""The README's screenshots of the labelling page and the dashboard, made from a real run in headless Chromium.

    python benchmarks/screenshots.py [--out docs]

Fills a throw-away store with finished digits runs (entropy and random, 3 seeds each, simulated labels), then runs a
digits run whose oracle is the web page (``--oracle web`` in this process), answers its first rounds through the API
with the true labels, and photographs the page at the next round (cards with the model's guesses) and the dashboard
(learning curves with their bands, the run's uncertainty and its stopping criterion). Needs /usr/bin/chromium and
Playwright's Python package (never ``playwright install``).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from al.data import load_dataset  # noqa: E402
from al.loop import Experiment, ExperimentConfig  # noqa: E402
from al.serve.oracle import WebOracle  # noqa: E402
from al.store import Store  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FINISHED = dict(dataset="digits", budget=140, init_size=20, query_size=20, epochs=10, min_steps=60)


def wait_round(client: httpx.Client, r: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        v = client.get("/api/label").json()
        if v["state"] == "labelling" and v["round"] == r:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"round {r} never opened: {v}")
        time.sleep(0.1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs"))
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    digits = load_dataset("digits")
    truth = digits.train_y.numpy()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # a relative store URL: the page header shows no path of this machine
        url = "sqlite:///screens.db"
        store = Store(url)
        for strategy in ("entropy", "random"):
            for seed in range(3):
                Experiment(ExperimentConfig(strategy=strategy, seed=seed, **FINISHED), store, dataset=digits).run()
        oracle = WebOracle(digits, url, port=0, out=io.StringIO())
        web = ExperimentConfig(
            strategy="entropy",
            seed=0,
            budget=200,
            init_size=20,
            query_size=10,
            epochs=10,
            min_steps=60,
            stop="max-uncertainty",
            oracle="web",
            dataset="digits",
        )
        exp = Experiment(web, url, dataset=digits, oracle=oracle, name="digits-entropy-labelled-by-hand")
        loop = threading.Thread(target=lambda: _run(exp), daemon=True)
        loop.start()
        while oracle.url is None:
            time.sleep(0.05)
        with httpx.Client(base_url=oracle.url, timeout=60) as c:
            for r in range(5):
                v = wait_round(c, r)
                for card in v["cards"]:
                    c.post(
                        "/api/label/answers",
                        json={"round": r, "sample_id": card["sample_id"], "label": int(truth[card["sample_id"]])},
                    )
            v = wait_round(c, 5)
            # Two answers on the page's round, so that its progress shows.
            for card in v["cards"][:2]:
                c.post(
                    "/api/label/answers",
                    json={"round": 5, "sample_id": card["sample_id"], "label": int(truth[card["sample_id"]])},
                )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page.goto(oracle.url + "/")
            page.wait_for_selector("article.card.current")
            page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            page.screenshot(path=str(out / "labelling.png"), full_page=True)
            page.goto(oracle.url + "/dashboard")
            page.wait_for_selector("#uncertainty circle.pt")
            page.wait_for_function("document.querySelectorAll('#curves figure').length >= 2")
            page.screenshot(path=str(out / "dashboard.png"), full_page=True)
            browser.close()
        oracle.close()
        loop.join(60)
        os.chdir(here)
    print(f"wrote {out / 'labelling.png'} and {out / 'dashboard.png'}")


def _run(exp: Experiment) -> None:
    try:
        exp.run()
    except Exception:  # noqa: BLE001 - the run waits (LabelsPending) when the oracle is closed
        pass


if __name__ == "__main__":
    main()
