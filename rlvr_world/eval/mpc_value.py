"""The value function of the MiniWoB++ MPC agent: how good a (predicted) next page is for the task objective.

No language model judges the pages; a transparent heuristic does, the same for every world model (only the
predicted page differs between the agent's arms). What it decides:

* **Goal** (``parse_goal``), read from the objective (MiniWoB's utterance):

  - *texts*: every double-quoted string is a text to type into a text field (``textbox`` / ``searchbox``).
    When the page has exactly as many text fields as quoted strings, the k-th string belongs in the k-th field
    (document order: the username before the password); otherwise any field may hold it. A password field
    shows its value masked (``value='•••'``, one ``•`` per character): a masked value matches any text of its
    length (so a wrong text of the same length goes unnoticed).
  - *selections*: ``Select A, B and click ...`` / ``Select A from the list ...`` names the checkboxes (radio
    buttons) to check or the list option to pick; ``Select nothing`` asks that no box be checked.
  - *expand*: the word ``expand`` asks that some element be ``expanded``.
  - *finish*: the phrases after ``click`` / ``click on`` / ``press`` (up to ``.``, ``,`` or `` and ``) name the
    element whose click finishes the task (``Submit``, ``login``, ``Tab #3``), matched case-insensitively
    against the names of buttons and links.

* **Conditions** (``check``) on a page: one satisfied condition per text found in its field, per selected
  name checked (a checkbox / radio with ``checked``, an option with ``selected`` or a combobox whose
  ``value=`` is the name), and for an expanded element when *expand* is asked. *Violations*: a text field
  holding a non-empty value that is not its text (the wrong text, or the right text in the wrong field), a
  checked box not among the selections (when the objective selects), a combobox whose value is not among
  them. ``progress = satisfied - violations``; the page is *ready* when every condition holds and nothing is
  violated.

* **Value** of an action (``value``), given the current page and the (predicted) next page:

  - a click on a *finishing* element (a button or link named by *finish*) scores :data:`READY` when the
    *current* page is ready, else :data:`EARLY` (submitting too soon fails the episode);
  - a click on any other button or link scores :data:`EARLY` too: in MiniWoB a button or link click commits
    the episode (a wrong tab's link ends ``click-tab``), so only the named one may be clicked;
  - any other action whose next page equals the current one once ``focused`` flags are ignored scores
    :data:`UNCHANGED` (it did nothing, or only moved the focus);
  - otherwise it scores ``progress(next) - progress(current)``: +1 per condition it fulfils, -1 per condition
    it undoes or violation it adds, 0 for a change that neither helps nor harms.

  The agent takes the highest value; ties go to the proposal order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..data.web.page import parse_action

__all__ = ["EARLY", "READY", "UNCHANGED", "Goal", "PageItem", "check", "commits", "is_finishing", "parse_goal", "parse_page",
           "progress", "value"]

READY = 10.0  # a finishing click when every goal condition holds
EARLY = -5.0  # a finishing click before that
UNCHANGED = -1.0  # an action that changes nothing but the focus

_QUOTED = re.compile(r'"([^"]*)"')
_SELECT = re.compile(r"\bSelect (.+?)(?: from the list)?(?: and (?:click|press)\b.*)?\.?$", re.IGNORECASE)
_FINISH = re.compile(r"\b(?:click|press)(?: on)? (.+?)(?=\.(?:\s|$)|,| and |$)", re.IGNORECASE)
_ITEM = re.compile(r"^\[(\d+)\] (\S+)(?: '((?:[^'\\]|\\.)*)')?(.*)$")
_VALUE = re.compile(r"value='((?:[^'\\]|\\.)*)'")
_MASK = "\u2022"  # the bullet of a password field's value
_TEXT_FIELDS = frozenset({"textbox", "searchbox"})
_BOXES = frozenset({"checkbox", "radio"})
_FINISH_ROLES = frozenset({"button", "link"})


@dataclass(frozen=True)
class Goal:
    """What the objective asks for (module docstring)."""

    texts: tuple[str, ...] = ()
    selects: tuple[str, ...] | None = None  # None: the objective selects nothing; (): "Select nothing"
    expand: bool = False
    finish: tuple[str, ...] = ()  # lowercase names of the finishing elements


@dataclass(frozen=True)
class PageItem:
    """One page line: id, role, name, ``value=`` and flags (``checked``, ``selected``, ...)."""

    id: int
    role: str
    name: str
    value: str
    flags: frozenset[str]


def parse_goal(objective: str) -> Goal:
    """The :class:`Goal` of a MiniWoB objective."""
    text = " ".join(objective.split())
    texts = tuple(_QUOTED.findall(text))
    selects = None
    match = _SELECT.search(_QUOTED.sub("", text)) if not texts else None
    if match:
        listed = match.group(1).strip()
        selects = () if listed.lower() == "nothing" else tuple(n.strip() for n in listed.split(", ") if n.strip())
    finish = tuple(m.strip().strip('"').lower() for m in _FINISH.findall(text))
    return Goal(texts, selects, bool(re.search(r"\bexpand", text, re.IGNORECASE)), finish)


def _unescape(s: str | None) -> str:
    return (s or "").replace("\\'", "'")


def parse_page(page: str) -> list[PageItem]:
    """The items of a page text, in page order (malformed lines are skipped)."""
    items = []
    for raw in page.splitlines():
        match = _ITEM.match(raw.strip())
        if match is None:
            continue
        page_id, role, name, rest = match.groups()
        value = _VALUE.search(rest)
        flags = frozenset(_VALUE.sub("", rest).split())
        items.append(PageItem(int(page_id), role, _unescape(name), _unescape(value.group(1) if value else ""), flags))
    return items


def _matches(shown: str, text: str) -> bool:
    """A field showing ``shown`` holds ``text`` (a masked value matches any text of its length)."""
    if shown and set(shown) == {_MASK}:
        return len(shown) == len(text)
    return shown == text


def _text_conditions(goal: Goal, items: list[PageItem]) -> tuple[int, int, int]:
    fields = [it for it in items if it.role in _TEXT_FIELDS]
    if not goal.texts or not fields:
        return 0, len(goal.texts), 0
    if len(fields) == len(goal.texts):
        good = sum(_matches(f.value, t) for f, t in zip(fields, goal.texts))
        bad = sum(bool(f.value) and not _matches(f.value, t) for f, t in zip(fields, goal.texts))
        return good, len(goal.texts), bad
    good = sum(any(_matches(f.value, t) for f in fields) for t in goal.texts)
    bad = sum(bool(f.value) and not any(_matches(f.value, t) for t in goal.texts) for f in fields)
    return good, len(goal.texts), bad


def _selected(name: str, items: list[PageItem]) -> bool:
    for it in items:
        if it.role in _BOXES and it.name == name and "checked" in it.flags:
            return True
        if it.role == "option" and it.name == name and "selected" in it.flags:
            return True
        if it.role == "combobox" and it.value == name:
            return True
    return False


def _select_conditions(goal: Goal, items: list[PageItem]) -> tuple[int, int, int]:
    if goal.selects is None:
        return 0, 0, 0
    wanted = set(goal.selects)
    good = sum(_selected(name, items) for name in goal.selects)
    bad = sum(it.role in _BOXES and "checked" in it.flags and it.name not in wanted for it in items)
    bad += sum(it.role == "combobox" and bool(wanted) and it.value not in wanted for it in items)
    return good, len(goal.selects), bad


def check(goal: Goal, page: str) -> tuple[int, int, int]:
    """``(satisfied, conditions, violations)`` of ``goal`` on ``page`` (module docstring)."""
    items = parse_page(page)
    parts = [_text_conditions(goal, items), _select_conditions(goal, items)]
    if goal.expand:
        parts.append((int(any("expanded" in it.flags for it in items)), 1, 0))
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)


def progress(goal: Goal, page: str) -> int:
    """Satisfied conditions minus violations."""
    good, _, bad = check(goal, page)
    return good - bad


def ready(goal: Goal, page: str) -> bool:
    """Every condition holds and nothing is violated."""
    good, total, bad = check(goal, page)
    return good == total and bad == 0


def _clicked(page: str, action: str) -> PageItem | None:
    """The item of ``page`` that ``action`` clicks (None for another action or an id not on the page)."""
    try:
        act = parse_action(action)
    except ValueError:
        return None
    if act.kind != "click":
        return None
    return next((it for it in parse_page(page) if it.id == act.id), None)


def commits(page: str, action: str) -> bool:
    """``action`` clicks a button or a link of ``page``."""
    item = _clicked(page, action)
    return item is not None and item.role in _FINISH_ROLES


def is_finishing(goal: Goal, page: str, action: str) -> bool:
    """``action`` clicks a button or link of ``page`` whose name the objective asks to click / press."""
    item = _clicked(page, action)
    return item is not None and item.role in _FINISH_ROLES and item.name.lower() in goal.finish


def _unfocused(page: str) -> list[str]:
    return [" ".join(w for w in line.split() if w != "focused") for line in page.splitlines() if line.strip()]


def value(objective: str, current_page: str, next_page: str, action: str) -> float:
    """The value of taking ``action`` on ``current_page`` when it leads to ``next_page`` (module docstring)."""
    goal = parse_goal(objective)
    if is_finishing(goal, current_page, action):
        return READY if ready(goal, current_page) else EARLY
    if commits(current_page, action):
        return EARLY
    if sorted(_unfocused(current_page)) == sorted(_unfocused(next_page)):
        return UNCHANGED
    return float(progress(goal, next_page) - progress(goal, current_page))
