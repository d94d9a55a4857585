"""Text-game reward (rewards.text_game, DESIGN §5): answer extraction and lenient parsing, state rebuilding,
binary and task-specific scores on hand-made ByteSized32 states, the three fixed reference bugs, the
temperature tolerance and the errors on bad input."""

import copy
import json

import pytest

from rlvr_world.rewards import text_game
from rlvr_world.rewards.text_game import extract_answer, parse_answer, score

MAX = 0.09 + 0.01 + 0.2 + 1.0  # 1.3


def _obj(uuid, name, props, contains=(), type_="GameObject"):
    return {"name": name, "uuid": uuid, "type": type_, "properties": dict(props), "contains": list(contains)}


def _points(s=0, over=False, won=False):
    return {"score": s, "gameOver": over, "gameWon": won}


# current: a sink (2) holding a mug (3) of water (4); the player's action "turn on sink" fills the mug
CURRENT = [
    _obj(1, "room", {"isContainer": True}, [2]),
    _obj(2, "sink", {"isOn": False, "temperature": 20.0}, [3]),
    _obj(3, "mug", {"isContainer": True, "isFull": False}, []),
    _obj(5, "sponge", {"isWet": False}),
    _points(0),
]
# target: sink on, mug full and holds new water (4), sponge removed, score +1
TARGET = [
    _obj(1, "room", {"isContainer": True}, [2]),
    _obj(2, "sink", {"isOn": True, "temperature": 20.0}, [3]),
    _obj(3, "mug", {"isContainer": True, "isFull": True}, [4]),
    _obj(4, "water", {"temperature": 15.0}),
    _points(1),
]


def _answer(modified, removed, points, prefix="I think the sink turns on.\nThe final answer is: "):
    return prefix + json.dumps({"modified": modified, "removed": removed, "score": points})


def _exact(**changes):
    modified = [TARGET[1], TARGET[2], TARGET[3]]
    return _answer(copy.deepcopy(modified), [5], _points(1), **changes)


def _both(response, current=CURRENT, target=TARGET, **kw):
    return score(response, current, target, "binary", **kw), score(response, current, target, "task_specific", **kw)


# changed items: sink.isOn; mug.isFull; mug.contains; water's 5 fields (name, type, contains, temperature)
# -> name, type, contains, properties.temperature = 4; sponge removed = 1  -> 1 + 2 + 4 + 1 = 8
N_CHANGED = 8


def test_exact_prediction_is_binary_one_and_task_specific_max():
    b, t = _both(_exact())
    assert b == 1.0
    assert t == pytest.approx(MAX)
    assert MAX == pytest.approx(1.3)


def test_wrong_property_gives_binary_zero_and_partial_task_specific():
    modified = copy.deepcopy([TARGET[1], TARGET[2], TARGET[3]])
    modified[1]["properties"]["isFull"] = False  # mug: one changed item wrong
    b, t = _both(_answer(modified, [5], _points(1)))
    assert b == 0.0
    # objects right 3 of 4 (room, sink, water), score all right, changed 7 of 8
    assert t == pytest.approx(0.09 * 3 / 4 + 0.01 * 1 + 0.0 + 7 / N_CHANGED)


def test_wrong_unchanged_property_costs_object_accuracy_only():
    modified = copy.deepcopy([TARGET[1], TARGET[2], TARGET[3]])
    modified[0]["properties"]["temperature"] = 99.0  # sink's temperature did not change
    b, t = _both(_answer(modified, [5], _points(1)))
    assert b == 0.0
    assert t == pytest.approx(0.09 * 3 / 4 + 0.01 + 1.0)


def test_new_object_is_kept():  # fixed bug 1
    assert score(_exact(), CURRENT, TARGET) == 1.0
    modified = copy.deepcopy([TARGET[1], TARGET[2]])  # water (4) not predicted
    b, t = _both(_answer(modified, [5], _points(1)))
    assert b == 0.0
    assert t == pytest.approx(0.09 * 3 / 4 + 0.01 + (N_CHANGED - 4) / N_CHANGED)


def test_int_and_string_uuids_compare_by_value():  # fixed bug 2
    modified = copy.deepcopy([TARGET[1], TARGET[2], TARGET[3]])
    for obj in modified:
        obj["uuid"] = str(obj["uuid"])
        obj["contains"] = [str(u) for u in obj["contains"]]
    assert _both(_answer(modified, ["5"], _points(1))) == (1.0, pytest.approx(MAX))
    # and the states themselves may use strings while the answer uses ints
    current = copy.deepcopy(CURRENT)
    for obj in current[:-1]:
        obj["uuid"] = str(obj["uuid"])
        obj["contains"] = [str(u) for u in obj["contains"]]
    assert score(_exact(), current, TARGET) == 1.0


def test_contains_compared_as_sorted_lists():
    current = [_obj(1, "box", {}, [2, 3]), _obj(2, "a", {}), _obj(3, "b", {}), _points()]
    target = [_obj(1, "box", {}, [3, 2]), _obj(2, "a", {}), _obj(3, "b", {}), _points()]
    assert score(_answer([], [], {}), current, target) == 1.0
    assert score(_answer([_obj(1, "box", {}, [2])], [], {}), current, target) == 0.0


def test_unknown_predicted_property_is_ignored():  # fixed bug 3
    modified = copy.deepcopy([TARGET[1], TARGET[2], TARGET[3]])
    modified[0]["properties"]["sparkly"] = True  # in neither state
    assert _both(_answer(modified, [5], _points(1))) == (1.0, pytest.approx(MAX))


def test_missing_or_stale_property_is_wrong():
    modified = copy.deepcopy([TARGET[1], TARGET[2], TARGET[3]])
    del modified[0]["properties"]["isOn"]
    assert score(_answer(modified, [5], _points(1)), CURRENT, TARGET) == 0.0
    # a property the action deleted (known to the current object) must be deleted in the prediction too
    current = [_obj(1, "door", {"isOpen": False, "isLocked": True}), _points()]
    target = [_obj(1, "door", {"isOpen": False}), _points()]
    assert _both(_answer([target[0]], [], {}), current, target) == (1.0, pytest.approx(MAX))
    b, t = _both(_answer([], [], {}), current, target)  # kept isLocked
    assert (b, t) == (0.0, pytest.approx(0.0 + 0.01))


def test_removed_objects():
    # sponge not removed: extra object -> binary 0; every target object still right
    modified = copy.deepcopy([TARGET[1], TARGET[2], TARGET[3]])
    b, t = _both(_answer(modified, [], _points(1)))
    assert b == 0.0
    assert t == pytest.approx(0.09 + 0.01 + (N_CHANGED - 1) / N_CHANGED)
    # removing something that stays is wrong; removing an unknown uuid is harmless
    assert score(_answer(modified, [5, 1], _points(1)), CURRENT, TARGET) == 0.0
    assert score(_answer(modified, [5, 77], _points(1)), CURRENT, TARGET) == 1.0


def test_score_mismatch():
    modified = copy.deepcopy([TARGET[1], TARGET[2], TARGET[3]])
    b, t = _both(_answer(modified, [5], _points(1, over=True)))
    assert b == 0.0
    assert t == pytest.approx(0.09 + 0.01 * 2 / 3 + 1.0)
    # a missing score keeps the current one (score 0 != 1)
    b, t = _both(_answer(modified, [5], {}))
    assert b == 0.0
    assert t == pytest.approx(0.09 + 0.01 * 2 / 3 + 1.0)
    # a partial score dict is merged over the current one
    assert score(_answer(modified, [5], {"score": 1}), CURRENT, TARGET) == 1.0


def test_nothing_changed():
    state = [_obj(1, "rock", {"weight": 3}), _points()]
    assert _both(_answer([], [], {}), state, state) == (1.0, pytest.approx(MAX))
    b, t = _both(_answer([_obj(1, "rock", {"weight": 4})], [], {}), state, state)
    assert (b, t) == (0.0, pytest.approx(0.01))


def test_state_without_score_dict():
    current, target = [_obj(1, "lamp", {"on": False})], [_obj(1, "lamp", {"on": True})]
    assert score(_answer([target[0]], [], {}), current, target) == 1.0
    assert score(_answer([target[0]], [], {}), current, target, "task_specific") == pytest.approx(MAX)


@pytest.mark.parametrize("response", [
    "", "no idea", "final answer is: not json", "Final answer is: [1, 2]", "Final answer is: {\"foo\": 1}",
    'Final answer is: {"modified": {"uuid": 1}}', 'Final answer is: {"modified": [{"name": "x"}]}',
    'Final answer is: {"removed": 5}', 'Final answer is: {"score": 1}', 'Final answer is: {"modified": [',
])
def test_unparseable_or_malformed_is_zero(response):
    assert _both(response) == (0.0, 0.0)


def test_answer_after_last_marker():
    wrong = _answer([], [], {}, prefix="Final state is: ")
    response = wrong + "\nWait, the sink is on.\n" + _exact(prefix="FINAL ANSWER: ```json\n") + "\n```"
    assert extract_answer(response).startswith('{"modified"')
    assert score(response, CURRENT, TARGET) == 1.0
    assert score(_exact() + "\nfinal state is: {}", CURRENT, TARGET) == 0.0  # the last marker wins


def test_answer_from_last_json_block_then_whole_text():
    body = json.loads(_exact().split("answer is: ")[1])
    blocks = f"draft:\n```json\n{json.dumps({'removed': []})}\n```\nfixed:\n```json\n{json.dumps(body)}\n```\n"
    assert score(blocks, CURRENT, TARGET) == 1.0
    assert score("Here it is " + json.dumps(body) + " done.", CURRENT, TARGET) == 1.0


def test_lenient_parsing():
    body = json.loads(_exact().split("answer is: ")[1])
    text = json.dumps(body, indent=1)
    with_commas = text.replace("]", ",]").replace("}", ",}")
    assert score("final answer is: " + with_commas, CURRENT, TARGET) == 1.0
    pythonic = repr(body)  # single quotes, True/False
    assert "'" in pythonic and "True" in pythonic
    assert score("Final answer is: " + pythonic, CURRENT, TARGET) == 1.0
    mixed = pythonic.replace("True", "true").replace("]", ", ]")  # single quotes with JSON literals
    assert score("Final answer is: " + mixed, CURRENT, TARGET) == 1.0
    assert parse_answer("Final answer: {'removed': [None,],}") == {"modified": [], "removed": [None], "score": {}}


def test_temperature_tolerance():
    modified = copy.deepcopy([TARGET[1], TARGET[2], TARGET[3]])
    modified[2]["properties"]["temperature"] = 15.4
    response = _answer(modified, [5], _points(1))
    assert score(response, CURRENT, TARGET) == 0.0
    assert score(response, CURRENT, TARGET, temperature_tolerance=0.5) == 1.0
    assert score(response, CURRENT, TARGET, "task_specific", temperature_tolerance=0.5) == pytest.approx(MAX)
    assert score(response, CURRENT, TARGET, temperature_tolerance=0.3) == 0.0
    # only for properties named *temperature* and numbers
    modified[2]["properties"]["temperature"] = 15.0
    modified[1]["properties"]["isFull"] = 1  # bool vs number: never equal
    assert score(_answer(modified, [5], _points(1)), CURRENT, TARGET, temperature_tolerance=5.0) == 0.0


def test_errors():
    with pytest.raises(ValueError, match=r"mode.*binary.*task_specific.*'f1'"):
        score(_exact(), CURRENT, TARGET, "f1")
    with pytest.raises(ValueError, match="current_state"):
        score(_exact(), {"uuid": 1}, TARGET)
    with pytest.raises(ValueError, match="target_state"):
        score(_exact(), CURRENT, [*TARGET[:-1], "score"])
    with pytest.raises(TypeError, match="response"):
        score(None, CURRENT, TARGET)
    with pytest.raises(ValueError, match="temperature_tolerance"):
        score(_exact(), CURRENT, TARGET, temperature_tolerance=-1.0)
    assert text_game.MODES == ("binary", "task_specific")


def test_inputs_not_mutated():
    current, target = copy.deepcopy(CURRENT), copy.deepcopy(TARGET)
    score(_exact(), current, target, "task_specific")
    assert current == CURRENT and target == TARGET


def test_doctests():
    import doctest

    from rlvr_world.rewards import text_game

    assert doctest.testmod(text_game).failed == 0
