"""``al``'s own labelling page and live dashboard (issue 14, part 1).

Two ways in, one app (:func:`al.serve.app.create_app`):

- ``python -m al.bench ... --oracle web`` runs the loop and the page in one process: the web oracle
  (:class:`al.serve.oracle.WebOracle`) starts the server in a thread at its first round, prints the URL, and waits
  while a person answers in the browser; every answer is stored the moment it is given (through
  :func:`al.labelling.submit_answers`, the CSV oracle's validation), so the loop only waits for the store to hold a
  label for every queried sample of the round.
- ``python -m al.serve --store URL`` serves the dashboard (learning curves, per-round uncertainty and stopping values,
  runs in progress) and the read-only API for any store. It labels nothing: only the loop's process has the pool
  and the model, so a run waiting for web labels is continued by its own ``al.bench ... --oracle web`` command (one
  writer per run).

Importing this package is light (no FastAPI, no uvicorn): the oracle kind (:mod:`al.serve.kind`) is loaded with
every ``--oracle`` lookup, and the security decision (:mod:`al.serve.security`) is tested without a server.
"""

from .security import DEFAULT_HOST, TOKEN_ENV, TokenDecision, decide_token, is_loopback

__all__ = ["DEFAULT_HOST", "TOKEN_ENV", "TokenDecision", "decide_token", "is_loopback"]
