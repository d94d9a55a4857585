"""Frame-metric rewards (rewards.video): every backend against the fp64 reference, parity with piqa,
input conventions (uint8, groups, dtype mixing, clamping) and the errors on bad input."""

import pytest
import torch

from rlvr_world.ops import reference
from rlvr_world.rewards import video
from rlvr_world.rl import grpo_advantages
from rlvr_world.testing import assert_close, prepare_torchvision
from tests.conftest import cpu_impls

IMPLS = ["reference", *cpu_impls()]


def _frames(b, c, h, w, groups=None, seed=0, dtype=torch.float32):
    """Predictions near their targets (as a trained model's are), plus the targets [b / G]."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.rand(groups or b, c, h, w, generator=g, dtype=torch.float64)
    pred = targets.repeat_interleave(b // (groups or b), 0) + 0.1 * torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    return pred.clamp(0, 1).to(dtype), targets.to(dtype)


def _truth(pred, target, group_size=1):
    return reference.frame_metrics(pred, target, group_size, dtype=torch.float64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(4, 3, 24, 32), (2, 1, 11, 11), (3, 2, 13, 27)])
def test_fp32_matches_fp64_reference(impl, shape):
    pred, target = _frames(*shape)
    out = video.frame_metrics(pred, target, impl=impl)
    truth = _truth(pred, target)
    for name in video.METRICS:
        assert out[name].dtype == torch.float32
        tol = dict(atol=1e-5) if name in ("ssim", "psnr") else dict(rtol=1e-6, atol=1e-9)
        assert_close(f"{impl} {name}", out[name], truth[name], **tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_uint8_is_float_over_255_and_groups_equal_explicit_repeat(impl):
    g = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 256, (8, 3, 20, 24), generator=g, dtype=torch.uint8)
    target = torch.randint(0, 256, (2, 3, 20, 24), generator=g, dtype=torch.uint8)
    shared = video.frame_metrics(pred, target, group_size=4, impl=impl)
    repeated = video.frame_metrics(pred, target.repeat_interleave(4, 0), impl=impl)
    as_float = video.frame_metrics(pred.double() / 255, target.double() / 255, group_size=4, impl=impl)
    truth = _truth(pred, target, 4)
    for name in video.METRICS:
        assert torch.equal(shared[name], repeated[name]), name
        assert_close(f"uint8 vs float64 {name}", shared[name], as_float[name], atol=1e-5, rtol=1e-6)
        assert_close(f"uint8 vs truth {name}", shared[name], truth[name], atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_fp64_frames_stay_fp64(impl):
    pred, target = _frames(6, 3, 16, 18, groups=3, dtype=torch.float64)
    out = video.frame_metrics(pred, target, group_size=2, impl=impl)
    truth = _truth(pred, target, 2)
    for name in video.METRICS:
        assert out[name].dtype == torch.float64
        assert_close(name, out[name], truth[name], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(impl, dtype):
    pred32, target32 = _frames(4, 3, 16, 20, groups=2)
    pred, target = pred32.to(dtype), target32.to(dtype)
    out = video.frame_metrics(pred, target, group_size=2, impl=impl)
    same_values = _truth(pred, target, 2)  # the kernel sees exactly these values
    from_fp32 = _truth(pred32, target32, 2)  # what the frames were before rounding to 16 bits
    for name in ("ssim", "psnr"):
        assert out[name].dtype == torch.float32
        assert_close(f"{name} vs reference on the same values", out[name], same_values[name], atol=1e-5)
        assert_close(f"{name} vs the fp32 frames", out[name], from_fp32[name], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("impl", IMPLS)
def test_piqa_parity(impl):
    prepare_torchvision()
    piqa = pytest.importorskip("piqa")
    pred, target = _frames(6, 3, 32, 40, groups=3)
    full_target = target.repeat_interleave(2, 0)
    out = video.frame_metrics(pred, target, group_size=2, impl=impl)
    assert_close("ssim vs piqa", out["ssim"], piqa.SSIM(reduction="none")(pred, full_target), atol=1e-5)
    assert_close("psnr vs piqa", out["psnr"], piqa.PSNR(reduction="none")(pred, full_target), atol=1e-4, rtol=1e-6)
    assert_close("ssim()", video.ssim(pred, target, 2, impl=impl), out["ssim"], atol=0)
    assert_close("psnr()", video.psnr(pred, target, 2, impl=impl), out["psnr"], atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_out_of_range_values_are_clamped(impl):
    pred, target = _frames(2, 3, 16, 16)
    wild = pred.clone()
    wild[0, 0, :4] = 3.0
    wild[1, 1, 5:] = -2.0
    clamped = wild.clamp(0, 1)
    a, b = video.frame_metrics(wild, target, impl=impl), video.frame_metrics(clamped, target, impl=impl)
    for name in video.METRICS:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_frames_raise_and_name_the_frames(impl):
    pred, target = _frames(8, 3, 16, 16, groups=2)
    pred[5, 1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"1 predicted frame\(s\) scored NaN.*indices 5"):
        video.frame_metrics(pred, target, group_size=4, impl=impl)
    pred[5, 1, 3, 3] = 0.5
    target[0, 0, 0, 0] = float("nan")  # shared by predictions 0..3
    with pytest.raises(ValueError, match=r"indices 0, 1, 2, 3"):
        video.mse(pred, target, group_size=4, impl=impl)


def test_mixed_dtypes_score_like_the_float_side():
    pred, target = _frames(4, 3, 16, 16, groups=2)
    target_u8 = (target * 255).round().to(torch.uint8)
    mixed = video.frame_metrics(pred, target_u8, group_size=2)
    same = video.frame_metrics(pred, target_u8.float() / 255, group_size=2)
    for name in video.METRICS:
        assert_close(name, mixed[name], same[name], atol=0)


def test_subsets_and_psnr_options():
    pred, target = _frames(4, 3, 16, 16)
    out = video.frame_metrics(pred, target, metrics=("psnr",))
    assert list(out) == ["psnr"]
    assert set(video.frame_metrics(pred, target, metrics="mae")) == {"mae"}
    mse = video.mse(pred, target)
    assert_close("psnr data_range 255", video.psnr(pred, target, data_range=255.0, eps=0.0),
                 10 * torch.log10(255.0**2 / mse), rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    pred, target = _frames(4, 3, 16, 16)
    with pytest.raises(ValueError, match="smaller than the SSIM window 11"):
        video.ssim(pred[:, :, :8, :8], target[:, :, :8, :8])
    assert video.mse(pred[:, :, :8, :8], target[:, :, :8, :8]).shape == (4,)  # pixel metrics need no window
    with pytest.raises(ValueError, match=r"target frames must have pred's frame shape \(C, H, W\) = \(3, 16, 16\)"):
        video.mse(pred, target[:, :, :15])
    with pytest.raises(ValueError, match="target must have 4 frames .* or 4 / group_size = 2 frames"):
        video.mse(pred, target[:3], group_size=2)
    with pytest.raises(ValueError, match="pred must be 4-D"):
        video.mse(pred[0], target[0])
    with pytest.raises(ValueError, match="pred must be uint8 or float16"):
        video.mse(pred.int(), target)
    with pytest.raises(ValueError, match="metrics must be a non-empty subset"):
        video.frame_metrics(pred, target, metrics=("lpips",))
    with pytest.raises(ValueError, match="window must be an odd positive int"):
        video.ssim(pred, target, window=4)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        video.mse(pred, target, group_size=0)
    with pytest.raises(ValueError, match="impl must be one of"):
        video.mse(pred, target, impl="nope")


@pytest.mark.parametrize("impl", IMPLS)
def test_advantages_from_our_rewards_match_the_reference(impl):
    """GRPO advantages are what the rewards decide; ours and the fp64 reference's agree to 1e-3."""
    g = 8
    pred, target = _frames(32, 3, 24, 24, groups=4, seed=7, dtype=torch.bfloat16)  # decoded frames, as in training
    ours = video.frame_metrics(pred, target, group_size=g, impl=impl)
    truth = _truth(pred, target, g)
    for reward in (lambda m: -m["mae"], lambda m: m["ssim"], lambda m: m["psnr"], lambda m: -m["mse"]):
        a = grpo_advantages(reward(ours).double(), g)
        b = grpo_advantages(reward(truth), g)
        assert_close("advantages", a, b, atol=1e-3)


def test_repetition_rate():
    tokens = torch.tensor([[[1, 2], [1, 2], [1, 2]], [[1, 2], [3, 4], [1, 2]]])
    assert_close("rate", video.repetition_rate(tokens), torch.tensor([1.0, 0.0]), atol=0)
    previous = torch.tensor([[0, 0], [1, 2]])
    assert_close("with context", video.repetition_rate(tokens, previous), torch.tensor([2 / 3, 1 / 3]), atol=1e-7)
    assert_close("one frame", video.repetition_rate(tokens[:, :1]), torch.zeros(2), atol=0)
    with pytest.raises(ValueError, match=r"previous must have shape \(2, 2\)"):
        video.repetition_rate(tokens, previous[:, :1])
    with pytest.raises(ValueError, match=r"frame_tokens must be a \[B, T, L\] tensor"):
        video.repetition_rate(tokens[0])
