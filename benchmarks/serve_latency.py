"""How long the labelling page makes a person wait: (a) from a round's last answer to the next round's cards, and (b)
the response time of 100 answers in a row. Writes ``benchmarks/results/serve_latency.md``.

    AL_DATA_DIR=../shared/data python benchmarks/serve_latency.py [--rounds 5] [--datasets digits mnist]

Everything is real: each case is a ``python -m al.bench ... --oracle web --web-port 0`` process (loop and page in one
process, as a person runs it) on a fresh SQLite store, driven from this process through headless Chromium (Debian's,
never ``playwright install``) pressing the keys a person presses, with the true labels; without /usr/bin/chromium
the same is done through the HTTP API and the report says so.

(a) For each round: the time from pressing the key of the round's last answer to the next round's cards on the
page, beside what the loop spent in between (training and evaluating the round, choosing the next query: the
store's ``train_seconds``, ``eval_seconds`` and the next round's ``select_seconds``); the rest is storing, the
oracle's 0.2 s poll of the store and the page's 0.3 s poll of the API.
(b) One round of 200 queried samples: 100 answers POSTed in a row through the API (client-side round trip of each),
then 100 answered on the page, each from the key press to the progress line showing it stored.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from al.data import load_dataset  # noqa: E402
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
URL_LINE = re.compile(r"labelling page: (http://\S+)")
#: The data root, absolute: the al.bench processes run in a temporary folder.
DATA_DIR = str(Path(os.environ.get("AL_DATA_DIR", ROOT.parent / "shared" / "data")).resolve())
os.environ["AL_DATA_DIR"] = DATA_DIR

#: (a): the round-to-round settings per dataset. digits: its defaults (mlp, 30 epochs, >= 200 steps); MNIST: the
#: BatchBALD protocol's schedule (cnn, 30 epochs, >= 150 steps) with 1000 random candidates scored per round.
LATENCY = {
    "digits": ["--dataset", "digits", "--strategy", "entropy", "--init-size", "20", "--query-size", "10"],
    "mnist": [
        "--dataset",
        "mnist",
        "--strategy",
        "entropy",
        "--init-size",
        "20",
        "--query-size",
        "10",
        "--pool-subset",
        "1000",
        "--epochs",
        "30",
        "--min-steps",
        "150",
    ],
}
#: (b): one round of 200 random samples (the initial set), so no training before it.
ANSWERS = ["--strategy", "entropy", "--init-size", "200", "--query-size", "10", "--budget", "400"]


class Bench:
    """One ``al.bench --oracle web`` process; ``url`` from its output."""

    def __init__(self, args: list[str], cwd: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "AL_DATA_DIR": DATA_DIR}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "al.bench", *args, "--oracle", "web", "--web-port", "0", "--no-progress"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._url: str | None = None
        self._seen = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = URL_LINE.search(line)
            if m and self._url is None:
                self._url = m.group(1).rstrip("/")
                self._seen.set()
        self._seen.set()

    def url(self) -> str:
        self._seen.wait(600)
        if self._url is None:
            raise SystemExit("al.bench printed no URL:\n" + "".join(self.lines)[-3000:])
        return self._url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_view(c: httpx.Client, r: int, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        v = c.get("/api/label").json()
        if v["state"] == "labelling" and v["round"] == r and v["cards"]:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"round {r} did not open: {v['message']}")
        time.sleep(0.05)


#: Timed inside the page, so that no Playwright round trip is counted: from a key's keydown to the progress line
#: changing (the answer stored) and to a round's cards appearing (after the previous round's last key).
PAGE_CLOCK = """
window.__al = {key: null, press: [], rounds: {}};
document.addEventListener("keydown", () => { window.__al.key = performance.now(); }, true);
window.addEventListener("DOMContentLoaded", () => {
  const pt = document.getElementById("progress-text");
  let last = pt.textContent;
  new MutationObserver(() => {
    if (pt.textContent !== last) {
      last = pt.textContent;
      if (window.__al.key !== null) window.__al.press.push(performance.now() - window.__al.key);
    }
  }).observe(pt, {childList: true, characterData: true, subtree: true});
  new MutationObserver(() => {
    const r = document.body.dataset.round;
    if (document.body.dataset.state === "labelling" && document.querySelector("article.card.current")
        && !(r in window.__al.rounds) && window.__al.key !== null) {
      window.__al.rounds[r] = performance.now() - window.__al.key;
    }
  }).observe(document.body, {attributes: true, childList: true, subtree: true});
});
"""


def launch(pw: Any) -> Any:
    return pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS) if pw is not None else None


def round_latencies(name: str, rounds: int, tmp: str, pw: Any) -> list[dict[str, float]]:
    truth = load_dataset(name).train_y.numpy()
    q = int(LATENCY[name][LATENCY[name].index("--query-size") + 1])
    init = int(LATENCY[name][LATENCY[name].index("--init-size") + 1])
    store_url = f"sqlite:///{Path(tmp) / f'latency-{name}.db'}"
    args = [*LATENCY[name], "--budget", str(init + q * (rounds + 1)), "--store", store_url]
    bench = Bench(args, tmp)
    out: list[dict[str, float]] = []
    try:
        base = bench.url()
        c = httpx.Client(base_url=base, timeout=60)
        browser = launch(pw)
        page = browser.new_page() if browser is not None else None
        if page is not None:
            page.add_init_script(PAGE_CLOCK)
            page.goto(base + "/")
        for r in range(rounds):
            v = wait_view(c, r)
            if page is not None:
                page.wait_for_selector(f"body[data-round='{r}'][data-state='labelling'] article.card.current")
                n = len(v["cards"])
                for k in range(n):
                    sid = int(page.locator("article.card.current").get_attribute("data-sample-id"))
                    if k == n - 1:
                        t0 = time.perf_counter()
                    page.keyboard.press(str(truth[sid]))
                    if k < n - 1:
                        page.wait_for_function(
                            f"document.getElementById('progress-text').textContent.startsWith('{k + 1} of')"
                        )
                page.wait_for_selector(
                    f"body[data-round='{r + 1}'][data-state='labelling'] article.card.current", timeout=900_000
                )
                t1 = time.perf_counter()
                inside = page.evaluate(f"window.__al.rounds['{r + 1}']")
                if inside is not None:  # the page's own clock: no Playwright round trip in it
                    t1 = t0 + inside / 1000
            else:
                for card in v["cards"][:-1]:
                    c.post(
                        "/api/label/answers",
                        json={"round": r, "sample_id": card["sample_id"], "label": int(truth[card["sample_id"]])},
                    )
                last = v["cards"][-1]["sample_id"]
                t0 = time.perf_counter()
                c.post("/api/label/answers", json={"round": r, "sample_id": last, "label": int(truth[last])})
                wait_view(c, r + 1)
                t1 = time.perf_counter()
            out.append({"round": r, "wait": t1 - t0})
        if browser is not None:
            browser.close()
        c.close()
    finally:
        bench.stop()
    st = Store(store_url, must_exist=True).state(f"{name}-entropy-seed0")
    by = {rr.round_idx: rr for rr in st.rounds}
    for row in out:
        done, nxt = by[row["round"]], by[row["round"] + 1]
        row["train"] = done.train_seconds or 0.0
        row["eval"] = done.eval_seconds or 0.0
        row["select"] = nxt.select_seconds or 0.0
        row["rest"] = row["wait"] - row["train"] - row["eval"] - row["select"]
    return out


def answers_in_a_row(name: str, tmp: str, pw: Any) -> dict[str, list[float]]:
    truth = load_dataset(name).train_y.numpy()
    store_url = f"sqlite:///{Path(tmp) / f'answers-{name}.db'}"
    bench = Bench(["--dataset", name, *ANSWERS, "--store", store_url], tmp)
    times: dict[str, list[float]] = {"api": [], "page": [], "get": []}
    try:
        base = bench.url()
        with httpx.Client(base_url=base, timeout=60) as c:
            v = wait_view(c, 0)
            for card in v["cards"][:100]:
                sid = card["sample_id"]
                t0 = time.perf_counter()
                r = c.post("/api/label/answers", json={"round": 0, "sample_id": sid, "label": int(truth[sid])})
                times["api"].append(time.perf_counter() - t0)
                assert r.json()["status"] == "stored", r.text
            for _ in range(20):
                t0 = time.perf_counter()
                c.get("/api/label")
                times["get"].append(time.perf_counter() - t0)
        browser = launch(pw)
        if browser is not None:
            page = browser.new_page()
            page.add_init_script(PAGE_CLOCK)
            page.goto(base + "/")
            page.wait_for_selector("article.card.current")
            page.evaluate("window.__al.press = []")
            for k in range(100):
                sid = int(page.locator("article.card.current").get_attribute("data-sample-id"))
                page.keyboard.press(str(truth[sid]))
                page.wait_for_function(
                    f"document.getElementById('progress-text').textContent.startsWith('{101 + k} of')"
                )
            times["page"] = [v / 1000 for v in page.evaluate("window.__al.press")]
            browser.close()
    finally:
        bench.stop()
    return times


def ms(v: float) -> str:
    return f"{1000 * v:.0f} ms" if v < 10 else f"{v:.1f} s"


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds timed per dataset (default 5)")
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist"], choices=sorted(LATENCY))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_latency.md"))
    args = p.parse_args()
    pw_cm = None
    pw = None
    if os.path.exists(CHROMIUM):
        from playwright.sync_api import sync_playwright

        pw_cm = sync_playwright()
        pw = pw_cm.__enter__()
    how = "the HTTP API (no /usr/bin/chromium)"
    if pw is not None:
        how = "headless Chromium pressing the keys (the page timed by its own clock)"
    lat: dict[str, list[dict[str, float]]] = {}
    ans: dict[str, dict[str, list[float]]] = {}
    t_all = time.perf_counter()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            print(f"(a) {name}: {args.rounds} rounds", flush=True)
            lat[name] = round_latencies(name, args.rounds, tmp, pw)
            print(f"(b) {name}: 100 answers in a row", flush=True)
            ans[name] = answers_in_a_row(name, tmp, pw)
    if pw_cm is not None:
        pw_cm.__exit__(None, None, None)
    lines = [
        "# The labelling page's latency",
        "",
        f"Made by `python benchmarks/serve_latency.py --rounds {args.rounds} --datasets {' '.join(args.datasets)}` "
        f"({time.perf_counter() - t_all:.0f} s) on this 2-core CPU machine (load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end: other jobs share it, so the training times are high and noisy), "
        f"measured through {how}. Each case is a real "
        "`python -m al.bench ... --oracle web --web-port 0` process (the loop and the page in one process) on a fresh "
        "SQLite store; the answers are the true labels.",
        "",
        "## (a) From a round's last answer to the next round's cards",
        "",
        "The wait a person sees: from the keydown of a round's last answer to the next round's cards on the page "
        "(timed by the page's own clock). "
        "Beside it, what the loop spent in between as the store records it (training and evaluating on the round's "
        "labels, then choosing the next query); `rest` is everything else: storing, the web oracle's 0.2 s poll of the "
        "store, and the page's 0.3 s poll of the API while the next round trains.",
        "",
        "Settings (`--strategy entropy`, `--init-size 20 --query-size 10`):",
        "",
        "- digits: its defaults, `mlp`, 30 epochs, at least 200 Adam steps, the whole pool scored;",
        "- mnist: `cnn`, 30 epochs, at least 150 steps (the BatchBALD protocol's schedule), `--pool-subset 1000` "
        "candidates scored per round, 10,000 test images evaluated per round.",
        "",
        "| dataset | rounds | wait: median (range) | training | evaluating | choosing | rest: median (range) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rows in lat.items():
        w = [r["wait"] for r in rows]
        rest = [r["rest"] for r in rows]
        lines.append(
            f"| {name} | {len(rows)} | {ms(statistics.median(w))} ({ms(min(w))} - {ms(max(w))}) | "
            f"{ms(statistics.median(r['train'] for r in rows))} | {ms(statistics.median(r['eval'] for r in rows))} | "
            f"{ms(statistics.median(r['select'] for r in rows))} | {ms(statistics.median(rest))} "
            f"({ms(min(rest))} - {ms(max(rest))}) |"
        )
    lines += [
        "",
        "Per round (seconds):",
        "",
        "| dataset | round | wait | training | evaluating | choosing | rest |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rows in lat.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['round']} | {r['wait']:.2f} | {r['train']:.2f} | {r['eval']:.2f} | {r['select']:.2f} | "
                f"{r['rest']:.2f} |"
            )
    lines += [
        "",
        "## (b) 100 answers in a row",
        "",
        "One round of 200 queried samples (`--init-size 200`, so nothing trains meanwhile). `API`: 100 answers POSTed "
        "one after the other, each timed from send to reply (each is validated and stored in its own transaction). "
        "`page`: the next 100 answered on the page, each timed by the page's own clock from the key's keydown to the "
        "progress line showing the answer stored (the POST and its reply). `GET /api/label`: the page's view of the "
        "round (up to 200 cards), 20 times.",
        "",
        "| dataset | what | n | median | p95 | max |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, t in ans.items():
        for what, key in (
            ("API: POST /api/label/answers", "api"),
            ("page: keydown to stored", "page"),
            ("GET /api/label", "get"),
        ):
            xs = t[key]
            if xs:
                lines.append(
                    f"| {name} | {what} | {len(xs)} | {ms(statistics.median(xs))} | {ms(p95(xs))} | {ms(max(xs))} |"
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
