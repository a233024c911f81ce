"""The labelling page's API and the dashboard (issue 14, part 1), through a real uvicorn server on 127.0.0.1, a real
loop and a real SQLite store: answers, refusals with their reasons, undo, images, request limits, the token, and a
real ``al.bench --oracle web`` process killed mid-round and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from conftest import fast_config
from web_helpers import ROOT, BenchProcess, LoopWithPage, wait_for_view

from al.errors import ConfigError, LabelsPending
from al.oracles import OracleContext
from al.serve import decide_token, is_loopback
from al.serve.__main__ import main as serve_main
from al.serve.__main__ import settings as serve_settings
from al.serve.app import BODY_LIMIT, create_app
from al.serve.dashboard import curves_payload, rounds_payload, runs_payload
from al.serve.desk import class_keys
from al.serve.kind import WEB, build
from al.serve.server import ServerThread, base_url, bind
from al.store import Store

RUN = "digits-entropy-seed0"


# --- labelling through the API ---------------------------------------------------------------------------------------
def test_a_round_is_labelled_through_the_api_and_the_loop_goes_on(tmp_path):
    with LoopWithPage(tmp_path) as w:
        v = w.wait_for(0)
        assert v["run"] == RUN and v["progress"] == {"answered": 0, "total": 8}
        assert [c["index"] for c in v["classes"]] == list(range(10))
        assert [c["key"] for c in v["classes"]] == [str(k) for k in range(10)]  # digits named 0-9 type as themselves
        assert [c["rank"] for c in v["cards"]] == list(range(8))  # the strategy's order
        assert all(c["guesses"] == [] for c in v["cards"])  # no model chose round 0
        first = v["cards"][0]
        png = w.http.get(first["image"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
        assert "labelling page: " + w.url in w.printed.getvalue()

        w.label_round(0)
        v = w.wait_for(1)
        cards = v["cards"]
        assert v["progress"] == {"answered": 0, "total": 4} and len(cards) == 4
        assert [c["rank"] for c in cards] == [0, 1, 2, 3]
        scores = [c["score"] for c in cards]
        assert scores == sorted(scores, reverse=True), "most uncertain first"
        for c in cards:  # the model's top 3, most probable first, with class names
            ps = [g["p"] for g in c["guesses"]]
            assert len(ps) == 3 and ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1 + 1e-9
            assert all(g["name"] == str(g["label"]) for g in c["guesses"])
        # An image only for a sample queried in the open round.
        old = first["sample_id"]
        assert w.http.get(f"/api/label/samples/{old}.png").status_code == 404
        w.label_round(1)
        w.label_round(2)
        v = w.wait_for(None, "finished")
        assert v["cards"] == [] and "finished" in v["message"]

    assert "error" not in w.outcome
    labels = Store(w.store_url).labels(RUN)
    assert len(labels) == 16 and set(labels["oracle"]) == {"web"}
    assert (labels["label"].to_numpy() == w.truth[labels["sample_id"].to_numpy()]).all()


def test_a_folder_pool_is_labelled_by_class_name_with_its_files(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    from al import Pool
    from al.oracles.human import png_bytes, to_unit_image

    d = load_digits()
    rng = np.random.default_rng(0)
    truth_by_path = {}
    for folder, n in (("photos", 24), ("photos-test", 12)):
        for k in range(n):
            c = k % 3
            i = int(rng.choice(np.flatnonzero(d.target == c)))
            img = Image.fromarray((d.images[i] / 16 * 255).astype(np.uint8), "L").resize((12, 12))
            rel = f"{['cat', 'dog', 'fox'][c]}/{k:02d}.png" if folder == "photos-test" else f"sub/img{k:02d}.png"
            (tmp_path / folder / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(tmp_path / folder / rel)
            if folder == "photos":
                truth_by_path[rel] = c
    pool = Pool.from_folder(tmp_path / "photos", classes=["cat", "dog", "fox"], test=tmp_path / "photos-test")
    truth = np.array([truth_by_path[k] for k in pool.keys])
    with LoopWithPage(tmp_path, dataset=pool, truth=truth, init_size=6, query_size=3, budget=9) as w:
        v = w.wait_for(0)
        assert [(c["name"], c["key"]) for c in v["classes"]] == [("cat", "1"), ("dog", "2"), ("fox", "3")]
        card = v["cards"][0]
        assert card["key"] == pool.keys[card["sample_id"]] and card["key"].startswith("sub/img")
        png = w.http.get(card["image"]).content
        assert png == png_bytes(to_unit_image(pool, card["sample_id"]), min_side=224)  # the pool's own sample
        w.label_round(0)
        v = w.wait_for(1)
        assert {g["name"] for c in v["cards"] for g in c["guesses"]} <= {"cat", "dog", "fox"}
        w.label_round(1)
        w.wait_for(None, "finished")
    labels = Store(w.store_url).labels(w.exp.name)
    assert len(labels) == 9 and (labels["label"].to_numpy() == truth[labels["sample_id"].to_numpy()]).all()


def test_every_fault_is_refused_with_its_reason(tmp_path):
    with LoopWithPage(tmp_path) as w:
        v = w.wait_for(0)
        ids = [c["sample_id"] for c in v["cards"]]
        a = ids[0]
        assert w.answer(0, a)["status"] == "stored"
        # A double submission is idempotent.
        again = w.answer(0, a)
        assert again["status"] == "repeated" and again["progress"]["answered"] == 1
        # Not a sample of the open round.
        other = next(i for i in range(1437) if i not in ids)
        r = w.answer(0, other, 1)
        assert r["status"] == "refused" and "not queried" in r["reason"]
        # Out of the class set.
        r = w.answer(0, ids[1], 10)
        assert r["status"] == "refused" and "not a class" in r["reason"] and "0..9" in r["reason"]
        # Contradicting the stored label.
        r = w.answer(0, a, (int(w.truth[a]) + 1) % 10)
        assert r["status"] == "refused" and f"already labelled {w.truth[a]}" in r["reason"] and "final" in r["reason"]
        # Two tabs labelling the same sample differently: the first stored answer stands, the second is told so.
        with httpx.Client(base_url=w.url) as tab2:
            b = ids[1]
            assert w.answer(0, b, 3, client=tab2)["status"] == "stored"
            r = w.answer(0, b, 4)
            assert r["status"] == "refused" and "already labelled 3" in r["reason"]
            assert Store(w.store_url).state(RUN).labels[b] == 3  # the first stored answer stands
        # Undo: withdrawn while the round is open, then answered again.
        undo = w.http.post("/api/label/undo", json={"round": 0, "sample_id": b}).json()
        assert undo["status"] == "withdrawn" and undo["progress"]["answered"] == 1
        assert b in [c["sample_id"] for c in w.view()["cards"]]
        assert w.answer(0, b)["status"] == "stored"
        nothing = w.http.post("/api/label/undo", json={"round": 0, "sample_id": ids[2]}).json()
        assert nothing["status"] == "refused" and "no label" in nothing["reason"]
        for i in ids[2:]:
            assert w.answer(0, i)["status"] == "stored"
        w.wait_for(1)
        # The closed round: the same answer again is an idempotent repeat (the last answer sent twice); another
        # label, and undos, are refused with the reason.
        assert w.answer(0, a)["status"] == "repeated"
        r = w.answer(0, a, (int(w.truth[a]) + 1) % 10)
        assert r["status"] == "refused" and "closed" in r["reason"] and "first stored answer stands" in r["reason"]
        late = w.http.post("/api/label/undo", json={"round": 0, "sample_id": a}).json()
        assert late["status"] == "refused" and "closed" in late["reason"]
        # GET changes nothing; answers are POSTs only.
        assert w.http.get("/api/label/answers").status_code == 405
    stored = Store(w.store_url).state(RUN).labels
    assert stored[ids[1]] == w.truth[ids[1]]  # withdrawn, then answered again


def test_request_limits_paths_and_hosts(tmp_path):
    with LoopWithPage(tmp_path) as w:
        v = w.wait_for(0)
        sid = v["cards"][0]["sample_id"]
        big = json.dumps({"round": 0, "sample_id": sid, "label": 1, "pad": "x" * BODY_LIMIT})
        r = w.http.post("/api/label/answers", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413
        chunked = w.http.post(
            "/api/label/answers",
            content=iter([big.encode()[:9000], big.encode()[9000:]]),
            headers={"content-type": "application/json"},
        )
        assert chunked.status_code == 413  # no Content-Length: counted while read, before any parsing
        form = w.http.post("/api/label/answers", content=b"round=0", headers={"content-type": "text/plain"})
        assert form.status_code == 415  # a cross-site form cannot post here
        assert w.http.post("/api/label/answers", json={"round": 0, "sample_id": sid}).status_code == 422
        assert (
            w.http.post("/api/label/answers", json={"round": 0, "sample_id": sid, "label": 1, "x": 1}).status_code
            == 422
        )
        # Samples by integer id only: no path from the request reaches a file.
        assert w.http.get("/api/label/samples/abc.png").status_code == 422
        for path in (
            "/api/label/samples/..%2F..%2Fetc%2Fpasswd.png",
            "/api/label/samples/-1.png",
            "/api/label/samples/99999.png",
            "/static/../desk.py",
            "/static/%2e%2e/desk.py",
            "/static/..%2Fdesk.py",
        ):
            assert w.http.get(path).status_code == 404, path
        # A loopback server answers only to a loopback Host (no DNS rebinding).
        assert w.http.get("/api/label", headers={"host": "evil.example:80"}).status_code == 421
        assert w.http.get("/api/label", headers={"host": f"localhost:{urlsplit(w.url).port}"}).status_code == 200
        assert w.view()["progress"]["answered"] == 0  # nothing of the above changed anything


# --- the token ------------------------------------------------------------------------------------------------------
@pytest.fixture
def token_server(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    Store(url).close()
    sock = bind("127.0.0.1", 0)
    server = ServerThread(create_app(url, token="s3cret-token"), sock)
    server.start()
    yield base_url(sock, "127.0.0.1")
    server.stop()
    assert not server.alive


def test_with_a_token_every_request_is_checked(token_server):
    u = token_server
    port = urlsplit(u).port
    for path in (
        "/dashboard",
        "/static/al.css",
        "/static/common.js",
        "/api/runs",
        "/api/curves",
        "/openapi.json",
        "/docs",
        "/api/label/samples/3.png",
    ):
        assert httpx.get(u + path).status_code == 401, path
        assert httpx.get(u + path, headers={"X-AL-Token": "wrong-token"}).status_code == 401, path
    page = httpx.get(u + "/dashboard", headers={"accept": "text/html"})
    assert page.status_code == 401 and "needs its token" in page.text and "text/html" in page.headers["content-type"]
    assert httpx.get(u + "/api/runs", headers={"X-AL-Token": "s3cret-token"}).status_code == 200
    first = httpx.get(u + "/dashboard?token=s3cret-token")
    assert first.status_code == 200
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"al_token_{port}=s3cret-token") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {f"al_token_{port}": "s3cret-token"}
    assert httpx.get(u + "/static/al.css", cookies=jar).status_code == 200
    assert httpx.get(u + "/api/runs", cookies=jar).status_code == 200
    assert httpx.get(u + "/api/runs?token=wrong-token").status_code == 401
    body = {"round": 0, "sample_id": 1, "label": 1}
    # A POST needs the header: the cookie or ?token= is not enough.
    assert httpx.post(u + "/api/label/answers", json=body, cookies=jar).status_code == 401
    assert httpx.post(u + "/api/label/answers?token=s3cret-token", json=body).status_code == 401
    # With the header it passes the guard; this server labels no run (al.serve alone), which it says.
    r = httpx.post(u + "/api/label/answers", json=body, headers={"X-AL-Token": "s3cret-token"})
    assert r.status_code == 404 and "--oracle web" in r.json()["detail"]


def test_a_non_loopback_host_needs_a_token_which_is_generated_when_missing(digits, tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert decide_token("127.0.0.1", None, {}).token is None
    gen = decide_token("0.0.0.0", None, {})
    assert gen.generated and len(gen.token) >= 30
    assert decide_token("0.0.0.0", None, {}).token != gen.token
    assert decide_token("0.0.0.0", None, {"AL_WEB_TOKEN": "from-the-env"}).token == "from-the-env"
    assert decide_token("127.0.0.1", "given-token", {}).source == "flag"  # a token on loopback is enforced too
    with pytest.raises(ConfigError, match="--token must be 8 to 256"):
        decide_token("0.0.0.0", "a b", {})
    # The CLI path, binding nothing.
    s = serve_settings(["--store", "sqlite:///x.db", "--host", "0.0.0.0"], env={})
    assert s.token.generated and s.host == "0.0.0.0"
    assert serve_settings(["--store", "sqlite:///x.db"], env={}).token.token is None
    # The oracle kind binds nothing until its first round, so building one is safe on any host.
    ctx = OracleContext(
        labels=None, n_classes=10, dataset=digits, options={"store_url": "sqlite:///x.db", "web_host": "10.1.2.3"}
    )
    o = build("", ctx)
    try:
        assert o.token and o.token_generated and o.url is None and o.host == "10.1.2.3"
    finally:
        o.close()
    assert WEB.name == "web" and WEB.build is build
    bad = OracleContext(labels=None, n_classes=10, dataset=digits, options={"store_url": "x", "web_port": 70000})
    with pytest.raises(ConfigError, match="--web-port must be a port number"):
        build("", bad)


def test_a_port_in_use_is_one_line_naming_the_fix(digits, tmp_path):
    from al.errors import OracleError
    from al.serve.oracle import WebOracle

    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        o = WebOracle(digits, f"sqlite:///{tmp_path / 'p.db'}", port=port)
        with pytest.raises(OracleError, match=rf"cannot listen on 127.0.0.1:{port} .*--web-port \(0: any free port\)"):
            o.start("some-run")
        o.close()
    finally:
        taken.close()


def test_serve_cli_usage_errors_are_one_line(tmp_path, capsys):
    assert serve_main(["--store", f"sqlite:///{tmp_path / 'missing.db'}", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    url = f"sqlite:///{tmp_path / 's.db'}"
    Store(url).close()
    assert serve_main(["--store", url, "--port", "0", "--run", "nope"]) == 2
    assert "no run named 'nope'" in capsys.readouterr().err
    assert serve_main(["--store", url, "--port", "0", "--token", "short"]) == 2
    assert "--token must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        serve_main(["--store", url, "--prt", "1"])
    assert e.value.code == 2


def test_al_serve_alone_shows_any_store_and_hints_how_to_label(tmp_path, digits):
    """A run waiting for web labels is listed with the command that labels it; the server itself labels nothing."""
    from al.loop import Experiment

    url = f"sqlite:///{tmp_path / 's.db'}"
    store = Store(url)
    Experiment(fast_config(seed=0), store, dataset=digits).run()
    st = store.open_run("digits-web", {"dataset": "digits", "strategy": "entropy", "oracle": "web", "budget": 40})
    store.set_status(st.run_id, "waiting", "round 0: 8 of 8 queried samples still await a label")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "al.serve", "--store", url, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        base = line.split()[1].rsplit("/dashboard", 1)[0]
        runs = {r["run"]: r for r in httpx.get(base + "/api/runs").json()["runs"]}
        assert runs[RUN]["status"] == "finished" and runs[RUN]["labels"] == 80
        assert runs["digits-web"]["status"] == "waiting" and "--oracle web" in runs["digits-web"]["hint"]
        assert httpx.get(base + "/").status_code == 303  # no run to label here: the dashboard
        label = httpx.get(base + "/api/label")
        assert label.status_code == 404 and "--oracle web" in label.json()["detail"]
        assert httpx.get(base + "/dashboard").status_code == 200
        paths = httpx.get(base + "/openapi.json").json()["paths"]
        assert {
            "/api/runs",
            "/api/curves",
            "/api/runs/{name}/rounds",
            "/api/label",
            "/api/label/answers",
            "/api/label/undo",
            "/api/label/samples/{sample_id}.png",
        } <= set(paths)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


# --- the dashboard's data --------------------------------------------------------------------------------------------
def test_curves_are_grouped_as_al_report_groups_them(tmp_path, digits):
    from al.loop import Experiment
    from al.report import learning_curves

    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    for seed in (0, 1):
        Experiment(fast_config(seed=seed, budget=60), store, dataset=digits).run()
    Experiment(fast_config(seed=0, budget=60, strategy="margin", stop="max-uncertainty"), store, dataset=digits).run()
    # One of margin's runs still in progress (waiting for labels after two rounds): its own line, out of the mean.
    y = digits.train_y.numpy()
    calls = {"n": 0}

    def two_rounds(ids):
        calls["n"] += 1
        return {int(i): int(y[i]) for i in ids} if calls["n"] <= 2 else {}

    with pytest.raises(LabelsPending):
        Experiment(fast_config(seed=2, budget=60, strategy="margin"), store, dataset=digits, oracle=two_rounds).run()
    data = curves_payload(store)
    (proto,) = data["protocols"]
    series = {s["strategy"]: s for s in proto["series"]}
    assert series["entropy"]["n_seeds"] == 2 and series["entropy"]["in_progress"] == []
    cur = learning_curves(store)
    want = cur[cur["strategy"] == "entropy"].groupby("n_labelled")["accuracy"].agg(["mean", "std"])
    got = {b["n"]: (b["mean"], b["std"]) for b in series["entropy"]["band"]}
    for n, row in want.iterrows():
        assert got[n][0] == pytest.approx(row["mean"]) and got[n][1] == pytest.approx(row["std"])
    assert [b["n"] for b in series["entropy"]["band"]] == [20, 40, 60]
    assert series["margin"]["n_seeds"] == 1
    (live,) = series["margin"]["in_progress"]
    assert live["run"] == "digits-margin-seed2" and [p["n"] for p in live["points"]] == [20, 40]

    runs = {r["run"]: r for r in runs_payload(store)["runs"]}
    assert runs["digits-entropy-seed1"]["labels"] == 60 and runs["digits-entropy-seed1"]["rounds"] == 3
    assert runs["digits-margin-seed2"]["status"] == "waiting" and runs["digits-margin-seed2"]["labels"] == 40
    assert runs["digits-margin-seed2"]["open_round"] == {"round": 2, "state": "queried", "answered": 0, "total": 20}

    rounds = rounds_payload(store, "digits-margin-seed0")
    assert [c["name"] for c in rounds["criteria"]] == ["max-uncertainty"]
    assert [r["round"] for r in rounds["rounds"]] == [0, 1, 2]
    assert rounds["rounds"][0]["pool"] is None  # round 0 was drawn at random: no scores
    r1 = rounds["rounds"][1]
    assert r1["pool"]["q25"] <= r1["pool"]["median"] <= r1["pool"]["q75"] <= r1["batch"]["max"]
    assert r1["values"]["max-uncertainty:threshold"] == pytest.approx(0.1)
    q = store.queries("digits-margin-seed0")
    assert r1["batch"]["mean"] == pytest.approx(q[q["round_idx"] == 1]["score"].mean())


def test_class_keys():
    assert class_keys([str(k) for k in range(10)]) == list("0123456789")
    assert class_keys(["cat", "dog", "fox"]) == ["1", "2", "3"]
    assert class_keys(["A", "B"]) == ["a", "b"]
    assert class_keys(["s", "t"]) == ["1", "2"]  # s and u are skip and undo
    names = ["cat", "cow", "crab", "dog", "deer", "eel", "emu", "fox", "gnu", "hen", "sun", "umbrella"]
    assert class_keys(names) == list("cordelmfghnb")  # the first free letter of each name; never s or u


LIGHT = ("al/serve/__init__.py", "al/serve/kind.py", "al/serve/security.py", "al/serve/oracle.py")


def test_the_package_and_the_kind_import_no_web_stack_at_module_level():
    """Every --oracle lookup loads al.serve.kind (an entry point): FastAPI and uvicorn only when a server starts."""
    import ast

    for rel in LIGHT:
        tree = ast.parse((ROOT / rel).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [f"{'.' * n.level}{n.module or ''}" for n in top if isinstance(n, ast.ImportFrom)]
        heavy = [m for m in names if m.split(".")[0] in ("fastapi", "uvicorn", "starlette", "jinja2")]
        heavy += [m for m in names if m in (".app", ".server", ".desk", ".dashboard")]
        assert not heavy, f"{rel} imports {heavy} at module level"


@pytest.mark.slow
def test_importing_the_package_and_the_kind_is_light():
    code = "import sys, al.serve, al.serve.kind; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- killed mid-round: nothing answered is lost -----------------------------------------------------------------------
BENCH = [
    "--dataset",
    "digits",
    "--strategy",
    "entropy",
    "--budget",
    "16",
    "--init-size",
    "8",
    "--query-size",
    "4",
    "--epochs",
    "1",
    "--min-steps",
    "5",
    "--no-progress",
    "--oracle",
    "web",
    "--web-port",
    "0",
]


def _split(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    token = parse_qs(parts.query).get("token", [None])[0]
    return f"{parts.scheme}://{parts.netloc}", ({"X-AL-Token": token} if token else {})


def test_the_bench_process_killed_mid_round_loses_nothing_and_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    args = [*BENCH, "--store", url]
    first = BenchProcess(args, cwd=tmp_path)
    try:
        base, headers = _split(first.url())
        with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
            v = wait_for_view(lambda: c.get("/api/label").json(), 0, "labelling", 60)
            ids = [card["sample_id"] for card in v["cards"]]
            from al.data import load_dataset

            truth = load_dataset("digits").train_y.numpy()
            for i in ids[:3]:
                r = c.post("/api/label/answers", json={"round": 0, "sample_id": i, "label": int(truth[i])})
                assert r.json()["status"] == "stored"
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(30) == -signal.SIGKILL
    finally:
        first.stop()
    labels = Store(url).labels(RUN)
    assert sorted(labels["sample_id"]) == sorted(ids[:3]) and set(labels["oracle"]) == {"web"}
    (dead,) = runs_payload(Store(url, must_exist=True))["runs"]
    assert dead["status"] == "interrupted" and "--oracle web" in dead["hint"]  # its process is gone
    assert dead["open_round"] == {"round": 0, "state": "queried", "answered": 3, "total": 8}

    again = BenchProcess(args, cwd=tmp_path)
    try:
        base, headers = _split(again.url())
        with httpx.Client(base_url=base, headers=headers, timeout=30) as c:

            def view():  # a failed request names the server's own output (its traceback) in the assertion
                r = c.get("/api/label")
                assert r.status_code == 200, f"{r.status_code} {r.text}\n{again.output()}"
                return r.json()

            v = wait_for_view(view, 0, "labelling", 60)
            assert v["progress"] == {"answered": 3, "total": 8}
            assert [card["sample_id"] for card in v["cards"]] == ids[3:]  # only the pending, in rank order
            for i in ids[3:]:
                r = c.post("/api/label/answers", json={"round": 0, "sample_id": i, "label": int(truth[i])})
                assert r.json()["status"] == "stored"
            v = wait_for_view(view, 1, "labelling", 60)
            assert v["progress"] == {"answered": 0, "total": 4}
        again.proc.send_signal(signal.SIGINT)  # Ctrl-C while waiting: the server stops and the run is kept
        assert again.proc.wait(60) == 130, again.output()
    finally:
        again.stop()
    out = again.output()
    assert "interrupted; run the same command to continue" in out
    st = Store(url).state(RUN)
    assert st.status == "stopped" and len(st.labels) == 8
    assert np.array_equal(np.sort(list(st.labels)), np.sort(ids))
