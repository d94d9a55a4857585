"""The MPC web agent: the value function on hand-made pages, the agent loop on a fake env with fake world models,
and, with a browser, the real MiniWoB++ env with the proposal, oracle and a tiny untrained world model."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass

import pytest

from rlvr_world import config  # noqa: F401  (registers the recipes; imported before config_lang)
from rlvr_world.config_lang import MPCConfig, MPCRun
from rlvr_world.data.web.page import page_changes
from rlvr_world.eval import mpc
from rlvr_world.eval.mpc_value import EARLY, READY, UNCHANGED, Goal, parse_goal, value

# ---------------------------------------------------------------------------------------------- value function

LOGIN_OBJ = 'Enter the username "olin" and the password "Rh5" into the text fields and press login.'
LOGIN = """[1] RootWebArea 'Login User Task'
  [2] StaticText 'Username'
  [3] textbox{user}
  [4] StaticText 'Password'
  [5] textbox{password}
  [6] button 'Login'"""


def login(user: str = "", password: str = "") -> str:
    return LOGIN.format(user=f" value='{user}'" if user else "",
                        password=f" value='{chr(0x2022) * len(password)}'" if password else "")


def test_parse_goal():
    assert parse_goal(LOGIN_OBJ) == Goal(texts=("olin", "Rh5"), finish=("login",))
    assert parse_goal("Select M47, U6dKdqB and click Submit.") == Goal(selects=("M47", "U6dKdqB"), finish=("submit",))
    assert parse_goal("Select nothing and click Submit.").selects == ()
    assert parse_goal("Select Slovakia from the list and click Submit.").selects == ("Slovakia",)
    assert parse_goal("Click on Tab #3.").finish == ("tab #3",)
    assert parse_goal("Expand the section below and click submit.") == Goal(expand=True, finish=("submit",))


def test_value_login_user():
    page = login()
    right = value(LOGIN_OBJ, page, login(user="olin"), "type [3] [olin]")
    swapped = value(LOGIN_OBJ, page, login(user="Rh5"), "type [3] [Rh5]")
    nothing = value(LOGIN_OBJ, page, page, "click [2]")
    focus_only = value(LOGIN_OBJ, page, page.replace("textbox", "textbox focused", 1), "click [3]")
    assert right == 1.0 and swapped < 0 and nothing == focus_only == UNCHANGED and right > max(swapped, nothing)
    half = login(user="olin")
    assert value(LOGIN_OBJ, half, login("olin", "Rh5"), "type [5] [Rh5]") == 1.0  # the masked password counts
    assert value(LOGIN_OBJ, half, login("olin", "olinx"), "type [5] [olinx]") < 0
    assert value(LOGIN_OBJ, half, half, "click [6]") == EARLY
    assert value(LOGIN_OBJ, login("olin", "Rh5"), login("olin", "Rh5"), "click [6]") == READY


def test_value_enter_text():
    obj = 'Enter "Bernardine" into the text field and press Submit.'
    page = "[1] RootWebArea 'Enter Text Task'\n  [2] textbox\n  [3] button 'Submit' focused"
    typed = "[1] RootWebArea 'Enter Text Task'\n  [2] textbox value='Bernardine' focused\n  [3] button 'Submit'"
    wrong = typed.replace("Bernardine", "Bern")
    assert value(obj, page, typed, "type [2] [Bernardine]") > value(obj, page, wrong, "type [2] [Bern]")
    assert value(obj, page, page, "click [3]") == EARLY < value(obj, page, page, "click [2]")
    assert value(obj, typed, typed, "click [3]") == READY


def _boxes(checked: set[str], names=("Rh51", "M47", "TSccRB", "U6dKdqB")) -> str:
    lines = ["[1] RootWebArea 'Click Checkboxes Task'"]
    lines += [f"  [{i}] checkbox '{n}'" + (" checked" if n in checked else "") for i, n in enumerate(names, 2)]
    return "\n".join(lines + ["  [6] button 'Submit'"])


def test_value_click_checkboxes():
    obj = "Select M47, U6dKdqB and click Submit."
    page = _boxes(set())
    good = value(obj, page, _boxes({"M47"}), "click [3]")
    bad = value(obj, page, _boxes({"Rh51"}), "click [2]")
    assert good == 1.0 and bad == -1.0 and value(obj, page, page, "click [6]") == EARLY
    assert value(obj, _boxes({"M47"}), _boxes(set()), "click [3]") == -1.0  # unchecking a wanted box
    assert value(obj, _boxes({"M47", "U6dKdqB"}), _boxes({"M47", "U6dKdqB"}), "click [6]") == READY
    assert value(obj, _boxes({"M47", "U6dKdqB", "Rh51"}), _boxes({"M47", "U6dKdqB", "Rh51"}), "click [6]") == EARLY
    assert value("Select nothing and click Submit.", page, page, "click [6]") == READY


def _choose(selected: str) -> str:
    options = ["Saint Lucia", "Montenegro", "Slovakia"]
    lines = ["[1] RootWebArea 'Choose List Task'", f"  [2] combobox value='{selected}' collapsed", "    [3] MenuListPopup"]
    lines += [f"      [{i}] option '{o}'" + (" selected" if o == selected else "") for i, o in enumerate(options, 4)]
    return "\n".join(lines + ["  [7] button 'Submit'"])


def test_value_choose_list():
    obj = "Select Slovakia from the list and click Submit."
    page = _choose("Saint Lucia")
    right = value(obj, page, _choose("Slovakia"), "select [2] [Slovakia]")
    wrong = value(obj, page, _choose("Montenegro"), "select [2] [Montenegro]")
    assert right > wrong and right > 0
    assert value(obj, page, page, "click [7]") == EARLY and value(obj, _choose("Slovakia"), page, "click [7]") == READY


def test_value_click_tab_and_collapsible():
    tabs = ("[1] RootWebArea 'Click Tab Task'\n  [2] tablist\n    [3] tab 'Tab #1' selected expanded\n"
            "      [4] link 'Tab #1'\n    [5] tab 'Tab #3' collapsed\n      [6] link 'Tab #3'")
    assert value("Click on Tab #3.", tabs, tabs, "click [6]") == READY
    assert value("Click on Tab #3.", tabs, tabs, "click [4]") == EARLY  # another link commits the episode
    focused = tabs.replace("'Tab #3' collapsed", "'Tab #3' focused collapsed")
    assert value("Click on Tab #3.", tabs, focused, "click [5]") == UNCHANGED  # the tab itself: focus only
    obj = "Expand the section below and click submit."
    page = "[1] RootWebArea 'C'\n  [2] tab 'Section #6' collapsed\n  [3] tab 'Submit' collapsed\n    [4] button 'Submit'"
    opened = page.replace("'Section #6' collapsed", "'Section #6' focused selected expanded") + "\n  [5] tabpanel 'S'"
    assert value(obj, page, opened, "click [2]") == 1.0 and value(obj, page, page, "click [4]") == EARLY
    assert value(obj, opened, opened, "click [4]") == READY


# ---------------------------------------------------------------------------------------------- agent loop


@dataclass
class FakeState:
    objective: str
    url: str
    page: str
    done: bool = False


class FakeEnv:
    """enter-text without a browser: type the word into [2], then click Submit [3] (reward 1, else -1)."""

    WORD = "Ada"

    def __init__(self, task: str) -> None:
        self.task, self.value, self.done, self.closed, self.steps = task, "", False, False, 0

    def _state(self) -> FakeState:
        box = f"  [2] textbox value='{self.value}'" if self.value else "  [2] textbox"
        page = f"[1] RootWebArea 'Enter Text Task'\n  [4] StaticText 'Type here'\n{box}\n  [3] button 'Submit'"
        return FakeState(f'Enter "{self.WORD}" into the text field and press Submit.', "fake://t", page, self.done)

    def reset(self, seed: int) -> FakeState:
        self.value, self.done = "", False
        return self._state()

    def valid_actions(self, state: FakeState) -> list[str]:
        if state.done:
            return []
        return ["click [4]", "click [2]", "click [3]", f"type [2] [{self.WORD}]", "type [2] [Bob]"]

    def step(self, action: str) -> tuple[FakeState, float, bool]:
        self.steps += 1
        reward = 0.0
        if action.startswith("type [2] ["):
            self.value = action[len("type [2] ["):-1]
        elif action == "click [3]":
            self.done, reward = True, 1.0 if self.value == self.WORD else -1.0
        return self._state(), reward, self.done

    def replay(self, seed: int, actions: list[str]) -> FakeState:
        state = self.reset(seed)
        for a in actions:
            state, _, _ = self.step(a)
        return state

    def close(self) -> None:
        self.closed = True


def _true_changes(record: dict) -> str:
    env = FakeEnv("fake")
    env.replay(0, record["previous_actions"])
    before = env._state().page
    return page_changes(before, env.step(record["action"])[0].page)


def test_propose_is_seeded():
    valid = [f"click [{i}]" for i in range(20)]
    assert mpc.propose(valid, 5, "a") == mpc.propose(valid, 5, "a") != mpc.propose(valid, 5, "b")
    assert len(mpc.propose(valid, 5, "a")) == 5 and set(mpc.propose(valid, 50, "a")) == set(valid)


def test_choose_ties_go_to_proposal_order():
    page = "[1] RootWebArea 'x'\n  [2] StaticText 'A'"
    preds = [mpc.Prediction(page, ""), mpc.Prediction(page, "")]
    assert mpc.choose("Click on B.", page, ["click [2]", "click [2]"], preds) == (0, [UNCHANGED, UNCHANGED])
    assert mpc.choose("x", page, ["click [2]"], None) == (0, None)


def test_agent_loop_fake_env(tmp_path):
    envs: list[FakeEnv] = []

    def factory(task: str) -> FakeEnv:
        envs.append(FakeEnv(task))
        return envs[-1]

    def perfect(records: list[dict]) -> list[str]:
        return [_true_changes(r) for r in records]

    def blind(records: list[dict]) -> list[str]:
        return ["New items:\nDeleted items:\nUpdated items:"] * len(records)

    results = mpc.run_mpc(["fake-a", "fake-b"], [0, 1, 2], world_models={"perfect": perfect, "blind": blind},
                          max_steps=6, candidates=5, env_factory=factory)
    assert results["arms"] == ["proposal", "perfect", "blind", "oracle"]
    assert len(envs) == 2 and all(e.closed for e in envs)
    summary = results["summary"]
    for arm in ("perfect", "oracle"):
        assert summary[arm]["overall"]["success_rate"] == 1.0 and summary[arm]["overall"]["mean_steps"] == 2.0
        assert summary[arm]["overall"]["prediction_f1"] == 1.0
    assert summary["blind"]["overall"]["success_rate"] < 1.0 and summary["blind"]["overall"]["prediction_f1"] < 1.0
    assert summary["proposal"]["overall"]["prediction_f1"] is None
    assert summary["proposal"]["per_task"]["fake-a"]["episodes"] == 3
    again = mpc.run_mpc(["fake-a", "fake-b"], [0, 1, 2], world_models={"perfect": perfect, "blind": blind},
                        max_steps=6, candidates=5, env_factory=factory)
    assert again["episodes"] == results["episodes"]  # deterministic
    json_path, md_path = mpc.write_outputs(results, tmp_path / "out")
    assert json.loads(json_path.read_text())["summary"]["oracle"]["overall"]["success_rate"] == 1.0
    md = md_path.read_text()
    assert "| arm | fake-a | fake-b | overall | mean reward | mean steps | prediction F1 |" in md
    assert "| oracle | 1.000 | 1.000 | 1.000 |" in md


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mpc.run_mpc(["fake"], [0], world_models={"wm": str(tmp_path / "nowhere")}, env_factory=FakeEnv)
    with pytest.raises(ValueError, match="reserved"):
        mpc.run_mpc(["fake"], [0], world_models={"oracle": lambda r: []}, env_factory=FakeEnv)
    with pytest.raises(ValueError, match="reserved"):
        MPCConfig(world_models={"proposal": "x"}).check()
    with pytest.raises(ValueError, match="seeds"):
        MPCConfig(seeds=[]).check()
    assert MPCRun.recipe == "mpc"


@pytest.mark.skipif(importlib.util.find_spec("miniwob") is None, reason="miniwob is not installed")
def test_unknown_task():
    with pytest.raises(ValueError, match="no-such-task"):
        mpc.run_mpc(["no-such-task"], [0])


# ---------------------------------------------------------------------------------------------- browser


def _browser_missing() -> str | None:
    for mod in ("miniwob", "selenium", "gymnasium"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install -e '.[lang]')"
    for var, default in (("MINIWOB_CHROME_BINARY", "/usr/bin/chromium"),
                         ("MINIWOB_CHROMEDRIVER", "/usr/bin/chromedriver")):
        path = os.environ.get(var, default)
        if not (os.path.isfile(path) or shutil.which(path)):
            return f"{path} missing (apt-get install -y chromium chromium-driver)"
    return None


_MISSING = _browser_missing()


def _tiny_world_model(path) -> str:
    from rlvr_world.data import text_domains, text_tokenizer
    from rlvr_world.models.transformer import Transformer
    from rlvr_world.train import text_model

    domain = text_domains.get("web")
    record = {"objective": 'Enter "Ada" into the text field and press Submit.', "url": "miniwob://enter-text",
              "previous_actions": [], "current_page": "[1] RootWebArea 'Enter Text Task'\n  [2] textbox",
              "action": "type [2] [Ada]"}
    texts = ["\n".join(domain.messages(record)), "New items:\nDeleted items:\nUpdated items:\n[2] textbox"] * 20
    tok = text_tokenizer.train_bpe(texts, 512, path / "bpe")
    model = Transformer.from_name("lm-tiny", vocab_size=len(tok), n_layers=1, dim=64, n_heads=2, n_kv_heads=1,
                                  intermediate_size=128)
    return str(text_model.save(model, tok, path / "wm"))


@pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")
@pytest.mark.browser
def test_real_env_arms(tmp_path):
    wm = _tiny_world_model(tmp_path)
    cfg = MPCRun(mpc=MPCConfig(tasks=["enter-text"], seeds=[1000, 1001], max_steps=4, candidates=4,
                               world_models={"tiny": wm}, max_new_tokens=8, out_dir=str(tmp_path / "mpc")),
                 progress=False)
    cfg.check()
    results = mpc.run(cfg)
    assert results["arms"] == ["proposal", "tiny", "oracle"] and len(results["episodes"]) == 6
    oracle = results["summary"]["oracle"]["overall"]
    assert oracle["success_rate"] == 1.0 and oracle["prediction_f1"] == 1.0
    assert results["summary"]["tiny"]["overall"]["predicted_steps"] >= 1
    assert (tmp_path / "mpc" / "report.md").is_file() and (tmp_path / "mpc" / "results.json").is_file()
