"""Prompts of the text-game world model: (rules, current state, UUID base, action) -> the JSON change.

What it decides:

* **Our own wording** (not the reference's): a short system rule block, then the task description, the
  current state as compact JSON (one line, ``separators=(",", ":")``: a state's tokens are mostly its
  content, not its whitespace), the first uuid free for new objects, and the action.
* **The answer** is the change the action makes after one tick, as compact JSON
  ``{"modified": [objects that change or appear, in full], "removed": [uuids], "score": {...}}`` -- the
  format ``rewards.text_game.score`` rebuilds the next state from. No chain of thought: the built-in model is
  trained from scratch and has no reasoning data; a model that writes reasoning first is scored on the text
  after its last "final answer is:" marker (or its last fenced JSON block), so a CoT-tuned model works too.
* A record is a dict with the ``rlvr_world.data.textgame.transitions.Transition`` fields (``task_description``,
  ``action``, ``current_state``, ``next_state``, ``max_uuid``); a missing field is a KeyError naming it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["SYSTEM", "answer", "compact", "messages"]

SYSTEM = (
    "You simulate a text-based science game. The state is a JSON list of objects (name, uuid, type, properties, "
    "contains: the uuids inside it) ending with the score. Given the state and the player's action, predict what "
    'changes after the action and one game tick, as JSON: {"modified": [every object that changes or appears, '
    'written in full], "removed": [uuids of objects that disappear], "score": {"score", "gameOver", "gameWon"}}.'
)


def compact(value) -> str:
    """One-line JSON without spaces (key order kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _field(record: Mapping, name: str):
    try:
        return record[name]
    except KeyError:
        raise KeyError(f"text-game record {record.get('id', '?')!r} has no field {name!r}") from None


def messages(record: Mapping) -> tuple[str, str]:
    """(system, user) messages asking for the change ``record['action']`` makes to ``record['current_state']``."""
    user = (f"Task: {_field(record, 'task_description')}\n"
            f"State: {compact(_field(record, 'current_state'))}\n"
            f"New objects get uuids from {int(_field(record, 'max_uuid')) + 1}.\n"
            f"Action: {_field(record, 'action')}")
    return SYSTEM, user


def answer(record: Mapping) -> str:
    """The gold answer: the compact JSON change from the current to the next state."""
    from .transitions import gold_diff

    return compact(gold_diff(_field(record, "current_state"), _field(record, "next_state")))
