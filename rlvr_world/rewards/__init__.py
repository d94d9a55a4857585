"""Verifiable rewards: pure functions in a plain dict, ``REWARDS`` (name -> function; DESIGN §3.13).

Video rewards score predicted frames against the true frames and return one reward per sample:

    fn(pred, target, *, group_size=1, reduce="mean", lpips=None, impl="auto") -> [B]

* ``pred`` is [B, C, H, W] (one predicted frame per sample) or [B, T, C, H, W] (multi-step: T frames
  per sample); ``target`` has the same layout with B rows, or B / G rows shared by G = ``group_size``
  consecutive samples (the G samples of one prompt; read once per group, never repeated).
* Multi-step rewards are the per-frame rewards reduced over T by ``reduce``: "mean" (the paper's),
  "last" (only the last frame is scored), or "discount" (weights 0.9^t normalised to sum 1, t = 0 the
  first predicted frame).
* A reward is a weighted sum of per-frame metrics (``weighted``): "mse", "mae", "psnr", "ssim" from one
  fused pass (``rewards.video.frame_metrics``) and "lpips" from ``rlvr_world.models.lpips.LPIPS``. The
  LPIPS network is passed as ``lpips=``; without it a VGG LPIPS is built once per device from the
  weights found offline (see ``LPIPS`` for where it looks) and reused.
* The paper's default is ``neg_mae_lpips`` = -(MAE + LPIPS).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from . import video
from .video import frame_metrics, repetition_rate

__all__ = ["REDUCTIONS", "REWARDS", "frame_metrics", "repetition_rate", "video", "video_reward", "weighted"]

REDUCTIONS = ("mean", "last", "discount")
DISCOUNT = 0.9
TERMS = (*video.METRICS, "lpips")
_LPIPS_BY_DEVICE: dict[str, torch.nn.Module] = {}


def _default_lpips(device: torch.device) -> torch.nn.Module:
    key = str(device)
    if key not in _LPIPS_BY_DEVICE:
        from rlvr_world.models.lpips import LPIPS

        _LPIPS_BY_DEVICE[key] = LPIPS(net="vgg").to(device)
    return _LPIPS_BY_DEVICE[key]


def _as_frames(pred: torch.Tensor, target: torch.Tensor, reduce: str):
    """Flatten [B, T, C, H, W] to frames ordered (t, b), so that G consecutive frames still share a target.

    Returns (pred [T*B, C, H, W], target [T*Bt, C, H, W], T).
    """
    if not isinstance(pred, torch.Tensor) or pred.dim() not in (4, 5):
        shape = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(f"pred must be [B, C, H, W] or [B, T, C, H, W] frames, got {shape}")
    if not isinstance(target, torch.Tensor) or target.dim() != pred.dim():
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must have pred's layout ({pred.dim()}-D), got {shape}")
    if pred.dim() == 4:
        return pred, target, 1
    if target.shape[1] != pred.shape[1]:
        raise ValueError(f"target must have pred's T = {pred.shape[1]} frames per sample, got {target.shape[1]}")
    if reduce == "last":
        return pred[:, -1], target[:, -1], 1
    steps = pred.shape[1]
    return pred.transpose(0, 1).flatten(0, 1), target.transpose(0, 1).flatten(0, 1), steps


def _reduce_steps(per_frame: torch.Tensor, steps: int, reduce: str) -> torch.Tensor:
    """per_frame [T*B] ordered (t, b) -> [B]."""
    per_step = per_frame.view(steps, -1).T  # [B, T]
    if reduce == "discount":
        w = DISCOUNT ** torch.arange(steps, dtype=per_step.dtype, device=per_step.device)  # [T]
        return per_step @ (w / w.sum())
    return per_step.mean(dim=1)


def video_reward(
    pred: torch.Tensor,
    target: torch.Tensor,
    terms: Mapping[str, float],
    *,
    group_size: int = 1,
    reduce: str = "mean",
    lpips: torch.nn.Module | None = None,
    impl: str = "auto",
    metrics: tuple[str, ...] = (),
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum over ``terms`` of coefficient * metric, per sample: [B] (reduced over T for [B, T, ...] frames).

    With ``metrics`` (names in ``TERMS``), returns ``(reward [B], {name: [B]})``: those metrics per sample,
    reduced over T like the reward, from the same pass (a trainer logs them without computing twice).

    >>> pred, true = torch.zeros(4, 2, 3, 16, 16), torch.full((2, 2, 3, 16, 16), 0.5)  # B 4, T 2, G 2
    >>> video_reward(pred, true, {"mae": -1.0, "mse": -2.0}, group_size=2)
    tensor([-1., -1., -1., -1.])
    """
    if not terms or any(name not in TERMS for name in terms):
        raise ValueError(f"terms must map names in {TERMS} to coefficients, got {dict(terms)!r}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if any(name not in TERMS for name in metrics):
        raise ValueError(f"metrics must be names in {TERMS}, got {tuple(metrics)!r}")
    frames, true, steps = _as_frames(pred, target, reduce)
    wanted = list(dict.fromkeys([*terms, *metrics]))
    pixel = [name for name in wanted if name != "lpips"]
    values = frame_metrics(frames, true, group_size, pixel, impl=impl) if pixel else {}
    if "lpips" in wanted:
        net = lpips if lpips is not None else _default_lpips(frames.device)
        values["lpips"] = net(frames, true, group_size=group_size)
    total = sum(coef * values[name] for name, coef in terms.items())  # [T*B]
    reward = _reduce_steps(total, steps, reduce)
    if not metrics:
        return reward
    return reward, {name: _reduce_steps(values[name], steps, reduce) for name in metrics}


def weighted(**terms: float) -> Callable[..., torch.Tensor]:
    """A reward function sum(coef * metric) over the given metrics, e.g. ``weighted(mae=-1.0, lpips=-1.0)``.

    >>> reward = weighted(psnr=0.01, ssim=1.0)
    >>> x = torch.rand(2, 3, 16, 16)
    >>> reward(x, x.clone()).round(decimals=3)  # identical frames: PSNR 80 dB (the 1e-8 floor), SSIM 1
    tensor([1.8000, 1.8000])
    """
    fixed = dict(terms)
    if not fixed or any(name not in TERMS for name in fixed):
        raise ValueError(f"weighted() takes metric names in {TERMS} as keywords, got {tuple(terms)}")

    def reward(pred, target, *, group_size=1, reduce="mean", lpips=None, impl="auto"):
        return video_reward(pred, target, fixed, group_size=group_size, reduce=reduce, lpips=lpips,
                            impl=impl)

    reward.__name__ = "weighted_" + "_".join(fixed)
    reward.__doc__ = f"Video reward sum(coef * metric) with {fixed}; see rlvr_world.rewards."
    reward.terms = fixed
    return reward


def neg_mae_lpips(pred, target, *, group_size=1, reduce="mean", lpips=None, impl="auto"):
    """-(MAE + LPIPS) per sample, the paper's default video reward.

    >>> from rlvr_world.models.lpips import LPIPS
    >>> net = LPIPS(net="alex", random_backbone=True)
    >>> x = torch.rand(2, 3, 32, 32)
    >>> neg_mae_lpips(x, x.clone(), lpips=net).abs().max() < 1e-6
    tensor(True)
    """
    return video_reward(pred, target, {"mae": -1.0, "lpips": -1.0}, group_size=group_size, reduce=reduce,
                        lpips=lpips, impl=impl)


def neg_lpips(pred, target, *, group_size=1, reduce="mean", lpips=None, impl="auto"):
    """-LPIPS per sample.

    >>> from rlvr_world.models.lpips import LPIPS
    >>> net = LPIPS(net="alex", random_backbone=True)
    >>> neg_lpips(torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32), lpips=net) < 0
    tensor([True])
    """
    return video_reward(pred, target, {"lpips": -1.0}, group_size=group_size, reduce=reduce, lpips=lpips, impl=impl)


def neg_mse(pred, target, *, group_size=1, reduce="mean", lpips=None, impl="auto"):
    """-MSE per sample.

    >>> neg_mse(torch.zeros(2, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5), group_size=2)
    tensor([-0.2500, -0.2500])
    """
    return video_reward(pred, target, {"mse": -1.0}, group_size=group_size, reduce=reduce, impl=impl)


def neg_mae(pred, target, *, group_size=1, reduce="mean", lpips=None, impl="auto"):
    """-MAE per sample; with [B, T, ...] frames and reduce="discount", later frames weigh less.

    >>> pred = torch.zeros(1, 2, 1, 4, 4)
    >>> true = torch.stack([torch.full((1, 4, 4), 1.0), torch.zeros(1, 4, 4)])[None]  # frame 0 wrong, 1 right
    >>> neg_mae(pred, true, reduce="discount")  # -1 * 1 / (1 + 0.9)
    tensor([-0.5263])
    """
    return video_reward(pred, target, {"mae": -1.0}, group_size=group_size, reduce=reduce, impl=impl)


def psnr(pred, target, *, group_size=1, reduce="mean", lpips=None, impl="auto"):
    """PSNR in dB per sample (data range 1).

    >>> psnr(torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.1)).round(decimals=3)
    tensor([20.])
    """
    return video_reward(pred, target, {"psnr": 1.0}, group_size=group_size, reduce=reduce, impl=impl)


def ssim(pred, target, *, group_size=1, reduce="mean", lpips=None, impl="auto"):
    """SSIM per sample (Gaussian 11, sigma 1.5, valid padding).

    >>> x = torch.rand(1, 3, 16, 16)
    >>> ssim(x, x.clone()).round(decimals=5)
    tensor([1.])
    """
    return video_reward(pred, target, {"ssim": 1.0}, group_size=group_size, reduce=reduce, impl=impl)


# the metric weights of each named reward, for callers that want the reward and its metrics in one pass
# (``video_reward(pred, target, fn.terms, metrics=...)``)
neg_mae_lpips.terms = {"mae": -1.0, "lpips": -1.0}
neg_lpips.terms = {"lpips": -1.0}
neg_mse.terms = {"mse": -1.0}
neg_mae.terms = {"mae": -1.0}
psnr.terms = {"psnr": 1.0}
ssim.terms = {"ssim": 1.0}

REWARDS: dict[str, Callable[..., torch.Tensor]] = {
    "neg_mae_lpips": neg_mae_lpips,
    "neg_lpips": neg_lpips,
    "neg_mse": neg_mse,
    "neg_mae": neg_mae,
    "psnr": psnr,
    "ssim": ssim,
}
