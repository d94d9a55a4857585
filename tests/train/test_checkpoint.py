"""rlvr_world.train.checkpoint: round trip, retention, latest(), corrupt and mismatched checkpoints."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from rlvr_world import config as C
from rlvr_world.train import checkpoint


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return model, opt, sched


def _train(model, opt, sched, steps=2):
    for _ in range(steps):
        model(torch.rand(2, 3, 6, 6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def test_round_trip_restores_model_optimizer_schedule_step_rng_and_sampler(tmp_path):
    model, opt, sched = _setup()
    _train(model, opt, sched)
    cfg = C.TokenizerRun()
    path = checkpoint.save(tmp_path, 7, model, opt, sched, config=cfg, sampler={"seed": 3, "step": 7},
                           extra={"note": "x"})
    assert path == tmp_path / "checkpoints" / "step_0000007"
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "manifest.json", "model.safetensors",
                                                      "train_state.pt"]
    assert C.load_config("tokenizer", path / "config.yaml") == cfg
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ref_model = {k: v.clone() for k, v in model.state_dict().items()}
    ref_opt = opt.state_dict()

    model2, opt2, sched2 = _setup(seed=1)
    out = checkpoint.load(path, model2, opt2, sched2, config=cfg)
    assert out["step"] == 7 and out["sampler"] == {"seed": 3, "step": 7} and out["extra"] == {"note": "x"}
    for k, v in model2.state_dict().items():
        assert torch.equal(v, ref_model[k]), k
    for pid, st in opt2.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ref_opt["state"][pid][k])), k
    assert sched2.last_epoch == sched.last_epoch and sched2.get_last_lr() == sched.get_last_lr()
    # RNG states are those at save time: the same draws follow
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    # continuing the original and the restored copy (same RNG draws) gives the same weights
    model3, opt3, sched3 = _setup(seed=2)
    checkpoint.load(path, model3, opt3, sched3)
    _train(model3, opt3, sched3, 1)
    checkpoint.load(path, _setup(seed=3)[0])  # only to restore the RNG states of the save
    _train(model, opt, sched, 1)
    for (k, a), b in zip(model.state_dict().items(), model3.state_dict().values()):
        assert torch.equal(a, b), k


def test_latest_keeps_the_newest_n_and_ignores_incomplete(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    model, opt, sched = _setup()
    for step in (1, 2, 10, 3):  # numeric order, not the order of saving
        checkpoint.save(tmp_path, step, model, opt, sched, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_0000003", "step_0000010"]
    (tmp_path / "checkpoints" / "step_0000099").mkdir()  # no manifest: an interrupted save
    (tmp_path / "checkpoints" / ".tmp_step_0000100_x").mkdir()
    assert checkpoint.latest(tmp_path).name == "step_0000010"
    checkpoint.save(tmp_path, 11, model, keep=0)  # a new save clears stale temp folders
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))
    assert len(checkpoint.list_checkpoints(tmp_path)) == 3


@pytest.mark.parametrize("damage, words", [
    (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:-10]),
     ["corrupt checkpoint", "model.safetensors", "truncated"]),
    (lambda p: (p / "train_state.pt").write_bytes(b"\0" * (p / "train_state.pt").stat().st_size),
     ["corrupt checkpoint", "train_state.pt", "SHA-256"]),
    (lambda p: (p / "model.safetensors").unlink(), ["corrupt checkpoint", "model.safetensors is missing"]),
    (lambda p: (p / "manifest.json").unlink(), ["corrupt checkpoint", "no manifest.json"]),
    (lambda p: (p / "manifest.json").write_text("{"), ["corrupt checkpoint", "unreadable manifest.json"]),
])
def test_corrupt_checkpoint_raises_value_error(tmp_path, damage, words):
    model, opt, sched = _setup()
    path = checkpoint.save(tmp_path, 1, model, opt, sched)
    damage(path)
    with pytest.raises(ValueError) as e:
        checkpoint.load(path, model, opt, sched)
    for w in words:
        assert w in str(e.value)
    assert str(path) in str(e.value)


def test_missing_folder_is_file_not_found(tmp_path):
    model, _, _ = _setup()
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        checkpoint.load(tmp_path / "nope", model)


def test_mismatched_model_raises_naming_the_tensor(tmp_path):
    model, opt, sched = _setup()
    path = checkpoint.save(tmp_path, 1, model, opt, sched)
    wider = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8))
    with pytest.raises(ValueError, match=r"tensor '0.weight' has shape \(4, 3, 3, 3\), the model's is \(8, 3, 3, 3\)"):
        checkpoint.load(path, wider)
    with pytest.raises(ValueError, match="missing tensor '2.weight'"):
        checkpoint.load(path, nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 1)))
    with pytest.raises(ValueError, match="unexpected tensor '1.bias'"):
        checkpoint.load(path, nn.Sequential(nn.Conv2d(3, 4, 3)))
    opt_other = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-2)
    with pytest.raises(ValueError, match="does not match the optimizer"):
        checkpoint.load(path, model, opt_other)
    path2 = checkpoint.save(tmp_path / "b", 1, model)
    with pytest.raises(ValueError, match="has no optimizer state"):
        checkpoint.load(path2, model, opt)


def test_mismatched_config_names_the_keys(tmp_path):
    model, opt, sched = _setup()
    cfg = C.load_config("tokenizer", overrides=["tokenizer.name=tiny", "train.steps=10"])
    path = checkpoint.save(tmp_path, 1, model, opt, sched, config=cfg)
    longer = C.load_config("tokenizer", overrides=["tokenizer.name=tiny", "train.steps=20", "train.resume=true"])
    assert checkpoint.load(path, model, opt, sched, config=longer)["step"] == 1  # bookkeeping keys may change
    other = C.load_config("tokenizer", overrides=["tokenizer.name=sim-64", "train.lr=0.5"])
    with pytest.raises(ValueError) as e:
        checkpoint.load(path, model, opt, sched, config=other)
    msg = str(e.value)
    assert "different config" in msg and "tokenizer.name: checkpoint 'tiny', this run 'sim-64'" in msg
    assert "train.lr" in msg
