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
    "philox4x32",
    "sample_tokens",
    "sample_uniforms",
    "sampling_mask",
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


# ----------------------------------------------------------------------------------------------------
# Sampling (DESIGN §5 "Sampling"; ops/sample_tokens.py documents the RNG and the decisions)

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # Philox-4x32 round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # Philox-4x32 key increments (Weyl sequence)
SAMPLE_STREAM = 0x736D706C  # counter word c3 of every sampler draw ("smpl"): a stream of its own
_U32 = 0xFFFFFFFF


def _mulhilo32(m: int, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product m * a, for uint32 values held in int64 (no overflow:
    a is split into 16-bit halves so every partial product stays below 2^49)."""
    p_lo = m * (a & 0xFFFF)  # < 2^48
    p_hi = m * (a >> 16)  # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _U32
    return hi, lo


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int], rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox-4x32-10 (Salmon et al., SC'11; Random123, curand, Triton's ``tl.philox``) on int64 tensors
    holding uint32 values. counter: 4 broadcastable tensors; key: two uint32 ints. Returns 4 tensors."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _U32 for c in counter)
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0, k1 = key[0] & _U32, key[1] & _U32
    for _ in range(rounds):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & _U32, (k1 + PHILOX_W1) & _U32
    return c0, c1, c2, c3


def sample_uniforms(seed: int, offset: torch.Tensor, vocab: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The uniforms of the sampler's Gumbel noise: [B, V] in (0, 1), u = (2 * (r >> 9) + 1) / 2^24 with
    r = word 0 of Philox-4x32-10(counter = (v, offset[b] low 32 bits, offset[b] high 32 bits, SAMPLE_STREAM),
    key = (seed low 32 bits, seed high 32 bits)). Exact in fp32 and fp64; the row index b never enters."""
    seed = int(seed) % 2**64
    off = offset.to(torch.int64).cpu()[:, None]  # [B, 1]
    v = torch.arange(vocab, dtype=torch.int64)[None, :]  # [1, V]
    r = philox4x32((v, off & _U32, (off >> 32) & _U32, SAMPLE_STREAM), (seed & _U32, seed >> 32))[0]  # [B, V]
    return ((r >> 9) * 2 + 1).to(dtype) * 2.0**-24


def _as_offsets(offset, batch: int, device) -> torch.Tensor:
    if isinstance(offset, torch.Tensor):
        return offset.to(device=device, dtype=torch.int64).reshape(batch)
    return torch.full((batch,), int(offset), dtype=torch.int64, device=device)


def sampling_mask(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The tokens top-k / top-p keep (DESIGN §5), as bool [B, V], by sorting (the brute-force definition).

    Let x = logits (in the accumulation dtype), e = exp(x * (1 / T) - max): top-k keeps x >= the k-th
    largest x (ties kept); top-p keeps token v when the top-k mass of the tokens *strictly* more probable
    than v is < p * (top-k mass), i.e. the smallest most-probable set reaching p, the crossing token and
    its ties kept. Both sets are thresholds on x, so the kept set is {x >= tau}. T = 0: the argmax only.
    This is the mask the trainer's recomputation applies (``logprobs_from_logits`` on masked logits).
    """
    x = logits.to(_acc_dtype(logits.dtype))  # [B, V]
    if temperature == 0:
        return torch.nn.functional.one_hot(x.argmax(-1), x.shape[1]).bool()
    keep = torch.ones_like(x, dtype=torch.bool)
    if 0 < top_k < x.shape[1]:
        keep = x >= x.topk(top_k, dim=-1).values[:, -1:]  # [B, V]
    if top_p < 1.0:
        inv_t = torch.tensor(1.0 / temperature, dtype=x.dtype)
        s = x * inv_t
        e = torch.where(keep, torch.exp(s - s.max(-1, keepdim=True).values), 0.0)  # [B, V]
        z = e.sum(-1, keepdim=True)  # [B, 1]
        xs, order = torch.where(keep, x, float("-inf")).sort(dim=-1, descending=True, stable=True)  # [B, V]
        es = e.gather(-1, order)
        before = es.cumsum(-1) - es  # mass of the tokens sorted before each one
        first = torch.searchsorted(-xs, -xs, right=False)  # first sorted position of each value's tie group
        above = before.gather(-1, first)  # mass strictly more probable
        keep_sorted = (above < top_p * z) & keep.gather(-1, order)
        keep = torch.zeros_like(keep).scatter(-1, order, keep_sorted)
    return keep


def sample_tokens(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
    offset: int | torch.Tensor = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-max sampling from softmax(logits / T) truncated by top-k then top-p (DESIGN §5).

    logits [B, V]; offset int or [B] integer (row b draws from the stream (seed, offset[b])). Returns
    (tokens [B] int64, logp [B] fp32 (fp64 for fp64 logits)), logp = log of the truncated, renormalised
    probability of the token. Token = argmax over kept v of x_v * (1 / T) + g_v, g = -log(-log(u)) with u
    from ``sample_uniforms`` (first index on ties). T = 0: greedy argmax (first index), logp = 0.
    """
    acc = _acc_dtype(logits.dtype)
    x = logits.to(acc)  # [B, V]
    B, V = x.shape
    if temperature == 0:
        return x.argmax(-1), torch.zeros(B, dtype=acc, device=x.device)
    keep = sampling_mask(logits, temperature, top_k, top_p)  # [B, V]
    s = x * torch.tensor(1.0 / temperature, dtype=acc)  # [B, V] tempered logits
    u = sample_uniforms(seed, _as_offsets(offset, B, "cpu"), V, acc).to(x.device)  # [B, V]
    score = torch.where(keep, s + -torch.log(-torch.log(u)), float("-inf"))  # [B, V]
    tokens = score.argmax(-1)  # [B]
    masked = torch.where(keep, s, float("-inf"))
    logp = torch.log_softmax(masked, -1).gather(-1, tokens[:, None])[:, 0]  # [B]
    return tokens, logp
