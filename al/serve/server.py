"""Running the app on uvicorn: in a thread of the loop's process (the web oracle) or in the foreground
(``python -m al.serve``).

The socket is bound here, in the caller's thread, before uvicorn starts: a port in use is a one-line error at once,
and ``port=0`` (any free port) is known before the URL is printed. The thread is joined by :meth:`ServerThread.stop`:
a thread still running when the interpreter exits can abort the process (see al/labelling.py's notes).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from ..errors import ConfigError, OracleError
from .security import url_host


def bind(host: str, port: int, flag: str = "--port") -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` is an IPv6 address); a ConfigError naming the
    address and the fix when it cannot be bound."""
    h = host.strip("[]")
    family = socket.AF_INET6 if ":" in h else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it every response
    # written in two parts (headers, body) waited ~40 ms for the client's delayed ACK (measured: 44 ms -> 2 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((h, port))
        sock.listen(128)  # connections made before uvicorn runs wait in the backlog instead of being refused
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {url_host(h)}:{port} ({e.strerror or e}); pass another {flag} (0: any free port) "
            f"or stop what holds it"
        ) from None
    sock.set_inheritable(False)
    return sock


def base_url(sock: socket.socket, host: str) -> str:
    """``http://host:port`` of a bound socket (the port it really got)."""
    return f"http://{url_host(host)}:{sock.getsockname()[1]}"


def _config(app: Any) -> Any:
    import uvicorn

    # No access log: a person's answers are in the store, and the terminal is the loop's progress.
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=2,
    )


class ServerThread:
    """uvicorn serving ``app`` on ``sock`` from a thread: :meth:`start` returns once it accepts connections,
    :meth:`stop` ends it and joins the thread."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        import uvicorn

        self.sock = sock
        self.server = uvicorn.Server(_config(app))
        self.thread = threading.Thread(target=self._run, name="al-web-server", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as e:  # noqa: BLE001 - reported by start() / stop() in the caller's thread
            self.error = e

    def start(self, timeout: float = 15.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OracleError(f"the web server did not start ({self.error or 'timed out'})")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)
        try:
            self.sock.close()
        except OSError:
            pass

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()


def serve_forever(app: Any, sock: socket.socket) -> None:
    """Serve in the foreground until Ctrl-C: uvicorn shuts down gracefully and then raises the signal again, which
    ends here as a normal return."""
    import uvicorn

    try:
        uvicorn.Server(_config(app)).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
