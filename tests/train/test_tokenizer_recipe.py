"""rlvr-train tokenizer (rlvr_world.train.tokenizer): smoke run, exact resume, LPIPS opt-in, errors, CLI wiring.

Data: a tiny episode dataset of moving coloured squares (32x32, written with ``episodes.write_episode``).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rlvr_world import cli
from rlvr_world import config as C
from rlvr_world.data.episodes import write_episode
from rlvr_world.models.frame_tokenizer import FrameTokenizer
from rlvr_world.train import checkpoint
from rlvr_world.train import tokenizer as recipe
from rlvr_world.train.logging import read_metrics

SHIPPED = Path(C.__file__).parent / "configs" / "tokenizer_sim64.yaml"


def _squares(rng, T=8, size=32):
    image = np.zeros((T, size, size, 3), np.uint8)
    image[:] = rng.integers(0, 60, size=3, dtype=np.uint8)  # background colour
    colour, (y, x), (dy, dx) = rng.integers(100, 256, size=3), rng.integers(0, size - 8, 2), rng.integers(-2, 3, 2)
    for t in range(T):
        yy, xx = np.clip(y + t * dy, 0, size - 8), np.clip(x + t * dx, 0, size - 8)
        image[t, yy:yy + 8, xx:xx + 8] = colour
    return image


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for k in range(n):
            write_episode(root / split / f"ep_{k:03d}", _squares(rng), np.zeros((8, 2), np.float32))
    return root


def _cfg(data_root, out_dir, *overrides):
    return C.load_config("tokenizer", overrides=[
        f"data.root={data_root}", f"train.out_dir={out_dir}", "tokenizer.name=tiny", "tokenizer.lpips_weight=0",
        "train.batch_size=4", "train.steps=4", "train.lr=3e-3", "train.warmup_steps=1", "train.eval_every=2",
        "train.eval_batches=1", "train.checkpoint_every=2", "train.log_every=1", "progress=false", *overrides])


def _weights(path):
    return FrameTokenizer.from_pretrained(path).state_dict()


def test_smoke_run_with_random_lpips_backbone(data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path / "run", "train.steps=3", "tokenizer.lpips_weight=0.5",
               "tokenizer.lpips_random_backbone=true", "tokenizer.color_jitter=0.2", "train.grad_accum=2",
               "train.batch_size=2")
    result = recipe.run(cfg)
    out = tmp_path / "run"
    assert result["step"] == 3 and result["tokenizer_dir"] == str(out / "tokenizer")
    model = FrameTokenizer.from_pretrained(out / "tokenizer")
    assert model.args == cfg.tokenizer.args()
    assert C.load_config("tokenizer", out / "tokenizer" / "train_config.yaml") == cfg
    assert C.load_config("tokenizer", out / "config.yaml") == cfg
    train = read_metrics(out, "train")
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(r["lpips"] > 0 and r["loss"] > r["l1"] for r in train)  # the perceptual term is in the loss
    evals = read_metrics(out, "eval")
    assert [r["step"] for r in evals] == [2, 3]  # every 2 steps, and at the end
    ev = evals[-1]
    assert ev["tokens_per_frame"] == 64 and 0 < ev["codebook_usage"] <= 1 and ev["frames"] == 2  # eval_batches * batch_size
    assert 0 < ev["psnr"] < 60 and -1 <= ev["ssim"] <= 1 and 0 < ev["mae"] < 1 and ev["lpips"] >= 0
    assert result["eval"]["psnr"] == pytest.approx(ev["psnr"])
    assert checkpoint.latest(out).name == "step_0000003"


def test_lpips_gradient_reaches_the_reconstruction():
    from rlvr_world.models.lpips import LPIPS

    lpips = LPIPS(net="vgg", random_backbone=True, impl="reference")
    recon = torch.rand(2, 3, 32, 32, requires_grad=True)
    target = torch.rand(2, 3, 32, 32)
    d = recipe.perceptual_loss(lpips, recon, target)
    assert torch.allclose(d, lpips(recon.detach(), target))  # the metric's own value
    d.sum().backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0


def test_missing_lpips_weights_fail_before_training(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # surely no ImageNet VGG16 here
    cfg = _cfg(data_root, tmp_path / "run", "tokenizer.lpips_weight=1.0")
    with pytest.raises(FileNotFoundError) as e:
        recipe.run(cfg)
    assert "vgg16-397923af.pth" in str(e.value) and "tokenizer.lpips_random_backbone=true" in str(e.value)
    assert not (tmp_path / "run").exists()  # no work done


def test_resume_is_bit_exact(data_root, tmp_path, monkeypatch):
    straight = recipe.run(_cfg(data_root, tmp_path / "a"))
    # the same run, killed right after its step-2 checkpoint, then resumed
    save = recipe.save_checkpoint

    def save_then_die(s, force=False):
        path = save(s, force)
        if s.step == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(recipe, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        recipe.run(_cfg(data_root, tmp_path / "b"))
    monkeypatch.setattr(recipe, "save_checkpoint", save)
    assert checkpoint.latest(tmp_path / "b").name == "step_0000002"
    resumed = recipe.run(_cfg(data_root, tmp_path / "b", "train.resume=true"))
    assert resumed["step"] == straight["step"] == 4
    a, b = _weights(tmp_path / "a" / "tokenizer"), _weights(tmp_path / "b" / "tokenizer")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in read_metrics(tmp_path / "b", "train")] == [1, 2, 3, 4]  # one line per step
    la, lb = read_metrics(tmp_path / "a", "train"), read_metrics(tmp_path / "b", "train")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]

    # 2 steps, then extended to 4 (constant schedule: the LR does not depend on the total)
    short = recipe.run(_cfg(data_root, tmp_path / "c", "train.steps=2", "train.schedule=constant"))
    assert short["step"] == 2
    recipe.run(_cfg(data_root, tmp_path / "c", "train.steps=4", "train.schedule=constant", "train.resume=true"))
    recipe.run(_cfg(data_root, tmp_path / "d", "train.schedule=constant"))
    c, d = _weights(tmp_path / "c" / "tokenizer"), _weights(tmp_path / "d" / "tokenizer")
    assert all(torch.equal(c[k], d[k]) for k in c)


def test_run_errors(data_root, tmp_path):
    recipe.run(_cfg(data_root, tmp_path / "a", "train.steps=2"))
    with pytest.raises(ValueError, match="already has checkpoints: set train.resume=true"):
        recipe.run(_cfg(data_root, tmp_path / "a", "train.steps=2"))
    with pytest.raises(ValueError, match="different config: tokenizer.overrides.base_channels"):
        recipe.run(_cfg(data_root, tmp_path / "a", "train.resume=true", "tokenizer.overrides.base_channels=8"))
    with pytest.raises(FileNotFoundError, match="split folder not found"):
        recipe.run(_cfg(tmp_path / "nodata", tmp_path / "b"))
    with pytest.raises(ValueError, match="tokenizer.kind='compressive' is not trained by this recipe"):
        recipe.run(_cfg(data_root, tmp_path / "c", "tokenizer.kind=compressive"))


def test_shipped_config_is_headed_by_its_command():
    first = SHIPPED.read_text().splitlines()[0]
    assert first == "# rlvr-train tokenizer --config rlvr_world/configs/tokenizer_sim64.yaml"
    cfg = C.load_config("tokenizer", SHIPPED)
    assert cfg.tokenizer.name == "sim-64" and cfg.data.root == C.load_config(
        "collect", SHIPPED.parent / "collect_sim64.yaml").data.root


def test_cli_trains_with_the_shipped_config(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["tokenizer", "--config", str(SHIPPED), f"data.root={data_root}", f"train.out_dir={out}",
            "tokenizer.name=tiny", "train.steps=2", "train.batch_size=2", "train.eval_batches=1", "progress=false"]
    assert cli.main(argv) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert (out / "tokenizer" / "model.safetensors").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["recipe"] == "tokenizer"
    assert cli.main(argv) == 1  # out_dir has checkpoints and no resume: a clear error, not an overwrite
    assert "train.resume=true" in capsys.readouterr().err
