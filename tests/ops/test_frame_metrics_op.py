"""The registered op ``rlvr_world::frame_metrics`` (CPU kernel, csrc/cpu/frame_metrics.cpp) against the fp64
eager reference: every frame dtype, shared targets, odd shapes, clamping, NaN, opcheck, boundary checks."""

import pytest
import torch

from rlvr_world.ops import _library, reference
from rlvr_world.testing import assert_close

pytestmark = pytest.mark.skipif(not _library.cpp_available(), reason="C++ extension not built")

# fp32 compute (every non-fp64 dtype): SSIM to 1e-5 absolute, MSE/MAE to 1e-6 relative; fp64 to 1e-12.
TOL = {torch.float32: {"ssim": 1e-5, "err": 1e-6}, torch.float64: {"ssim": 1e-12, "err": 1e-12}}


def _op(pred, target, group_size=1, window=11, with_ssim=True):
    w = reference.gaussian_window(window, 1.5, _library.acc_dtype(pred.dtype))
    return torch.ops.rlvr_world.frame_metrics(pred, target, w, group_size, with_ssim)


def _frames(shape, dtype, lo=0.0, hi=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


def _check(pred, target, group_size=1, window=11):
    """Op vs the fp64 reference on the same (dtype-rounded) frames, NaN where the reference has NaN."""
    sq, ab, ss = _op(pred, target, group_size, window)
    acc = _library.acc_dtype(pred.dtype)
    assert sq.dtype == ab.dtype == ss.dtype == acc and sq.shape == ab.shape == ss.shape == (pred.shape[0],)
    ref = reference.frame_metrics(pred, target, group_size, window=window)
    tol = TOL[acc]
    for name, out, exp in (("sq_err", sq, ref["mse"]), ("abs_err", ab, ref["mae"]), ("ssim", ss, ref["ssim"])):
        nan = torch.isnan(exp)
        got = torch.isnan(out)
        where = lambda m: m.nonzero().flatten().tolist()
        assert torch.equal(got, nan), f"{name}: NaN at {where(got)}, expected at {where(nan)}"
        kw = {"atol": tol["ssim"]} if name == "ssim" else {"rtol": tol["err"]}
        assert_close(name, out[~nan], exp[~nan], **kw)
    return sq, ab, ss


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("group_size", [1, 4])
def test_matches_reference(dtype, group_size):
    b = 8
    pred = _frames((b, 3, 24, 36), dtype, seed=1)
    target = _frames((b // group_size, 3, 24, 36), dtype, seed=2)
    _check(pred, target, group_size)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_matches_reference_64x80(dtype):
    _check(_frames((8, 3, 64, 80), dtype, seed=17), _frames((2, 3, 64, 80), dtype, seed=18), 4)


@pytest.mark.parametrize(
    "shape,window",
    [((4, 3, 13, 27), 11), ((4, 2, 11, 11), 11), ((4, 1, 40, 33), 11), ((4, 1, 150, 40), 11), ((4, 3, 9, 21), 7),
     ((4, 1, 5, 5), 1)],
    ids=["13x27", "11x11=K", "1ch", "strips", "K7", "K1"],
)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_odd_shapes(shape, window, dtype):
    for group_size in (1, 2):
        target = _frames((shape[0] // group_size, *shape[1:]), dtype, seed=4)
        _check(_frames(shape, dtype, seed=3), target, group_size, window)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_values_outside_unit_range_are_clamped(dtype):
    pred = _frames((8, 3, 24, 30), dtype, lo=-0.5, hi=1.5, seed=5)
    target = _frames((2, 3, 24, 30), dtype, lo=-0.5, hi=1.5, seed=6)
    pred[0, 0, 0, :3] = torch.tensor([float("inf"), -float("inf"), 7.0], dtype=dtype)
    _check(pred, target, 4)
    clamped = _op(pred.clamp(0, 1), target.clamp(0, 1), 4)
    for a, b in zip(_op(pred, target, 4), clamped):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_nan_reaches_only_the_predictions_that_read_it(dtype):
    pred = _frames((12, 3, 40, 36), dtype, seed=7)
    target = _frames((3, 3, 40, 36), dtype, seed=8)
    pred[5, 1, 39, 35] = float("nan")  # a corner: one SSIM window, below the last valid output row
    pred[10, 0, 20, 3] = float("nan")
    target[0, 2, 15, 0] = float("nan")  # shared by predictions 0..3
    sq, ab, ss = _check(pred, target, 4)
    expected = torch.zeros(12, dtype=torch.bool)
    expected[[0, 1, 2, 3, 5, 10]] = True
    for out in (sq, ab, ss):
        assert torch.equal(torch.isnan(out), expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flat_and_offset_frames_stay_accurate(dtype):
    """Constant frames a brightness offset apart: E[x^2] - mu^2 in fp32 cancels to ~1e-4 error in SSIM in
    the plain formula; the kernel's shifted d = x - y form must keep 1e-5."""
    base = torch.full((2, 3, 32, 48), 0.7, dtype=torch.float64)
    pred = base.repeat_interleave(4, 0) - torch.linspace(0, 0.4, 8, dtype=torch.float64).view(8, 1, 1, 1)
    noise = torch.rand(8, 3, 32, 24, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    pred[:, :, :, 24:] += 0.001 * noise  # half flat, half with a little texture
    if dtype == torch.uint8:
        pred, base = (pred * 255).round().to(torch.uint8), (base * 255).round().to(torch.uint8)
    else:
        pred, base = pred.to(dtype), base.to(dtype)
    _check(pred, base, 4)


def test_without_ssim():
    pred, target = _frames((8, 3, 20, 30), torch.float32, seed=10), _frames((2, 3, 20, 30), torch.float32, seed=11)
    sq, ab, ss = _op(pred, target, 4, with_ssim=False)
    assert ss.shape == (0,) and ss.dtype == torch.float32
    full = _op(pred, target, 4)
    assert_close("sq_err", sq, full[0], rtol=1e-6)
    assert_close("abs_err", ab, full[1], rtol=1e-6)
    # the window is not looked at without SSIM: any size passes
    w = torch.ones(40) / 40
    assert torch.ops.rlvr_world.frame_metrics(pred, target, w, 4, False)[2].shape == (0,)
    u8 = _frames((2, 1, 5, 7), torch.uint8, seed=12)
    sq, ab, ss = torch.ops.rlvr_world.frame_metrics(u8, u8[:1], w, 2, False)
    assert ss.shape == (0,)
    ref = reference.frame_metrics(u8, u8[:1], 2, window=5)
    assert_close("sq_err", sq, ref["mse"], rtol=1e-6)
    assert_close("abs_err", ab, ref["mae"], rtol=1e-6)


def test_result_does_not_depend_on_the_thread_count():
    pred, target = _frames((8, 3, 150, 64), torch.float32, seed=13), _frames((2, 3, 150, 64), torch.float32, seed=14)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _op(pred, target, 4)
        torch.set_num_threads(max(2, threads))
        many = _op(pred, target, 4)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype):
    pred, target = _frames((4, 2, 13, 16), dtype, seed=15), _frames((2, 2, 13, 16), dtype, seed=16)
    w = reference.gaussian_window(11, 1.5, _library.acc_dtype(dtype))
    for with_ssim in (True, False):
        torch.library.opcheck(torch.ops.rlvr_world.frame_metrics.default, (pred, target, w, 2, with_ssim))


@pytest.mark.parametrize(
    "change,match",
    [
        ({"target": torch.rand(2, 3, 16, 15)}, r"target must have shape .*got \[2, 3, 16, 15\]"),
        ({"target": torch.rand(4, 3, 16, 16)}, r"target must have shape .*got \[4, 3, 16, 16\]"),
        ({"target": torch.rand(2, 3, 16, 16, dtype=torch.float64)}, "target must be Float, got Double"),
        ({"window": torch.ones(10) / 10}, "window must have an odd size K <= H = 16 and <= W = 16, got K = 10"),
        ({"window": torch.ones(17) / 17}, "window must have an odd size K <= H = 16 and <= W = 16, got K = 17"),
        ({"window": torch.ones(11, dtype=torch.float64) / 11}, "window must be Float, got Double"),
        ({"group_size": 3}, "group_size must be >= 1 and divide pred's 4 frames, got 3"),
        ({"group_size": 0}, "group_size must be >= 1"),
        ({"pred": torch.rand(4, 16, 16)}, "pred must have 4 dims"),
        ({"pred": torch.rand(4, 3, 16, 16).transpose(2, 3)}, "pred must be contiguous"),
    ],
)
def test_boundary_checks(change, match):
    args = {"pred": torch.rand(4, 3, 16, 16), "target": torch.rand(2, 3, 16, 16), "window": torch.ones(11) / 11,
            "group_size": 2, "with_ssim": True} | change
    with pytest.raises(ValueError, match=match):
        torch.ops.rlvr_world.frame_metrics(*args.values())
