"""Prompts of the web-page world model: (objective, URL, previous actions, page, action) -> the page changes.

What it decides:

* **Our own wording**: a short system rule block; the user message gives the objective, the URL, the
  actions taken so far in the episode (or "none"), the current page as rendered by
  ``rlvr_world.data.web.page`` (one element per line, ``[id] role 'name' attributes``) and the action.
* **The answer** is the ground-truth change text itself: the three sections "New items:", "Deleted items:",
  "Updated items:", each listing element lines as they appear in the page (``rewards.web.score`` takes the
  micro-F1 over those lines). No chain of thought (see ``data/textgame/prompts.py``).
* A record is a dict with the collector's fields (``objective``, ``url``, ``previous_actions``,
  ``current_page``, ``action``, ``changes``); a missing field is a KeyError naming it.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SYSTEM", "answer", "messages"]

SYSTEM = (
    "You simulate a web browser. Given a web page (one element per line: [id] role 'name' attributes) and an "
    "action, predict how the page changes. Answer with three sections, each listing element lines as they "
    "will appear: 'New items:', 'Deleted items:', 'Updated items:' (a section may be empty)."
)


def _field(record: Mapping, name: str):
    try:
        return record[name]
    except KeyError:
        raise KeyError(f"web record {record.get('id', '?')!r} has no field {name!r}") from None


def messages(record: Mapping) -> tuple[str, str]:
    """(system, user) messages asking how ``record['action']`` changes ``record['current_page']``."""
    previous = _field(record, "previous_actions")
    user = (f"Objective: {_field(record, 'objective')}\n"
            f"URL: {_field(record, 'url')}\n"
            f"Previous actions: {'; '.join(previous) if previous else 'none'}\n"
            f"Page:\n{_field(record, 'current_page').rstrip()}\n"
            f"Action: {_field(record, 'action')}")
    return SYSTEM, user


def answer(record: Mapping) -> str:
    """The gold answer: the collector's change text (three sections)."""
    return str(_field(record, "changes")).strip()
