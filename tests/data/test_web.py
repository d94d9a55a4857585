"""Web pages as text (rendering from recorded accessibility trees, changes, actions) and, with a browser, the
MiniWoB environment and collector."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_world.data.web.page import (
    Action,
    IdMap,
    apply_changes,
    format_action,
    page_changes,
    page_lines,
    parse_action,
    render_ax_tree,
)
from rlvr_world.rewards.web import parse_changes, score

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "web"
PAGE_A = """[1] RootWebArea 'Login'
  [2] StaticText 'Username'
  [3] textbox
  [4] button 'Login'"""
PAGE_B = """[1] RootWebArea 'Login'
  [2] StaticText 'Username'
  [3] textbox value='ada' focused
  [5] StaticText 'Welcome [ada]'"""


def _fixture(task: str) -> dict:
    return json.loads((FIXTURES / f"{task}.json").read_text())


# ---------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("task", ["login-user", "click-tab", "choose-list"])
def test_render_recorded_trees(task):
    fx = _fixture(task)
    ids = IdMap()
    pages = [render_ax_tree(tree, ids, area_backend_id=fx["area_backend_id"]) for tree in fx["trees"]]
    assert pages == fx["pages"]
    assert pages[0].splitlines()[0].startswith("[1] RootWebArea '")
    assert pages[0] != pages[1]
    # stable ids: an element whose line did not change keeps it (same id, same text)
    before, after = page_lines(pages[0]), page_lines(pages[1])
    assert any(i in after and after[i] == line for i, line in before.items() if i != 1)


def test_render_contents():
    login, tab, choose = (_fixture(t) for t in ("login-user", "click-tab", "choose-list"))
    first = render_ax_tree(login["trees"][0], area_backend_id=login["area_backend_id"])
    assert first.splitlines() == ["[1] RootWebArea 'Login User Task'", "  [2] StaticText 'Username'", "  [3] textbox",
                                  "  [4] StaticText 'Password'", "  [5] textbox", "  [6] button 'Login'"]
    assert "[3] textbox value='karrie' focused" in login["pages"][1]
    assert "Last reward" not in first and "Time left" not in first  # only the task area
    assert "selected expanded" in tab["pages"][0] and "collapsed" in tab["pages"][0]
    assert "combobox value='Helli' focused collapsed" in choose["pages"][1]
    assert "option 'Helli' selected" in choose["pages"][1]
    # the whole document without an area; fresh ids are deterministic
    whole = render_ax_tree(login["trees"][0])
    assert whole == render_ax_tree(login["trees"][0]) and "Time left" in whole


def test_render_rejects_empty_tree():
    with pytest.raises(ValueError, match="no root"):
        render_ax_tree([])


# ---------------------------------------------------------------------------------------------- changes


def test_page_changes_sections():
    changes = page_changes(PAGE_A, PAGE_B)
    assert changes == ("New items:\n[5] StaticText 'Welcome [ada]'\nDeleted items:\n[4] button 'Login'\n"
                       "Updated items:\n[3] textbox value='ada' focused")
    assert parse_changes(changes) == {"new": {"[5] StaticText 'Welcome [ada]'"}, "deleted": {"[4] button 'Login'"},
                                      "updated": {"[3] textbox value='ada' focused"}}
    assert page_changes(PAGE_A, PAGE_A) == "New items:\nDeleted items:\nUpdated items:"


@pytest.mark.parametrize("task", ["login-user", "click-tab", "choose-list"])
def test_apply_changes_round_trip(task):
    a, b = _fixture(task)["pages"][:2]
    truth = page_changes(a, b)
    rebuilt = apply_changes(a, truth)
    assert page_lines(rebuilt) == page_lines(b)
    assert set(map(str.strip, rebuilt.splitlines())) == set(map(str.strip, b.splitlines()))
    assert score(truth, truth) == 1.0
    assert page_changes(a, rebuilt) == truth  # same lines, so the same changes
    assert apply_changes(a, page_changes(a, a)) == a


def test_apply_changes_places_and_keeps_order():
    rebuilt = apply_changes(PAGE_A, page_changes(PAGE_A, PAGE_B))
    assert rebuilt.splitlines() == ["[1] RootWebArea 'Login'", "  [2] StaticText 'Username'",
                                    "  [3] textbox value='ada' focused", "  [5] StaticText 'Welcome [ada]'"]


def test_apply_changes_tolerates_malformed_predictions():
    predicted = ("Let me think.\n[9] before any header\n## New items:\nnot a line\n[2] StaticText 'dup id'\n"
                 "[7] link 'Next'\n[7] link 'again'\n**Deleted items:**\n[42] gone\nbogus\n"
                 "Updated items:\n[3] textbox value='x'\n[99] never there\n[x] bad id")
    rebuilt = apply_changes(PAGE_A, predicted)
    assert rebuilt.splitlines() == ["[1] RootWebArea 'Login'", "  [2] StaticText 'Username'",
                                    "  [3] textbox value='x'", "  [4] button 'Login'", "  [7] link 'Next'"]
    assert apply_changes(PAGE_A, "") == PAGE_A
    assert apply_changes("", "New items:\n[1] a") == "  [1] a"


# ---------------------------------------------------------------------------------------------- actions


@pytest.mark.parametrize("text, expected", [
    ("click [12]", Action("click", 12)),
    ("  click [3]\n", Action("click", 3)),
    ("type [12] [hello world]", Action("type", 12, "hello world")),
    ("type [4] [a [b] c]]", Action("type", 4, "a [b] c]")),
    ("type [4] []", Action("type", 4, "")),
    ("select [7] [Blue Sky]", Action("select", 7, "Blue Sky")),
])
def test_parse_action(text, expected):
    assert parse_action(text) == expected
    assert parse_action(str(expected)) == expected


@pytest.mark.parametrize("bad", ["", "click", "click 12", "click [12] [x]", "type [12]", "type [12] hello",
                                 "press [1]", "Click [1]", "type [a] [b]", "select [1]", "type [1] [x] extra"])
def test_parse_action_rejects(bad):
    with pytest.raises(ValueError, match="malformed action") as info:
        parse_action(bad)
    assert repr(bad) in str(info.value)


def test_parse_action_rejects_non_str():
    with pytest.raises(TypeError, match="must be a str"):
        parse_action(None)  # type: ignore[arg-type]


def test_format_action():
    assert format_action("type", 3, "a b") == "type [3] [a b]"
    with pytest.raises(ValueError, match="unknown action kind"):
        format_action("press", 1)
    with pytest.raises(ValueError, match="takes a text"):
        format_action("type", 1)


def test_package_import_is_light():
    code = ("import sys, rlvr_world.data.web as w; w.page_changes; "
            "assert not {'selenium', 'miniwob', 'gymnasium'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- browser


def _browser_missing() -> str | None:
    for mod in ("miniwob", "selenium", "gymnasium"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install -e '.[lang]')"
    for var, default in (("MINIWOB_CHROME_BINARY", "/usr/bin/chromium"), ("MINIWOB_CHROMEDRIVER", "/usr/bin/chromedriver")):
        path = os.environ.get(var, default)
        if not (os.path.isfile(path) or shutil.which(path)):
            return f"{path} missing (apt-get install -y chromium chromium-driver)"
    return None


_MISSING = _browser_missing()
browser = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


@pytest.fixture(scope="module")
def login_env():
    from rlvr_world.data.web.miniwob import WebEnv

    env = WebEnv("login-user")
    try:
        yield env
    finally:
        env.close()


@browser
@pytest.mark.browser
def test_env_reset_step_replay(login_env):
    from rlvr_world.data.web.miniwob import expert_actions

    env = login_env
    first = env.reset(7)
    assert env.reset(7) == first and first.url == "miniwob://login-user" and not first.done
    assert env.reset(8).objective != first.objective
    state = env.reset(7)
    plan = expert_actions("login-user", state)
    assert plan is not None and len(plan) == 3
    assert set(plan) <= set(env.valid_actions(state))
    nxt, reward, done = env.step(plan[0])
    assert nxt.page != state.page and reward == 0.0 and not done
    assert "value=" in page_changes(state.page, nxt.page)
    assert env.replay(7, plan[:1]) == nxt
    with pytest.raises(ValueError, match=r"no element \[999\]"):
        env.step("click [999]")
    for action in plan[1:]:
        nxt, reward, done = env.step(action)
    assert done and reward == 1.0 and nxt.done and nxt.page.startswith("[1] RootWebArea")
    assert env.valid_actions(nxt) == []
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(plan[0])


@browser
@pytest.mark.browser
def test_env_rejects_unknown_task():
    from rlvr_world.data.web.miniwob import WebEnv

    with pytest.raises(ValueError, match="unknown MiniWoB task 'no-such-task'.*login-user|valid names"):
        WebEnv("no-such-task")


@browser
@pytest.mark.browser
def test_collect_tiny(tmp_path):
    from rlvr_world.data.web.miniwob import collect

    meta = collect(tmp_path, tasks=["enter-text"], episodes_per_task=2, policy="expert", progress=False)
    recs = [json.loads(line) for name in ("train", "val", "test") for line in (tmp_path / f"{name}.jsonl").open()]
    assert meta["counts"]["train"] + meta["counts"]["val"] + meta["counts"]["test"] == len(recs) > 0
    assert json.loads((tmp_path / "meta.json").read_text())["transitions"] == len(recs)
    keys = {"id", "task", "seed", "step", "objective", "url", "previous_actions", "current_page", "action",
            "next_page", "changes", "reward", "done"}
    for rec in recs:
        assert keys <= set(rec)
        assert rec["changes"] == page_changes(rec["current_page"], rec["next_page"])
        assert rec["previous_actions"] == [r["action"] for r in recs if r["seed"] == rec["seed"]][: rec["step"]]
    assert all(r["reward"] == 1.0 for r in recs if r["done"]) and sum(r["done"] for r in recs) == 2
    assert not list(tmp_path.glob("*.tmp*"))
