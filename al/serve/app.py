"""The ASGI app: the labelling page, the dashboard, their assets, and the JSON API both pages use.

``create_app(store_url, desk=..., token=...)``. With a desk (the web oracle's, in the loop's process) the app
labels that one run; without one (``python -m al.serve``) it serves the dashboard and the read-only API for any
store. The API is documented by FastAPI's OpenAPI schema (``/openapi.json``), rendered at ``/docs`` by a page of
our own (FastAPI's Swagger page loads its scripts from a CDN, and this server must work offline).

Every request passes :class:`Guard` first (a plain ASGI middleware, so it runs before any routing or parsing):

- with a token: the header ``X-AL-Token``, or for GET requests the cookie it set, or ``?token=`` (which it turns
  into an HttpOnly, SameSite=Strict cookie for the page's images and assets); POSTs need the header. A constant-time
  comparison; 401 otherwise (an HTML page for browsers, JSON for the API);
- bound to loopback: the Host header must name a loopback address (a web page elsewhere cannot reach the server
  through DNS rebinding);
- POST bodies must be JSON (``Content-Type: application/json``: a cross-site form cannot send it without a CORS
  preflight, which this server never grants) and at most :data:`BODY_LIMIT` bytes, read and counted before any
  parsing (413 otherwise).

Nothing changes on a GET; samples are addressed by their integer id only, and an image is served only for a
sample queried in the open round (never a file by a path from the request).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from ..errors import StoreError
from ..store import Store
from . import dashboard
from .desk import LabelDesk
from .security import DEFAULT_HOST, is_loopback

#: Largest request body accepted, in bytes (an answer is under 100).
BODY_LIMIT = 16 * 1024
TOKEN_HEADER = "x-al-token"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PACKAGE = resources.files("al.serve")


def cookie_name(port: int | None) -> str:
    """The token cookie's name: per port, because browsers share cookies between the ports of one host."""
    return f"al_token_{port or 0}"


class Guard:
    """The checks every request passes before the app sees it (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str | None = None, loopback: bool = True) -> None:
        self.app = app
        self.token = token
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # none is served; refused before any check could be skipped
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope["method"]
        if self.loopback and not _loopback_host(headers.get("host", "")):
            await _plain(send, 421, "this server answers only to 127.0.0.1, localhost or [::1] in the address")
            return
        set_cookie = None
        if self.token is not None:
            port = (scope.get("server") or (None, None))[1]
            given = headers.get(TOKEN_HEADER)
            ok = given is not None and self._same(given)
            if not ok and method in ("GET", "HEAD"):
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                from_query = (query.get("token") or [None])[0]
                if from_query is not None and self._same(from_query):
                    ok, set_cookie = True, (cookie_name(port), from_query)
                else:
                    jar: SimpleCookie = SimpleCookie()
                    try:
                        jar.load(headers.get("cookie", ""))
                    except Exception:  # noqa: BLE001 - a malformed cookie header is no token
                        jar = SimpleCookie()
                    held = jar.get(cookie_name(port))
                    ok = held is not None and self._same(held.value)
            if not ok:
                await _unauthorised(send, scope, headers, post=method not in ("GET", "HEAD"))
                return
        if method not in ("GET", "HEAD"):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                await _json(send, 415, {"detail": "send the body as JSON (Content-Type: application/json)"})
                return
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > BODY_LIMIT):
                await _json(send, 413, {"detail": f"the request body is over {BODY_LIMIT} bytes"})
                return
            body, too_big = b"", False
            while True:  # read (and count) the whole body before anything parses it
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                body += msg.get("body", b"")
                if len(body) > BODY_LIMIT:
                    too_big = True
                    break
                if not msg.get("more_body", False):
                    break
            if too_big:
                await _json(send, 413, {"detail": f"the request body is over {BODY_LIMIT} bytes"})
                return
            receive = _replay(body)
        if set_cookie is not None:
            send = _with_cookie(send, *set_cookie)
        await self.app(scope, receive, send)

    def _same(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode("utf-8"))


def _loopback_host(host: str) -> bool:
    h = host.strip().lower()
    if h.startswith("["):
        h = h[: h.find("]") + 1] if "]" in h else h
    else:
        h = h.rsplit(":", 1)[0] if h.count(":") == 1 else h
    return is_loopback(h)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def _with_cookie(send: Send, name: str, value: str) -> Send:
    async def wrapped(msg: Message) -> None:
        if msg["type"] == "http.response.start":
            cookie = f"{name}={value}; Path=/; HttpOnly; SameSite=Strict"
            msg["headers"] = [*msg.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]
        await send(msg)

    return wrapped


async def _respond(send: Send, status: int, body: bytes, ctype: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    await _respond(send, status, json.dumps(payload).encode(), "application/json")


async def _plain(send: Send, status: int, text: str) -> None:
    await _respond(send, status, text.encode(), "text/plain; charset=utf-8")


UNAUTHORISED_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>401: token needed</title>
<link rel="icon" href="data:,"><style>body{font-family:system-ui,sans-serif;max-width:720px;margin:40px auto;
padding:0 20px;color:#1d2430}code{background:#eef0f4;padding:1px 4px}</style></head><body><main>
<h1>401: this al server needs its token</h1>
<p>Open the address the server printed when it started: it ends in <code>?token=...</code>. The token was given
with <code>--token</code> or <code>AL_WEB_TOKEN</code>, or generated and printed at start.</p></main></body></html>
"""


async def _unauthorised(send: Send, scope: Scope, headers: dict[str, str], *, post: bool) -> None:
    path = scope.get("path", "")
    if not post and not path.startswith("/api/") and "text/html" in headers.get("accept", ""):
        await _respond(send, 401, UNAUTHORISED_PAGE.encode(), "text/html; charset=utf-8")
        return
    detail = (
        "this server needs its token in the X-AL-Token header (for a POST, the header only)"
        if post
        else "this server needs its token: the X-AL-Token header, or open the printed URL with ?token=..."
    )
    await _json(send, 401, {"detail": detail})


# --- the API's bodies and answers (their schemas are the OpenAPI documentation) --------------------------------------
class AnswerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    round: int = Field(description="the round the answer is for (the open round)")
    sample_id: int = Field(description="the sample's id, as on its card")
    label: int = Field(description="the class index (0..n_classes-1)")


class UndoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    round: int = Field(description="the open round")
    sample_id: int = Field(description="the sample whose answer (given on this page) is withdrawn")


class Progress(BaseModel):
    answered: int
    total: int


class ClassKey(BaseModel):
    index: int = Field(description="the class index, the label sent in an answer")
    name: str
    key: str | None = Field(description="its keyboard shortcut on the page (None: no key left, a button only)")


class Guess(BaseModel):
    label: int
    name: str
    p: float = Field(description="the model's probability")


class Card(BaseModel):
    sample_id: int
    rank: int = Field(description="rank in the strategy's order (0 = most informative)")
    score: float | None = Field(description="the strategy's score (None in round 0, which is drawn at random)")
    guesses: list[Guess] = Field(description="the model's top classes, most probable first (none in round 0)")
    image: str | None = Field(description="URL of the sample's PNG (None for a table row)")
    row: dict[str, float | None] | None = Field(description="a table row's values (None for an image)")
    key: str | None = Field(description="what the sample is: its file's path in the pool, or its table id")


class LabelView(BaseModel):
    run: str
    round: int | None
    state: str = Field(description="labelling | training | finished | stopped")
    message: str
    classes: list[ClassKey]
    labels: int = Field(description="labels the run holds")
    budget: int | None
    progress: Progress
    cards: list[Card] = Field(description="the open round's pending samples, most informative first")


class AnswerOut(BaseModel):
    status: str = Field(description="stored | repeated (the same label was already stored) | refused")
    reason: str = Field(description="why it was refused (or repeated); empty when stored")
    progress: Progress


class UndoOut(BaseModel):
    status: str = Field(description="withdrawn | refused")
    reason: str
    progress: Progress


def create_app(
    store_url: str,
    *,
    desk: LabelDesk | None = None,
    token: str | None = None,
    run: str | None = None,
    bind_host: str = DEFAULT_HOST,
    store: Store | None = None,
) -> FastAPI:
    """The app over ``store_url`` (read by the dashboard; written only through ``desk``).

    ``desk``: the run this server labels (None: dashboard and read-only API only). ``token``: checked on every
    request when given. ``run``: the run the dashboard shows first (default the desk's, else the latest updated).
    ``bind_host``: the address the server listens on; on loopback the Host header is checked. ``store``: an open
    Store of ``store_url`` to read through (default: one opened here, read-only when there is no desk)."""
    if store is None:
        store = desk.store if desk is not None else Store(store_url, must_exist=True)
    reader = store
    data = dashboard.DashboardData(reader)
    templates = Jinja2Templates(directory=str(_PACKAGE / "templates"))
    focus = run if run is not None else (desk.run_name if desk is not None else None)
    app = FastAPI(
        title="al labelling and dashboard API",
        version="1",
        description=(
            "The API the labelling page and the dashboard use. All JSON. With a token, send it in the X-AL-Token "
            "header (GET requests may also use the cookie the page's ?token= sets). POSTs need "
            "Content-Type: application/json and a body under 16 KiB. No GET changes anything."
        ),
        docs_url=None,
        redoc_url=None,
    )
    app.mount("/static", StaticFiles(directory=str(_PACKAGE / "static")), name="static")

    def page(request: Request, name: str, **extra: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            {
                "token": token or "",
                "labelling": desk is not None,
                "run": focus or "",
                "store": store.shown_url,
                **extra,
            },
            headers={"cache-control": "no-store"},
        )

    def need_desk() -> LabelDesk:
        if desk is None:
            raise HTTPException(
                404,
                "this server labels no run (python -m al.serve shows the dashboard only); a run waiting for web "
                "labels is labelled by its own `python -m al.bench ... --oracle web` command",
            )
        return desk

    @app.get("/", include_in_schema=False, response_model=None)
    def index(request: Request) -> Response:
        if desk is None:
            return RedirectResponse("/dashboard", status_code=303)
        return page(request, "label.html")

    @app.get("/dashboard", include_in_schema=False)
    def dashboard_page(request: Request) -> HTMLResponse:
        return page(request, "dashboard.html")

    @app.get("/docs", include_in_schema=False)
    def docs_page(request: Request) -> HTMLResponse:
        return page(request, "docs.html")

    # The payloads are plain JSON values already: sent as they are, without FastAPI's per-value encoder (which
    # cost more than building a view of 200 cards).
    @app.get("/api/runs", summary="Every run in the store, most recently updated first", response_class=JSONResponse)
    def api_runs() -> Response:
        return JSONResponse(data.runs())

    @app.get(
        "/api/curves",
        summary="Learning curves: mean ± std over seeds per protocol and strategy",
        response_class=JSONResponse,
    )
    def api_curves(dataset: str | None = Query(None, description="only this dataset's protocols")) -> Response:
        return JSONResponse(data.curves(dataset))

    @app.get(
        "/api/runs/{name}/rounds",
        summary="One run's rounds: uncertainty, accuracy, stopping values",
        response_class=JSONResponse,
    )
    def api_rounds(name: str = Path(description="the run's name")) -> Response:
        try:
            return JSONResponse(data.rounds(name))
        except StoreError as e:
            raise HTTPException(404, str(e)) from None

    @app.get(
        "/api/label",
        summary="The labelling state: run, round, classes, progress, pending cards",
        response_model=LabelView,
        responses={404: {"description": "this server labels no run (python -m al.serve alone)"}},
    )
    def api_label() -> Response:
        return JSONResponse(need_desk().view())

    @app.get(
        "/api/label/samples/{sample_id}.png",
        summary="The image of a sample queried in the open round",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: {"description": "not a sample of the open round"}},
    )
    def api_sample(sample_id: int = Path(description="the sample's id")) -> Response:
        png = need_desk().image(sample_id)
        if png is None:
            raise HTTPException(404, f"sample {sample_id} is not an image queried in the open round")
        return Response(png, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    @app.post("/api/label/answers", summary="Store one answer", response_model=AnswerOut)
    def api_answer(body: AnswerIn) -> dict[str, Any]:
        return need_desk().answer(body.round, body.sample_id, body.label)

    @app.post(
        "/api/label/undo",
        summary="Withdraw an answer given on this page while its round is open",
        response_model=UndoOut,
    )
    def api_undo(body: UndoIn) -> dict[str, Any]:
        return need_desk().undo(body.round, body.sample_id)

    app.add_middleware(Guard, token=token, loopback=is_loopback(bind_host))
    return app
