"""rlvr-train tokenizer (rlvr_world.train.tokenizer): smoke run, exact resume (also with the GAN and the EMA on),
LPIPS opt-in, the adversarial term's start step, the EMA update, the compressive kind, errors, CLI wiring.

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
from rlvr_world.models.compressive_tokenizer import CompressiveTokenizer, CompressiveTokenizerArgs
from rlvr_world.models.frame_tokenizer import FrameTokenizer
from rlvr_world.train import checkpoint
from rlvr_world.train import tokenizer as recipe
from rlvr_world.train.logging import read_metrics

SHIPPED = Path(C.__file__).parent / "configs" / "tokenizer_sim64.yaml"
SHIPPED_COMPRESSIVE = SHIPPED.parent / "tokenizer_compressive_sim64.yaml"


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


def _weights(path, cls=FrameTokenizer):
    return cls.from_pretrained(path).state_dict()


COMPRESSIVE = ("tokenizer.kind=compressive", "data.context_frames=2", "data.future_frames=1", "data.clip_stride=2")
GAN = ("tokenizer.gan_weight=0.5", "tokenizer.gan_start_step=1", "tokenizer.disc_layers=2",
       "tokenizer.disc_channels=8")


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
    monkeypatch.setenv("RLVR_WORLD_CACHE", str(tmp_path / "cache"))  # nor a converted LPIPS cache
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
    with pytest.raises(ValueError, match="tokenizer.disc_layers=4 needs frames of at least 48 pixels"):
        recipe.run(_cfg(data_root, tmp_path / "c", "tokenizer.gan_weight=0.5", "tokenizer.disc_layers=4"))
    with pytest.raises(ValueError, match="dataset must have an episode of at least 17 frames"):
        recipe.run(_cfg(data_root, tmp_path / "d", *COMPRESSIVE, "data.context_frames=8"))
    with pytest.raises(ValueError, match="train.token_noise applies to world-model pre-training only"):
        recipe.run(_cfg(data_root, tmp_path / "e", "train.token_noise=0.1"))
    assert not any((tmp_path / x).exists() for x in "cde")  # failed before any work


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


# ---------------------------------------------------------------------------------------------------- GAN, EMA
def test_gan_terms_start_after_gan_start_step(data_root, tmp_path):
    out = tmp_path / "run"
    recipe.run(_cfg(data_root, out, *GAN, "train.steps=3", "train.grad_accum=2", "train.batch_size=2"))
    train = {r["step"]: r for r in read_metrics(out, "train")}
    gan_keys = {"g_loss", "d_loss", "gan_weight", "logits_real", "logits_fake", "disc_grad_norm"}
    assert not gan_keys & set(train[1])  # step index 0 < gan_start_step=1: reconstruction only
    assert train[1]["loss"] == train[1]["l1"]
    for step in (2, 3):
        assert gan_keys <= set(train[step])
        r = train[step]
        assert r["gan_weight"] > 0 and r["d_loss"] >= 0 and r["disc_grad_norm"] > 0
    extra = torch.load(checkpoint.latest(out) / "train_state.pt", weights_only=True)["extra"]
    assert set(extra) == {"discriminator", "disc_optimizer"}
    assert extra["disc_optimizer"]["state"]  # the discriminator took steps

    # not adaptive: the generator term's weight is gan_weight itself
    recipe.run(_cfg(data_root, tmp_path / "fixed", *GAN, "tokenizer.adaptive_gan_weight=false", "train.steps=2"))
    r = read_metrics(tmp_path / "fixed", "train")[-1]
    assert r["gan_weight"] == 0.5 and r["loss"] == pytest.approx(r["l1"] + 0.5 * r["g_loss"], rel=1e-5, abs=1e-7)


def test_ema_update_matches_the_formula():
    model = torch.nn.Linear(3, 2)
    model.register_buffer("count", torch.zeros(()))
    ema = recipe.EMA(model, decay=0.95)
    shadow = [p.detach().clone() for p in model.parameters()]
    for step in range(25):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.count += 1
        d = ema.update(model, step)
        assert d == min(0.95, (1 + step) / (10 + step))
        shadow = [d * e + (1 - d) * p.detach() for e, p in zip(shadow, model.parameters())]
        for e, m in zip(shadow, ema.module.parameters()):
            torch.testing.assert_close(m, e, rtol=1e-6, atol=1e-6)
    assert recipe.ema_decay_at(0.95, 0) == 0.1 and recipe.ema_decay_at(0.95, 10_000) == 0.95
    assert ema.module.count.item() == 25  # buffers copied
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_ema_weights_are_evaluated_and_saved(data_root, tmp_path):
    out = tmp_path / "run"
    result = recipe.run(_cfg(data_root, out, "tokenizer.ema_decay=0.9", "train.steps=2"))
    state = torch.load(checkpoint.latest(out) / "train_state.pt", weights_only=True)["extra"]["ema"]
    saved = _weights(out / "tokenizer")
    assert all(torch.equal(saved[k], state[k]) for k in saved)  # out_dir/tokenizer holds the EMA weights
    from safetensors.torch import load_file

    live = load_file(checkpoint.latest(out) / "model.safetensors")
    assert not all(torch.equal(saved[k], live[k]) for k in saved)  # ... which differ from the live ones
    model = FrameTokenizer.from_pretrained(out / "tokenizer")
    frames = recipe.FrameSampler(recipe.EpisodeDataset(data_root, "val")).eval_frames(4)
    from rlvr_world.rewards.video import frame_metrics

    psnr = frame_metrics(model(frames)[0].clamp(0, 1), frames.float() / 255, metrics=("psnr",))["psnr"].mean()
    assert result["eval"]["psnr"] == pytest.approx(psnr.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["frame", "compressive"])
def test_resume_is_bit_exact_with_gan_and_ema(data_root, tmp_path, monkeypatch, kind):
    extra = (*GAN, "tokenizer.ema_decay=0.9", *(COMPRESSIVE if kind == "compressive" else ()))
    cls = CompressiveTokenizer if kind == "compressive" else FrameTokenizer
    recipe.run(_cfg(data_root, tmp_path / "a", *extra))
    save = recipe.save_checkpoint

    def save_then_die(s, force=False):
        path = save(s, force)
        if s.step == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(recipe, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        recipe.run(_cfg(data_root, tmp_path / "b", *extra))
    monkeypatch.setattr(recipe, "save_checkpoint", save)
    recipe.run(_cfg(data_root, tmp_path / "b", *extra, "train.resume=true"))
    a, b = _weights(tmp_path / "a" / "tokenizer", cls), _weights(tmp_path / "b" / "tokenizer", cls)  # EMA weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (torch.load(checkpoint.latest(tmp_path / x) / "train_state.pt", weights_only=True)["extra"]
              for x in "ab")
    assert all(torch.equal(sa["discriminator"][k], sb["discriminator"][k]) for k in sa["discriminator"])
    la, lb = read_metrics(tmp_path / "a", "train"), read_metrics(tmp_path / "b", "train")
    assert [(r["loss"], r.get("d_loss")) for r in la] == [(r["loss"], r.get("d_loss")) for r in lb]


# ---------------------------------------------------------------------------------------------------- compressive
def test_compressive_kind_trains_and_reloads(data_root, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(data_root, out, *COMPRESSIVE, "train.steps=20", "train.eval_every=0", "train.log_every=1",
               "train.checkpoint_every=0", "train.schedule=constant")
    result = recipe.run(cfg)
    train = read_metrics(out, "train")
    first, last = train[0], train[-1]
    assert {"l1", "context_l1"} <= set(first) and first["loss"] == pytest.approx(first["l1"] + first["context_l1"])
    assert last["loss"] < 0.6 * first["loss"]  # a tiny overfit: the loss falls
    ev = result["eval"]
    assert ev["context_tokens_per_frame"] == 64 and ev["tokens_per_frame"] == 16  # per context / future frame
    assert ev["clips"] == 4 and ev["frames"] == 4  # eval_batches * batch_size clips, 1 future frame each
    for k in ("psnr", "context_psnr"):
        assert 0 < ev[k] < 60
    assert 0 < ev["codebook_usage"] <= 1 and 0 < ev["context_codebook_usage"] <= 1
    model = CompressiveTokenizer.from_pretrained(out / "tokenizer")
    assert model.args == cfg.tokenizer.args()
    # the checkpoint reloads into a fresh model, and its eval reproduces the run's
    fresh = CompressiveTokenizer(cfg.tokenizer.args())
    checkpoint.load(checkpoint.latest(out), fresh, config=cfg)
    w = _weights(out / "tokenizer", CompressiveTokenizer)
    assert all(torch.equal(w[k], v) for k, v in fresh.state_dict().items())
    clips = recipe.ClipBatchSampler(recipe.EpisodeDataset(data_root, "val"), 2, 1, 2).eval_clips(4)
    assert clips.shape == (4, 3, 3, 32, 32)
    with torch.no_grad():
        recon = fresh.eval()(clips[:, :2], clips[:, 2:])[1]
    from rlvr_world.rewards.video import frame_metrics

    psnr = frame_metrics(recon.flatten(0, 1).clamp(0, 1), clips[:, 2].float() / 255, metrics=("psnr",))["psnr"]
    assert ev["psnr"] == pytest.approx(psnr.mean().item(), rel=1e-5)
    # continue training from the saved tokenizer (tokenizer.checkpoint)
    recipe.run(_cfg(data_root, tmp_path / "more", *COMPRESSIVE, f"tokenizer.checkpoint={out / 'tokenizer'}",
                    "train.steps=1"))


def test_clip_sampler_is_seeded_by_step_and_keeps_clips_in_one_episode(data_root):
    ds = recipe.EpisodeDataset(data_root, "train")
    sampler = recipe.ClipBatchSampler(ds, 2, 1, 3, seed=5)
    a, b = sampler.batch(7, 6), recipe.ClipBatchSampler(ds, 2, 1, 3, seed=5).batch(7, 6)
    assert a.shape == (6, 3, 3, 32, 32) and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, sampler.batch(8, 6))
    episodes = [torch.from_numpy(ds[i]["image"]).permute(0, 3, 1, 2) for i in range(len(ds))]
    for clip in a:  # frames t, t + 3, t + 6 of one episode
        assert any(any(torch.equal(clip, ep[t:t + 7:3]) for t in range(ep.shape[0] - 6)) for ep in episodes)


@pytest.mark.parametrize(("override", "key"), [
    ("tokenizer.gan_weight=-0.1", "tokenizer.gan_weight"), ("tokenizer.gan_start_step=-1", "tokenizer.gan_start_step"),
    ("tokenizer.disc_layers=0", "tokenizer.disc_layers"), ("tokenizer.disc_layers=7", "tokenizer.disc_layers"),
    ("tokenizer.disc_channels=0", "tokenizer.disc_channels"), ("tokenizer.disc_lr=0", "tokenizer.disc_lr"),
    ("tokenizer.disc_betas=[0.5]", "tokenizer.disc_betas"), ("tokenizer.disc_betas=[0.5,1.0]", "tokenizer.disc_betas"),
    ("tokenizer.ema_decay=1.0", "tokenizer.ema_decay"), ("tokenizer.ema_decay=-0.5", "tokenizer.ema_decay"),
    ("tokenizer.adaptive_gan_weight=3", "tokenizer.adaptive_gan_weight"),
])
def test_bad_config_values_name_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        C.load_config("tokenizer", overrides=[override])


def test_compressive_config_dispatches_on_kind():
    from rlvr_world.models.frame_tokenizer import FrameTokenizerArgs

    cfg = C.load_config("tokenizer", overrides=["tokenizer.kind=compressive", "tokenizer.name=tiny"])
    assert cfg.tokenizer.args() == CompressiveTokenizerArgs.from_name("tiny")
    assert isinstance(C.load_config("tokenizer").tokenizer.args(), FrameTokenizerArgs)
    with pytest.raises(ValueError, match="tokenizer.overrides.dyn_num_down"):
        C.load_config("tokenizer", overrides=["tokenizer.overrides.dyn_num_down=3"])  # a compressive-only field
    cfg = C.load_config("tokenizer", overrides=["tokenizer.kind=compressive", "tokenizer.overrides.dyn_num_down=3",
                                                "tokenizer.overrides.dyn_channel_mult=[1,2,2,4]",
                                                "tokenizer.overrides.cross_attn_levels=[2]"])
    assert cfg.tokenizer.args().dyn_num_down == 3
    with pytest.raises(ValueError, match="tokenizer.name must be one of"):
        C.load_config("tokenizer", overrides=["tokenizer.kind=compressive", "tokenizer.name=nope"])


def test_shipped_compressive_config(data_root, tmp_path):
    first = SHIPPED_COMPRESSIVE.read_text().splitlines()[0]
    assert first == "# rlvr-train tokenizer --config rlvr_world/configs/tokenizer_compressive_sim64.yaml"
    cfg = C.load_config("tokenizer", SHIPPED_COMPRESSIVE)
    assert cfg.tokenizer.kind == "compressive" and cfg.tokenizer.name == "sim-64"
    assert cfg.data.root == C.load_config("tokenizer", SHIPPED).data.root
    out = tmp_path / "run"
    argv = ["tokenizer", "--config", str(SHIPPED_COMPRESSIVE), f"data.root={data_root}", f"train.out_dir={out}",
            "tokenizer.name=tiny", "data.context_frames=2", "train.steps=1", "train.batch_size=2",
            "train.eval_batches=1", "progress=false"]
    assert cli.main(argv) == 0
    assert CompressiveTokenizer.from_pretrained(out / "tokenizer").args == CompressiveTokenizerArgs.from_name("tiny")
