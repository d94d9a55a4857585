"""Text-game reward: does a model's predicted ByteSized32 state change match the simulator's? (DESIGN §5)

A state is a list of objects ``{"name", "uuid", "type", "properties": {...}, "contains": [uuids]}``
followed by a score dict ``{"score", "gameOver", "gameWon"}`` as its last element (a state without one
has an empty score). The model answers with the change the action makes:
``{"modified": [full objects], "removed": [uuids], "score": {...}}``.

Choices (RLVR-World's ByteSized32 state-prediction reward, with its bugs fixed):

* **Answer extraction**: the text after the LAST "final answer is:" / "final state is:" marker (any case;
  "is" may be left out: "Final answer:"), else the last ```json (or bare ```) fenced block, else the
  whole response. The first ``{`` .. last ``}`` of it is parsed leniently: JSON, then JSON without trailing
  commas, then a Python literal (single quotes, True/False/None), then a Python literal with
  true/false/null mapped. A format error (nothing parses, not a dict, none of the three keys, ``modified``
  not a list of objects with a uuid, ``removed`` not a list, ``score`` not a dict) gives reward 0.
* **Rebuilding**: the predicted state is the current objects by uuid, each ``modified`` object replacing
  (or adding) the one with its uuid, ``removed`` uuids deleted; the score is ``score`` merged over the
  current score (a missing key keeps its current value).
* **Fields** of an object: ``name``, ``type`` (where present), ``contains`` (as a sorted list of uuids;
  missing = []) and each key of ``properties``. A predicted object equals the target one when every
  field of the target, and every predicted field the current object also has, is equal (missing on one
  side only = unequal). Properties whose name contains "temperature" are equal when both values are
  numbers within ``temperature_tolerance`` (ScienceWorld replays are near-deterministic); bools never
  equal numbers.
* ``binary`` = 1 iff every target object is predicted equal, no object is predicted beyond the target's,
  and every key of the target score is equal; else 0.
* ``task_specific`` = 0.09 * object accuracy + 0.01 * score accuracy + 0.2 * binary + changed accuracy,
  at most 1.3 (an exact prediction), at least 0, where

  - object accuracy = fraction of target objects predicted equal (1 for a target without objects);
  - score accuracy = fraction of target score keys predicted equal (1 for an empty target score);
  - changed accuracy = fraction of the items the action truly changed that the prediction gets right. An
    item is a (uuid, field) whose value differs between the current and the target object (a field
    added or deleted counts), every field of an object new in the target, and every removed object (one
    item, right iff the prediction removed it too). When nothing changed it is 1 iff the prediction's
    objects all equal the target's with none extra, else 0. Spurious changes to unchanged fields cost
    object accuracy and binary, not this term.

Bugs of the reference fixed here (each tested): (1) objects created by the action (new uuids in
``modified``) are kept, not dropped; (2) uuids compare by value whether written as int or string
(``"5" == 5``); (3) a predicted property unknown to both the current and the target object is ignored
instead of zeroing the reward.
"""

from __future__ import annotations

import ast
import json
import math
import re

__all__ = ["MODES", "extract_answer", "parse_answer", "score"]

MODES = ("binary", "task_specific")
_MISSING = object()
_MARKER = re.compile(r"final\s+(?:answer|state)\s*(?:is\s*)?:", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(json)?[ \t]*\n?(.*?)```", re.IGNORECASE | re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def extract_answer(response: str) -> str:
    """The answer text of ``response``: after the last marker, else the last ```json block, else all of it.

    >>> extract_answer('think... ```json\\n{"a": 1}\\n``` Final answer is: {"removed": []}')
    '{"removed": []}'
    """
    marks = list(_MARKER.finditer(response))
    if marks:
        text = response[marks[-1].end():]
        fence = _FENCE.search(text)  # the answer itself may sit in a fence
        return (fence.group(2) if fence else text).strip()
    fences = _FENCE.findall(response)
    return (fences[-1][1] if fences else response).strip()


def _loads(text: str):
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    text = text[start:end + 1]
    no_commas = _TRAILING_COMMA.sub(r"\1", text)
    pythonic = re.sub(r"\b(true|false|null)\b", lambda m: {"true": "True", "false": "False"}.get(m[1], "None"),
                      no_commas)
    for attempt in (lambda: json.loads(text), lambda: json.loads(no_commas),
                    lambda: ast.literal_eval(no_commas), lambda: ast.literal_eval(pythonic)):
        try:
            return attempt()
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def parse_answer(response: str) -> dict | None:
    """The predicted change ``{"modified", "removed", "score"}`` in ``response``, or None on a format error.

    >>> parse_answer("Final state is: {'modified': [], 'removed': [3,], 'score': {'gameOver': False}}")
    {'modified': [], 'removed': [3], 'score': {'gameOver': False}}
    """
    answer = _loads(extract_answer(response))
    if not isinstance(answer, dict) or not {"modified", "removed", "score"} & answer.keys():
        return None
    modified, removed, new_score = answer.get("modified", []), answer.get("removed", []), answer.get("score", {})
    if not isinstance(modified, list) or not all(isinstance(o, dict) and "uuid" in o for o in modified):
        return None
    if not isinstance(removed, list) or not isinstance(new_score, dict):
        return None
    return {"modified": modified, "removed": removed, "score": new_score}


def _key(uuid) -> str:
    """uuids by value: 5, 5.0, "5" and " 5 " are the same object (fixed bug 2)."""
    if isinstance(uuid, float) and uuid.is_integer():
        uuid = int(uuid)
    text = str(uuid).strip()
    return str(int(text)) if re.fullmatch(r"[+-]?\d+", text) else text


def _split(state: list, arg: str) -> tuple[dict[str, dict], dict]:
    if not isinstance(state, list) or not all(isinstance(o, dict) for o in state):
        raise ValueError(f"{arg} must be a list of dicts (objects, then a score dict), got {type(state).__name__}"
                         + ("" if not isinstance(state, list) else " with non-dict items"))
    objects, points = list(state), {}
    if objects and "uuid" not in objects[-1] and "properties" not in objects[-1]:
        points = dict(objects.pop())
    return {_key(o["uuid"] if "uuid" in o else "name:" + str(o.get("name"))): o for o in objects}, points


def _fields(obj: dict) -> set:
    props = obj.get("properties")
    names = {("properties", k) for k in props} if isinstance(props, dict) else set()
    return names | {f for f in ("name", "type") if f in obj} | {"contains"}


def _get(obj: dict, field):
    if field == "contains":
        items = obj.get("contains") or []
        return sorted(_key(u) for u in items) if isinstance(items, list) else [_key(items)]
    if isinstance(field, tuple):
        props = obj.get("properties")
        return props.get(field[1], _MISSING) if isinstance(props, dict) else _MISSING
    return obj.get(field, _MISSING)


def _same(field, a, b, tol: float) -> bool:
    if a is _MISSING or b is _MISSING:
        return a is b
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    if tol > 0 and numbers and isinstance(field, tuple) and "temperature" in str(field[1]).lower():
        return abs(a - b) <= tol
    return a == b


def _equal(pred: dict, target: dict, current: dict, tol: float) -> bool:
    fields = _fields(target) | (_fields(pred) & _fields(current))  # unknown to both: ignored (fixed bug 3)
    return all(_same(f, _get(pred, f), _get(target, f), tol) for f in fields)


def score(response: str, current_state: list, target_state: list, mode: str = "binary", *,
          temperature_tolerance: float = 0.0) -> float:
    """Reward of ``response``'s predicted state change against ``target_state``, in [0, 1] ("binary") or
    [0, 1.3] ("task_specific"); see the module docstring for the exact rules.

    >>> lamp = {"name": "lamp", "uuid": 1, "type": "Lamp", "properties": {"on": False}, "contains": []}
    >>> now = [lamp, {"score": 0, "gameOver": False, "gameWon": False}]
    >>> after = [{**lamp, "properties": {"on": True}}, {"score": 1, "gameOver": False, "gameWon": False}]
    >>> answer = 'Final answer is: {"modified": [{"name": "lamp", "uuid": "1", "type": "Lamp", ' \\
    ...     '"properties": {"on": true}, "contains": []}], "removed": [], "score": {"score": 1}}'
    >>> score(answer, now, after), round(score(answer, now, after, "task_specific"), 6)
    (1.0, 1.3)
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    tol = float(temperature_tolerance)
    if not tol >= 0 or math.isinf(tol):
        raise ValueError(f"temperature_tolerance must be a finite number >= 0, got {temperature_tolerance!r}")
    current, current_score = _split(current_state, "current_state")
    target, target_score = _split(target_state, "target_state")
    answer = parse_answer(response)
    if answer is None:
        return 0.0
    pred = dict(current)
    for obj in answer["modified"]:
        pred[_key(obj["uuid"])] = obj  # new uuids are inserted, not dropped (fixed bug 1)
    for uuid in answer["removed"]:
        pred.pop(_key(uuid), None)
    pred_score = {**current_score, **answer["score"]}

    right = {k for k, obj in target.items() if k in pred and _equal(pred[k], obj, current.get(k, {}), tol)}
    no_extra = pred.keys() <= target.keys()
    score_right = [_same(k, pred_score.get(k, _MISSING), v, 0.0) for k, v in target_score.items()]
    binary = float(len(right) == len(target) and no_extra and all(score_right))
    if mode == "binary":
        return binary

    hits = total = 0
    for k, obj in target.items():
        old = current.get(k)
        fields = _fields(obj) if old is None else {
            f for f in _fields(obj) | _fields(old) if not _same(f, _get(old, f), _get(obj, f), tol)}
        total += len(fields)
        if k in pred:
            hits += sum(_same(f, _get(pred[k], f), _get(obj, f), tol) for f in fields)
    for k in current.keys() - target.keys():  # removed by the action: one item each
        total += 1
        hits += k not in pred
    changed = hits / total if total else float(len(right) == len(target) and no_extra)
    objects = len(right) / len(target) if target else 1.0
    points = sum(score_right) / len(score_right) if score_right else 1.0
    return 0.09 * objects + 0.01 * points + 0.2 * binary + changed
