"""Eager reference ops: the specification every optimized path is tested against.

Plain torch with autograd, runs anywhere (CPU first). Optimized code never imports this module; tests
and benchmarks do. The math follows DESIGN §5:

* log-probs are ``log_softmax(hidden @ weight.T / temperature)[token]`` with the log-sum-exp in at
  least fp32 (fp64 inputs stay fp64);
* the GRPO token loss is verl's ``compute_policy_loss`` (clip, dual clip) plus the ``low_var_kl`` (k3)
  penalty, summed over masked tokens and divided by ``num_tokens``.

Where two branches tie (``pg_clipped == pg``, ``pg_dual == pg``) the gradient flows through the
unclipped branch: ``torch.where`` with a strict comparison, so the optimized kernels can reproduce the
gradient exactly rather than the half-and-half split of ``torch.maximum``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "GRPOTokenTerms",
    "grpo_loss",
    "grpo_loss_from_logits",
    "grpo_token_terms",
    "logprobs_from_logits",
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
