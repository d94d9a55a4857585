"""Elementwise GRPO token math (DESIGN §5) and d loss / d logp, over a flat 1-D grid of tokens.

The Triton twin of csrc/grpo_math.h; ties follow ops/reference.py (the unclipped branch carries the
gradient, clamps pass it on their closed interval). Scalars come in an fp64 tensor so that fp64 runs
keep full precision: [clip_low, clip_high, clip_c, kl_coef, scale]. flags: 1 clipped low, 2 clipped
high, 4 dual-clipped.
"""

import torch
import triton
import triton.language as tl

from . import interpreting


@triton.jit
def _grpo_token_terms_kernel(
    logp_ptr, old_ptr, adv_ptr, mask_ptr, ref_ptr, params_ptr,
    coef_ptr, loss_ptr, ratio_ptr, kl_ptr, flags_ptr, N,
    HAS_REF: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < N
    lo = 1.0 - tl.load(params_ptr + 0).to(ACC)
    hi = 1.0 + tl.load(params_ptr + 1).to(ACC)
    clip_c = tl.load(params_ptr + 2).to(ACC)
    kl_coef = tl.load(params_ptr + 3).to(ACC)
    scale = tl.load(params_ptr + 4).to(ACC)

    logp = tl.load(logp_ptr + offs, mask=valid, other=0.0).to(ACC)
    old = tl.load(old_ptr + offs, mask=valid, other=0.0).to(ACC)
    adv = tl.load(adv_ptr + offs, mask=valid, other=0.0).to(ACC)
    keep = tl.load(mask_ptr + offs, mask=valid, other=0) != 0

    lr_raw = logp - old
    ratio = tl.exp(tl.minimum(tl.maximum(lr_raw, -20.0), 20.0))
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * tl.minimum(tl.maximum(ratio, lo), hi)
    clip_wins = pg_clipped > pg_unclipped
    pg = tl.where(clip_wins, pg_clipped, pg_unclipped)
    pg_dual = -adv * clip_c
    dual_wins = (adv < 0.0) & (pg_dual < pg)
    pg = tl.where(dual_wins, pg_dual, pg)
    in_clip = (ratio >= lo) & (ratio <= hi)
    dpg = tl.where(clip_wins, tl.where(in_clip, -adv, 0.0), -adv)
    dpg = tl.where(dual_wins, 0.0, dpg)
    grad = dpg * tl.where((lr_raw >= -20.0) & (lr_raw <= 20.0), ratio, 0.0)
    loss = pg
    kl = tl.zeros_like(logp)
    if HAS_REF:
        ref = tl.load(ref_ptr + offs, mask=valid, other=0.0).to(ACC)
        k_raw = ref - logp
        k = tl.minimum(tl.maximum(k_raw, -20.0), 20.0)
        ek = tl.exp(k)
        kl_raw = ek - k - 1.0
        kl = tl.minimum(tl.maximum(kl_raw, -10.0), 10.0)
        passes = (k_raw >= -20.0) & (k_raw <= 20.0) & (kl_raw >= -10.0) & (kl_raw <= 10.0)
        grad += kl_coef * tl.where(passes, 1.0 - ek, 0.0)
        loss += kl_coef * kl
    coef = tl.where(keep, grad * scale, 0.0)
    flags = tl.where(dual_wins, 4, tl.where(clip_wins & (ratio < lo), 1, tl.where(clip_wins & (ratio > hi), 2, 0)))

    tl.store(coef_ptr + offs, coef, mask=valid)
    tl.store(loss_ptr + offs, loss, mask=valid)
    tl.store(ratio_ptr + offs, ratio, mask=valid)
    tl.store(kl_ptr + offs, kl, mask=valid)
    tl.store(flags_ptr + offs, flags.to(tl.uint8), mask=valid)


def grpo_token_terms(logp, old_logp, advantages, mask, ref_logp, clip_low, clip_high, clip_c, kl_coef, scale):
    """All [N] contiguous (logp/old/adv/ref in fp32 or fp64, mask bool) -> (coef, loss, ratio, kl, flags)."""
    N = logp.numel()
    outs = [torch.empty_like(logp) for _ in range(4)]
    flags = torch.empty(N, dtype=torch.uint8, device=logp.device)
    if N == 0:
        return (*outs, flags)
    params = torch.tensor([clip_low, clip_high, clip_c, kl_coef, scale], dtype=torch.float64, device=logp.device)
    block = min(triton.next_power_of_2(N), 16384) if interpreting() else 1024
    _grpo_token_terms_kernel[(triton.cdiv(N, block),)](
        logp, old_logp, advantages, mask, ref_logp if ref_logp is not None else logp, params, *outs, flags, N,
        HAS_REF=ref_logp is not None, BLOCK=block,
        ACC=tl.float64 if logp.dtype == torch.float64 else tl.float32,
    )
    return (*outs, flags)
