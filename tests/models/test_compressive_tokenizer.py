import json

import pytest
import torch

from rlvr_world.models.compressive_tokenizer import PRESETS, CompressiveTokenizer, CompressiveTokenizerArgs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # small convolutions: one thread is as fast, and far faster when other processes load the CPU
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return CompressiveTokenizer.from_name("tiny", **overrides)


def clips(B=2, Tc=2, Tf=2, seed=0):
    """B fixed smooth clips of 32x32 frames in [0, 1]: a blob moving over a gradient. Returns
    (context [B, Tc, 3, 32, 32], future [B, Tf, 3, 32, 32])."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    frames = []
    for b in range(B):
        cy, cx = torch.rand(2, generator=g) * 0.5 + 0.25
        vy, vx = (torch.rand(2, generator=g) - 0.5) * 0.15
        seq = []
        for t in range(Tc + Tf):
            blob = torch.exp(-((yy - cy - vy * t) ** 2 + (xx - cx - vx * t) ** 2) / 0.02)
            seq.append(torch.stack([0.3 + 0.4 * xx * (b + 1) / B, blob, (1 - yy) * 0.5 + 0.5 * blob]).clamp(0, 1))
        frames.append(torch.stack(seq))
    frames = torch.stack(frames)
    return frames[:, :Tc], frames[:, Tc:]


# ---------------------------------------------------------------------------- presets
def test_rt1_token_counts_on_meta():
    with torch.device("meta"):
        model = CompressiveTokenizer.from_name("rt1")
        assert model.context_grid(256, 320) == (16, 20)
        assert model.future_grid(256, 320) == (8, 10)
        # the networks themselves produce those grids: 320 tokens per context frame, 80 per future frame
        ctx_codes = model._context_codes(torch.rand(1, 4, 3, 256, 320))
        assert ctx_codes.shape == (4, 16, 20, 5) and 4 * 16 * 20 == 1280
        _, context = model._context_decode(ctx_codes, 1, full=False)
        latent = model._future_latent(torch.rand(1, 3, 3, 256, 320), context)
        assert latent.shape == (3, 8, 10, 5)
        assert model._future_decode(latent, context, 1).shape == (1, 3, 3, 256, 320)
    assert model.context_codebook_size == model.future_codebook_size == 4375
    assert model.args.attn_levels == (5, 4)


@pytest.mark.parametrize("name, size, ctx_grid, fut_grid", [("sim-64", (64, 64), (8, 8), (4, 4)),
                                                            ("tiny", (32, 32), (8, 8), (4, 4))])
def test_small_preset_grids(name, size, ctx_grid, fut_grid):
    with torch.device("meta"):
        model = CompressiveTokenizer.from_name(name)
    assert model.context_grid(*size) == ctx_grid and model.future_grid(*size) == fut_grid
    assert set(PRESETS) == {"rt1", "sim-64", "tiny"}


def test_separate_levels():
    model = tiny(dyn_levels=[8, 5, 5, 5])
    assert model.context_codebook_size == 4375 and model.future_codebook_size == 1000
    context, future = clips(B=1)
    _, ctx = model.encode_context(context)
    tokens = model.encode_future(future, ctx)
    assert int(tokens.max()) < 1000
    assert model.decode_future(tokens, ctx).shape == future.shape


# ---------------------------------------------------------------------------- shapes, ranges, consistency
def test_shapes_ranges_and_consistency():
    model = tiny().eval()
    context, future = clips(B=2, Tc=3, Tf=2)
    ct, ctx = model.encode_context(context)
    assert ct.shape == (2, 3, 8, 8) and ct.dtype == torch.int64
    assert 0 <= int(ct.min()) and int(ct.max()) < model.context_codebook_size
    assert isinstance(ctx, list) and len(ctx) == len(model.args.attn_levels)
    assert all(f.shape[:2] == (2, 3) and f.dim() == 5 for f in ctx)
    ft = model.encode_future(future, ctx)
    assert ft.shape == (2, 2, 4, 4) and ft.dtype == torch.int64
    assert 0 <= int(ft.min()) and int(ft.max()) < model.future_codebook_size
    rc = model.decode_context(ct)
    rf = model.decode_future(ft, ctx)
    for r, x in ((rc, context), (rf, future)):
        assert r.shape == x.shape and r.dtype == torch.float32
        assert float(r.min()) > 0 and float(r.max()) < 1
    # the context seen by the future branch depends on the context tokens only
    for a, b in zip(ctx, model.context_from_tokens(ct)):
        assert torch.equal(a, b)
    # forward agrees with the encode/decode path (up to the straight-through's float rounding)
    rc2, rf2, ct2, ft2 = model(context, future)
    assert torch.equal(ct2, ct) and torch.equal(ft2, ft)
    torch.testing.assert_close(rc2, rc, atol=1e-5, rtol=0)
    torch.testing.assert_close(rf2, rf, atol=1e-5, rtol=0)
    # uint8 input is scaled by 1/255
    u8 = (context * 255).round().to(torch.uint8)
    assert torch.equal(model.encode_context(u8)[0], model.encode_context(u8.float() / 255)[0])
    # future frames are coded independently given the context
    assert torch.equal(model.encode_future(future[:, 1:], ctx), ft[:, 1:])
    torch.testing.assert_close(model.decode_future(ft[:, :1], ctx), rf[:, :1])


def test_future_decoder_uses_context():
    model = tiny().eval()
    context, future = clips(B=1)
    _, ctx = model.encode_context(context)
    ft = model.encode_future(future, ctx)
    other_ctx = model.context_from_tokens(model.encode_context(context.flip(-1))[0])
    a, b = model.decode_future(ft, ctx), model.decode_future(ft, other_ctx)
    assert float((a - b).abs().mean()) > 1e-3
    # and the future encoder too
    assert not torch.equal(model.encode_future(future, other_ctx), ft)


# ---------------------------------------------------------------------------- training
def test_gradients_reach_both_encoders():
    model = tiny()
    context, future = clips(B=1)
    _, recon_future, _, _ = model(context, future)
    recon_future.sub(future).abs().mean().backward()  # the future loss alone
    for name in ("context.encoder.stem.weight", "context.decoder.proj.weight", "dyn_encoder.stem.weight",
                 "dyn_decoder.stem.weight", "dyn_encoder.mid.attn.q.weight", "dyn_decoder.mid.attn.kv.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_tiny_overfit():
    model = tiny(seed=1)
    context, future = clips(B=2, Tc=2, Tf=2, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []  # (context L1, future L1) per step
    for _ in range(150):
        rc, rf, _, _ = model(context, future)
        l_ctx, l_fut = (rc - context).abs().mean(), (rf - future).abs().mean()
        opt.zero_grad()
        (l_ctx + l_fut).backward()
        opt.step()
        losses.append((float(l_ctx.detach()), float(l_fut.detach())))
    for i, name in enumerate(("context", "future")):
        assert losses[-1][i] < 0.5 * losses[0][i], (name, losses[0], losses[-1])


# ---------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip(tmp_path):
    model = tiny(seed=2, dyn_levels=[8, 5, 5, 5]).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "rlvr_world.compressive_tokenizer" and config["dyn_levels"] == [8, 5, 5, 5]
    loaded = CompressiveTokenizer.from_pretrained(tmp_path)
    assert loaded.args == model.args
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    context, future = clips(B=1)
    ct, ctx = model.encode_context(context)
    ft = model.encode_future(future, ctx)
    ct2, ctx2 = loaded.encode_context(context)
    assert torch.equal(ct, ct2) and torch.equal(loaded.encode_future(future, ctx2), ft)
    assert torch.equal(loaded.decode_future(ft, ctx2), model.decode_future(ft, ctx))
    assert not list(tmp_path.glob("*.tmp*"))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        CompressiveTokenizer.from_pretrained(tmp_path / "missing")
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "bogus": 1}))
    with pytest.raises(ValueError, match="bogus"):
        CompressiveTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "dyn_base_channels": 8}))
    with pytest.raises(ValueError, match="must have shape"):
        CompressiveTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "other"}))
    with pytest.raises(ValueError, match="model_type"):
        CompressiveTokenizer.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------- bad inputs
def test_bad_args():
    with pytest.raises(ValueError, match="name"):
        CompressiveTokenizerArgs.from_name("nope")
    with pytest.raises(ValueError, match="dyn_channel_mult"):
        CompressiveTokenizerArgs.from_name("tiny", dyn_channel_mult=(1, 2))
    with pytest.raises(ValueError, match="cross_attn_levels"):
        CompressiveTokenizerArgs.from_name("tiny", cross_attn_levels=(3,))
    with pytest.raises(ValueError, match="num_heads"):
        CompressiveTokenizerArgs.from_name("tiny", num_heads=3)
    with pytest.raises(ValueError, match="levels"):
        CompressiveTokenizerArgs.from_name("tiny", dyn_levels=[1, 5])
    with pytest.raises(ValueError, match="channel_mult"):
        CompressiveTokenizerArgs.from_name("tiny", channel_mult=(1, 2))


def test_bad_inputs():
    model = tiny().eval()
    context, future = clips(B=2)
    ct, ctx = model.encode_context(context)
    ft = model.encode_future(future, ctx)
    with pytest.raises(ValueError, match="frames must have shape"):
        model.encode_context(context[0])
    with pytest.raises(ValueError, match="frames must be a torch.Tensor"):
        model.encode_context(context.numpy())
    with pytest.raises(ValueError, match="multiples"):
        model.encode_context(context[..., :28, :])
    with pytest.raises(ValueError, match="uint8 or float"):
        model.encode_context(context.to(torch.int32))
    with pytest.raises(ValueError, match="H must be"):
        model.context_grid(30, 32)
    with pytest.raises(ValueError, match="context"):
        model.encode_future(future, ctx[:1])
    with pytest.raises(ValueError, match=r"context\[0\]"):
        model.encode_future(future[:1], ctx)  # batch mismatch
    with pytest.raises(ValueError, match=r"context\[0\]"):
        model.decode_future(torch.zeros(2, 1, 8, 8, dtype=torch.int64), ctx)  # frame size mismatch
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 4375\)"):
        model.decode_context(ct + model.context_codebook_size)
    with pytest.raises(ValueError, match="tokens must lie"):
        model.decode_future(ft - 5000, ctx)
    with pytest.raises(ValueError, match="integer"):
        model.decode_future(ft.float(), ctx)
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, T, h, w\]"):
        model.decode_context(ct[0])
    with pytest.raises(ValueError, match="tokens grid"):
        model.context_from_tokens(ct[..., :7])
    with pytest.raises(ValueError, match="future_frames"):
        model(context, future[:1])
    with pytest.raises(ValueError, match="context_frames"):
        model(context[0], future)
