"""rlvr-train (rlvr_world.cli): help, config errors, --print-config, unavailable recipes, the collect recipe.
(The tokenizer and pretrain recipes through the CLI: tests/train/test_{tokenizer,pretrain}_recipe.py.)

The collector is replaced by a fake that records its arguments: the real one is tested in tests/data.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlvr_world import cli
from rlvr_world import config as C
from rlvr_world.data import sim

SHIPPED = Path(C.__file__).parent / "configs" / "collect_sim64.yaml"
AVAILABLE = ["collect", "tokenizer", "pretrain", "grpo"]  # the training recipes' own tests are in tests/train
UNAVAILABLE = ["eval", "real2sim"]


@pytest.fixture
def fake_collect(monkeypatch):
    calls = []

    def collect(root, **kwargs):
        calls.append({"root": root, **kwargs})
        return {"root": str(root), "collected": 3, "skipped": 1, "seconds_per_episode": 0.1,
                "success_by_grade": {"drawer-open": {"expert": (2, 2), "truncated": (0, 1)}}, "episodes": []}

    monkeypatch.setattr(sim, "collect", collect)
    return calls


def test_help_lists_every_recipe(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for recipe in [*AVAILABLE, *UNAVAILABLE]:
        line = next(ln for ln in lines if ln.strip().startswith(recipe + " "))
        assert C.RECIPES[recipe].summary in line  # one line each
        assert ("not available yet" in line) == (recipe in UNAVAILABLE)
    assert "collect-sim-64" in out and "grpo-rt1" in out  # presets are listed too
    assert "quick start" in out and "--smoke" in out


@pytest.mark.parametrize(("argv", "size"), [([], "quickstart"), (["--smoke"], "smoke")])
def test_no_recipe_runs_the_quick_start(argv, size, monkeypatch):
    from rlvr_world.train import quickstart

    calls = []
    monkeypatch.setattr(quickstart, "run", lambda s: calls.append(s) or 0)
    assert cli.main(argv) == 0
    assert calls == [size]


def test_smoke_with_a_recipe_is_a_usage_error(capsys, fake_collect):
    assert cli.main(["--smoke", "collect"]) == 2
    assert "--smoke goes without a recipe" in capsys.readouterr().err
    assert not fake_collect


def test_recipe_help_lists_the_config_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["collect", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--config", "--preset", "--print-config", "key=value", "collect-sim-64"):
        assert opt in out


@pytest.mark.parametrize("recipe", UNAVAILABLE)
def test_unavailable_recipes_exit_2_with_a_message(recipe, capsys, fake_collect):
    assert cli.main([recipe]) == 2
    err = capsys.readouterr().err
    assert recipe in err and "not available yet in this version" in err
    assert not fake_collect


def test_print_config_round_trips(capsys, tmp_path, fake_collect):
    argv = ["collect", "--config", str(SHIPPED), "data.image_size=32", "data.tasks=[reach]", "--print-config"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert not fake_collect  # printing runs nothing
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    expected = C.load_config("collect", SHIPPED, ["data.image_size=32", "data.tasks=[reach]"])
    assert C.load_config("collect", path) == expected
    assert yaml.safe_load(text)["data"]["image_size"] == 32


def test_print_config_with_preset(capsys):
    assert cli.main(["collect", "--preset", "smoke", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"] == C.to_dict(C.PRESETS["collect-smoke"]())["data"]


@pytest.mark.parametrize("argv, words", [
    (["collect", "data.image_sise=32"], ["data.image_sise", "allowed keys in data", "image_size"]),
    (["collect", "data.image_size=big"], ["data.image_size", "must be int", "'big'"]),
    (["collect", "grpo.group_size=4"], ["unknown key 'grpo'", "data, progress"]),
    (["collect", "--preset", "nope"], ["unknown preset 'nope'"]),
    (["collect", "--config", "/nonexistent/x.yaml"], ["cannot read config file"]),
    (["collect", "data.seed"], ["key=value"]),
])
def test_config_errors_exit_2_before_any_work(argv, words, capsys, fake_collect):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err
    assert not fake_collect


def test_collect_calls_the_collector_with_the_config(tmp_path, capsys, fake_collect):
    root = tmp_path / "data"
    argv = ["collect", "--config", str(SHIPPED), f"data.root={root}", "data.episodes_per_task=5",
            "data.workers=1", "data.grades={expert: 1, truncated: 1}", "progress=false"]
    assert cli.main(argv) == 0
    (call,) = fake_collect
    assert call == {
        "root": str(root), "tasks": ["drawer-open", "drawer-close"], "episodes_per_task": 5, "image_size": 64,
        "max_steps": 100, "frame_skip": 2, "split_fractions": [0.8, 0.1, 0.1], "seed": 0, "workers": 1,
        "camera": "corner3", "grades": {"expert": 1.0, "truncated": 1.0}, "progress": False,
    }
    saved = root / "collect_config.yaml"  # the resolved config is kept beside the data
    assert C.load_config("collect", saved) == C.load_config("collect", SHIPPED, argv[3:])
    out = capsys.readouterr().out
    assert "collected 3 episodes" in out and "expert 2/2" in out


def test_collect_preset_defaults(tmp_path, fake_collect):
    assert cli.main(["collect", "--preset", "collect-smoke", f"data.root={tmp_path}"]) == 0
    (call,) = fake_collect
    smoke = C.PRESETS["collect-smoke"]().data
    assert call["tasks"] == smoke.tasks and call["episodes_per_task"] == smoke.episodes_per_task
    assert call["image_size"] == smoke.image_size and call["grades"] is None


def test_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "rlvr_world.cli", "--help"], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "collect" in proc.stdout and "real2sim" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "rlvr_world.cli", "eval"], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 2 and "not available yet in this version" in proc.stderr


def test_an_interrupted_recipe_exits_130(monkeypatch, capsys, tmp_path):
    from rlvr_world.train.loop import Interrupted

    def interrupted(cfg):
        raise Interrupted(7, tmp_path)

    monkeypatch.setitem(cli.AVAILABLE, "collect", interrupted)
    assert cli.main(["collect", f"data.root={tmp_path}"]) == 130
    assert "interrupted after step 7; continue with train.resume=true" in capsys.readouterr().err
