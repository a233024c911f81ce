"""``--oracle label-studio``: people label each round's queries in a running Label Studio server.

``python -m al.bench --pool photos/ --classes cat,dog,fox --oracle label-studio --label-studio-url URL
[--label-studio-project ID]``, with the API token in ``LABEL_STUDIO_API_KEY`` (a personal access token, which the
SDK exchanges for short-lived access tokens, or a legacy token where the organisation allows them).

What lands in Label Studio:

- A project: the one given by ``--label-studio-project`` (its labelling config must fit the classes: a
  ``Choices`` with exactly the class names, labelling an ``Image``, or a ``Text`` for table rows), or else the
  run's own project, found by its description (``al run: NAME``) and created with al's config when absent.
- Each round's queries as tasks, imported once (in rank order, so Label Studio's default sequential order asks
  the most uncertain first), in the format of :mod:`al.oracles.label_studio_format`: the image as a data URI
  (a table row as text), ``al_id``, ``al_run``, ``al_round``, ``al_rank`` and ``uncertainty`` in ``data``, and,
  from round 1 on, a prediction with the model's top class and ``score`` = its probability. Running the same
  command again finds the round's tasks (a Data Manager filter on ``al_run`` and ``al_round``) and imports
  nothing; only when none of them is left does it import the round again.

Answers come from the project's JSON export (of the round's tasks), read by the policy every Label Studio
oracle shares (:func:`al.oracles.label_studio_format.answers_from_choices`): skips ignored, disagreeing
annotations refused for that sample, annotations that change a stored label refused; a pending sample whose
task was deleted is reported and stays pending. With ``--label-studio-poll 0`` (the default) the export is read
once and the run waits (exit 3) for the same command; with ``SECONDS`` > 0 it is read again every SECONDS until
every queried sample whose task is there has a label. Annotations changed in Label Studio after their round
closed are not read again: the round's stored labels are final.

Errors (an unreachable server, a refused token, a project that does not fit) are one-line OracleErrors naming
the URL and the fix; the query is saved before the oracle is asked, so the same command continues.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import numpy as np

from ..errors import OracleError
from .base import Answers, Oracle, RoundInfo
from .label_studio_format import (
    IMAGE_NAMES,
    TEXT_NAMES,
    ConfigNames,
    answers_from_choices,
    config_names,
    labelling_config,
    read_choices,
    round_tasks,
    shows_text,
)

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from ..pool import Pool
    from .registry import OracleContext

T = TypeVar("T")

#: The environment variable that holds the API token (the SDK's own name for it).
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
#: Tasks per export request: their ids travel in the URL.
EXPORT_CHUNK = 200
#: Label Studio's limit on a project title.
TITLE_MAX = 50
_HOW_TO_TOKEN = (
    f"set {TOKEN_ENV} to a token of that server (Label Studio: Account & Settings > Personal Access Token, or the "
    f"legacy token where the organisation enables legacy tokens)"
)


def build(arg: str, ctx: OracleContext) -> Oracle:
    """The ``label-studio`` oracle kind's builder: settings from ``ctx.options`` (``label_studio_url``,
    ``label_studio_project``, ``label_studio_poll``), the token from ``LABEL_STUDIO_API_KEY``."""
    if ctx.dataset is None:
        raise OracleError("--oracle label-studio shows the queried samples, so it needs the dataset; pass dataset=")
    opts = ctx.options
    url = opts.get("label_studio_url")
    if not url:
        raise OracleError(
            "--oracle label-studio needs --label-studio-url URL: the address of a running Label Studio "
            "(e.g. http://127.0.0.1:8080)"
        )
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise OracleError(f"--oracle label-studio needs an API token for {url}: {_HOW_TO_TOKEN}")
    return LabelStudioOracle(
        str(url),
        ctx.dataset,
        token=token,
        project=opts.get("label_studio_project"),
        poll=float(opts.get("label_studio_poll") or 0.0),
    )


class LabelStudioOracle(Oracle):
    """Tasks into a Label Studio project, answers out of its JSON export (see the module docstring).

    url: the server's address; token: its API token; project: a project id to use (None: the run's own project,
    created when absent); poll: seconds between reads of the export while labels are awaited (0: read once);
    out: where progress notes go (default stderr). Connects and checks the token (and the project) at once.
    """

    name = "label-studio"

    def __init__(
        self,
        url: str,
        dataset: Pool,
        *,
        token: str,
        project: int | None = None,
        poll: float = 0.0,
        out: TextIO | None = None,
    ) -> None:
        try:
            import httpx
            from label_studio_sdk import LabelStudio
            from label_studio_sdk.core.api_error import ApiError
        except ImportError as e:
            raise OracleError(
                f"--oracle label-studio talks to Label Studio through label-studio-sdk, which is not installed "
                f"({e}); pip install 'label-studio-sdk>=2' (or al's extra: pip install -e '.[label-studio]')"
            ) from None
        if not url.startswith(("http://", "https://")):
            raise OracleError(f"--label-studio-url {url!r} is not an http(s) address; give e.g. http://127.0.0.1:8080")
        if poll < 0:
            raise OracleError(f"--label-studio-poll must be 0 (read once) or a number of seconds, got {poll:g}")
        self.url = url.rstrip("/")
        self.dataset = dataset
        self.text = shows_text(dataset)
        self.poll = poll
        self.out = out
        self.names: ConfigNames = TEXT_NAMES if self.text else IMAGE_NAMES
        self.project_id = project
        self.info: RoundInfo | None = None
        self._tasks: dict[int, list[int]] = {}  # sample id -> its task ids in this round
        self._http = httpx.Client(timeout=60.0, follow_redirects=True)
        try:
            # The SDK decodes a JWT token here, and refuses an expired one.
            self.client: LabelStudio = LabelStudio(base_url=self.url, api_key=token, httpx_client=self._http)
        except ApiError as e:
            self._http.close()
            raise OracleError(
                f"Label Studio at {self.url} refused the API token ({_detail(e)}); {_HOW_TO_TOKEN}"
            ) from None
        try:
            self._call("check the API token", self.client.users.whoami)
            if project is not None:
                self._check_project(project)
        except OracleError:
            self._http.close()
            raise

    # --- talking to the server --------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., T], *args: Any, on_404: str | None = None, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, an SDK call; its failures become one-line OracleErrors naming the URL and the
        fix (``what`` says what al was doing; ``on_404`` is the message for a 404 answer)."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        again = "the query is saved, so run the same command again"
        try:
            return fn(*args, **kwargs)
        except httpx.TransportError as e:
            raise OracleError(
                f"cannot reach Label Studio at {self.url} to {what} ({type(e).__name__}: {e}); start it "
                f"(label-studio start) or fix --label-studio-url; {again}"
            ) from None
        except ApiError as e:
            if e.status_code in (401, 403):
                raise OracleError(
                    f"Label Studio at {self.url} refused the API token ({e.status_code}: {_detail(e)}); "
                    f"{_HOW_TO_TOKEN}; {again}"
                ) from None
            if e.status_code == 404 and on_404:
                raise OracleError(on_404) from None
            raise OracleError(
                f"Label Studio at {self.url} answered {e.status_code} when asked to {what} ({_detail(e)}); {again}"
            ) from None
        except (httpx.HTTPError, ValueError) as e:  # a body that is not what the SDK expects (not JSON, ...)
            raise OracleError(
                f"Label Studio at {self.url} gave an unexpected answer when asked to {what} ({type(e).__name__}: "
                f"{_one_line(str(e))}); check that the URL is Label Studio's; {again}"
            ) from None

    def _check_project(self, pid: int) -> None:
        """Use project ``pid``; an OracleError when it is missing or its labelling config does not fit."""
        missing = (
            f"Label Studio at {self.url} has no project {pid} (or this token cannot see it); give the id from the "
            f"project's address (/projects/ID), or drop --label-studio-project to let al create one"
        )
        project = self._call(f"read project {pid}", self.client.projects.get, pid, on_404=missing)
        self._fit(pid, project.label_config or "", "or drop --label-studio-project to let al create a project")

    def _fit(self, pid: int, config: str, other: str) -> None:
        """Take the names of project ``pid``'s labelling config; an OracleError ending with the fix ``other``
        when it does not fit the classes."""
        try:
            self.names = config_names(config, [str(c) for c in self.dataset.classes], self.text)
        except ValueError as e:
            raise OracleError(
                f"Label Studio project {pid} at {self.url} does not fit this run: {e}; set its Labeling Interface "
                f"to {_one_line(labelling_config(self.dataset.classes, self.names))!r}, {other}"
            ) from None
        self.project_id = pid

    def _run_project(self, run_name: str) -> int:
        """The run's own project: found by its description, created with al's config when absent."""
        marker = f"al run: {run_name}"
        projects = self._call("list projects", _every, self.client.projects.list)
        for p in projects:
            if (p.description or "").strip() == marker:
                config = self._call(f"read project {p.id}", self.client.projects.get, p.id).label_config or ""
                self._fit(int(p.id), config, "or give another project with --label-studio-project")
                return int(p.id)
        title = f"al {run_name}"
        if len(title) > TITLE_MAX:
            title = title[: TITLE_MAX - 3] + "..."
        created = self._call(
            "create a project",
            self.client.projects.create,
            title=title,
            description=marker,
            label_config=labelling_config(self.dataset.classes, self.names),
            show_skip_button=True,
        )
        pid = int(created.id)  # type: ignore[arg-type]
        self._note(f"created Label Studio project {pid} for run {run_name!r}: {self.url}/projects/{pid}/data")
        return pid

    def _round_tasks(self, info: RoundInfo) -> dict[int, list[int]]:
        """{sample id: [task ids]} of the round's tasks in the project (a Data Manager filter on al_run and
        al_round)."""
        items: list[dict[str, Any]] = [
            {"filter": "filter:tasks:data.al_round", "operator": "equal", "type": "Number", "value": info.round_idx}
        ]
        if info.run_name:
            items.append(
                {"filter": "filter:tasks:data.al_run", "operator": "equal", "type": "String", "value": info.run_name}
            )
        query = json.dumps({"filters": {"conjunction": "and", "items": items}})
        pid = self.project_id

        out: dict[int, list[int]] = {}
        listed = self._call(
            f"list the tasks of round {info.round_idx}",
            _every,
            self.client.tasks.list,
            project=pid,
            query=query,
            fields="task_only",
        )
        for t in listed:
            data = t.data or {}
            sid = data.get("al_id")
            # The filter is Label Studio's; check the fields again (a project shared with other runs).
            if (
                isinstance(sid, int)
                and data.get("al_round") == info.round_idx
                and data.get("al_run", info.run_name) == info.run_name
            ):
                out.setdefault(sid, []).append(int(t.id))
        return out

    def _export(self, task_ids: list[int]) -> list[Any]:
        """The project's JSON export of these tasks (those with annotations), through the SDK."""
        pid = self.project_id
        tasks: list[Any] = []
        for k in range(0, len(task_ids), EXPORT_CHUNK):
            ids = [str(i) for i in task_ids[k : k + EXPORT_CHUNK]]

            def download(ids: list[str] = ids) -> bytes:
                # Label Studio reads the ids from "ids[]" (the SDK's own "ids" parameter is not read by the server).
                chunks = self.client.projects.exports.download_sync(
                    pid,  # type: ignore[arg-type]
                    export_type="JSON",
                    download_all_tasks=False,
                    request_options={"additional_query_parameters": {"ids[]": ids}},
                )
                return b"".join(chunks)

            part = json.loads(self._call(f"export project {pid}", download))
            if not isinstance(part, list):
                raise OracleError(f"Label Studio at {self.url}: project {pid}'s JSON export is not a list of tasks")
            tasks += part
        return tasks

    def _note(self, text: str) -> None:
        out = self.out or sys.stderr
        out.write(f"label-studio: {text}\n")
        out.flush()

    # --- the oracle -------------------------------------------------------------------------------------------
    def begin_round(self, info: RoundInfo) -> None:
        """Find (or create) the project and import the round's pending queries, unless its tasks are there."""
        self.info = info
        if self.project_id is None:
            self.project_id = self._run_project(info.run_name)
        self._tasks = self._round_tasks(info)
        pending = [int(i) for i in info.query["sample_id"] if int(i) not in info.labels]
        if self._tasks or not pending:
            return
        tasks = round_tasks(info, self.dataset, self.names, only=pending)
        # One request: Label Studio imports it whole or not at all, so a round is never half imported.
        self._call(
            f"import the tasks of round {info.round_idx}",
            self.client.projects.import_tasks,
            self.project_id,
            request=tasks,
            return_task_ids=True,
        )
        self._tasks = self._round_tasks(info)
        self._note(
            f"imported {len(tasks)} tasks of round {info.round_idx} into project {self.project_id}: "
            f"{self.url}/projects/{self.project_id}/data"
        )

    def how_to_answer(self, round_idx: int) -> str:
        return (
            f"annotate the tasks of round {round_idx} in Label Studio project {self.project_id} "
            f"({self.url}/projects/{self.project_id}/data), then run the same command again"
        )

    def _again(self) -> str:
        """How the person's fix in Label Studio reaches al."""
        return "run the same command again" if self.poll <= 0 else f"al reads it within {self.poll:g}s"

    def _read(self, ids: Iterable[int]) -> tuple[Answers, set[int]]:
        """The answers in the export for ``ids``, and the ids among them whose task was deleted."""
        assert self.info is not None
        info = self.info
        pending = [int(i) for i in ids]
        refused: list[str] = []
        choices: dict[int, dict[Any, str]] = {}
        # Every task of the round, answered or not: an annotation changed after al stored it is reported.
        task_ids = sorted(t for ts in self._tasks.values() for t in ts)
        where = f"project {self.project_id}"
        read_choices(self._export(task_ids) if task_ids else [], where, info.run_name, refused, choices)
        answers = answers_from_choices(choices, info, self.dataset.classes, pending, refused, self._again())
        gone = {sid for sid in pending if sid not in self._tasks}
        keys = self.dataset.keys
        for sid in sorted(gone):
            key = f" ({keys[sid]})" if keys is not None and keys[sid] is not None else ""
            answers.refused.append(
                f"sample {sid}{key}: its task in round {info.round_idx} was deleted in Label Studio, so it stays "
                f"pending; to be asked again, delete the round's other tasks too (al imports a round's pending "
                f"samples when none of its tasks is left)"
            )
        return answers, gone

    def label(self, ids: np.ndarray) -> Answers:
        if self.info is None:
            raise OracleError("LabelStudioOracle.label was called before begin_round")
        wanted = {int(i) for i in ids}
        answers, gone = self._read(wanted)
        shown: set[str] = set()
        if self.poll > 0 and wanted - gone - set(answers):
            self._note(
                f"waiting for {len(wanted - gone - set(answers))} labels of round {self.info.round_idx} in "
                f"{self.url}/projects/{self.project_id}/data, looking every {self.poll:g}s (Ctrl-C stops; the same "
                f"command continues)"
            )
        while self.poll > 0 and wanted - gone - set(answers):
            for msg in answers.refused:
                if msg not in shown:
                    self._note(msg)
                    shown.add(msg)
            time.sleep(self.poll)
            self._tasks = self._round_tasks(self.info)
            answers, gone = self._read(wanted)
        return answers

    def close(self) -> None:
        self._http.close()


#: Items per page when listing.
PAGE = 100


def _every(list_fn: Callable[..., Any], **kwargs: Any) -> list[Any]:
    """Every item of an SDK listing, page by page. The SDK's own iteration asks for the page after the last one
    and takes the server's 404 as the end, which Label Studio logs as an error; a short page ends it here."""
    from label_studio_sdk.core.api_error import ApiError

    page = list_fn(page_size=PAGE, **kwargs)
    items: list[Any] = []
    while page is not None:
        items += page.items or []
        if len(page.items or []) < PAGE:
            break
        try:
            page = page.next_page()
        except ApiError as e:
            if e.status_code != 404:
                raise
            break
    return items


def _detail(e: Any) -> str:
    """A Label Studio API error's message, in one line."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        body = body.get("detail") or body
    return _one_line(str(body))


def _one_line(text: str, limit: int = 300) -> str:
    t = " ".join(text.split())
    return t if len(t) <= limit else t[:limit] + "..."
