"""``frame_metrics``: per-frame squared error, absolute error and SSIM of predicted frames against true
frames, in one pass over the pixels.

Layers: kernels (``csrc/cpu/frame_metrics.cpp``, ``csrc/cuda/frame_metrics.cu``,
``kernels/frame_metrics.py``) -> the registered op ``torch.ops.rlvr_world.frame_metrics`` or the Triton
launcher -> ``frame_metrics`` here (checks, dtype alignment, backend choice). The reward functions of
``rlvr_world.rewards.video`` build MSE, MAE, PSNR and SSIM on it.

Decisions:

* Frames are read as values in [0, 1]: uint8 as x / 255, floats clamped to [0, 1] (decoded frames are
  clamped before they are scored, DESIGN §5). NaN is not clamped away: a frame with a NaN makes its
  results NaN, and ``check_nan=True`` (the default) turns that into a ValueError naming the frames.
* ``target`` is [B] frames, or [B / G] frames each shared by G consecutive predictions; the kernels read
  a shared frame once per group and never materialise the repeat.
* When pred and target dtypes differ, target is brought to pred's dtype (a uint8 side is divided by 255
  into the other side's float dtype), since decoded predictions are float and dataset frames uint8.
* Everything stays on the input's device; accumulation is fp32 (fp64 for fp64 frames).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from . import _dispatch, reference
from ._checks import check_group_size, check_tensor, shared_target_factor

FRAME_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)


class FrameErrors(NamedTuple):
    """Per-frame results, each [B] in fp32 (fp64 for fp64 frames)."""

    sq_err: torch.Tensor  # mean over C, H, W of (pred - target)^2
    abs_err: torch.Tensor  # mean over C, H, W of |pred - target|
    ssim: torch.Tensor | None  # mean SSIM over C and the valid region; None when not asked for


@functools.cache
def _window(size: int, sigma: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    return reference.gaussian_window(size, sigma, dtype).to(device)


def _align_dtypes(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.dtype == target.dtype:
        return pred, target
    if pred.dtype == torch.uint8:  # float target: score in the target's float dtype
        return pred.to(target.dtype) / 255, target
    if target.dtype == torch.uint8:
        return pred, target.to(pred.dtype) / 255
    return pred, target.to(pred.dtype)


def check_frames(pred: torch.Tensor, target: torch.Tensor, group_size: int) -> int:
    """Validate pred [B, C, H, W] and target [B or B / group_size, C, H, W]; return the sharing factor."""
    check_tensor("pred", pred, ndim=4)
    check_tensor("target", target, ndim=4)
    for name, x in (("pred", pred), ("target", target)):
        if x.dtype not in FRAME_DTYPES:
            raise ValueError(f"{name} must be uint8 or float16/bfloat16/float32/float64 frames, got {x.dtype}")
    check_group_size(group_size)
    if target.device != pred.device:
        raise ValueError(f"target must be on pred's device {pred.device}, got {target.device}")
    if target.shape[1:] != pred.shape[1:]:
        raise ValueError(f"target frames must have pred's frame shape (C, H, W) = {tuple(pred.shape[1:])}, "
                         f"got {tuple(target.shape[1:])}")
    return shared_target_factor(pred.shape[0], target.shape[0], group_size)


def raise_on_nan(name: str, values: torch.Tensor) -> None:
    """ValueError naming the frames whose result is NaN (they had a NaN pixel)."""
    bad = torch.isnan(values)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        shown = ", ".join(map(str, idx[:8])) + (", ..." if len(idx) > 8 else "")
        raise ValueError(f"{name}: {len(idx)} predicted frame(s) scored NaN (a NaN pixel in pred or in its "
                         f"target frame): indices {shown}")


def frame_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    group_size: int = 1,
    *,
    with_ssim: bool = True,
    window: int = 11,
    sigma: float = 1.5,
    check_nan: bool = True,
    impl: str = "auto",
) -> FrameErrors:
    """Squared error, absolute error and (optionally) SSIM of each predicted frame, in one pass.

    Args:
        pred: [B, C, H, W] uint8 or float frames (values in [0, 1]; floats are clamped).
        target: [B, C, H, W], or [B / group_size, C, H, W] with target p shared by predictions
            p*G .. p*G+G-1.
        group_size: G, the number of consecutive predictions that share a target frame.
        with_ssim: also compute SSIM (Gaussian ``window`` x ``sigma``, valid padding, piqa semantics).
        check_nan: raise a ValueError naming the frames whose result is NaN.
        impl: "auto" | "reference" | "cpp" | "triton" | "cuda".

    Returns:
        FrameErrors of [B] tensors (fp32; fp64 for fp64 frames); ``ssim`` is None unless asked for.

    >>> p, t = torch.zeros(2, 3, 16, 16), torch.ones(1, 3, 16, 16)
    >>> frame_metrics(p, t, group_size=2).sq_err
    tensor([1., 1.])
    """
    share = check_frames(pred, target, group_size)
    if with_ssim:
        if not isinstance(window, int) or window < 1 or window % 2 == 0:
            raise ValueError(f"window must be an odd positive int, got {window!r}")
        if min(pred.shape[2:]) < window:
            raise ValueError(f"pred frames are {pred.shape[2]}x{pred.shape[3]}, smaller than the SSIM window "
                             f"{window}: SSIM (valid padding) needs H >= {window} and W >= {window}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
    pred, target = _align_dtypes(pred, target)
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    backend = _dispatch.resolve(impl, pred.device)
    if backend == "reference":
        out = reference.frame_metrics(pred, target, share, window=window, sigma=sigma, dtype=acc, with_ssim=with_ssim)
        result = FrameErrors(out["mse"], out["mae"], out.get("ssim"))
    else:
        pred, target = pred.contiguous(), target.contiguous()
        win = _window(window, sigma, acc, str(pred.device))
        if backend == "triton":
            from rlvr_world.kernels import frame_metrics as kernel

            sq, ab, ss = kernel.frame_metrics(pred, target, win, share, with_ssim)
        else:
            sq, ab, ss = torch.ops.rlvr_world.frame_metrics(pred, target, win, share, with_ssim)
        result = FrameErrors(sq, ab, ss if with_ssim else None)
    if check_nan:
        raise_on_nan("frame_metrics", result.sq_err)
    return result
