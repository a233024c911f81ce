"""Label Studio's formats, shared by ``--oracle label-studio-files`` (files) and ``--oracle label-studio`` (a live
server): the labelling configuration, a round's queries as tasks, and the answers read back from a JSON export.

A task's ``data`` holds the sample (``image``: a data URI, the file's own bytes for a pool of files and an
enlarged PNG for built-in datasets; ``text``: a table row's key and values), ``al_id`` (the sample id),
``al_run`` (the run's name), ``al_round``, ``al_rank`` (0 = asked first), ``uncertainty`` (the acquisition
score, so that the Data Manager can sort by it) and ``al_key`` (the file's path or the row's id) when there is
one. From round 1 on a task also carries a ``prediction``: the model's most probable class, with ``score`` = its
probability (the model's confidence; Label Studio's uncertainty sampling asks for low scores first).

Answer policy, one for both oracles (:func:`answers_from_choices`): a cancelled (skipped) annotation is ignored;
several annotations of one task that choose different classes are refused for that sample and reported with the
choices (the person keeps one); an annotation that changes a stored label is refused (stored labels are final);
an answer naming no class, or for a sample not queried in this round, is refused; a queried sample without a
task stays pending. Only answers for pending samples are returned, through the validation every oracle's answers
go through.
"""

from __future__ import annotations

import base64
import mimetypes
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import numpy as np

from .base import Answers, RoundInfo
from .human import png_bytes, to_unit_image

if TYPE_CHECKING:
    from ..pool import Pool


@dataclass(frozen=True)
class ConfigNames:
    """Where a labelling configuration puts things: the Choices control's name (``from_name`` of a result), the
    object it labels (``to_name``), that object's tag, and the task data key the object shows (``$image``)."""

    from_name: str = "label"
    to_name: str = "image"
    data_key: str = "image"
    tag: str = "Image"


#: The names of al's own configuration for images and for table rows.
IMAGE_NAMES = ConfigNames()
TEXT_NAMES = ConfigNames(to_name="text", data_key="text", tag="Text")


def shows_text(dataset: Pool) -> bool:
    """True for a pool of table rows (shown as text), False for images."""
    return len(dataset.input_shape) != 3


def labelling_config(classes: Iterable[str], names: ConfigNames = IMAGE_NAMES) -> str:
    """Label Studio's labelling configuration for single-choice classification into ``classes`` of the object
    ``names`` describes (an image, or a table row as text)."""
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    extra = ' zoom="true"' if names.tag == "Image" else ""
    return (
        f"<View>\n  <{names.tag} name={quoteattr(names.to_name)} value={quoteattr('$' + names.data_key)}{extra}/>\n"
        f'  <Choices name={quoteattr(names.from_name)} toName={quoteattr(names.to_name)} choice="single" '
        f'showInline="true">\n{choices}\n  </Choices>\n</View>\n'
    )


def config_names(config: str, classes: Sequence[str], text: bool) -> ConfigNames:
    """The names of a project's labelling configuration that fits ``classes``: a ``Choices`` whose choices are
    exactly the classes, labelling an ``Image`` (``text``: a ``Text`` or ``HyperText``) that shows one task data
    key. Raises ValueError saying what does not fit."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError as e:
        raise ValueError(f"its labelling config is not XML ({e})") from None
    objects = {el.get("name"): el for el in root.iter() if el.get("value", "").startswith("$")}
    wanted = ("Text", "HyperText") if text else ("Image",)
    found: list[str] = []
    for ch in root.iter("Choices"):
        # A choice's alias, when it has one, is what annotations record.
        values = [c.get("alias") or c.get("value") or "" for c in ch.iter("Choice")]
        found.append(", ".join(values) or "no choices")
        obj = objects.get(ch.get("toName"))
        if sorted(values) != sorted(map(str, classes)) or obj is None or obj.tag not in wanted:
            continue
        return ConfigNames(str(ch.get("name")), str(ch.get("toName")), str(obj.get("value"))[1:], obj.tag)
    what = "a table row as text (Text)" if text else "an image (Image)"
    has = "; ".join(found) if found else "none"
    raise ValueError(
        f"its labelling config has no Choices with exactly the classes {', '.join(map(str, classes))} labelling "
        f"{what} (its Choices: {has})"
    )


def sample_data(dataset: Pool, sid: int, text: bool) -> str:
    """What a person labels: a data URI of the image, or a table row's key and values as text."""
    if text:
        row = dataset.row_of(sid) or {}
        keys = dataset.keys
        head = [f"{keys[sid]}"] if keys is not None and keys[sid] is not None else []
        return "\n".join(head + [f"{k} = {v:g}" for k, v in row.items()])
    path = dataset.path_of(sid)
    if path is not None:
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = path.read_bytes()
    else:
        mime, data = "image/png", png_bytes(to_unit_image(dataset, sid))
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def prediction(info: RoundInfo, sid: int, classes: Sequence[str], names: ConfigNames) -> dict[str, Any] | None:
    """The model's guess for ``sid`` as a Label Studio prediction (its top class, ``score`` = that class's
    probability), or None when the round has none (round 0: no model chose it)."""
    guesses = info.guesses.get(sid)
    if not guesses:
        return None
    k, p = guesses[0]
    choice = {"choices": [str(classes[int(k)])]}
    result = {"from_name": names.from_name, "to_name": names.to_name, "type": "choices", "value": choice}
    return {"model_version": f"al round {info.round_idx}", "score": float(p), "result": [result]}


def round_tasks(
    info: RoundInfo, dataset: Pool, names: ConfigNames, only: Iterable[int] | None = None
) -> list[dict[str, Any]]:
    """The round's queries (``only`` those ids, when given) as Label Studio tasks, in rank order."""
    text = shows_text(dataset)
    keep = None if only is None else {int(i) for i in only}
    keys = dataset.keys
    tasks = []
    for sid, rank, score in info.query[["sample_id", "rank", "score"]].itertuples(index=False):
        sid = int(sid)
        if keep is not None and sid not in keep:
            continue
        data: dict[str, Any] = {names.data_key: sample_data(dataset, sid, text), "al_id": sid}
        if info.run_name:
            data["al_run"] = info.run_name
        data["al_round"] = info.round_idx
        data["al_rank"] = int(rank)
        if score is not None and not (isinstance(score, float) and np.isnan(score)):
            data["uncertainty"] = float(score)
        if keys is not None and keys[sid] is not None:
            data["al_key"] = keys[sid]
        task: dict[str, Any] = {"data": data}
        guess = prediction(info, sid, dataset.classes, names)
        if guess is not None:
            task["predictions"] = [guess]
        tasks.append(task)
    return tasks


def read_choices(tasks: Any, where: str, run_name: str, refused: list[str], out: dict[int, dict[Any, str]]) -> None:
    """Add to ``out`` {sample id: {annotation id: chosen class name}} from one JSON export (``tasks``, a list of
    tasks; ``where`` names it in messages). Cancelled annotations and annotations without a choice (drafts) are
    left out; tasks that al did not make, or made for another run, are skipped; problems go to ``refused``."""
    if not isinstance(tasks, list):
        refused.append(f"{where}: not a Label Studio JSON export (a list of tasks); export as JSON")
        return
    for t in tasks:
        data = t.get("data", {}) if isinstance(t, dict) else {}
        sid = data.get("al_id")
        if not isinstance(sid, int) or data.get("al_run", run_name) != run_name:
            continue
        for k, a in enumerate(t.get("annotations") or []):
            if a.get("was_cancelled"):
                continue
            names = [
                c
                for r in a.get("result") or []
                if r.get("type") == "choices"
                for c in (r.get("value") or {}).get("choices") or []
            ]
            if not names:
                continue
            if len(names) > 1:
                refused.append(f"{where}: sample {sid}: one annotation chooses {names}; choose one class")
                continue
            out.setdefault(sid, {})[a.get("id", (where, k))] = str(names[0])


def answers_from_choices(
    choices: Mapping[int, Mapping[Any, str]],
    info: RoundInfo,
    classes: Sequence[str],
    pending: Iterable[int],
    refused: list[str],
    again: str,
) -> Answers:
    """The answers for ``pending`` samples by the policy in the module docstring; ``again`` ends the messages that
    ask the person to fix something in Label Studio ("export again", "run the same command again")."""
    pending_set = {int(i) for i in pending}
    queried = {int(i) for i in info.query["sample_id"]}
    index = {str(c): k for k, c in enumerate(classes)}
    taken: dict[int, int] = {}
    for sid, by_annotation in sorted(choices.items()):
        names = sorted(set(by_annotation.values()))
        if len(names) > 1:
            refused.append(
                f"sample {sid}: its annotations disagree ({', '.join(names)}); keep one answer in Label Studio "
                f"and {again}"
            )
            continue
        name = names[0]
        if name not in index:
            refused.append(f"sample {sid}: {name!r} is not one of the classes {list(index)}")
            continue
        y = index[name]
        if sid in info.labels:
            if info.labels[sid] != y:
                refused.append(
                    f"sample {sid}: annotated {name!r}, but its label {classes[info.labels[sid]]!r} is stored "
                    f"(round {info.label_round.get(sid)}); stored labels are final"
                )
            continue
        if sid not in queried:
            refused.append(f"sample {sid}: was not queried in round {info.round_idx}")
            continue
        if sid in pending_set:
            taken[sid] = y
    return Answers(taken, refused)
