"""rlvr-train pretrain (rlvr_world.train.pretrain): smoke run, learning, exact resume, KV-cache generation, errors,
CLI wiring; single-step and multi-step (data.future_frames > 1) layouts.

Data: tiny episodes of moving coloured squares (16x16, 2-dim actions, written with ``episodes.write_episode`` +
``compute_action_ranges``); tokenizer: a ``tiny`` FrameTokenizer with 125 codes, random weights (0 training
steps), saved with ``save_pretrained``: 4x4 = 16 tokens per frame. Compressive (``tokenizer.kind=compressive``): a ``tiny``
CompressiveTokenizer, random weights, on the same 16x16 frames: 4x4 context tokens (125 codes), 2x2 future tokens
(64 codes).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rlvr_world import cli
from rlvr_world import config as C
from rlvr_world.data.episodes import compute_action_ranges, write_episode
from rlvr_world.models.frame_tokenizer import FrameTokenizer
from rlvr_world.models.transformer import Transformer
from rlvr_world.train import checkpoint
from rlvr_world.train import pretrain as recipe
from rlvr_world.train.logging import read_metrics

SHIPPED = Path(C.__file__).parent / "configs" / "pretrain_sim64.yaml"
SHIPPED_MULTI = SHIPPED.parent / "pretrain_multistep_sim64.yaml"
SIZE, T = 16, 10


def _squares(rng):
    image = np.zeros((T, SIZE, SIZE, 3), np.uint8)
    image[:] = rng.integers(0, 60, size=3, dtype=np.uint8)
    colour, (y, x), (dy, dx) = rng.integers(100, 256, size=3), rng.integers(0, SIZE - 4, 2), rng.integers(-1, 2, 2)
    for t in range(T):
        yy, xx = np.clip(y + t * dy, 0, SIZE - 4), np.clip(x + t * dx, 0, SIZE - 4)
        image[t, yy:yy + 4, xx:xx + 4] = colour
    action = np.tile(np.array([dy, dx], np.float32), (T, 1)) + rng.normal(0, 0.1, (T, 2)).astype(np.float32)
    return image, action


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is far faster than two on a small, shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for k in range(n):
            write_episode(root / split / f"ep_{k:03d}", *_squares(rng))
    compute_action_ranges(root)
    torch.manual_seed(0)
    tok_dir = root / "tokenizer"
    FrameTokenizer.from_name("tiny", levels=[5, 5, 5]).save_pretrained(tok_dir)
    return root, tok_dir


def _cfg(assets, out_dir, *overrides):
    root, tok = assets
    return C.load_config("pretrain", overrides=[
        f"data.root={root}", f"tokenizer.checkpoint={tok}", f"train.out_dir={out_dir}", "data.context_frames=2",
        "data.clip_stride=1", "model.name=vwm-tiny", "model.overrides={dim: 64, intermediate_size: 128}",
        "train.batch_size=4", "train.steps=4", "train.lr=3e-3", "train.warmup_steps=1", "train.eval_every=2",
        "train.eval_batches=1", "train.checkpoint_every=2", "train.log_every=1", "progress=false", *overrides])


def _weights(path):
    return Transformer.from_pretrained(path).state_dict()


def test_smoke_run(assets, tmp_path):
    cfg = _cfg(assets, tmp_path / "run", "train.steps=3", "train.grad_accum=2", "train.batch_size=2")
    result = recipe.run(cfg)
    out = tmp_path / "run"
    assert result["step"] == 3 and result["model_dir"] == str(out / "model")
    model = Transformer.from_pretrained(out / "model")
    layout = json.loads((out / "model" / "layout.json").read_text())
    assert layout["tokens_per_frame"] == 16 and layout["codebook_size"] == 125 and layout["context_frames"] == 2
    assert model.args.vocab_size == 125 + 256 + 2 and model.args.dim == 64
    assert C.load_config("pretrain", out / "model" / "train_config.yaml") == cfg
    assert C.load_config("pretrain", out / "config.yaml") == cfg
    train = read_metrics(out, "train")
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(r["loss"] > 0 and 0 <= r["token_acc"] <= 1 for r in train)
    evals = read_metrics(out, "eval")
    assert [r["step"] for r in evals] == [2, 3]  # every 2 steps, and at the end
    ev = evals[-1]
    assert ev["clips"] == 2 and ev["loss"] > 0 and 0 <= ev["token_acc"] <= 1  # eval_batches * batch_size
    for who in ("pred", "copy", "recon"):
        assert 0 <= ev[f"{who}_mae"] < 1 and 0 < ev[f"{who}_psnr"] < 100 and -1 <= ev[f"{who}_ssim"] <= 1
        assert ev[f"{who}_mse"] >= 0
    assert 0 <= ev["pred_token_match"] <= 1 and 0 <= ev["copy_token_match"] <= 1
    assert ev.get("lpips", "").startswith("skipped") or "pred_lpips" in ev  # LPIPS or why not
    assert result["eval"]["pred_psnr"] == pytest.approx(ev["pred_psnr"])
    assert checkpoint.latest(out).name == "step_0000003"


def test_loss_falls_on_a_fixed_batch(assets, tmp_path):
    s = recipe.setup(_cfg(assets, tmp_path / "run", "train.steps=30", "train.schedule=constant",
                          "train.warmup_steps=0", "train.batch_size=8"))
    try:
        data = recipe.batch(s)
        losses = [recipe.train_step(s, data)["loss"] for _ in range(30)]
    finally:
        s.logger.close()
    assert losses[-1] < 0.5 * losses[0], losses


def test_generation_with_the_kv_cache_matches_the_full_forward(assets, tmp_path):
    s = recipe.setup(_cfg(assets, tmp_path / "run"))
    s.logger.close()
    lay, model = s.layout, s.model.eval()
    prompt = s.val.input_ids[:, : lay.prompt_len]
    gen = recipe.generate_frame(model, prompt, lay)
    assert gen.shape == (len(prompt), lay.tokens_per_frame) and int(gen.max()) < lay.codebook_size
    ids = prompt
    with torch.no_grad():  # the same greedy tokens, recomputed without a cache
        for _ in range(lay.tokens_per_frame):
            nxt = model(ids)[:, -1, : lay.codebook_size].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    assert torch.equal(ids[:, lay.prompt_len:], gen)


def test_copy_baseline_uses_the_last_context_frame(assets, tmp_path):
    s = recipe.setup(_cfg(assets, tmp_path / "run"))
    s.logger.close()
    lay, v = s.layout, s.val
    f, a = lay.tokens_per_frame, lay.action_dims
    last_ctx = v.input_ids[:, (lay.context_frames - 1) * (f + a):(lay.context_frames - 1) * (f + a) + f]
    assert torch.equal(v.target_tokens, v.input_ids[:, lay.prompt_len:lay.prompt_len + f])
    assert v.baseline["copy_token_match"] == pytest.approx((last_ctx == v.target_tokens).float().mean().item())


@pytest.mark.parametrize("noise", ["train.token_noise=0", "train.token_noise=0.2"])
def test_resume_is_bit_exact(assets, tmp_path, monkeypatch, noise):
    _check_resume(assets, tmp_path, monkeypatch, noise)


def test_multistep_resume_is_bit_exact(assets, tmp_path, monkeypatch):
    _check_resume(assets, tmp_path, monkeypatch, "data.future_frames=2", "train.token_noise=0.2")


def _check_resume(assets, tmp_path, monkeypatch, *overrides):
    straight = recipe.run(_cfg(assets, tmp_path / "a", *overrides))
    save = recipe.save_checkpoint

    def save_then_die(s, force=False):
        path = save(s, force)
        if s.step == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(recipe, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        recipe.run(_cfg(assets, tmp_path / "b", *overrides))
    monkeypatch.setattr(recipe, "save_checkpoint", save)
    assert checkpoint.latest(tmp_path / "b").name == "step_0000002"
    resumed = recipe.run(_cfg(assets, tmp_path / "b", *overrides, "train.resume=true"))
    assert resumed["step"] == straight["step"] == 4
    a, b = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in read_metrics(tmp_path / "b", "train")] == [1, 2, 3, 4]
    la, lb = read_metrics(tmp_path / "a", "train"), read_metrics(tmp_path / "b", "train")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert resumed["eval"]["pred_psnr"] == straight["eval"]["pred_psnr"]


def test_token_noise_corrupts_only_target_frame_inputs():
    layout = recipe.SingleStepLayout(tokens_per_frame=16, context_frames=2, action_dims=3, codebook_size=50,
                                     action_bins=8, eos=True)
    g = torch.Generator().manual_seed(0)
    lb = layout.build(torch.randint(0, 50, (64, 3, 16), generator=g), torch.randint(0, 8, (64, 2, 3), generator=g))
    assert recipe.corrupt_targets(lb.input_ids, lb.labels, 50, 0.0, (0, 1)) is lb.input_ids
    noisy = recipe.corrupt_targets(lb.input_ids, lb.labels, 50, 0.3, (0, 1))
    assert torch.equal(noisy, recipe.corrupt_targets(lb.input_ids, lb.labels, 50, 0.3, (0, 1)))  # seeded
    assert not torch.equal(noisy, recipe.corrupt_targets(lb.input_ids, lb.labels, 50, 0.3, (0, 2)))
    changed = noisy != lb.input_ids
    frame_target = (lb.labels != -100) & (lb.labels < 50)
    assert not changed[~frame_target].any()  # prompt, BOS and EOS untouched
    assert noisy[frame_target].max() < 50  # replacements are frame codes
    # a replacement may draw the same code (1 in 50), so the changed share is ~0.3 * 49 / 50
    share = changed[frame_target].float().mean().item()
    assert abs(share - 0.3 * 49 / 50) < 0.03, share


def test_run_errors(assets, tmp_path):
    with pytest.raises(ValueError, match="tokenizer.checkpoint is required"):
        recipe.run(_cfg(assets, tmp_path / "x", "tokenizer.checkpoint=null"))
    assert not (tmp_path / "x").exists()  # no work done
    with pytest.raises(ValueError, match="max_seq_len=16 is shorter than the sequence"):
        recipe.run(_cfg(assets, tmp_path / "y", "model.overrides.max_seq_len=16"))
    with pytest.raises(ValueError, match="model.overrides.vocab_size=10 does not match"):
        recipe.run(_cfg(assets, tmp_path / "y", "model.overrides.vocab_size=10"))
    with pytest.raises(ValueError, match="max_seq_len=60 is shorter than the sequence"):  # multi-step: 37 + 36
        recipe.run(_cfg(assets, tmp_path / "y", "data.future_frames=2", "model.overrides.max_seq_len=60"))
    with pytest.raises(ValueError, match="at least 11 frames"):  # 2 context + 9 future frames > T = 10
        recipe.run(_cfg(assets, tmp_path / "y", "data.future_frames=9"))
    with pytest.raises(FileNotFoundError):
        recipe.run(_cfg(assets, tmp_path / "y", f"tokenizer.checkpoint={tmp_path / 'none'}"))
    with pytest.raises(ValueError, match="at least 23 frames"):
        recipe.run(_cfg(assets, tmp_path / "y", "data.clip_stride=11"))
    assert not (tmp_path / "y").exists()
    recipe.run(_cfg(assets, tmp_path / "a", "train.steps=2"))
    with pytest.raises(ValueError, match="already has checkpoints: set train.resume=true"):
        recipe.run(_cfg(assets, tmp_path / "a", "train.steps=2"))
    with pytest.raises(ValueError, match="different config: model.overrides.dim"):
        recipe.run(_cfg(assets, tmp_path / "a", "train.resume=true", "model.overrides.dim=32"))


def test_a_tokenizer_run_directory_is_accepted(assets, tmp_path):
    _, tok = assets
    run_dir = tmp_path / "tok_run"
    (run_dir / "tokenizer").mkdir(parents=True)
    for f in tok.iterdir():
        (run_dir / "tokenizer" / f.name).write_bytes(f.read_bytes())
    result = recipe.run(_cfg(assets, tmp_path / "run", f"tokenizer.checkpoint={run_dir}", "train.steps=1"))
    assert result["step"] == 1


def test_shipped_config_is_headed_by_its_command():
    first = SHIPPED.read_text().splitlines()[0]
    assert first.startswith("# rlvr-train pretrain --config rlvr_world/configs/pretrain_sim64.yaml")
    cfg = C.load_config("pretrain", SHIPPED)
    assert cfg.model.name in ("vwm-tiny", "vwm-xs") and cfg.tokenizer.name == "sim-64"
    assert cfg.data.root == C.load_config("collect", SHIPPED.parent / "collect_sim64.yaml").data.root
    tok = C.load_config("tokenizer", SHIPPED.parent / "tokenizer_sim64.yaml")
    assert cfg.tokenizer.checkpoint == tok.train.out_dir == "runs/tokenizer_sim64"  # the tokenizer run it reads


def test_cli_trains_with_the_shipped_config(assets, tmp_path, capsys):
    root, tok = assets
    out = tmp_path / "run"
    argv = ["pretrain", "--config", str(SHIPPED), f"data.root={root}", f"tokenizer.checkpoint={tok}",
            f"train.out_dir={out}", "model.overrides={dim: 64, intermediate_size: 128}", "train.steps=2",
            "train.batch_size=2", "train.eval_batches=1", "progress=false"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "trained 2 steps" in text and "copy baseline psnr" in text
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["recipe"] == "pretrain"
    assert cli.main(argv) == 1  # out_dir has checkpoints and no resume: a clear error, not an overwrite
    assert "train.resume=true" in capsys.readouterr().err
    no_tok = [a for a in argv if not a.startswith("tokenizer.checkpoint")] + [f"train.out_dir={tmp_path}/b"]
    assert cli.main(no_tok + ["tokenizer.checkpoint=null"]) == 1
    assert "tokenizer.checkpoint is required" in capsys.readouterr().err
    assert cli.main(no_tok + [f"tokenizer.checkpoint={tmp_path}/missing"]) == 1
    assert "not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- multi-step
def test_multistep_smoke_run(assets, tmp_path):
    cfg = _cfg(assets, tmp_path / "run", "data.future_frames=3", "train.steps=2")
    result = recipe.run(cfg)
    out = tmp_path / "run"
    assert result["step"] == 2
    layout = json.loads((out / "model" / "layout.json").read_text())
    assert layout["layout"] == "multi_step" and layout["future_frames"] == 3 and layout["context_frames"] == 2
    assert layout["tokens_per_frame"] == layout["context_tokens_per_frame"] == 16
    assert layout["codebook_size"] == layout["context_codebook_size"] == 125 and layout["action_dims"] == 2
    assert layout["vocab_size"] == 2 * 125 + 256 + 2 == Transformer.from_pretrained(out / "model").args.vocab_size
    assert (layout["bos_id"], layout["eos_id"]) == (2 * 125 + 256, 2 * 125 + 257)
    train = read_metrics(out, "train")
    assert [r["step"] for r in train] == [1, 2] and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    ev = read_metrics(out, "eval")[-1]
    assert ev["step"] == 2 and ev["clips"] == 4 and np.isfinite(ev["loss"]) and 0 <= ev["token_acc"] <= 1
    for who in ("pred", "copy", "recon"):
        assert 0 <= ev[f"{who}_mae"] < 1 and 0 < ev[f"{who}_psnr"] < 100 and -1 <= ev[f"{who}_ssim"] <= 1
    for who in ("pred", "copy"):  # per step, averaging to the overall MAE (every step has the same clips)
        steps = [ev[f"{who}_mae_step{k}"] for k in (1, 2, 3)]
        assert ev[f"{who}_mae"] == pytest.approx(sum(steps) / 3, rel=1e-4)
    assert "pred_mae_step4" not in ev and 0 <= ev["pred_token_match"] <= 1
    assert result["eval"]["pred_psnr"] == pytest.approx(ev["pred_psnr"])


def test_multistep_sequences_and_token_noise(assets, tmp_path):
    s = recipe.setup(_cfg(assets, tmp_path / "run", "data.future_frames=3", "train.token_noise=0.5"))
    s.logger.close()
    lay, (n, S, F, A, K) = s.layout, (2, 3, 16, 2, 125)
    assert isinstance(lay, recipe.MultiStepLayout) and lay.response_len == S * (F + A)
    assert s.val.target_tokens.shape == (4 * S, F) and s.val.target_frames.shape == (4 * S, 3, SIZE, SIZE)
    frames, acts = s.clips.batch(0, 4)
    assert frames.shape == (4, n + S, F) and acts.shape == (4, n + S, A)  # an action for every clip frame
    clean = recipe.build_sequences(lay, frames, acts)
    ids, labels = (t.cpu() for t in recipe.batch(s))
    assert torch.equal(labels, clean.labels)
    resp = labels[:, lay.prompt_len:].view(4, S, F + A)
    assert (resp[:, :, F:] == -100).all() and (labels[:, : lay.prompt_len] == -100).all()  # actions: never targets
    assert torch.equal(resp[:, :, :F], frames[:, n:])  # the targets are the future frames' codes
    resp_ids = clean.input_ids[:, lay.prompt_len:].view(4, S, F + A)
    assert torch.equal(resp_ids[:, :, F:], acts[:, n:] + lay.action_offset)  # the given actions, in every step
    prompt = clean.input_ids[:, : lay.prompt_len - 1].view(4, n, F + A)
    assert torch.equal(prompt[:, :, :F], frames[:, :n] + K)  # context codes offset by K
    changed = ids != clean.input_ids
    frame_target = (labels != -100) & (labels < K)
    assert changed.any() and not changed[~frame_target].any()  # prompt and action positions untouched
    assert ids[frame_target].max() < K


def test_multistep_generation_with_the_kv_cache_matches_the_full_forward(assets, tmp_path):
    s = recipe.setup(_cfg(assets, tmp_path / "run", "data.future_frames=3"))
    s.logger.close()
    lay, model = s.layout, s.model.eval()
    torch.manual_seed(1)
    model.reset_parameters(std=0.2)  # a less uniform random model: greedy codes vary within and across frames
    P, F, L = lay.prompt_len, lay.tokens_per_frame, lay.step_len
    prompt, response = s.val.input_ids[:, :P], s.val.input_ids[:, P:]
    gen = recipe.generate_frames(model, prompt, lay, response)
    assert gen.shape == (len(prompt), lay.future_frames, F) and int(gen.max()) < lay.codebook_size
    assert len(gen.unique()) > 3
    ids = prompt
    with torch.no_grad():  # the same greedy tokens, recomputed without a cache, the true actions after each frame
        for k in range(lay.future_frames):
            for _ in range(F):
                nxt = model(ids)[:, -1, : lay.codebook_size].argmax(-1)
                ids = torch.cat([ids, nxt[:, None]], dim=1)
            ids = torch.cat([ids, response[:, k * L + F:(k + 1) * L]], dim=1)
    assert torch.equal(ids[:, P:].view(len(prompt), lay.future_frames, L)[:, :, :F], gen)


def test_shipped_multistep_config():
    first = SHIPPED_MULTI.read_text().splitlines()[0]
    assert first.startswith("# rlvr-train pretrain --config rlvr_world/configs/pretrain_multistep_sim64.yaml")
    cfg, single = C.load_config("pretrain", SHIPPED_MULTI), C.load_config("pretrain", SHIPPED)
    assert cfg.data.future_frames == 4 and cfg.train.out_dir == "runs/pretrain_multistep_sim64"
    assert (cfg.data.root, cfg.tokenizer, cfg.data.context_frames) == (single.data.root, single.tokenizer, 2)
    lay = recipe.MultiStepLayout(tokens_per_frame=64, context_tokens_per_frame=64, context_frames=2,
                                 future_frames=4, action_dims=4, codebook_size=4375, context_codebook_size=4375)
    assert lay.prompt_len + lay.response_len == 137 + 4 * (64 + 4)
    args = recipe._model_args(cfg.model, lay.vocab_size)
    assert args.max_seq_len >= lay.prompt_len + lay.response_len and args.vocab_size == 9008


# ---------------------------------------------------------------------------------------------------- compressive
KF, KC = 64, 125  # the tiny compressive tokenizer's future (dyn_levels [8, 8]) and context ([5, 5, 5]) codebooks


@pytest.fixture(scope="module")
def compressive(assets):
    """The squares data + a ``tiny`` CompressiveTokenizer (random weights; 16x16 frames: 4x4 context tokens,
    2x2 future tokens, K_future = 64, K_context = 125)."""
    from rlvr_world.models.compressive_tokenizer import CompressiveTokenizer

    root, _ = assets
    torch.manual_seed(0)
    tok_dir = root / "compressive_tokenizer"
    CompressiveTokenizer.from_name("tiny", levels=[5, 5, 5], dyn_levels=[8, 8]).save_pretrained(tok_dir)
    return root, tok_dir


def _ccfg(compressive, out_dir, *overrides):
    return _cfg(compressive, out_dir, "tokenizer.kind=compressive", "data.future_frames=2", *overrides)


def test_compressive_smoke_run(compressive, assets, tmp_path):
    result = recipe.run(_ccfg(compressive, tmp_path / "run", "train.steps=2"))
    out = tmp_path / "run"
    assert result["step"] == 2
    layout = json.loads((out / "model" / "layout.json").read_text())
    assert layout["layout"] == "multi_step" and layout["tokenizer_kind"] == "compressive"
    assert (layout["tokens_per_frame"], layout["context_tokens_per_frame"]) == (4, 16)
    assert (layout["token_grid"], layout["context_token_grid"]) == ([2, 2], [4, 4])
    assert (layout["codebook_size"], layout["context_codebook_size"]) == (KF, KC)
    assert layout["vocab_size"] == KF + KC + 256 + 2 == Transformer.from_pretrained(out / "model").args.vocab_size
    train = read_metrics(out, "train")
    assert [r["step"] for r in train] == [1, 2] and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    ev = read_metrics(out, "eval")[-1]
    assert ev["clips"] == 4 and ev["future_frames"] == 2 and np.isfinite(ev["loss"]) and 0 <= ev["token_acc"] <= 1
    for who in ("pred", "copy", "recon"):
        assert 0 <= ev[f"{who}_mae"] < 1 and 0 < ev[f"{who}_psnr"] < 100 and -1 <= ev[f"{who}_ssim"] <= 1
    for who in ("pred", "copy"):
        assert ev[f"{who}_mae"] == pytest.approx((ev[f"{who}_mae_step1"] + ev[f"{who}_mae_step2"]) / 2, rel=1e-4)
    assert 0 <= ev["pred_token_match"] <= 1
    assert recipe.run(_cfg(assets, tmp_path / "f", "train.steps=1"))["step"] == 1  # the frame kind says so too
    assert json.loads((tmp_path / "f" / "model" / "layout.json").read_text())["tokenizer_kind"] == "frame"


def test_compressive_context_cache_and_sequences(compressive, tmp_path):
    s = recipe.setup(_ccfg(compressive, tmp_path / "run", "train.token_noise=0.5"))
    s.logger.close()
    tok, lay, (n, S, F, Fc, A) = s.tokenizer, s.layout, (2, 2, 4, 16, 2)
    pairs = s.clips.pairs(0, 4)
    ctx, acts = s.clips.gather(pairs)
    assert ctx.shape == (4, n + S, Fc) and acts.shape == (4, n + S, A)
    images = torch.stack([torch.from_numpy(s.clips.images[e][s.clips._index(st)]) for e, st in pairs])
    images = images.permute(0, 1, 4, 2, 3)                                          # [4, n + S, 3, H, W]
    within, context = tok.encode_context(images[:, :n])  # the context frames coded within the clip
    assert torch.equal(within.flatten(2), ctx[:, :n])  # == the per-frame cache
    future = tok.encode_future(images[:, n:], context).flatten(2)
    ids, labels = (t.cpu() for t in recipe.batch(s))
    resp = labels[:, lay.prompt_len:].view(4, S, F + A)
    assert torch.equal(resp[:, :, :F], future) and (resp[:, :, F:] == -100).all()
    prompt = ids[:, : lay.prompt_len - 1].view(4, n, Fc + A)
    assert torch.equal(prompt[:, :, :Fc], ctx[:, :n] + KF)  # context codes offset by K_future
    frame_target = (labels != -100) & (labels < KF)
    clean = recipe.build_sequences(lay, future, acts, context_tokens=ctx[:, :n]).input_ids
    assert (ids != clean).any() and not (ids != clean)[~frame_target].any()  # noise on future-frame inputs only
    assert ids[frame_target].max() < KF
    # eval set: the targets are the true future frames' codes; recon decodes them
    v = s.val
    assert v.target_tokens.shape == (4 * S, F) and v.context_tokens.shape == (4, n, Fc)
    assert torch.equal(v.input_ids[:, lay.prompt_len:].view(4, S, F + A)[:, :, :F].flatten(0, 1), v.target_tokens)


def test_compressive_generation_with_the_kv_cache_matches_the_full_forward(compressive, tmp_path):
    s = recipe.setup(_ccfg(compressive, tmp_path / "run"))
    s.logger.close()
    lay, model = s.layout, s.model.eval()
    torch.manual_seed(1)
    model.reset_parameters(std=0.2)
    P, F, L = lay.prompt_len, lay.tokens_per_frame, lay.step_len
    prompt, response = s.val.input_ids[:, :P], s.val.input_ids[:, P:]
    gen = recipe.generate_frames(model, prompt, lay, response)
    assert gen.shape == (len(prompt), lay.future_frames, F) and int(gen.max()) < KF
    ids = prompt
    with torch.no_grad():
        for k in range(lay.future_frames):
            for _ in range(F):
                nxt = model(ids)[:, -1, :KF].argmax(-1)
                ids = torch.cat([ids, nxt[:, None]], dim=1)
            ids = torch.cat([ids, response[:, k * L + F:(k + 1) * L]], dim=1)
    assert torch.equal(ids[:, P:].view(len(prompt), lay.future_frames, L)[:, :, :F], gen)


def test_compressive_resume_is_bit_exact(compressive, tmp_path, monkeypatch):
    _check_resume(compressive, tmp_path, monkeypatch, "tokenizer.kind=compressive", "data.future_frames=2",
                  "train.token_noise=0.2")


def test_compressive_kind_mismatch_is_an_error(compressive, assets, tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer.kind=compressive but tokenizer.checkpoint .* holds a frame"):
        recipe.run(_cfg(assets, tmp_path / "x", "tokenizer.kind=compressive", "data.future_frames=2"))
    with pytest.raises(ValueError, match=r"tokenizer.kind=frame but tokenizer.checkpoint .* holds a compressive"):
        recipe.run(_cfg(compressive, tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_shipped_compressive_config():
    path = SHIPPED.parent / "pretrain_compressive_sim64.yaml"
    assert path.read_text().splitlines()[0] == f"# rlvr-train pretrain --config rlvr_world/configs/{path.name}"
    cfg = C.load_config("pretrain", path)
    tok = C.load_config("tokenizer", SHIPPED.parent / "tokenizer_compressive_sim64.yaml")
    assert cfg.tokenizer.kind == tok.tokenizer.kind == "compressive" and cfg.tokenizer.checkpoint == tok.train.out_dir
    assert (cfg.data.context_frames, cfg.data.clip_stride) == (tok.data.context_frames, tok.data.clip_stride)
    assert cfg.data.future_frames == 4
