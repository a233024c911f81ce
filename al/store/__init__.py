"""The store: a small typed wrapper over private SQLAlchemy tables. It is the truth about every run.

A round moves ``queried -> labelled -> complete``, each step one transaction: the query (ids, ranks, scores)
is written before the oracle is asked, labels as they arrive, metrics last. A fresh process rebuilds the
labelled set and the pending query from these rows and carries on. Schema 3 adds what each sample id is
(``record_sample_keys``, ``sample_keys``, ``exclude_samples``, ``excluded_samples``) and named values per round
(``record_round_values``, ``round_values``), e.g. a stopping criterion's.

Modules: ``_tables`` (the private ORM tables and their constraints), ``engine`` (URL and driver, SQLite file
checks and pragmas), ``migrations`` (schema versions and upgrades), ``configs`` (canonical config text and
diffs), ``claims`` (one writer per run, fencing, the heartbeat thread), ``records`` (the frozen records handed
out), ``api`` (``Store``: runs and round transitions), ``readers`` (DataFrames), ``faults`` (crash injection).
"""

from ..errors import ConfigMismatchError, StoreError  # raised here; importable from here as before
from ._tables import ROUND_STATES, RUN_STATUSES, SCORE_STATS
from .api import DEFAULT_URL, Store
from .claims import HEARTBEAT_S, STALE_AFTER_S, Heartbeat
from .engine import display_url, hide_passwords, sqlite_file_missing
from .faults import crash_point
from .migrations import SCHEMA_VERSION, StoreUpgradedWarning
from .records import RoundRecord, RunRecord, RunState, score_summary

__all__ = [
    "ConfigMismatchError",
    "StoreError",
    "DEFAULT_URL",
    "HEARTBEAT_S",
    "Heartbeat",
    "ROUND_STATES",
    "RUN_STATUSES",
    "RoundRecord",
    "RunRecord",
    "RunState",
    "SCHEMA_VERSION",
    "SCORE_STATS",
    "STALE_AFTER_S",
    "Store",
    "StoreUpgradedWarning",
    "crash_point",
    "display_url",
    "hide_passwords",
    "score_summary",
    "sqlite_file_missing",
]
