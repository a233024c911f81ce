"""``python -m al.serve``: the dashboard and the read-only API for any store.

    python -m al.serve --store sqlite:///al-runs.db [--run NAME] [--host 127.0.0.1 --port 8000] [--token T]

It labels nothing: a run waiting for web labels is labelled by its own ``python -m al.bench ... --oracle web``
command (only that process has the pool and the model, and it stays the run's one writer); the dashboard lists such
runs with that hint. Binds 127.0.0.1 by default; any other ``--host`` needs a token (``--token``, else
``AL_WEB_TOKEN``, else one is generated and printed).

Exit codes: 0 stopped with Ctrl-C; 2 bad usage (no such store or run, a malformed token, an address that cannot be
bound), nothing served.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..cli_parser import OneLineParser
from ..errors import ConfigError, StoreError
from .security import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV, TokenDecision, check_host, check_port, decide_token


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m al.serve",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    a = p.add_argument
    a("--store", required=True, help="SQLAlchemy URL of the store, e.g. sqlite:///al-runs.db")
    a("--run", help="the run the dashboard shows first (default: the most recently updated)")
    a("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; any other needs a token)")
    a("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    a("--token", help=f"token every request must carry (default ${TOKEN_ENV}; generated for a non-loopback --host)")
    return p


@dataclass(frozen=True)
class ServeSettings:
    store: str
    run: str | None
    host: str
    port: int
    token: TokenDecision


def settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServeSettings:
    """The command line read and checked, binding nothing (ConfigError for a bad value; SystemExit(2) for a usage
    error, as argparse does)."""
    args = build_parser().parse_args(argv)
    host = check_host(args.host)
    return ServeSettings(args.store, args.run, host, check_port(args.port), decide_token(host, args.token, env))


def _check_run(store, name: str) -> None:  # noqa: ANN001 - a Store
    runs = list(store.runs()["run"])
    if name not in runs:
        close = difflib.get_close_matches(name, runs, n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"no run named {name!r} in {store.shown_url}{hint}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        s = settings(argv)
        from ..store import Store
        from .app import create_app
        from .server import base_url, bind, serve_forever

        store = Store(s.store, must_exist=True)
        if s.run is not None:
            _check_run(store, s.run)
        app = create_app(s.store, token=s.token.token, run=s.run, bind_host=s.host, store=store)
        sock = bind(s.host, s.port)
    except (ConfigError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(
            f"error: al.serve needs FastAPI, uvicorn and Jinja2 ({e}); pip install fastapi uvicorn jinja2",
            file=sys.stderr,
        )
        return 2
    url = base_url(sock, s.host)
    suffix = f"?token={s.token.token}" if s.token.token else ""
    print(f"dashboard: {url}/dashboard{suffix}  (store {store.shown_url}; Ctrl-C stops)", flush=True)
    if s.token.generated:
        print("(the token was generated for this session; pass --token or set AL_WEB_TOKEN to choose one)", flush=True)
    serve_forever(app, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
