"""A throw-away Label Studio server for the tests, on loopback and a free port.

The server is the ``label-studio`` executable of its own virtual environment (about 1 GB with its dependencies,
so not the project's): ``$AL_LABEL_STUDIO``, else ``<repo>/.venv-label-studio/bin/label-studio`` (``.ci/run``
creates it). It runs with a data folder of its own, one user whose legacy API token is set at start, legacy
tokens enabled (personal access tokens are always on), and no update check, analytics or Sentry. Its first
start applies the migrations (about a minute). It is stopped (terminate, then kill) by :meth:`LabelStudioServer.stop`,
and dies with the test process if that is killed (Linux: the parent-death signal).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
USER, PASSWORD = "al-tests@example.com", "al-tests-password"
LEGACY_TOKEN = "al-tests-legacy-token-0123456789"
#: Seconds to wait for the first start (migrations included) on a slow machine.
START_TIMEOUT = 300


class LabelStudioUnavailable(Exception):
    """No label-studio executable here; the message says where it was looked for and how to get one."""


def find_executable() -> Path:
    env = os.environ.get("AL_LABEL_STUDIO")
    path = Path(env) if env else REPO / ".venv-label-studio" / "bin" / "label-studio"
    if not path.is_file():
        raise LabelStudioUnavailable(
            f"no Label Studio server at {path}: create its environment with make label-studio-env (.ci/run does) "
            f"or set AL_LABEL_STUDIO to a label-studio executable"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class LabelStudioServer:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 12000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def personal_access_token(self) -> str:
        """The user's personal access token (a JWT refresh token), created through the API with the legacy token
        (a user has one at a time: the first call creates it, and Label Studio shows it only then)."""
        r = httpx.post(f"{self.url}/api/token/", headers={"Authorization": f"Token {LEGACY_TOKEN}"}, timeout=30)
        r.raise_for_status()
        return r.json()["token"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)


def start_server(base: Path) -> LabelStudioServer:
    """Start Label Studio with its data under ``base`` and wait until it answers; raises LabelStudioUnavailable
    without the executable, RuntimeError (with the server's log) when it does not come up."""
    exe = find_executable()
    port = free_port()
    base.mkdir(parents=True, exist_ok=True)
    log = base / "label-studio.log"
    env = {
        **os.environ,
        "HOME": str(base),  # nothing is written to the real home folder
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("LABEL_STUDIO_API_KEY", None)
    cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    cmd += ["--data-dir", str(base / "data"), "--username", USER, "--password", PASSWORD]
    cmd += ["--user-token", LEGACY_TOKEN, "--enable-legacy-api-token", "--log-level", "WARNING"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=base,
            preexec_fn=_die_with_parent,
        )
    server = LabelStudioServer(proc, port, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"label-studio exited with {proc.returncode} at start:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.stop()
    raise RuntimeError(f"label-studio did not answer on {server.url} within {START_TIMEOUT}s:\n{server.log_tail()}")
