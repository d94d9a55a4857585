"""Text-game data: ScienceWorld tree conversion, the gold diff against the reward, JSONL I/O, ByteSized32 loading,
and (with Java) a tiny real collection."""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_world.data.textgame import sw_convert as swc
from rlvr_world.data.textgame.transitions import (
    Transition,
    check_state,
    gold_diff,
    load_bytesized32,
    read_jsonl,
    split_files,
    state_chars,
    write_jsonl,
)
from rlvr_world.rewards.text_game import score

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "textgame"


@pytest.fixture(scope="module")
def recorded() -> list[dict]:
    """Four real ScienceWorld transitions: raw trees and look() texts before and after a gold action."""
    with gzip.open(FIXTURES / "sw_transitions.json.gz", "rt") as handle:
        return json.load(handle)


def _pair(t: dict, scope: str) -> tuple[list, list]:
    return swc.convert_pair(t["before"], t["after"], t["action"], scope=scope,
                            score_before=swc.score_dict(t["before"]["score"], False),
                            score_after=swc.score_dict(t["after"]["score"], t["after"]["done"]))


def _walk(node):
    yield node
    for child in (node.get("contents") or {}).values():
        yield from _walk(child)


def _record(i: int = 0, **over) -> dict:
    state = [{"name": "lamp", "uuid": 1, "type": "Lamp", "properties": {"on": False}, "contains": []},
             {"score": 0, "gameOver": False, "gameWon": False}]
    nxt = [{**state[0], "properties": {"on": True}}, {"score": 1, "gameOver": False, "gameWon": False}]
    data = {"id": f"t/{i}", "source": "scienceworld", "task": "t", "variation": 0, "step": i, "task_description": "d",
            "action": "turn on lamp", "current_state": state, "next_state": nxt, "max_uuid": 1, "changed": True}
    data.update(over)
    return data


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize("scope", ["room", "focus"])
def test_recorded_states_are_valid_and_gold_diff_scores_full(recorded, scope):
    for t in recorded:
        current, following = _pair(t, scope)
        check_state(current, "current")
        check_state(following, "next")
        for state in (current, following):
            uuids = [o["uuid"] for o in state[:-1]]
            assert uuids == sorted(uuids)
            assert all(set(o["contains"]) <= set(uuids) for o in state[:-1])  # closed: no dangling uuids
        answer = json.dumps(gold_diff(current, following))
        assert score(answer, current, following, "binary") == 1.0
        assert score(answer, current, following, "task_specific") == pytest.approx(1.3)
        assert score(json.dumps({"modified": [], "removed": [], "score": {}}), current, following,
                     "binary") == float(current == following)


def test_conversion_is_deterministic_and_drops_unconnected_terminals(recorded):
    t = recorded[0]
    state = swc.convert_tree(t["before"]["tree"], t["before"]["look"])
    assert state == swc.convert_tree(copy.deepcopy(t["before"]["tree"]), t["before"]["look"])
    names = {o["name"] for o in state[:-1]}
    assert {"agent", "inventory", "hallway"} <= names
    assert not any(o["name"].startswith("terminal") or o["name"] in ("anode", "cathode") for o in state[:-1])
    raw_chars = len(json.dumps(t["before"]["tree"]))
    assert state_chars(state) < raw_chars / 20
    for obj in state[:-1]:
        assert None not in obj["properties"].values()
        assert not set(obj["properties"]) & swc.CONSTANT_PROPERTIES


def test_connected_terminals_are_kept_with_int_uuids(recorded):
    t = next(t for t in recorded if t["action"].startswith("connect"))
    state = swc.convert_tree(t["after"]["tree"], t["after"]["look"])
    wired = [o for o in state[:-1] if "connectedTo" in o["properties"]]
    assert wired and all(o["properties"]["connectedTo"] for o in wired)
    assert all(isinstance(u, int) for o in wired for u in o["properties"]["connectedTo"])


def test_temperatures_are_rounded_to_whole_degrees(recorded):
    tree = copy.deepcopy(recorded[0]["before"]["tree"])
    hallway = next(n for n in _walk(tree) if n["name"] == "hallway")
    air = next(n for n in hallway["contents"].values() if n["name"] == "air")
    air["propMaterial"]["temperatureC"] = 24.6000001
    state = swc.convert_tree(tree, recorded[0]["before"]["look"], scope="room")
    temps = [o["properties"]["temperatureC"] for o in state[:-1] if "temperatureC" in o["properties"]]
    assert temps and all(type(v) is int for v in temps)
    assert next(o for o in state[:-1] if o["uuid"] == int(air["uuid"]))["properties"]["temperatureC"] == 25


def test_doors_are_parsed_from_look_with_stable_uuids(recorded):
    look = recorded[0]["after"]["look"]
    doors = swc.parse_doors(look)
    assert ("greenhouse", True) in doors and ("kitchen", False) in doors
    assert swc.parse_room(look) == "hallway"
    assert swc.door_uuid("hallway", "greenhouse") == swc.door_uuid("greenhouse", "hallway")
    assert swc.door_uuid("hallway", "greenhouse") >= swc.DOOR_UUID_BASE
    current, following = _pair(recorded[0], "room")  # "open door to greenhouse"
    change = gold_diff(current, following)
    assert [o["name"] for o in change["modified"]] == ["door to greenhouse"]
    assert change["modified"][0]["type"] == "door" and change["modified"][0]["properties"] == {"isOpen": True}
    room = next(o for o in following[:-1] if o["type"] == "room")
    assert swc.door_uuid("hallway", "greenhouse") in room["contains"]


def test_room_change_and_look_mismatch(recorded):
    t = recorded[1]  # "go to greenhouse"
    current, following = _pair(t, "room")
    assert {o["name"] for o in current[:-1] if o["type"] == "room"} == {"hallway"}
    assert {o["name"] for o in following[:-1] if o["type"] == "room"} == {"greenhouse"}
    with pytest.raises(ValueError, match="look"):
        swc.convert_tree(t["after"]["tree"], t["before"]["look"])
    with pytest.raises(ValueError, match="scope"):
        swc.convert_tree(t["after"]["tree"], t["after"]["look"], scope="world")


def test_focus_scope_is_small_and_names_the_action_objects(recorded):
    for t in recorded:
        room_state, _ = _pair(t, "room")
        current, following = _pair(t, "focus")
        assert len(current) - 1 <= 8 + 1 and len(following) - 1 <= 8 + 1  # cap, plus the other side's room
        assert state_chars(current) < 1500 and state_chars(following) < 1500
        assert state_chars(current) < state_chars(room_state)
        names = {o["name"] for o in current[:-1] + following[:-1]}
        assert "agent" in names
    assert "door to greenhouse" in {o["name"] for o in _pair(recorded[0], "focus")[1][:-1]}
    wired = {o["name"] for o in _pair(recorded[3], "focus")[1][:-1]}  # battery cathode to orange wire terminal 1
    assert {"battery", "cathode", "orange wire"} <= wired
    assert len(swc.convert_tree(recorded[3]["after"]["tree"], recorded[3]["after"]["look"], scope="focus",
                                action=recorded[3]["action"], focus_limit=3)) - 1 <= 3


def test_score_dict():
    assert swc.score_dict(100, True) == {"score": 100, "gameOver": True, "gameWon": True}
    assert swc.score_dict(-100, True) == {"score": -100, "gameOver": True, "gameWon": False}
    assert swc.score_dict(42, False)["gameWon"] is False


# ---------------------------------------------------------------- records and files


def test_gold_diff_new_removed_and_unchanged():
    a = {"name": "a", "uuid": 1, "type": "x", "properties": {}, "contains": [2]}
    b = {"name": "b", "uuid": 2, "type": "x", "properties": {"t": 1}, "contains": []}
    c = {"name": "c", "uuid": 3, "type": "x", "properties": {}, "contains": []}
    points = {"score": 0, "gameOver": False, "gameWon": False}
    current = [a, b, points]
    following = [{**a, "contains": [3]}, c, {**points, "score": 5}]
    change = gold_diff(current, following)
    assert change == {"modified": [following[0], c], "removed": [2], "score": following[-1]}
    assert score(json.dumps(change), current, following) == 1.0
    assert score(json.dumps(change), current, following, "task_specific") == pytest.approx(1.3)
    assert gold_diff(current, current) == {"modified": [], "removed": [], "score": points}


def test_transition_round_trip_and_validation():
    t = Transition.from_dict(_record())
    assert Transition.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match=r"'variation': expected int, got str"):
        Transition.from_dict(_record(variation="0"))
    with pytest.raises(ValueError, match="missing field 'action'"):
        Transition.from_dict({k: v for k, v in _record().items() if k != "action"})
    with pytest.raises(ValueError, match="'source': expected one of"):
        Transition.from_dict(_record(source="web"))
    bad = _record()
    bad["next_state"] = bad["next_state"][:1]  # score dict missing
    with pytest.raises(ValueError, match=r"next_state'\[0\]: expected the score dict"):
        Transition.from_dict(bad)
    bad = _record()
    bad["current_state"][0]["uuid"] = "1"
    with pytest.raises(ValueError, match=r"current_state'\[0\]\.uuid: expected int, got str"):
        Transition.from_dict(bad)


def test_check_state_errors():
    with pytest.raises(ValueError, match="non-empty list"):
        check_state([])
    with pytest.raises(ValueError, match=r"s\[1\] \(score dict\): missing key 'gameWon'"):
        check_state([{"name": "a", "uuid": 1, "type": "", "properties": {}, "contains": []},
                     {"score": 0, "gameOver": False}], "s")
    with pytest.raises(ValueError, match=r"s\[0\]\.contains: expected a list of int uuids"):
        check_state([{"name": "a", "uuid": 1, "type": "", "properties": {}, "contains": ["b"]},
                     {"score": 0, "gameOver": False, "gameWon": False}], "s")


def test_jsonl_write_read_and_errors(tmp_path):
    path = tmp_path / "d" / "train.jsonl"
    records = [Transition.from_dict(_record(i)) for i in range(3)]
    assert write_jsonl(path, records) == 3
    assert read_jsonl(path) == records
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert split_files(tmp_path)["val"] == tmp_path / "val.jsonl"

    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:-5], lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:2: malformed JSON"):
        read_jsonl(path)
    path.write_text("\n".join([lines[0], json.dumps(_record(step="x"))]) + "\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:2: transition field 'step': expected int"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_write_jsonl_is_atomic_on_failure(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [_record(0)])

    def broken():
        yield _record(1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert [t.id for t in read_jsonl(path)] == ["t/0"]
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]


def test_load_bytesized32():
    records = load_bytesized32(FIXTURES / "bytesized32_sample.jsonl")
    assert [r.action for r in records] == ["turn on sink", "put pot in sink", "look"]
    assert [r.changed for r in records] == [True, True, False]
    first = records[0]
    assert first.source == "bytesized32" and first.task == "boil-water" and first.max_uuid == 3
    assert first.current_state[0]["contains"] == [2, 3]  # names mapped to uuids
    assert first.next_state[-1] == {"score": 1, "gameOver": False, "gameWon": False}
    second = records[1]
    assert [o["name"] for o in gold_diff(second.current_state, second.next_state)["modified"]] == [
        "kitchen", "sink", "pot", "water"]  # tick_state is the target: the water appears
    for r in records:
        assert score(json.dumps(gold_diff(r.current_state, r.next_state)), r.current_state, r.next_state,
                     "task_specific") == pytest.approx(1.3)


def test_load_bytesized32_errors(tmp_path):
    row = json.loads((FIXTURES / "bytesized32_sample.jsonl").read_text().splitlines()[0])
    del row["tick_state"]
    path = tmp_path / "bs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"bs\.jsonl:1: missing field 'tick_state'"):
        load_bytesized32(path)
    row = json.loads((FIXTURES / "bytesized32_sample.jsonl").read_text().splitlines()[0])
    row["current_state"]["objects"][0]["contains"] = ["ghost"]
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="'ghost' names no object"):
        load_bytesized32(path)


def test_package_import_does_not_import_scienceworld():
    code = ("import sys, rlvr_world.data.textgame as t; t.gold_diff; t.convert_tree; "
            "import rlvr_world.data.textgame.scienceworld; print('scienceworld' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_collect_rejects_unknown_tasks(tmp_path):
    from rlvr_world.data.textgame.scienceworld import collect

    with pytest.raises(ValueError, match="valid names: .*find-living-thing"):
        collect(tmp_path, tasks=("boil-egg",))


def test_missing_java_raises_a_clear_error(monkeypatch):
    from rlvr_world.data.textgame import scienceworld

    monkeypatch.setattr(scienceworld.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="default-jre-headless"):
        scienceworld.make_env()


# ---------------------------------------------------------------- real collection


@pytest.mark.java
def test_tiny_collect(tmp_path):
    if shutil.which("java") is None:
        pytest.skip("no Java runtime on PATH (apt-get install -y default-jre-headless)")
    if importlib.util.find_spec("scienceworld") is None:
        pytest.skip("scienceworld is not installed (pip install scienceworld)")
    from rlvr_world.data.textgame.scienceworld import collect

    meta = collect(tmp_path, tasks=("find-living-thing",), variations_per_task=(1, 1, 0), max_steps_per_episode=10,
                   scope="focus", workers=1, seed=0, progress=False)
    assert meta["counts"]["test"] == 0 and 1 <= meta["counts"]["train"] <= 10
    assert json.loads((tmp_path / "meta.json").read_text())["counts"] == meta["counts"]
    train = read_jsonl(tmp_path / "train.jsonl")
    assert [t.step for t in train] == list(range(len(train)))
    assert read_jsonl(tmp_path / "test.jsonl") == []
    assert any(t.changed for t in train)
    for t in train + read_jsonl(tmp_path / "val.jsonl"):
        assert t.source == "scienceworld" and t.task == "find-living-thing"
        assert t.changed == (t.current_state != t.next_state)
        assert score(json.dumps(gold_diff(t.current_state, t.next_state)), t.current_state, t.next_state) == 1.0
        assert state_chars(t.current_state) < 1500


def test_unchanged_ratio_subsampling_is_seeded():
    import random

    from rlvr_world.data.textgame.scienceworld import _subsample

    records = [{"changed": i % 4 == 0, "i": i} for i in range(40)]  # 10 changed, 30 unchanged
    kept = _subsample(records, 0.5, random.Random(0))
    assert sum(r["changed"] for r in kept) == 10 and sum(not r["changed"] for r in kept) == 5
    assert [r["i"] for r in kept] == sorted(r["i"] for r in kept)
    assert kept == _subsample(records, 0.5, random.Random(0))
    assert _subsample(records, None, random.Random(0)) == records
