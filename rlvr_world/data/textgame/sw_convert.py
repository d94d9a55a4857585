"""ScienceWorld object trees -> ByteSized32-style states (pure Python; never imports scienceworld or Java).

Input: ``env.getObjectTree()`` (a nested dict: each node has ``uuid`` (a digit string), ``name``, ``type``,
``isDeleted``, ``prop*`` groups (dicts or None) and ``contents`` (a dict of child nodes)), the ``look()`` text
and optionally the ``inventory()`` text. Output: a state ``[objects..., score dict]`` (see ``transitions``).

Decisions:

* **Objects**: ``name`` and int ``uuid`` as in the tree; ``type`` is the tree's type when set, else "room" for
  the children of the universe, "agent" / "inventory" for those two, "object" otherwise; ``contains`` is the
  sorted uuids of the children that are kept in the state (so a state never points outside itself).
* **Properties**: the ``prop*`` groups flattened into one dict (a key seen twice gets its group as a prefix,
  e.g. ``"propLife.maxTemp"``); None values, ``isDeleted`` and the :data:`CONSTANT_PROPERTIES` are dropped.
  "Constant" means a descriptive property that no ScienceWorld action or tick changes for an existing object
  (material constants, life-form constants, capability flags: thermalConductivity, boiling/melting points,
  frictionCoefficient, isMovable, isContainer, isClosable, isActivable, minTemp/maxTemp, lifeformType,
  lifespanTypical, isPoisonous); a changed substance becomes a new object anyway. ``electricallyConductive``
  is kept: it is fixed but decides what a circuit does. The container group of a non-container (isContainer
  "false") is dropped whole (its isOpen is meaningless).
* **Temperatures** (keys containing "temp", case-insensitive) are rounded to whole degrees C (int): the engine
  drifts them by tiny floats every tick.
* **Electrical terminals** (terminal 1/2, anode, cathode: a leaf with an electrical-connection group and at most a
  movable group)
  are dropped when unconnected (``connectedTo`` empty) and kept, with ``connectedTo`` (sorted int uuids),
  when connected.
* **Doors** are absent from the tree. Each "A door to the X (that is open|closed)" line of ``look()`` adds an
  object ``{"name": "door to X", "type": "door", "properties": {"isOpen": bool}}`` contained by the room.
  Its uuid is :func:`door_uuid`: ``DOOR_UUID_BASE + crc32("door:" + the two room names sorted and joined by
  "|") % DOOR_UUID_SPAN`` -- the same door has the same uuid from both sides, and real uuids stay far below.
* **Scope "room"**: the agent's room, everything in it (recursively, the agent and its inventory included) and
  its doors. **Scope "focus"** (small states for CPU-size models): the agent, its room, its inventory and what
  the inventory holds, the doors the action names, the objects the action names (whole-word match of
  "parent name" or "name", most specific first: "orange wire terminal 1" is the terminal 1 in the orange wire
  and does not name the orange), then their container chains up to the room, then what the inventory and the
  named objects hold; nothing more once ``focus_limit`` (default 8) objects are chosen (for a pair, each tier
  of both sides before the next tier). Focus states also drop the :data:`FOCUS_DROPPED`
  properties (substanceName, combustionTicks: descriptive or only counting down while burning). Use :func:`convert_pair` for a transition: in focus scope it picks one set of uuids from
  both trees so the two states describe the same objects.
* **Order**: objects sorted by uuid (doors last, by their high uuids); the score dict is appended last.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping

__all__ = ["CONSTANT_PROPERTIES", "DOOR_UUID_BASE", "DOOR_UUID_SPAN", "SCOPES", "convert_pair", "convert_tree",
           "door_uuid", "focus_uuids", "parse_doors", "parse_room", "score_dict", "tree_max_uuid"]

SCOPES = ("room", "focus")
DOOR_UUID_BASE = 1_000_000
DOOR_UUID_SPAN = 1_000_000
CONSTANT_PROPERTIES = frozenset({
    "thermalConductivity", "boilingPoint", "meltingPoint", "frictionCoefficient", "isMovable", "isContainer",
    "isClosable", "isActivable", "minTemp", "maxTemp", "lifeformType", "lifespanTypical", "isPoisonous"})
FOCUS_DROPPED = frozenset({"substanceName", "combustionTicks"})
_KEEP_GROUP_KEYS = {"propHeatSource": {"curSetTemp"}}  # maxTemp of a heat source is constant too
_TERMINAL_GROUPS = {"propElectricalConnection", "propMoveable"}
_DOOR = re.compile(r"^\s*A door to (?:the )?(.+?) \(that is (open|closed)\)\s*$", re.MULTILINE | re.IGNORECASE)
_ROOM = re.compile(r"This room is called the (.+?)\.")


def door_uuid(room: str, other: str) -> int:
    """Stable uuid of the door between rooms ``room`` and ``other`` (the same from both sides)."""
    key = "door:" + "|".join(sorted((room.strip().lower(), other.strip().lower())))
    return DOOR_UUID_BASE + zlib.crc32(key.encode()) % DOOR_UUID_SPAN


def parse_room(look_text: str) -> str | None:
    """The room name of a ``look()`` text ("This room is called the hallway." -> "hallway")."""
    match = _ROOM.search(look_text or "")
    return match.group(1).strip() if match else None


def parse_doors(look_text: str) -> list[tuple[str, bool]]:
    """``[(other room, is_open), ...]`` from the "A door to the X (that is open)" lines of ``look()``."""
    return [(m.group(1).strip(), m.group(2).lower() == "open") for m in _DOOR.finditer(look_text or "")]


def score_dict(score: float, done: bool) -> dict:
    """The trailing score dict: ``gameOver`` = the episode ended (task completed or failed), ``gameWon`` = the
    score reached 100 (ScienceWorld's completed task)."""
    value = int(score) if float(score).is_integer() else float(score)
    return {"score": value, "gameOver": bool(done), "gameWon": float(score) >= 100}


# ---------------------------------------------------------------- tree helpers


def _children(node: Mapping) -> list[Mapping]:
    contents = node.get("contents") or {}
    return list(contents.values()) if isinstance(contents, Mapping) else list(contents)


def _is_terminal(node: Mapping) -> bool:
    groups = {k for k, v in node.items() if k.startswith("prop") and v is not None}
    return "propElectricalConnection" in groups and groups <= _TERMINAL_GROUPS and not _children(node)


def _is_unconnected_terminal(node: Mapping) -> bool:
    return _is_terminal(node) and not (node["propElectricalConnection"] or {}).get("connectedTo")


def _index(tree: Mapping) -> tuple[dict[int, Mapping], dict[int, int]]:
    """uuid -> node and uuid -> parent uuid, skipping deleted nodes and unconnected terminals."""
    nodes, parents = {}, {}
    stack = [(tree, None)]
    while stack:
        node, parent = stack.pop()
        if node.get("isDeleted") or _is_unconnected_terminal(node):
            continue
        uuid = int(node["uuid"])
        nodes[uuid] = node
        if parent is not None:
            parents[uuid] = parent
        stack.extend((child, uuid) for child in _children(node))
    return nodes, parents


def tree_max_uuid(tree: Mapping) -> int:
    """The largest uuid anywhere in the tree (terminals included): the engine's allocation high-water mark."""
    best, stack = 0, [tree]
    while stack:
        node = stack.pop()
        best = max(best, int(node["uuid"]))
        stack.extend(_children(node))
    return best


def _clean(key: str, value):
    if "temp" in key.lower() and isinstance(value, float):
        return round(value)
    if key == "connectedTo" and isinstance(value, list):
        return sorted(int(v) if str(v).strip().isdigit() else v for v in value)
    return value


def _properties(node: Mapping, drop: frozenset = frozenset()) -> dict:
    props: dict = {}
    for group, values in node.items():
        if not group.startswith("prop") or not isinstance(values, Mapping):
            continue
        if group == "propContainer" and str(values.get("isContainer")).lower() == "false":
            continue
        keep = _KEEP_GROUP_KEYS.get(group)
        for key, value in values.items():
            if value is None or key in drop or (key in CONSTANT_PROPERTIES and not (keep and key in keep)):
                continue
            if keep is not None and key not in keep:
                continue
            props[f"{group}.{key}" if key in props else key] = _clean(key, value)
    return props


def _object(uuid: int, node: Mapping, parents: Mapping[int, int], root: int, kept: set[int],
            nodes: Mapping[int, Mapping], drop: frozenset) -> dict:
    kind = node.get("type") or ""
    if not kind:
        name = node.get("name", "")
        kind = ("room" if parents.get(uuid) == root else name if name in ("agent", "inventory") else "object")
    contains = sorted(int(c["uuid"]) for c in _children(node) if int(c["uuid"]) in kept and int(c["uuid"]) in nodes)
    return {"name": str(node.get("name", "")), "uuid": uuid, "type": kind, "properties": _properties(node, drop),
            "contains": contains}


def _agent_room(nodes: Mapping[int, Mapping], parents: Mapping[int, int]) -> tuple[int, int, int | None]:
    agent = next((u for u, n in nodes.items() if n.get("name") == "agent"), None)
    if agent is None or agent not in parents:
        raise ValueError("object tree has no agent inside a room")
    inventory = next((int(c["uuid"]) for c in _children(nodes[agent]) if c.get("name") == "inventory"), None)
    return agent, parents[agent], inventory


def _subtree(uuid: int, nodes: Mapping[int, Mapping]) -> list[int]:
    out, stack = [], [uuid]
    while stack:
        u = stack.pop()
        out.append(u)
        stack.extend(int(c["uuid"]) for c in _children(nodes[u]) if int(c["uuid"]) in nodes)
    return out


# ---------------------------------------------------------------- focus selection


def _spans(phrase: str, text: str) -> list[tuple[int, int]]:
    pattern = r"(?<![a-z0-9])" + re.escape(phrase) + r"(?![a-z0-9])"
    return [m.span() for m in re.finditer(pattern, text)]


def _named(action: str, candidates: Iterable[int], nodes: Mapping[int, Mapping],
           parents: Mapping[int, int]) -> list[int]:
    """Objects the action names, most specific first: "orange wire terminal 1" names the terminal 1 inside the
    orange wire (parent name + name), not every terminal 1 nor the orange; a phrase inside a longer accepted
    phrase of another object does not count."""
    text = re.sub(r"\s+", " ", (action or "").lower())
    phrases = []
    for uuid in candidates:
        name = str(nodes[uuid].get("name", "")).lower().strip()
        parent = str(nodes.get(parents.get(uuid), {}).get("name", "")).lower().strip()
        for phrase in ([f"{parent} {name}"] if parent else []) + [name]:
            if phrase and _spans(phrase, text):
                phrases.append((phrase, uuid))
                break
    accepted: list[tuple[int, int, str]] = []
    found = []
    for phrase, uuid in sorted(phrases, key=lambda p: (-len(p[0]), p[1])):
        spans = [sp for sp in _spans(phrase, text)
                 if not any(a <= sp[0] and sp[1] <= b and other != phrase for a, b, other in accepted)]
        if spans:
            accepted += [(a, b, phrase) for a, b in spans]
            found.append(uuid)
    return found


def _focus_tiers(tree: Mapping, look_text: str, action: str | None) -> tuple[list[int], list[int], list[int]]:
    """(agent, room, inventory, named doors, named objects; their container chains; what the inventory and the
    named objects hold)."""
    nodes, parents = _index(tree)
    agent, room, inventory = _agent_room(nodes, parents)
    in_room = set(_subtree(room, nodes)) - {agent, room, inventory}
    order = [agent, room] + ([inventory] if inventory is not None else [])
    contents: list[int] = []
    if inventory is not None:
        contents += sorted(int(c["uuid"]) for c in _children(nodes[inventory]) if int(c["uuid"]) in nodes)
    room_name = str(nodes[room].get("name", ""))
    doors = {door_uuid(room_name, other): f"door to {other}" for other, _ in parse_doors(look_text)}
    text = " " + (action or "").lower() + " "
    for uuid, name in sorted(doors.items(), key=lambda d: -len(d[1])):
        if name in text or f" {name.split(' to ', 1)[1]} door " in text:
            order.append(uuid)
    chains: list[int] = []
    for uuid in _named(action or "", in_room, nodes, parents):
        order.append(uuid)
        up = parents.get(uuid)
        while up is not None and up in in_room:
            chains.append(up)
            up = parents.get(up)
        contents += sorted(int(c["uuid"]) for c in _children(nodes[uuid]) if int(c["uuid"]) in nodes)
    return order, chains, contents


def _merge(*lists: list[int]) -> list[int]:
    seen: dict[int, None] = {}
    for items in lists:
        seen.update((u, None) for u in items if u not in seen)
    return list(seen)


def focus_uuids(tree: Mapping, look_text: str, action: str | None, focus_limit: int = 8) -> list[int]:
    """The uuids (doors included) a focus-scope state of ``tree`` keeps for ``action``, in priority order."""
    return _merge(*_focus_tiers(tree, look_text, action))[:max(int(focus_limit), 1)]


# ---------------------------------------------------------------- conversion


def convert_tree(tree: Mapping, look_text: str, inventory_text: str | None = None, *, scope: str = "room",
                 action: str | None = None, focus_limit: int = 8, keep: Iterable[int] | None = None,
                 score: Mapping | None = None, compact: bool | None = None) -> list:
    """State of ``tree`` in ``scope`` (see the module docstring), ending with ``score`` (default: 0, not over).

    ``keep`` (uuids, doors included) restricts the objects further, whatever the scope; ``compact`` (default:
    focus scope) drops the :data:`FOCUS_DROPPED` properties too; ``inventory_text`` is
    accepted for symmetry with the environment's observations (the tree already holds the inventory)."""
    del inventory_text
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    nodes, parents = _index(tree)
    agent, room, _ = _agent_room(nodes, parents)
    wanted = set(_subtree(room, nodes))
    if scope == "focus" and keep is None:
        keep = focus_uuids(tree, look_text, action, focus_limit)
    if keep is not None:
        wanted &= set(keep) | {agent, room}
    room_name = str(nodes[room].get("name", ""))
    look_room = parse_room(look_text)
    if look_room is not None and look_room != room_name:
        raise ValueError(f"look() describes room {look_room!r} but the agent is in {room_name!r}")
    doors = [{"name": f"door to {other}", "uuid": door_uuid(room_name, other), "type": "door",
              "properties": {"isOpen": is_open}, "contains": []} for other, is_open in parse_doors(look_text)]
    doors = [d for d in doors if keep is None or d["uuid"] in set(keep)]
    drop = FOCUS_DROPPED if (scope == "focus" if compact is None else compact) else frozenset()
    objects = [_object(u, nodes[u], parents, int(tree["uuid"]), wanted, nodes, drop) for u in sorted(wanted)]
    for obj in objects:
        if obj["uuid"] == room:
            obj["contains"] = sorted(obj["contains"] + [d["uuid"] for d in doors])
    objects += sorted(doors, key=lambda d: d["uuid"])
    objects.sort(key=lambda o: o["uuid"])
    return objects + [dict(score) if score is not None else score_dict(0, False)]


def convert_pair(before: Mapping, after: Mapping, action: str, *, scope: str = "room", focus_limit: int = 8,
                 score_before: Mapping | None = None, score_after: Mapping | None = None) -> tuple[list, list]:
    """(current_state, next_state) of one transition; ``before``/``after`` are ``{"tree", "look"}`` dicts.

    Room scope converts each side on its own (the view follows the agent). Focus scope keeps the union of both
    sides' focus uuids, capped at ``focus_limit`` (first tiers of both sides before second tiers), on both
    sides."""
    if scope == "focus":
        first = _focus_tiers(before["tree"], before["look"], action)
        second = _focus_tiers(after["tree"], after["look"], action)
        keep = _merge(*(tier for pair in zip(first, second) for tier in pair))[:max(int(focus_limit), 1)]
        # the agent's room on each side is always kept, even past the cap
        keep = set(keep) | {first[0][1], second[0][1]}
        return (convert_tree(before["tree"], before["look"], keep=keep, score=score_before, compact=True),
                convert_tree(after["tree"], after["look"], keep=keep, score=score_after, compact=True))
    return (convert_tree(before["tree"], before["look"], scope=scope, score=score_before),
            convert_tree(after["tree"], after["look"], scope=scope, score=score_after))
