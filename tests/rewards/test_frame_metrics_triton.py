"""The Triton frame-metric kernels (``rlvr_world.kernels.frame_metrics``, layer 1 of the ``frame_metrics`` op)
against the fp64 eager reference. Without a GPU they run on CPU tensors under ``TRITON_INTERPRET=1`` (set by
the conftest), so the shapes are tiny; the GPU tiling (several row and column tiles, programs that walk
several tiles, tiles of the last K - 1 rows that only hold pixel sums) is forced by patching the launch
choices."""

import importlib.util

import pytest
import torch
from rlvr_world.kernels import interpreting

from rlvr_world.ops import reference
from rlvr_world.testing import assert_close

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed"),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not interpreting():
    pytestmark.append(pytest.mark.skip(reason="no GPU and TRITON_INTERPRET is not set"))


def _frames(dtype, b, g, c, h, w, seed=0):
    """pred [b, c, h, w], target [b / g, c, h, w]; float frames reach outside [0, 1] to exercise the clamp."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        make = lambda n: torch.randint(0, 256, (n, c, h, w), generator=gen, dtype=torch.uint8)
    else:
        make = lambda n: (torch.rand(n, c, h, w, generator=gen, dtype=torch.float64) * 1.2 - 0.1).to(dtype)
    target = make(b // g)
    # predictions near their target (SSIM well inside (0, 1)), plus noise
    pred = target.repeat_interleave(g, 0)
    if dtype == torch.uint8:
        pred = (pred.short() + torch.randint(-40, 41, pred.shape, generator=gen, dtype=torch.int16)).clamp(0, 255)
        pred = pred.to(torch.uint8)
    else:
        pred = (pred.double() + torch.randn(pred.shape, generator=gen, dtype=torch.float64) * 0.15).to(dtype)
    return pred.contiguous(), target.contiguous()


def _run(pred, target, group_size, with_ssim, k=11):
    from rlvr_world.kernels import frame_metrics as fm

    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    window = reference.gaussian_window(k, 1.5, acc).to(DEVICE)
    out = fm.frame_metrics(pred.to(DEVICE), target.to(DEVICE), window, group_size, with_ssim)
    assert all(t.dtype == acc for t in out)
    return [t.cpu() for t in out]


def _check(pred, target, group_size, with_ssim, k=11):
    sq, ab, ss = _run(pred, target, group_size, with_ssim, k)
    truth = reference.frame_metrics(pred, target, group_size, window=k, dtype=torch.float64)
    rel, ssim_tol = (1e-12, 1e-12) if pred.dtype == torch.float64 else (1e-6, 1e-5)
    assert_close("sq_err", sq, truth["mse"], rtol=rel)
    assert_close("abs_err", ab, truth["mae"], rtol=rel)
    if with_ssim:
        assert_close("ssim", ss, truth["ssim"], atol=ssim_tol)
    else:
        assert ss.shape == (0,)


DTYPES = [torch.uint8, torch.float32, torch.bfloat16, torch.float64]
SHAPES = {  # b, g, c, h, w
    "odd_g4": (8, 4, 2, 13, 27),
    "k_equals_hw_c1": (3, 1, 1, 11, 11),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ssim_kernel_matches_reference(dtype, shape):
    pred, target = _frames(dtype, *SHAPES[shape])
    _check(pred, target, SHAPES[shape][1], with_ssim=True)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16], ids=str)
@pytest.mark.parametrize("group_size", [1, 4])
def test_pixel_kernel_matches_reference(dtype, group_size):
    pred, target = _frames(dtype, 8, group_size, 3, 13, 27)
    _check(pred, target, group_size, with_ssim=False)


def test_pixel_kernel_several_chunks_per_frame(monkeypatch):
    from rlvr_world.kernels import frame_metrics as fm

    monkeypatch.setattr(fm, "_pixel_launch", lambda b, n, device: (64, 16, 4))  # 11 chunks of 4 blocks per frame
    pred, target = _frames(torch.float32, 4, 2, 2, 13, 27)
    _check(pred, target, 2, with_ssim=False)


@pytest.mark.parametrize("dtype,k", [(torch.uint8, 11), (torch.float32, 5)], ids=str)
def test_ssim_gpu_tiling(monkeypatch, dtype, k):
    """Tiles of 4 x 16 outputs (BW 32): 3 column tiles, row tiles past the valid region that only hold pixel
    sums, and 4 programs that each walk several tiles and reuse one scratch."""
    from rlvr_world.kernels import frame_metrics as fm

    monkeypatch.setattr(fm, "_ssim_launch", lambda h, w, kk, wide: (4, 32, 16, 4))
    monkeypatch.setattr(fm, "_ssim_programs", lambda n_tiles, device: min(n_tiles, 4))
    pred, target = _frames(dtype, 2, 2, 1, 21, 45, seed=1)
    _check(pred, target, 2, with_ssim=True, k=k)


def test_nan_propagates_to_its_frame_only():
    pred, target = _frames(torch.float32, 3, 1, 1, 11, 11)
    pred[1, 0, 5, 5] = float("nan")
    sq, ab, ss = _run(pred, target, 1, with_ssim=True)
    for name, out in (("sq_err", sq), ("abs_err", ab), ("ssim", ss)):
        assert torch.isnan(out).tolist() == [False, True, False], (name, out)
    sq, ab, _ = _run(pred, target, 1, with_ssim=False)
    assert torch.isnan(sq).tolist() == [False, True, False] and torch.isnan(ab).tolist() == [False, True, False]


def test_empty_batch():
    pred, target = _frames(torch.float32, 4, 1, 1, 11, 11)
    for with_ssim in (True, False):
        sq, ab, ss = _run(pred[:0], target[:0], 1, with_ssim)
        assert sq.shape == ab.shape == ss.shape == (0,)
