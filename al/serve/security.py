"""Who may use the server: the bind address decides whether a token is needed, and the token is checked on every
request (see :class:`al.serve.app.Guard`). No FastAPI here: the decision is tested without a server.

Rules (README, "Labelling in the browser: security"):

- The default bind is 127.0.0.1. Loopback (``127.0.0.1``, ``localhost``, ``::1``) may run without a token.
- Any other host needs one: ``--token`` (``--web-token`` for ``al.bench``), else the environment variable
  ``AL_WEB_TOKEN``, else one generated with :func:`secrets.token_urlsafe` and printed at start.
- A token given on loopback is enforced too.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: The environment variable a token may come from.
TOKEN_ENV = "AL_WEB_TOKEN"
#: The hosts that count as loopback: a server bound to one of them is reachable from this machine only.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
#: A token is text that travels in a header, a cookie and a URL unchanged: URL-safe characters, 8 at least.
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{8,256}")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    return host.strip().lower() in LOOPBACK_HOSTS


@dataclass(frozen=True)
class TokenDecision:
    """The token a server checks (None: no check, loopback only) and where it came from: "flag", "env",
    "generated" or "none"."""

    token: str | None
    source: str

    @property
    def generated(self) -> bool:
        return self.source == "generated"


def decide_token(
    host: str, token: str | None, env: Mapping[str, str] | None = None, *, flag: str = "--token"
) -> TokenDecision:
    """The token for a server bound to ``host``: ``token`` if given, else ``env[AL_WEB_TOKEN]``, else (only when
    ``host`` is not loopback) a fresh one; on loopback with neither, no token. A malformed token is a ConfigError
    naming ``flag``."""
    env = os.environ if env is None else env
    source = "flag"
    if token is None and env.get(TOKEN_ENV):
        token, source = env[TOKEN_ENV], "env"
    if token is not None:
        if not _TOKEN.fullmatch(token):
            where = flag if source == "flag" else TOKEN_ENV
            raise ConfigError(
                f"{where} must be 8 to 256 URL-safe characters (letters, digits, . _ ~ -); leave it out and a token "
                f"is generated for a non-loopback --host"
            )
        return TokenDecision(token, source)
    if is_loopback(host):
        return TokenDecision(None, "none")
    return TokenDecision(secrets.token_urlsafe(24), "generated")


def check_host(host: str, flag: str = "--host") -> str:
    """``host`` stripped; a ConfigError for an empty one."""
    h = host.strip()
    if not h:
        raise ConfigError(f"{flag} is empty; give an address to bind, e.g. {flag} {DEFAULT_HOST}")
    return h


def check_port(port: int, flag: str = "--port") -> int:
    """``port`` when it is a TCP port number or 0 (any free port); a ConfigError otherwise."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{flag} must be a port number in 0..65535 (0: any free port), got {port!r}")
    return port


def url_host(host: str) -> str:
    """``host`` as written in a URL (an IPv6 address in brackets)."""
    h = host.strip("[]")
    return f"[{h}]" if ":" in h else h
