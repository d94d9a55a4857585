"""GPU checks of the frame rewards (skipped without a CUDA GPU): the Triton kernels and, when built, the
CUDA kernels against the fp64 reference at the training shapes, and the bf16 LPIPS path against fp32."""

import importlib.util

import pytest
import torch

from rlvr_world.ops import _dispatch, reference
from rlvr_world.rewards import video
from rlvr_world.testing import assert_close

pytestmark = pytest.mark.cuda


def _impls():
    if not torch.cuda.is_available():
        return ["triton"]
    return [i for i in ("triton", "cuda") if _dispatch.missing(i, torch.device("cuda")) is None]


def _frames(b, g, h, w, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(b // g, 3, h, w, generator=gen)
    pred = (target.repeat_interleave(g, 0) + 0.1 * torch.randn(b, 3, h, w, generator=gen)).clamp(0, 1)
    if dtype == torch.uint8:
        return (pred * 255).round().to(dtype), (target * 255).round().to(dtype)
    return pred.to(dtype), target.to(dtype)


@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("b,g,h,w", [(64, 16, 256, 320), (48, 16, 64, 64), (6, 3, 37, 45)])
def test_frame_metrics_on_gpu(impl, dtype, b, g, h, w):
    pred, target = _frames(b, g, h, w, dtype)
    truth = reference.frame_metrics(pred, target, g, dtype=torch.float64)
    for with_ssim in (True, False):
        metrics = video.METRICS if with_ssim else ("mse", "mae", "psnr")
        out = video.frame_metrics(pred.cuda(), target.cuda(), g, metrics, impl=impl)
        for name in metrics:
            assert out[name].is_cuda
            tol = dict(atol=1e-5) if name in ("ssim", "psnr") else dict(rtol=1e-6, atol=1e-9)
            assert_close(f"{impl} {dtype} {name}", out[name], truth[name], **tol)


@pytest.mark.skipif(importlib.util.find_spec("lpips") is None, reason="needs the lpips package's linear heads")
def test_lpips_bf16_channels_last_matches_fp32_on_gpu():
    from rlvr_world.models.lpips import LPIPS

    pred, target = _frames(32, 16, 64, 80, torch.float32)
    fp32 = LPIPS(net="vgg", random_backbone=True, precision="fp32").cuda()
    bf16 = LPIPS(net="vgg", random_backbone=True, precision="bf16").cuda()
    exact = fp32(pred.cuda(), target.cuda(), group_size=16)
    cpu = LPIPS(net="vgg", random_backbone=True, precision="fp32")(pred, target, group_size=16)
    assert_close("fp32 GPU vs CPU", exact.cpu(), cpu, rtol=1e-4)
    assert_close("bf16 vs fp32", bf16(pred.cuda(), target.cuda(), group_size=16), exact, rtol=1e-2)
