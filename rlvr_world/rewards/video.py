"""Frame metrics of video world models as rewards: MSE, MAE, PSNR, SSIM, and the repetition rate.

Every function scores B predicted frames against their true frames on the frames' device and returns
[B] (fp32; fp64 for fp64 frames). Decisions (DESIGN §4-5):

* Inputs are [B, C, H, W] frames in [0, 1]: float16/bfloat16/float32/float64, or uint8 read as x / 255.
  Float values outside [0, 1] are **clamped** (decoded frames are clamped before scoring); a NaN pixel
  raises a ValueError naming the frames. Frames smaller than the SSIM window raise a ValueError.
* ``target`` is [B, C, H, W], or [B / G, C, H, W] with each true frame shared by G = ``group_size``
  consecutive predictions (the G samples of one prompt); a shared frame is read once per group.
* PSNR and SSIM have piqa's semantics (PSNR = 10 log10(range^2 / (MSE + eps)); SSIM with a Gaussian
  window 11, sigma 1.5, k1 0.01, k2 0.03, valid padding, mean over the valid region and the channels).
* ``frame_metrics`` computes any subset of the four in one pass (``rlvr_world.ops.frame_metrics``): the
  squared and absolute errors come from the same reads as SSIM.
* ``repetition_rate`` works on tokens, not pixels: the share of consecutive predicted frames whose tokens
  are all identical (a stuck multi-step rollout), for penalties and evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlvr_world.ops.frame_metrics import frame_metrics as _frame_errors

__all__ = ["METRICS", "frame_metrics", "mae", "mse", "psnr", "repetition_rate", "ssim"]

METRICS = ("mse", "mae", "psnr", "ssim")
PSNR_EPS = 1e-8


def frame_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    group_size: int = 1,
    metrics: Sequence[str] = METRICS,
    *,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    impl: str = "auto",
) -> dict[str, torch.Tensor]:
    """Any subset of MSE, MAE, PSNR and SSIM in one pass: a dict metric -> [B].

    pred [B, C, H, W]; target [B, C, H, W] or [B / group_size, C, H, W].

    >>> pred, true = torch.full((4, 3, 16, 16), 0.5), torch.full((2, 3, 16, 16), 0.25)
    >>> out = frame_metrics(pred, true, group_size=2, metrics=("mse", "mae", "psnr"))
    >>> out["mae"], out["psnr"].round(decimals=2)
    (tensor([0.2500, 0.2500, 0.2500, 0.2500]), tensor([12.0400, 12.0400, 12.0400, 12.0400]))
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {tuple(metrics)!r}")
    errors = _frame_errors(pred, target, group_size, with_ssim="ssim" in metrics, window=window, sigma=sigma,
                           impl=impl)
    values = {
        "mse": lambda: errors.sq_err,
        "mae": lambda: errors.abs_err,
        "psnr": lambda: 10 * torch.log10(data_range**2 / (errors.sq_err + PSNR_EPS)),
        "ssim": lambda: errors.ssim,
    }
    return {m: values[m]() for m in metrics}


def mse(pred: torch.Tensor, target: torch.Tensor, group_size: int = 1, *, impl: str = "auto") -> torch.Tensor:
    """Mean squared error over C, H, W per frame: [B].

    >>> mse(torch.zeros(2, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5), group_size=2)
    tensor([0.2500, 0.2500])
    """
    return frame_metrics(pred, target, group_size, ("mse",), impl=impl)["mse"]


def mae(pred: torch.Tensor, target: torch.Tensor, group_size: int = 1, *, impl: str = "auto") -> torch.Tensor:
    """Mean absolute error over C, H, W per frame: [B].

    >>> mae(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.full((1, 3, 4, 4), 255, dtype=torch.uint8))
    tensor([1.])
    """
    return frame_metrics(pred, target, group_size, ("mae",), impl=impl)["mae"]


def psnr(pred: torch.Tensor, target: torch.Tensor, group_size: int = 1, data_range: float = 1.0, eps: float = 1e-8,
         *, impl: str = "auto") -> torch.Tensor:
    """10 log10(data_range^2 / (MSE + eps)) per frame, in dB: [B].

    >>> psnr(torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.1)).round(decimals=3)
    tensor([20.])
    """
    sq_err = frame_metrics(pred, target, group_size, ("mse",), impl=impl)["mse"]
    return 10 * torch.log10(data_range**2 / (sq_err + eps))


def ssim(pred: torch.Tensor, target: torch.Tensor, group_size: int = 1, window: int = 11, sigma: float = 1.5,
         *, impl: str = "auto") -> torch.Tensor:
    """Structural similarity per frame (piqa semantics, valid padding): [B], 1 for identical frames.

    >>> x = torch.rand(2, 3, 16, 16)
    >>> ssim(x, x).round(decimals=5)
    tensor([1., 1.])
    """
    return frame_metrics(pred, target, group_size, ("ssim",), window=window, sigma=sigma, impl=impl)["ssim"]


def repetition_rate(frame_tokens: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
    """Share of consecutive predicted frames whose tokens are identical, per sample: [B] fp32 in [0, 1].

    frame_tokens [B, T, L]: the L tokens of each of T predicted frames. ``previous`` [B, L] (optional): the
    tokens of the last context frame, so that a first prediction that copies it counts too. With P pairs
    of consecutive frames (T - 1, or T with ``previous``), the rate is (identical pairs) / P; 0 when P = 0.

    >>> t = torch.tensor([[[1, 2], [1, 2], [3, 4]]])  # frames 0 and 1 repeat, 1 and 2 do not
    >>> repetition_rate(t)
    tensor([0.5000])
    """
    if not isinstance(frame_tokens, torch.Tensor) or frame_tokens.dim() != 3:
        shape = tuple(frame_tokens.shape) if isinstance(frame_tokens, torch.Tensor) else type(frame_tokens).__name__
        raise ValueError(f"frame_tokens must be a [B, T, L] tensor, got {shape}")
    if previous is not None:
        b, _, length = frame_tokens.shape
        if not isinstance(previous, torch.Tensor) or tuple(previous.shape) != (b, length):
            got = tuple(previous.shape) if isinstance(previous, torch.Tensor) else type(previous).__name__
            raise ValueError(f"previous must have shape ({b}, {length}) (the last context frame's tokens), got {got}")
        frame_tokens = torch.cat([previous[:, None].to(frame_tokens.dtype), frame_tokens], dim=1)  # [B, T+1, L]
    pairs = frame_tokens.shape[1] - 1
    if pairs < 1:
        return torch.zeros(frame_tokens.shape[0], device=frame_tokens.device)
    same = (frame_tokens[:, 1:] == frame_tokens[:, :-1]).all(dim=-1)  # [B, P]
    return same.float().mean(dim=1)  # [B]
