"""``--oracle web``: the loop and the labelling page in one process.

At its first round the oracle starts the app (:func:`al.serve.app.create_app`) on uvicorn in a thread and prints
the page's URL (with ``?token=...`` when a token is set). Each answer given on the page is stored by the server at
once, through :func:`al.labelling.submit_answers`; :meth:`WebOracle.label` only waits, polling the store, until
every queried sample of the round has a label, and then returns no answers of its own (the loop finds the round
labelled and trains). So a process killed mid-round loses nothing that was answered, and the same command again
asks only for the samples still pending.

:meth:`WebOracle.close` (called when ``al.bench`` ends) stops the server and joins its thread.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, TextIO

import numpy as np

from ..errors import ALError, OracleError
from ..oracles.base import Answers, LabellingStopped, Oracle, RoundInfo
from .security import DEFAULT_HOST, DEFAULT_PORT

if TYPE_CHECKING:
    from ..pool import Pool
    from ..store import Store
    from .desk import LabelDesk
    from .server import ServerThread

#: Seconds between two looks at the store while a round is being labelled.
POLL_S = 0.2


class WebOracle(Oracle):
    """A person answering on the labelling page served from this process (see the module docstring).

    dataset: the pool (the page shows its samples); store_url: the run's store (the server writes the answers
    there through its own connection); host/port: where to listen (port 0: any free port); token: checked on every
    request when given (required by the caller for a non-loopback host; see :func:`al.serve.decide_token`).
    """

    name = "web"

    def __init__(
        self,
        dataset: Pool,
        store_url: str,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        token_generated: bool = False,
        n_classes: int | None = None,
        poll_s: float = POLL_S,
        out: TextIO | None = None,
    ) -> None:
        self.dataset = dataset
        self.store_url = store_url
        self.host, self.port = host, port
        self.token, self.token_generated = token, token_generated
        self.n_classes = n_classes
        self.poll_s = poll_s
        self.out = out
        self.url: str | None = None  # the page's address (without the token), once the server runs
        self.info: RoundInfo | None = None
        self.desk: LabelDesk | None = None
        self._store: Store | None = None
        self._server: ServerThread | None = None
        self._run_id: int | None = None
        self._closed = threading.Event()
        self._wake = threading.Event()  # set by the desk when it stores an answer, and by close()

    # --- the server ---------------------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        out = self.out or sys.stdout
        out.write(text + "\n")
        out.flush()

    @property
    def page_url(self) -> str | None:
        """The URL to open: with ``?token=`` when a token is set."""
        if self.url is None:
            return None
        return f"{self.url}/?token={self.token}" if self.token else f"{self.url}/"

    def start(self, run_name: str) -> None:
        """Start the server for run ``run_name`` (once; later calls do nothing)."""
        if self._server is not None:
            return
        if self._closed.is_set():
            raise OracleError("the web oracle was closed; build a new one")
        try:
            from ..store import Store
            from .app import create_app
            from .desk import LabelDesk
            from .server import ServerThread, base_url, bind

            sock = bind(self.host, self.port, "--web-port")
        except ImportError as e:
            raise OracleError(
                f"--oracle web needs FastAPI, uvicorn and Jinja2 ({e}); pip install fastapi uvicorn jinja2"
            ) from e
        except ALError as e:
            raise OracleError(str(e)) from None
        try:
            store = Store(self.store_url)
            desk = LabelDesk(
                store, run_name, self.dataset, oracle=self.name, n_classes=self.n_classes, on_answer=self._wake.set
            )
            app = create_app(self.store_url, desk=desk, token=self.token, bind_host=self.host, store=store)
            server = ServerThread(app, sock)
            server.start()
        except BaseException:
            sock.close()
            raise
        self._store, self.desk, self._server = store, desk, server
        self._run_id = store.state(run_name).run_id
        self.url = base_url(sock, self.host)
        self._say(f"labelling page: {self.page_url}")
        self._say(f"dashboard:      {self.url}/dashboard{'?token=' + self.token if self.token else ''}")
        if self.token_generated:
            self._say("(the token was generated for this session; set --web-token or AL_WEB_TOKEN to choose one)")

    # --- the oracle ---------------------------------------------------------------------------------------------
    def begin_round(self, info: RoundInfo) -> None:
        self.info = info
        if not info.run_name:
            raise OracleError("--oracle web needs the run's name (RoundInfo.run_name); the loop gives it")
        self.start(info.run_name)
        n_left = sum(1 for i in info.query["sample_id"] if int(i) not in info.labels)
        self._say(f"round {info.round_idx}: {n_left} of {info.n_queried} samples to label at {self.url}/")

    def label(self, ids: np.ndarray) -> Answers:
        """Wait until every queried sample of the round has a label (stored by the server as it was given), then
        return no answers: there is nothing left for the loop to store."""
        info, store, server, run_id = self.info, self._store, self._server, self._run_id
        if info is None or store is None or server is None or run_id is None:
            raise OracleError("WebOracle.label called before begin_round")
        if self.desk is not None:
            self.desk.warm([int(i) for i in ids])  # this thread would only wait: render the cards' images now
        while True:
            if self._closed.is_set():  # close() from another thread: the run waits, every answer is stored
                raise LabellingStopped("the web oracle was closed")
            if len(store.pending(run_id, info.round_idx)) == 0:
                return Answers({})
            if not server.alive:
                raise OracleError(
                    f"the web server stopped ({server.error or 'no reason given'}); every answer given is "
                    f"stored: run the same command again to continue"
                )
            # Woken at once by an answer given on this process's page; the timeout also sees answers stored by
            # anyone else (another process writing the same store).
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def how_to_answer(self, round_idx: int) -> str:
        return "run the same command again: it serves the labelling page and asks only for what is still pending"

    def close(self) -> None:
        """Stop the server and join its thread; a ``label`` call still waiting ends (the run waits)."""
        self._closed.set()
        self._wake.set()
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def __repr__(self) -> str:
        return f"WebOracle(url={self.url!r})"

    def __del__(self) -> None:  # a forgotten close() must not leave a thread running at exit
        try:
            self.close()
        except Exception:  # noqa: BLE001 - best effort at garbage collection
            pass
