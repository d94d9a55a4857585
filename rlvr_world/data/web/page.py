"""Web pages as text: rendering an accessibility tree, the changes between two pages, applying (predicted)
changes, and the action grammar. Pure Python; no browser is needed here.

What it decides:

* **Page text**: one element per line, indented two spaces per depth, ``[id] role 'name'`` followed by the
  attributes that matter, in this fixed order: ``value='...'``, ``focused``, ``checked`` / ``checked=mixed``,
  ``selected``, ``pressed``, ``expanded`` / ``collapsed``, ``disabled``. The first line is the document
  (``RootWebArea`` with the page title); it carries no attributes (its focus toggles whenever any control
  gains focus, which would only add noise). Only the task's area is rendered (MiniWoB's ``#area``; the
  instruction is the objective, and the timer / reward panel is left out). Names and values are
  whitespace-collapsed and cut to 80 characters (``...`` marks a cut); a ``'`` inside is written ``\\'``.
* **Compaction rule**: ignored nodes and ``InlineTextBox`` nodes are dropped; whitespace-only text is dropped;
  a *wrapper* (a node of a role in :data:`WRAPPER_ROLES` — ``generic``, ``paragraph``, ``LabelText``,
  ``group``, ``list``, ``listitem``, ``form``, ... — with an empty name) gets no line of its own, its children
  are lifted to its depth; a ``StaticText`` that only repeats its parent's name (the
  label of a button, a link, an option) is dropped; the inner text of a ``textbox`` / ``searchbox`` /
  ``spinbutton`` is dropped (``value='...'`` shows it). Everything else gets a line.
* **Ids** are small integers handed out per episode by an :class:`IdMap`: a browser node keeps its id as
  long as it lives, so an unchanged element keeps both its id and its line; nodes first seen get the next
  integers, in document order. Since ids start at 1 on every reset, the same seed and actions give the same
  text.
* **Changes** (``page_changes``): ``New items:`` (lines of the next page whose id is not on the current one),
  ``Deleted items:`` (lines of the current page whose id is gone), ``Updated items:`` (lines whose id is on
  both pages but whose stripped text differs), each line stripped, in page order — the format scored by
  :mod:`rlvr_world.rewards.web`. Moving an element without changing its line is not a change.
* **Applying changes** (``apply_changes``): deleted ids are removed, updated lines replace their id's line in
  place (keeping its indentation), new lines are appended at the end of the page one level below the root, in
  the order given. So ``apply_changes(a, page_changes(a, b))`` has exactly the stripped lines of ``b``
  (compare with :func:`page_lines`), but new items may sit elsewhere than in ``b``. Predicted lines that do
  not start with ``[int]`` are ignored, as are deletions/updates of ids that are not on the page and new items
  whose id already is (a model's mistakes must not crash a rollout).
* **Actions**: ``click [id]``, ``type [id] [text]``, ``select [id] [option]``. The text runs from the second
  ``[`` to the *last* ``]`` of the string, so it may hold spaces and brackets; nothing may follow that
  ``]``. Keywords are lowercase; ``type`` replaces the field's value (it does not append).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ACTION_KINDS", "Action", "IdMap", "apply_changes", "format_action", "page_changes", "page_lines",
           "parse_action", "parse_line", "render_ax_tree"]

ACTION_KINDS = ("click", "type", "select")
WRAPPER_ROLES = frozenset({"generic", "none", "paragraph", "LabelText", "div", "group", "Section", "list",
                           "listitem", "form", "Pre", "contentinfo", "Abbr", "strong", "emphasis", "Span"})
_SKIP_ROLES = frozenset({"InlineTextBox", "LineBreak"})
_LEAF_ROLES = frozenset({"textbox", "searchbox", "spinbutton"})  # their inner text repeats value='...' 
_LINE = re.compile(r"^\[(\d+)\]\s")
_ACTION = re.compile(r"^(click|type|select) \[(\d+)\](?: \[(.*)\])?$", re.DOTALL)
_MAX_NAME = 80


# ---------------------------------------------------------------------------------------------- rendering


class IdMap:
    """Browser node id -> small page id, stable for as long as the map lives (one episode)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.nodes: dict[int, str] = {}

    def get(self, node_id: str) -> int:
        if node_id not in self.ids:
            page_id = len(self.ids) + 1
            self.ids[node_id] = page_id
            self.nodes[page_id] = node_id
        return self.ids[node_id]

    def node(self, page_id: int) -> str | None:
        """The browser node id behind ``page_id`` (None when it was never handed out)."""
        return self.nodes.get(page_id)


def _value(field: dict[str, Any] | None) -> str:
    if not field:
        return ""
    value = field.get("value", "")
    return "" if value is None else str(value)


def _quote(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MAX_NAME:
        text = text[: _MAX_NAME - 3] + "..."
    return "'" + text.replace("'", "\\'") + "'"


def _attributes(node: dict[str, Any]) -> list[str]:
    props = {p["name"]: _value(p.get("value")) for p in node.get("properties", [])}
    out = []
    value = _value(node.get("value"))
    role = _value(node.get("role"))
    if value and role in ("textbox", "searchbox", "combobox", "spinbutton", "slider", "ListBox", "listbox"):
        out.append(f"value={_quote(value)}")
    if props.get("focused") == "True":
        out.append("focused")
    if props.get("checked") in ("true", "mixed"):
        out.append("checked" if props["checked"] == "true" else "checked=mixed")
    if props.get("selected") == "True":
        out.append("selected")
    if props.get("pressed") in ("true", "mixed"):
        out.append("pressed")
    if "expanded" in props:
        out.append("expanded" if props["expanded"] == "True" else "collapsed")
    if props.get("disabled") == "True":
        out.append("disabled")
    return out


def _node_line(page_id: int, node: dict[str, Any], root: bool = False) -> str:
    role = _value(node.get("role")) or "node"
    name = _value(node.get("name"))
    parts = [f"[{page_id}] {role}"]
    if name.strip() or root:
        parts.append(_quote(name))
    if not root:
        parts.extend(_attributes(node))
    return " ".join(parts)


def render_ax_tree(nodes: list[dict[str, Any]], ids: IdMap | None = None, *,
                   area_backend_id: int | None = None) -> str:
    """The page text of Chrome's ``Accessibility.getFullAXTree`` ``nodes`` (module docstring for the rules).

    ``area_backend_id``: the DOM backend id of the element whose subtree is rendered under the root line (the
    whole document when None or absent). ``ids`` is updated in place (a fresh map when None).
    """
    ids = IdMap() if ids is None else ids
    by_id = {n["nodeId"]: n for n in nodes}
    roots = [n for n in nodes if "parentId" not in n or n["parentId"] not in by_id]
    if not roots:
        raise ValueError("the accessibility tree has no root node")
    root = roots[0]
    start = root
    if area_backend_id is not None:
        start = next((n for n in nodes if n.get("backendDOMNodeId") == area_backend_id), root)
    lines = [_node_line(ids.get(root["nodeId"]), root, root=True)]
    for child in start.get("childIds", []):
        _render(by_id, child, 1, _value(start.get("name")), ids, lines)
    return "\n".join(lines)


def _render(by_id: dict[str, dict[str, Any]], node_id: str, depth: int, parent_name: str, ids: IdMap,
            lines: list[str]) -> None:
    node = by_id.get(node_id)
    if node is None:
        return
    role = _value(node.get("role"))
    name = _value(node.get("name"))
    children = node.get("childIds", [])
    if node.get("ignored") or role in _SKIP_ROLES:
        for child in children:  # an ignored node may still hold visible children
            _render(by_id, child, depth, parent_name, ids, lines)
        return
    if role == "StaticText":
        if name.strip() and " ".join(name.split()) != " ".join(parent_name.split()):
            lines.append("  " * depth + _node_line(ids.get(node_id), node))
        return
    if role in WRAPPER_ROLES and not name.strip():
        for child in children:
            _render(by_id, child, depth, parent_name, ids, lines)
        return
    lines.append("  " * depth + _node_line(ids.get(node_id), node))
    if role in _LEAF_ROLES:
        return
    for child in children:
        _render(by_id, child, depth + 1, name, ids, lines)


# ---------------------------------------------------------------------------------------------- changes


def parse_line(line: str) -> tuple[int, str] | None:
    """``(id, stripped line)`` of a page line, or None when it does not start with ``[int]``."""
    text = line.strip()
    match = _LINE.match(text + " ")
    return (int(match.group(1)), text) if match else None


def page_lines(page: str) -> dict[int, str]:
    """Id -> stripped line of every well-formed line of ``page`` (the first line wins for a repeated id)."""
    out: dict[int, str] = {}
    for raw in page.splitlines():
        parsed = parse_line(raw)
        if parsed and parsed[0] not in out:
            out[parsed[0]] = parsed[1]
    return out


def page_changes(before: str, after: str) -> str:
    """The three-section changes from page ``before`` to page ``after`` (module docstring)."""
    old, new = page_lines(before), page_lines(after)
    added = [line for i, line in new.items() if i not in old]
    deleted = [line for i, line in old.items() if i not in new]
    updated = [line for i, line in new.items() if i in old and old[i] != line]
    return "\n".join(["New items:", *added, "Deleted items:", *deleted, "Updated items:", *updated])


def _sections(changes: str) -> dict[str, list[tuple[int, str]]]:
    from rlvr_world.rewards.web import _HEADER  # one definition of a section header

    out: dict[str, list[tuple[int, str]]] = {"new": [], "deleted": [], "updated": []}
    current = None
    for raw in changes.splitlines():
        header = _HEADER.match(raw.strip().strip("#* \t").rstrip("*").strip())
        if header:
            current = header.group(1).lower()
            continue
        parsed = parse_line(raw)
        if current is not None and parsed is not None:
            out[current].append(parsed)
    return out


def apply_changes(before: str, changes: str) -> str:
    """The page that ``changes`` (possibly predicted, possibly malformed) make of ``before`` (module docstring)."""
    sections = _sections(changes)
    deleted = {i for i, _ in sections["deleted"]}
    updated = dict(sections["updated"])
    out: list[str] = []
    seen: set[int] = set()
    for raw in before.splitlines():
        parsed = parse_line(raw)
        if parsed is None:
            continue
        page_id, _ = parsed
        if page_id in deleted:
            continue
        seen.add(page_id)
        indent = raw[: len(raw) - len(raw.lstrip())]
        out.append(indent + updated.get(page_id, parsed[1]))
    for page_id, line in sections["new"]:
        if page_id not in seen:
            seen.add(page_id)
            out.append("  " + line)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Action:
    """A parsed action: ``kind`` in :data:`ACTION_KINDS`, the page ``id``, and ``text`` (None for a click)."""

    kind: str
    id: int
    text: str | None = None

    def __str__(self) -> str:
        return format_action(self.kind, self.id, self.text)


def format_action(kind: str, page_id: int, text: str | None = None) -> str:
    """The action string; ``text`` is required for ``type`` / ``select`` and refused for ``click``."""
    if kind not in ACTION_KINDS:
        raise ValueError(f"unknown action kind {kind!r}; expected one of {ACTION_KINDS}")
    if (kind == "click") != (text is None):
        raise ValueError(f"{kind!r} takes {'no text' if kind == 'click' else 'a text'}, got {text!r}")
    return f"click [{page_id}]" if text is None else f"{kind} [{page_id}] [{text}]"


def parse_action(s: str) -> Action:
    """``click [12]`` / ``type [12] [hello [world]]`` / ``select [7] [Blue]`` -> :class:`Action`.

    Raises ValueError naming the received string when it does not follow the grammar (TypeError for a non-str).
    """
    if not isinstance(s, str):
        raise TypeError(f"an action must be a str, got {type(s).__name__}: {s!r}")
    match = _ACTION.match(s.strip())
    if match is None:
        raise ValueError(f"malformed action {s!r}; expected 'click [id]', 'type [id] [text]' or "
                         "'select [id] [option]'")
    kind, page_id, text = match.group(1), int(match.group(2)), match.group(3)
    if (kind == "click") != (text is None):
        raise ValueError(f"malformed action {s!r}: {kind!r} takes {'no text' if kind == 'click' else 'a text'}")
    return Action(kind, page_id, text)
