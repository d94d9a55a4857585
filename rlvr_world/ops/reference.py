"""Eager reference ops: the specification every optimized path is tested against.

Plain torch with autograd, runs anywhere (CPU first). Optimized code never imports this module; tests
and benchmarks do. The math follows DESIGN §5:

* log-probs are ``log_softmax(hidden @ weight.T / temperature)[token]`` with the log-sum-exp in at
  least fp32 (fp64 inputs stay fp64);
* the GRPO token loss is verl's ``compute_policy_loss`` (clip, dual clip) plus the ``low_var_kl`` (k3)
  penalty, summed over masked tokens and divided by ``num_tokens``.

* frame metrics (MSE, MAE, SSIM) follow piqa: frames in [0, 1] (uint8 / 255; floats clamped to [0, 1]
  as decoded frames are, NaN kept), a normalised Gaussian window, valid padding, the SSIM map averaged
  over the valid region and the channels;
* the LPIPS head unit-normalises both feature maps over channels (eps 1e-10, the ``lpips`` package's),
  weights the squared difference per channel and averages it over space.

Where two branches tie (``pg_clipped == pg``, ``pg_dual == pg``) the gradient flows through the
unclipped branch: ``torch.where`` with a strict comparison, so the optimized kernels can reproduce the
gradient exactly rather than the half-and-half split of ``torch.maximum``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "GRPOTokenTerms",
    "frame_metrics",
    "gaussian_window",
    "grpo_loss",
    "grpo_loss_from_logits",
    "grpo_token_terms",
    "logprobs_from_logits",
    "lpips_head",
    "masked_stats",
    "token_logprobs",
]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / temperature)[token] per row.

    logits: [N, V] any float dtype; tokens: [N] int64 in [0, V). Returns [N] fp32 (fp64 for fp64 logits).
    """
    scaled = logits.to(_acc_dtype(logits.dtype)) / temperature  # [N, V]
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None].long())[:, 0]  # [N]


def token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log-prob of ``tokens`` under the lm head: hidden [N, H], weight [V, H], tokens [N] -> [N]."""
    logits = hidden @ weight.T  # [N, V] in the input dtype, as a model's lm_head would produce
    return logprobs_from_logits(logits, tokens, temperature)


class GRPOTokenTerms(NamedTuple):
    """Per-token pieces of the GRPO loss, all [N] in the log-prob dtype."""

    loss: torch.Tensor  # pg + kl_coef * kl (unmasked)
    ratio: torch.Tensor  # exp(clamp(logp - old_logp, -20, 20))
    kl: torch.Tensor  # k3 estimate, zeros without a reference policy
    clipped_low: torch.Tensor  # bool: the clipped branch won with ratio < 1 - clip_low
    clipped_high: torch.Tensor  # bool: the clipped branch won with ratio > 1 + clip_high
    clipped_dual: torch.Tensor  # bool: A < 0 and the dual clip -A * clip_c won


def grpo_token_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float = 3.0,
    kl_coef: float = 0.0,
) -> GRPOTokenTerms:
    """GRPO per-token loss terms (differentiable w.r.t. ``logp``). All inputs [N]."""
    adv = advantages.to(logp.dtype)  # [N]
    log_ratio = torch.clamp(logp - old_logp.to(logp.dtype), -20.0, 20.0)  # [N]
    ratio = torch.exp(log_ratio)  # [N]
    pg_unclipped = -adv * ratio  # [N]
    pg_clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)  # [N]
    clip_wins = pg_clipped > pg_unclipped  # [N] bool
    pg = torch.where(clip_wins, pg_clipped, pg_unclipped)  # [N]
    pg_dual = -adv * clip_c  # [N]
    dual_wins = (adv < 0) & (pg_dual < pg)  # [N] bool
    pg = torch.where(dual_wins, pg_dual, pg)  # [N]
    if ref_logp is not None and kl_coef != 0.0:
        k = torch.clamp(ref_logp.to(logp.dtype) - logp, -20.0, 20.0)  # [N]
        kl = torch.clamp(torch.exp(k) - k - 1.0, -10.0, 10.0)  # [N]
        loss = pg + kl_coef * kl
    else:
        kl = torch.zeros_like(logp)
        loss = pg
    return GRPOTokenTerms(
        loss=loss,
        ratio=ratio,
        kl=kl,
        clipped_low=clip_wins & (ratio < 1.0 - clip_low) & ~dual_wins,
        clipped_high=clip_wins & (ratio > 1.0 + clip_high) & ~dual_wins,
        clipped_dual=dual_wins,
    )


def masked_stats(terms: GRPOTokenTerms, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached diagnostics over masked tokens: clip fractions, KL mean, ratio mean/min/max.

    All are 0-d fp32 tensors; with no masked token every statistic is 0.
    """
    mask = mask.bool()  # [N]
    count = mask.sum().clamp(min=1).float()

    def mean(x: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, x.detach().float(), 0.0).sum() / count

    ratio = terms.ratio.detach().float()
    any_token = mask.any()
    return {
        "clip_frac_low": mean(terms.clipped_low),
        "clip_frac_high": mean(terms.clipped_high),
        "clip_frac_dual": mean(terms.clipped_dual),
        "kl_mean": mean(terms.kl),
        "ratio_mean": mean(ratio),
        "ratio_min": torch.where(any_token, torch.where(mask, ratio, float("inf")).min(), 0.0),
        "ratio_max": torch.where(any_token, torch.where(mask, ratio, float("-inf")).max(), 0.0),
    }


def masked_token_sum(per_token: torch.Tensor, mask: torch.Tensor, num_tokens) -> torch.Tensor:
    """sum(per_token over mask) / num_tokens; num_tokens None -> max(mask.sum(), 1), so no token gives 0."""
    mask = mask.bool()
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1)
    denom = torch.as_tensor(num_tokens, dtype=per_token.dtype, device=per_token.device)
    return torch.where(mask, per_token, 0.0).sum() / denom


def _grpo_from_logp(logp, old_logp, advantages, mask, ref_logp, clip_low, clip_high, clip_c, kl_coef, num_tokens):
    terms = grpo_token_terms(
        logp, old_logp, advantages, ref_logp, clip_low=clip_low, clip_high=clip_high, clip_c=clip_c, kl_coef=kl_coef
    )
    return masked_token_sum(terms.loss, mask, num_tokens), masked_stats(terms, mask)


def grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float = 3.0,
    kl_coef: float = 0.0,
    temperature: float = 1.0,
    num_tokens=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reference GRPO loss from hidden states [N, H] and lm_head weight [V, H]; returns (loss, stats dict)."""
    logp = token_logprobs(hidden, weight, tokens, temperature)  # [N]
    return _grpo_from_logp(logp, old_logp, advantages, mask, ref_logp, clip_low, clip_high, clip_c, kl_coef, num_tokens)


def grpo_loss_from_logits(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float = 3.0,
    kl_coef: float = 0.0,
    temperature: float = 1.0,
    num_tokens=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reference GRPO loss from logits [N, V]; returns (loss, stats dict)."""
    logp = logprobs_from_logits(logits, tokens, temperature)  # [N]
    return _grpo_from_logp(logp, old_logp, advantages, mask, ref_logp, clip_low, clip_high, clip_c, kl_coef, num_tokens)


SSIM_K1, SSIM_K2 = 0.01, 0.03


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """piqa's 1-D Gaussian: exp(-x^2 / (2 sigma^2)) at x = i - (size - 1) / 2, normalised to sum 1. [size]"""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    window = torch.exp(-(x**2) / (2 * sigma**2))
    return (window / window.sum()).to(dtype)


def frames_to_unit(x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Frames as values in [0, 1]: uint8 / 255; floats clamped to [0, 1] (NaN stays NaN)."""
    if x.dtype == torch.uint8:
        return x.to(dtype) / 255.0
    x = x.to(dtype)
    return torch.where(x < 0, 0.0, torch.where(x > 1, 1.0, x))


def _blur_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter with valid padding: [N, C, H, W] -> [N, C, H-K+1, W-K+1]."""
    c, k = x.shape[1], window.numel()
    x = torch.nn.functional.conv2d(x, window.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return torch.nn.functional.conv2d(x, window.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """SSIM map of frames in [0, 1] (piqa semantics, valid padding): [N, C, H, W] -> [N, C, H-K+1, W-K+1]."""
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_x, mu_y = _blur_valid(x, window), _blur_valid(y, window)
    sigma_xx = _blur_valid(x * x, window) - mu_x * mu_x
    sigma_yy = _blur_valid(y * y, window) - mu_y * mu_y
    sigma_xy = _blur_valid(x * y, window) - mu_x * mu_y
    cs = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    return (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1) * cs


def frame_metrics(
    pred: torch.Tensor, target: torch.Tensor, group_size: int = 1, *, window: int = 11, sigma: float = 1.5,
    dtype: torch.dtype = torch.float64, with_ssim: bool = True,
) -> dict[str, torch.Tensor]:
    """MSE, MAE, PSNR and SSIM of each predicted frame against its true frame, computed in ``dtype``.

    pred [B, C, H, W]; target [B, C, H, W], or [B / G, C, H, W] shared by G = ``group_size`` consecutive
    predictions. Returns a dict of [B] tensors: mse, mae (means over C, H, W), psnr = 10 log10(1 /
    (mse + 1e-8)), ssim (Gaussian ``window`` x ``sigma``, valid padding, mean over the valid region and C;
    left out when ``with_ssim`` is False).
    """
    x = frames_to_unit(pred, dtype)  # [B, C, H, W]
    y = frames_to_unit(target, dtype).repeat_interleave(pred.shape[0] // target.shape[0], dim=0)  # [B, C, H, W]
    mse = (x - y).square().flatten(1).mean(1)  # [B]
    mae = (x - y).abs().flatten(1).mean(1)  # [B]
    psnr = 10 * torch.log10(1.0 / (mse + 1e-8))  # [B]
    out = {"mse": mse, "mae": mae, "psnr": psnr}
    if with_ssim:
        out["ssim"] = ssim_map(x, y, gaussian_window(window, sigma, dtype)).flatten(1).mean(1)  # [B]
    return out


LPIPS_EPS = 1e-10


def lpips_head(feat_pred: torch.Tensor, feat_target: torch.Tensor, weight: torch.Tensor,
               group_size: int = 1) -> torch.Tensor:
    """One LPIPS stage: mean over space of sum_c w_c (x_c / (|x| + eps) - y_c / (|y| + eps))^2, in fp32.

    feat_pred [B, C, H, W], feat_target [B / G, C, H, W] (target b // G for prediction b), weight [C]
    (the stage's 1x1 linear head). Returns [B] fp32 (fp64 for fp64 features).
    """
    acc = _acc_dtype(feat_pred.dtype)
    x, y = feat_pred.to(acc), feat_target.to(acc).repeat_interleave(group_size, dim=0)  # [B, C, H, W]
    x = x / (x.square().sum(1, keepdim=True).sqrt() + LPIPS_EPS)
    y = y / (y.square().sum(1, keepdim=True).sqrt() + LPIPS_EPS)
    d = ((x - y).square() * weight.to(acc).view(1, -1, 1, 1)).sum(1)  # [B, H, W]
    return d.flatten(1).mean(1)  # [B]
