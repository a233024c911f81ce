"""The labelling page and the dashboard in a real browser: Debian's Chromium, headless, driven by Playwright's Python
API (never ``playwright install``), against a real loop, server and store (tests/web_helpers.py)."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from web_helpers import LoopWithPage

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the Python package) is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def current(page) -> int:
    return int(page.locator("article.card.current").get_attribute("data-sample-id"))


def progress(page, text: str) -> None:
    page.wait_for_function(
        f"document.getElementById('progress-text').textContent === {json.dumps(text)}", timeout=20_000
    )


def test_label_rounds_with_the_keyboard_undo_skip_and_watch_the_dashboard(tmp_path, browser):
    with LoopWithPage(tmp_path, init_size=6, query_size=3, budget=12) as w:
        dash = browser.new_page()
        dash.goto(w.url + "/dashboard")
        dash.wait_for_selector(f"tr[data-run='{w.exp.name}']")
        assert dash.locator("#curves circle.pt").count() == 0  # no round complete yet

        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(w.url + "/")
        page.wait_for_selector("article.card.current")
        progress(page, "0 of 6 answered")
        assert "1" in page.locator("#keys").inner_text()  # the shortcuts are shown
        ranks = page.locator("article.card .rank").all_inner_texts()
        assert ranks == [f"#{k}" for k in range(1, 7)]  # most informative first
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")

        # s skips: the card moves to the back and stays pending.
        first = current(page)
        page.keyboard.press("s")
        assert current(page) != first
        assert int(page.locator("article.card").last.get_attribute("data-sample-id")) == first

        answered: list[int] = []
        for k in range(6):
            sid = current(page)
            page.keyboard.press(str(w.truth[sid]))
            answered.append(sid)
            if k == 5:
                break
            progress(page, f"{k + 1} of 6 answered")
            if k == 1:  # u undoes the last answer; the card comes back first; answered again
                page.keyboard.press("u")
                progress(page, "1 of 6 answered")
                assert current(page) == sid
                page.keyboard.press(str(w.truth[sid]))
                progress(page, "2 of 6 answered")
        assert first in answered  # the skipped card came round again

        # The round is complete: the loop trains and the next round's cards appear, with the model's guesses.
        page.wait_for_selector("body[data-round='1'][data-state='labelling'] article.card.current", timeout=60_000)
        progress(page, "0 of 3 answered")
        assert "model:" in page.locator("article.card.current .guesses").inner_text()
        # The dashboard gained a point without being reloaded.
        dash.wait_for_function("document.querySelectorAll('#curves circle.pt').length >= 1", timeout=20_000)

        # Undo of an answer whose round has closed: refused, and the page says why.
        page.keyboard.press("u")
        page.wait_for_selector(".notice.refused", timeout=10_000)
        assert "closed" in page.locator("#notice").inner_text()

        # Two tabs, one sample: the other tab answers first; this tab's answer is refused with the reason.
        stale = w.view()
        page.route(
            "**/api/label",
            lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(stale)),
        )  # this tab has not refreshed
        sid = stale["cards"][0]["sample_id"]
        with httpx.Client(base_url=w.url) as other_tab:
            other = (int(w.truth[sid]) + 1) % 10
            r = other_tab.post("/api/label/answers", json={"round": 1, "sample_id": sid, "label": other})
            assert r.json()["status"] == "stored"
        page.reload()
        page.wait_for_selector(f"article.card.current[data-sample-id='{sid}']")
        page.keyboard.press(str(w.truth[sid]))
        page.wait_for_function(
            "document.getElementById('notice').textContent.includes('already labelled')", timeout=10_000
        )
        assert page.locator("#notice.refused").is_visible()
        page.unroute("**/api/label")
        progress(page, "1 of 3 answered")  # the next refresh shows the store as it is

        for _ in range(2):
            page.wait_for_selector("article.card.current")
            page.keyboard.press(str(w.truth[current(page)]))
        page.wait_for_selector("body[data-round='2'][data-state='labelling'] article.card.current", timeout=60_000)
        dash.wait_for_function("document.querySelectorAll('#curves circle.pt').length >= 2", timeout=20_000)
        assert not errors, errors


def test_the_token_is_enforced_in_the_browser(tmp_path, browser):
    with LoopWithPage(tmp_path, token="browser-token-1", init_size=4, budget=8) as w:
        page = browser.new_page()
        r = page.goto(w.url + "/")
        assert r.status == 401 and "needs its token" in page.inner_text("body")
        assert page.goto(w.url + "/dashboard").status == 401
        page.goto(w.url + "/?token=browser-token-1")  # the printed URL: the server sets the cookie
        page.wait_for_selector("article.card.current")
        assert "token" not in page.url  # dropped from the address bar
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        page.keyboard.press(str(w.truth[current(page)]))  # the answer is a POST with the X-AL-Token header
        progress(page, "1 of 4 answered")
        page.goto(w.url + "/dashboard")  # the cookie carries the page; the header the API
        page.wait_for_selector(f"tr[data-run='{w.exp.name}']")
        page.goto(w.url + "/docs")  # the API's documentation, drawn from /openapi.json
        page.wait_for_selector("section.endpoint")
        assert "/api/label/answers" in page.inner_text("#api") and "Card[]" in page.inner_text("#api")
        other = browser.new_context().new_page()  # another browser profile: no cookie
        assert other.goto(w.url + "/dashboard").status == 401
