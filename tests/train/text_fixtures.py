"""Small synthetic transitions of both text domains (no simulator), for recipe tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

SCORE = {"score": 0, "gameOver": False, "gameWon": False}


def _lamp(uuid: int, on: bool, room: int) -> dict:
    return {"name": f"lamp {uuid}", "uuid": uuid, "type": "Lamp", "properties": {"isOn": on}, "contains": []}


def textgame_records(n: int, seed: int) -> list[dict]:
    """Rooms with 2 lamps; 'turn on/off lamp k' flips it (or changes nothing), 'look' changes nothing."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lamps = [_lamp(2 + k, rng.random() < 0.5, 1) for k in range(2)]
        room = {"name": "room", "uuid": 1, "type": "Room", "properties": {}, "contains": [2, 3]}
        state = [room, *lamps, dict(SCORE)]
        k = rng.randrange(2)
        verb = rng.choice(["turn on", "turn off", "look"])
        nxt = json.loads(json.dumps(state))
        if verb != "look":
            nxt[1 + k]["properties"]["isOn"] = verb == "turn on"
        action = "look around" if verb == "look" else f"{verb} lamp {2 + k}"
        out.append({"id": f"syn-{seed}-{i}", "source": "synthetic", "task": "lamps", "variation": i, "step": 0,
                    "task_description": "Turn the lamps on.", "action": action, "current_state": state,
                    "next_state": nxt, "max_uuid": 3, "changed": nxt != state})
    return out


def web_records(n: int, seed: int) -> list[dict]:
    """A page with a checkbox and a button; clicking the checkbox checks it."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        checked = rng.random() < 0.5
        page = f"[1] RootWebArea 'Task'\n  [2] checkbox 'agree'{' checked' if checked else ''}\n  [3] button 'Submit'"
        if rng.random() < 0.5:
            action, changes = "click [2]", ("New items:\nDeleted items:\nUpdated items:\n[2] checkbox 'agree'"
                                            + ("" if checked else " checked"))
        else:
            action, changes = "click [3]", "New items:\nDeleted items:\nUpdated items:"
        out.append({"id": f"web-{seed}-{i}", "task": "click-checkboxes", "seed": i, "step": 0,
                    "objective": "Check agree and submit.", "url": "miniwob://click-checkboxes",
                    "previous_actions": [], "current_page": page, "action": action, "next_page": page,
                    "changes": changes, "reward": 0.0, "done": False})
    return out


def write_domain(root: Path, domain: str, n_train: int = 48, n_eval: int = 8) -> Path:
    make = textgame_records if domain == "textgame" else web_records
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("val", n_eval, 1), ("test", n_eval, 2)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make(n, seed)))
    return root
