import json
import math

import pytest
import torch

from rlvr_world.models.frame_tokenizer import PRESETS, FrameTokenizer, FrameTokenizerArgs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # small convolutions: one thread is as fast, and far faster when other processes load the CPU
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return FrameTokenizer.from_name("tiny", **overrides)


def smooth_images():
    """2 fixed, smooth 32x32 RGB images in [0, 1]: [2, 3, 32, 32]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    a = torch.stack([xx, yy, (xx + yy) / 2])
    b = torch.stack([1 - yy, 0.5 + 0.5 * torch.sin(6 * xx) * torch.cos(4 * yy), 1 - xx])
    return torch.stack([a, b])


# ---------------------------------------------------------------------------- presets and grid math
@pytest.mark.parametrize("name, size, grid", [("rt1", (256, 320), (16, 20)), ("sim-64", (64, 64), (8, 8)),
                                              ("tiny", (32, 32), (8, 8))])
def test_preset_grids_and_parameter_counts(name, size, grid):
    with torch.device("meta"):
        model = FrameTokenizer.from_name(name)
    assert model.token_grid(*size) == grid
    assert model.tokens_per_frame(*size) == math.prod(grid)
    assert model.codebook_size == 4375
    n_params = sum(p.numel() for p in model.parameters())
    expected = {"rt1": 54_356_616, "sim-64": 2_390_504, "tiny": 188_568}
    assert n_params == expected[name]
    # a meta forward checks the shapes of the whole network without computing anything
    frames = torch.empty(2, 3, *size, device="meta")
    latent = model.encoder(frames)
    assert latent.shape == (2, 5, *grid)
    assert model.decoder(latent).shape == (2, 3, *size)


def test_rt1_grid_is_the_papers():
    with torch.device("meta"):
        model = FrameTokenizer.from_name("rt1")
    assert model.tokens_per_frame(256, 320) == 320
    assert model.args.widths == (128, 128, 256, 256, 512)


@pytest.mark.parametrize("name, size", [("tiny", 32), ("sim-64", 64)])
def test_shapes_range_and_dtypes(name, size):
    torch.manual_seed(0)
    model = FrameTokenizer.from_name(name).eval()
    frames = torch.rand(2, 3, size, size)
    tokens = model.encode(frames)
    h, w = model.token_grid(size, size)
    assert tokens.shape == (2, h, w) and tokens.dtype == torch.int64
    assert tokens.min() >= 0 and tokens.max() < model.codebook_size
    recon = model.decode(tokens)
    assert recon.shape == frames.shape and recon.dtype == torch.float32
    assert recon.min() >= 0 and recon.max() <= 1
    recon2, tokens2 = model(frames)
    assert torch.equal(tokens2, tokens)
    torch.testing.assert_close(recon2, recon)


def test_encode_is_deterministic_and_uint8_matches_float():
    model = tiny().eval()
    u8 = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    frames = u8.float() / 255
    tokens = model.encode(frames)
    assert torch.equal(model.encode(frames), tokens)
    torch.testing.assert_close(model.encode_latent(u8), model.encode_latent(frames))
    # decode -> encode keeps shapes and range; decoding is deterministic too
    recon = model.decode(tokens)
    assert torch.equal(model.decode(tokens), recon)
    again = model.encode(recon)
    assert again.shape == tokens.shape and again.max() < model.codebook_size


def test_non_square_and_batch_independence():
    model = tiny().eval()
    frames = torch.rand(3, 3, 32, 48)
    tokens = model.encode(frames)
    assert tokens.shape == (3, 8, 12)
    assert model.decode(tokens).shape == (3, 3, 32, 48)
    torch.testing.assert_close(model.encode_latent(frames[1:2]), model.encode_latent(frames)[1:2], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- training
def test_gradients_flow_to_the_encoder_through_fsq():
    model = tiny()
    recon, tokens = model(torch.rand(2, 3, 32, 32))
    assert recon.requires_grad and not tokens.requires_grad
    (recon - 0.5).square().mean().backward()
    for name in ("encoder.stem.weight", "encoder.proj.weight", "decoder.proj.weight", "decoder.conv_out.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_tiny_overfit_two_images():
    model = tiny()
    frames = smooth_images()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(120):
        recon, _ = model(frames)
        loss = (recon - frames).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    model.eval()
    final = (model.decode(model.encode(frames)) - frames).abs().mean().item()
    assert final < 0.3 * losses[0]


def test_bf16_autocast_and_channels_last():
    model = tiny().eval()
    frames = torch.rand(2, 3, 32, 32)
    ref_latent = model.encode_latent(frames)
    tokens = model.encode(frames)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon, tok_bf16 = model(frames)
        latent = model.encode_latent(frames)
    assert recon.dtype == torch.float32 and tok_bf16.dtype == torch.int64
    assert tok_bf16.max() < model.codebook_size and 0 <= recon.min() and recon.max() <= 1
    torch.testing.assert_close(latent, ref_latent, atol=0.1, rtol=0.1)
    # channels_last module and input: same numbers, and the layout survives to the output
    cl = tiny().eval().to(memory_format=torch.channels_last)
    frames_cl = frames.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl.encode_latent(frames_cl), ref_latent, atol=1e-5, rtol=1e-4)
    out = cl.decode(tokens)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, model.decode(tokens), atol=1e-5, rtol=1e-4)


def test_bf16_weights():
    model = tiny().eval().to(torch.bfloat16)
    tokens = model.encode(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
    out = model.decode(tokens)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip(tmp_path):
    model = tiny(seed=3).eval()
    with torch.no_grad():  # make the GroupNorm affine parameters non-default
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "rlvr_world.frame_tokenizer"
    assert config["levels"] == [7, 5, 5, 5, 5] and config["num_down"] == 2
    loaded = FrameTokenizer.from_pretrained(tmp_path)
    assert loaded.args == model.args and not loaded.training
    frames = torch.rand(2, 3, 32, 32)
    tokens = model.encode(frames)
    assert torch.equal(loaded.encode(frames), tokens)
    assert torch.equal(loaded.decode(tokens), model.decode(tokens))
    assert FrameTokenizer.from_pretrained(tmp_path, dtype=torch.bfloat16).encoder.stem.weight.dtype == torch.bfloat16


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        FrameTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        FrameTokenizer.from_pretrained(tmp_path)
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    # weights of another size than config.json says
    (tmp_path / "config.json").write_text(json.dumps({**config, "base_channels": 8}))
    with pytest.raises(ValueError, match="must have shape"):
        FrameTokenizer.from_pretrained(tmp_path)
    # an extra level: the weights lack tensors
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_down": 3, "channel_mult": [1, 2, 2, 2]}))
    with pytest.raises(ValueError, match="missing tensor"):
        FrameTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "z_channels": 4}))
    with pytest.raises(ValueError, match="z_channels"):
        FrameTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type"):
        FrameTokenizer.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors():
    model = tiny().eval()
    with pytest.raises(ValueError, match=r"frames must have shape \[B, 3, H, W\], got \(3, 32, 32\)"):
        model.encode(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"frames must have shape \[B, 3, H, W\], got \(1, 1, 32, 32\)"):
        model.encode(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="frames must be uint8 or float.*got torch.int32"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"multiples of 2\*\*num_down = 4.*got 30x32"):
        model(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="frames must be a torch.Tensor"):
        model.encode([[0.0]])
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, h, w\], got \(8, 8\)"):
        model.decode(torch.zeros(8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="tokens must be an integer tensor, got torch.float32"):
        model.decode(torch.zeros(1, 8, 8))
    tokens = torch.full((1, 8, 8), 7)
    tokens[0, 2, 3] = 4375
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 4375\).*got 1 outside, e.g. 4375"):
        model.decode(tokens)
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 4375\).*e.g. -1"):
        model.decode(torch.full((1, 8, 8), -1))
    with pytest.raises(ValueError, match=r"H must be a positive multiple of 2\*\*num_down = 4.*got 250"):
        model.token_grid(250, 320)
    with pytest.raises(ValueError, match=r"W must be a positive multiple.*got 0"):
        model.tokens_per_frame(32, 0)


def test_args_validation():
    assert FrameTokenizerArgs.from_name("sim-64", num_down=2, channel_mult=[1, 2, 2]).stride == 4
    with pytest.raises(ValueError, match=r"channel_mult must have num_down \+ 1 = 3 entries"):
        FrameTokenizerArgs.from_name("tiny", channel_mult=(1, 2))
    with pytest.raises(ValueError, match="norm_groups must divide"):
        FrameTokenizerArgs.from_name("tiny", norm_groups=5)
    with pytest.raises(ValueError, match="levels"):
        FrameTokenizerArgs(levels=[1, 5])
    with pytest.raises(ValueError, match="name must be one of"):
        FrameTokenizerArgs.from_name("rt2")
    assert set(PRESETS) == {"rt1", "sim-64", "tiny"}
    assert FrameTokenizer.from_name("tiny", levels=[8, 5, 5, 5]).codebook_size == 1000
