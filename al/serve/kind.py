"""The ``--oracle web`` kind, registered through the ``al.oracles`` entry-point group (``web =
"al.serve.kind:WEB"``). Light on purpose: every ``--oracle`` lookup may load it, so FastAPI and uvicorn are
imported only when a web oracle starts its server."""

from __future__ import annotations

from ..errors import OracleError
from ..oracles.base import Oracle
from ..oracles.registry import OracleContext, OracleKind
from .security import DEFAULT_HOST, DEFAULT_PORT, check_host, check_port, decide_token


def build(arg: str, ctx: OracleContext) -> Oracle:
    """A :class:`al.serve.oracle.WebOracle` from the command line's settings (``ctx.options``: ``store_url``,
    ``web_host``, ``web_port``, ``web_token``). A non-loopback host without a token gets a generated one; nothing
    is bound until the first round."""
    from .oracle import WebOracle

    if ctx.dataset is None:
        raise OracleError("--oracle web shows the queried samples on its page, so it needs the dataset; pass dataset=")
    options = ctx.options
    store_url = options.get("store_url")
    if not store_url:
        raise OracleError(
            "--oracle web needs the run's store URL (options['store_url']): the page stores answers there"
        )
    host = check_host(str(options.get("web_host") or DEFAULT_HOST), "--web-host")
    raw_port = options.get("web_port")
    port = check_port(DEFAULT_PORT if raw_port is None else raw_port, "--web-port")
    decision = decide_token(host, options.get("web_token"), flag="--web-token")
    return WebOracle(
        ctx.dataset,
        str(store_url),
        host=host,
        port=port,
        token=decision.token,
        token_generated=decision.generated,
        n_classes=ctx.n_classes,
    )


WEB = OracleKind("web", build, usage="web")
