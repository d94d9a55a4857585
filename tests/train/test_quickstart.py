"""The quick start (rlvr_world.train.quickstart): stage order and configs, skipping finished stages, stopping at
a failed one, the LPIPS fallback. The recipes are fakes that record their configs; each real recipe has its
own tests (tests/train/test_*_recipe.py), and `make quickstart` / `rlvr-train --smoke` run them for real."""

from pathlib import Path

import pytest

from rlvr_world import config as C
from rlvr_world.train import quickstart


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(quickstart, "_lpips_available", lambda net: True)
    return tmp_path


def _recorder(calls, fail=None):
    """A runner that records (stage, the config its command would load) and fails ``fail``."""
    def runner(stage, size, overrides):
        calls.append((stage, C.load_config(stage, preset=f"{stage}-{size}", overrides=overrides)))
        return 3 if stage == fail else 0
    return runner


@pytest.mark.parametrize("size", quickstart.SIZES)
def test_stages_run_in_order_under_runs_size(in_tmp, size):
    calls, lines = [], []
    assert quickstart.run(size, _recorder(calls), print_fn=lines.append) == 0
    assert [stage for stage, _ in calls] == list(quickstart.STAGES)
    cfgs = dict(calls)
    assert cfgs["collect"].data.root == f"runs/{size}/data"
    assert cfgs["pretrain"].tokenizer.checkpoint == cfgs["tokenizer"].train.out_dir
    assert cfgs["grpo"].model.init_from == cfgs["pretrain"].train.out_dir
    for stage in ("tokenizer", "pretrain", "grpo"):
        assert cfgs[stage].data.root == cfgs["collect"].data.root and cfgs[stage].train.resume
        assert cfgs[stage].train.out_dir.startswith(f"runs/{size}/")
        assert cfgs[stage] == quickstart.configs(size)[stage]
    assert cfgs["grpo"].grpo.reward == "neg_mae_lpips"
    assert lines[-1].startswith(f"{size} finished") and f"runs/{size}/grpo/report.md" in lines[-1]
    assert f"[4/4] grpo: rlvr-train grpo --preset grpo-{size}" in lines


def test_finished_stages_are_skipped(in_tmp):
    out = Path("runs/smoke")
    (out / "tokenizer" / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "tokenizer" / "config.json").write_text("{}")
    (out / "pretrain" / "model").mkdir(parents=True)
    (out / "pretrain" / "model" / "layout.json").write_text("{}")
    calls, lines = [], []
    assert quickstart.run("smoke", _recorder(calls), print_fn=lines.append) == 0
    assert [stage for stage, _ in calls] == ["collect", "grpo"]  # collection resumes by itself: always called
    assert any("tokenizer: already done" in ln for ln in lines)


def test_a_failed_stage_stops_the_run_with_its_status(in_tmp):
    calls, lines = [], []
    assert quickstart.run("smoke", _recorder(calls, fail="pretrain"), print_fn=lines.append) == 3
    assert [stage for stage, _ in calls] == ["collect", "tokenizer", "pretrain"]
    assert "stage pretrain failed" in lines[-1] and "run the same command again" in lines[-1]


def test_without_lpips_weights_the_reward_is_mae(in_tmp, monkeypatch):
    monkeypatch.setattr(quickstart, "_lpips_available", lambda net: False)
    calls, lines = [], []
    assert quickstart.run("smoke", _recorder(calls), print_fn=lines.append) == 0
    assert dict(calls)["grpo"].grpo.reward == "neg_mae"
    assert any("no ImageNet LPIPS (alex) weights" in ln for ln in lines)


def test_unknown_size():
    with pytest.raises(ValueError, match="size must be one of"):
        quickstart.configs("huge")


def test_stages_run_as_child_commands(monkeypatch):
    seen = []

    class Done:
        returncode = 0

    monkeypatch.setattr(quickstart.subprocess, "run", lambda cmd, check: seen.append(cmd) or Done())
    assert quickstart.run_command("grpo", "smoke", ["grpo.reward=neg_mae"]) == 0
    assert seen[0][1:] == ["-m", "rlvr_world.cli", "grpo", "--preset", "grpo-smoke", "grpo.reward=neg_mae"]


def test_ctrl_c_stops_the_quick_start_with_status_130(in_tmp):
    def runner(stage, size, overrides):
        if stage == "tokenizer":
            raise KeyboardInterrupt
        return 0

    lines = []
    assert quickstart.run("smoke", runner, print_fn=lines.append) == 130
    assert "interrupted during tokenizer" in lines[-1]
