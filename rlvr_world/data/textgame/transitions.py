"""Text-game transitions: the record type, state validation, the gold answer diff, JSONL I/O, ByteSized32 loading.

A **state** is a list of objects ``{"name": str, "uuid": int, "type": str, "properties": dict, "contains": [int]}``
followed by the score dict ``{"score": number, "gameOver": bool, "gameWon": bool}`` as its LAST element (the
ByteSized32 state-prediction layout that ``rlvr_world.rewards.text_game`` scores).

Decisions:

* A :class:`Transition` stores both full states (``current_state`` before the action, ``next_state`` after the
  action and one tick of the world clock); the answer a model must give is :func:`gold_diff` of the two.
  ``changed`` is True when any object or the score differs.
* ``gold_diff`` lists, in the next state's order, every object that is new or differs in any field from its
  current version (compared as written: ``contains`` order counts, so an exact copy is always right), the uuids
  that disappeared (sorted), and the next score dict in full.
* ``write_jsonl`` writes one compact JSON object per line through a temporary file in the same folder and
  ``os.replace``, so a reader never sees half a file. ``read_jsonl`` reports the file and line number of a
  malformed line or a record failing :meth:`Transition.from_dict`.
* Splits live in separate files (``train.jsonl``, ``val.jsonl``, ``test.jsonl``) in a data root;
  :func:`split_files` names them and :func:`load_split` reads one.
* :func:`load_bytesized32` reads the ByteSized32 state-prediction JSONL written by the GPT-simulator crawler.
  Fields read per line: ``game``, ``state_id``, ``action`` (else ``tick_state.lastAction``),
  ``current_state.{objects, taskDesc, max_UUID}``, ``tick_state.objects``, ``current_score_state`` and
  ``next_score_state``. The target is ``tick_state`` (the action *and* one tick); ``action_state`` is not read.
  ``contains`` lists written as object names (the crawler's layout) are mapped to uuids by name within the same
  state (repeated names take the objects of that name in order); ints are kept. ``variation`` is 0.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = ["SCORE_KEYS", "SOURCES", "SPLITS", "Transition", "check_state", "gold_diff", "load_bytesized32",
           "load_split", "read_jsonl", "split_files", "state_chars", "write_jsonl"]

SOURCES = ("scienceworld", "bytesized32")
SPLITS = ("train", "val", "test")
SCORE_KEYS = ("score", "gameOver", "gameWon")
_OBJECT_KEYS = {"name": str, "uuid": int, "type": str, "properties": dict, "contains": list}


def _kind(value) -> str:
    return type(value).__name__


def check_state(state, where: str = "state") -> None:
    """Raise ValueError (naming ``where``, the position, the expected and the received) unless ``state`` is a
    list of objects followed by a score dict."""
    if not isinstance(state, list) or not state:
        raise ValueError(f"{where}: expected a non-empty list (objects then a score dict), got {_kind(state)}"
                         + (" of length 0" if isinstance(state, list) else ""))
    *objects, points = state
    if not isinstance(points, dict) or "uuid" in points:
        raise ValueError(f"{where}[{len(state) - 1}]: expected the score dict {{'score', 'gameOver', 'gameWon'}} "
                         f"as the last item, got {_kind(points)} {str(points)[:80]}")
    for key in SCORE_KEYS:
        if key not in points:
            raise ValueError(f"{where}[{len(state) - 1}] (score dict): missing key {key!r}, got keys {sorted(points)}")
    if isinstance(points["score"], bool) or not isinstance(points["score"], (int, float)):
        raise ValueError(f"{where}[{len(state) - 1}].score: expected a number, got {_kind(points['score'])}")  # noqa: TRY004
    for key in ("gameOver", "gameWon"):
        if not isinstance(points[key], bool):
            raise ValueError(f"{where}[{len(state) - 1}].{key}: expected bool, got {_kind(points[key])}")  # noqa: TRY004
    seen = set()
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise ValueError(f"{where}[{i}]: expected an object dict, got {_kind(obj)}")  # noqa: TRY004
        for key, typ in _OBJECT_KEYS.items():
            if key not in obj:
                raise ValueError(f"{where}[{i}]: missing key {key!r}, got keys {sorted(obj)}")
            value = obj[key]
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise ValueError(f"{where}[{i}].{key}: expected {typ.__name__}, got {_kind(value)}")
        if obj["uuid"] in seen:
            raise ValueError(f"{where}[{i}].uuid: duplicate uuid {obj['uuid']}")
        seen.add(obj["uuid"])
        bad = [u for u in obj["contains"] if not isinstance(u, int) or isinstance(u, bool)]
        if bad:
            raise ValueError(f"{where}[{i}].contains: expected a list of int uuids, got {bad[0]!r}")


def state_chars(state: list) -> int:
    """Length of the compact JSON of ``state`` (``separators=(",", ":")``)."""
    return len(json.dumps(state, separators=(",", ":")))


def gold_diff(current_state: list, next_state: list) -> dict:
    """The minimal exact answer ``{"modified": [objects], "removed": [uuids], "score": {score dict}}`` that turns
    ``current_state`` into ``next_state`` (see the module docstring)."""
    before = {obj["uuid"]: obj for obj in current_state[:-1]}
    after = [obj for obj in next_state[:-1]]
    after_ids = {obj["uuid"] for obj in after}
    return {"modified": [obj for obj in after if before.get(obj["uuid"]) != obj],
            "removed": sorted(u for u in before if u not in after_ids),
            "score": dict(next_state[-1])}


@dataclass
class Transition:
    """One action of a text game: ``current_state`` --``action`` (+ one tick)--> ``next_state``.

    ``id`` is unique in a dataset (``"<source>/<task>/<variation>/<step>"`` for ScienceWorld); ``max_uuid`` is the
    largest uuid the game had allocated before the action (new objects get larger ones)."""

    id: str
    source: str
    task: str
    variation: int
    step: int
    task_description: str
    action: str
    current_state: list
    next_state: list
    max_uuid: int
    changed: bool

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> Transition:
        """Build a checked record; raises ValueError naming the bad field, the expected and the received."""
        if not isinstance(data, dict):
            raise ValueError(f"transition: expected a dict, got {_kind(data)}")  # noqa: TRY004
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"transition: missing field {missing[0]!r} (expected fields {names}, "
                             f"got {sorted(data)})")
        types = {"id": str, "source": str, "task": str, "variation": int, "step": int, "task_description": str,
                 "action": str, "current_state": list, "next_state": list, "max_uuid": int, "changed": bool}
        for name, typ in types.items():
            value = data[name]
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise ValueError(f"transition field {name!r}: expected {typ.__name__}, got {_kind(value)} "
                                 f"{str(value)[:60]!r}")
        if data["source"] not in SOURCES:
            raise ValueError(f"transition field 'source': expected one of {SOURCES}, got {data['source']!r}")
        check_state(data["current_state"], "transition field 'current_state'")
        check_state(data["next_state"], "transition field 'next_state'")
        return cls(**{n: data[n] for n in names})


def _dump(record) -> str:
    data = record.to_dict() if isinstance(record, Transition) else record
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def write_jsonl(path: str | os.PathLike, records: Iterable[Transition | dict]) -> int:
    """Write ``records`` (Transitions or their dicts), one per line, atomically; returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(_dump(record) + "\n")
                count += 1
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return count


def read_jsonl(path: str | os.PathLike) -> list[Transition]:
    """Read and check every record of ``path``; errors name the file and the 1-based line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no transitions file at {path}")
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno})") from None
            try:
                out.append(Transition.from_dict(data))
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from None
    return out


def split_files(root: str | os.PathLike) -> dict[str, Path]:
    """``{"train": root/train.jsonl, "val": root/val.jsonl, "test": root/test.jsonl}``."""
    return {split: Path(root) / f"{split}.jsonl" for split in SPLITS}


def load_split(root: str | os.PathLike, split: str) -> list[Transition]:
    """The records of one split of a data root."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return read_jsonl(split_files(root)[split])


# ---------------------------------------------------------------- ByteSized32 (GPT-simulator) layout


def _bs32_objects(objects: Sequence, where: str) -> list[dict]:
    if not isinstance(objects, list):
        raise ValueError(f"{where}: expected a list of objects, got {_kind(objects)}")  # noqa: TRY004
    by_name: dict[str, list[int]] = {}
    for obj in objects:
        by_name.setdefault(str(obj.get("name")), []).append(obj.get("uuid"))
    out = []
    for i, obj in enumerate(objects):
        taken: dict[str, int] = {}
        contains = []
        for item in obj.get("contains") or []:
            if isinstance(item, int) and not isinstance(item, bool):
                contains.append(item)
                continue
            ids = by_name.get(str(item), [])
            k = taken.get(str(item), 0)
            if k >= len(ids):
                raise ValueError(f"{where}[{i}].contains: {item!r} names no object of this state")
            contains.append(ids[k])
            taken[str(item)] = k + 1
        out.append({"name": str(obj.get("name")), "uuid": obj.get("uuid"), "type": str(obj.get("type", "")),
                    "properties": dict(obj.get("properties") or {}), "contains": contains})
    return out


def _bs32_score(points, where: str) -> dict:
    if not isinstance(points, dict):
        raise ValueError(f"{where}: expected a score dict, got {_kind(points)}")  # noqa: TRY004
    return {"score": points.get("score", 0), "gameOver": bool(points.get("gameOver", False)),
            "gameWon": bool(points.get("gameWon", False))}


def _finite(state: list) -> bool:
    try:
        json.dumps(state, allow_nan=False)
    except ValueError:
        return False
    return not any(isinstance(v, float) and math.isinf(v) for v in state[-1].values())


def load_bytesized32(path: str | os.PathLike) -> list[Transition]:
    """Transitions of a ByteSized32 state-prediction JSONL file (fields: see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ByteSized32 file at {path}")
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
            try:
                cur, tick = row["current_state"], row["tick_state"]
                current = _bs32_objects(cur["objects"], "current_state.objects")
                current.append(_bs32_score(row["current_score_state"], "current_score_state"))
                nxt = _bs32_objects(tick["objects"], "tick_state.objects")
                nxt.append(_bs32_score(row["next_score_state"], "next_score_state"))
                action = row.get("action", tick.get("lastAction", ""))
                data = {"id": f"bytesized32/{row['game']}/{row.get('state_id', number - 1)}",
                        "source": "bytesized32", "task": str(row["game"]), "variation": 0,
                        "step": int(row.get("state_id", number - 1)), "task_description": str(cur.get("taskDesc", "")),
                        "action": str(action), "current_state": current, "next_state": nxt,
                        "max_uuid": int(cur.get("max_UUID", max([o["uuid"] for o in current[:-1]] or [0]))),
                        "changed": current != nxt}
                if not _finite(current) or not _finite(nxt):
                    raise ValueError("state holds a non-finite number")
                out.append(Transition.from_dict(data))
            except KeyError as err:
                raise ValueError(f"{where}: missing field {err.args[0]!r}") from None
            except (ValueError, TypeError, AttributeError) as err:
                raise ValueError(f"{where}: {err}") from None
    return out
