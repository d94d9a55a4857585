"""GRPO policy loss (DESIGN §5): from hidden states + lm-head weight (fused, no [N, V] logits), or from
logits. Returns the loss and detached diagnostics (``GRPOStats``).

Layers: row kernels -> ``_FusedGRPOLoss`` / ``_GRPOLossFromLogits`` (autograd) -> ``grpo_loss`` /
``grpo_loss_from_logits`` (checks, backend choice). The fused path computes the gradient during the
forward sweep (d loss / d logp is known once logp is) and scales it by the upstream gradient in
backward, so one sweep costs 6NHV FLOPs and the logits are never recomputed. Without a gradient to
compute (``torch.no_grad`` or inputs that need none) it runs the 2NHV forward only.

Masked tokens (``mask`` False) contribute neither loss nor gradient; the loss is their sum divided by
``num_tokens`` (default ``max(mask.sum(), 1)``, so an all-masked batch gives loss 0 and zero gradients).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from . import _chunked, _dispatch, reference
from ._checks import check_linear, check_per_token, check_positive, check_same_device, check_tensor, check_tokens
from ._library import acc_dtype
from ._rows import row_backend

FLAG_LOW, FLAG_HIGH, FLAG_DUAL = 1, 2, 4


@dataclass(frozen=True)
class GRPOStats:
    """Detached 0-d fp32 diagnostics over the masked tokens (0 when no token is masked in).

    clip_frac_low / clip_frac_high: fraction whose clipped branch won with ratio < 1 - clip_low /
    ratio > 1 + clip_high; clip_frac_dual: fraction with A < 0 capped by the dual clip; kl_mean: mean k3
    KL to the reference policy (0 without one); ratio_mean / ratio_min / ratio_max of exp(logp - old).
    """

    clip_frac_low: torch.Tensor
    clip_frac_high: torch.Tensor
    clip_frac_dual: torch.Tensor
    kl_mean: torch.Tensor
    ratio_mean: torch.Tensor
    ratio_min: torch.Tensor
    ratio_max: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        """Python floats (synchronises with the device once)."""
        values = torch.stack([getattr(self, f.name) for f in fields(self)]).tolist()
        return {f.name: v for f, v in zip(fields(self), values)}


def _stats(ratio: torch.Tensor, kl: torch.Tensor, flags: torch.Tensor, mask: torch.Tensor) -> GRPOStats:
    count = mask.sum().clamp(min=1).float()
    any_token = mask.any()

    def mean(x):
        return torch.where(mask, x.float(), 0.0).sum() / count

    ratio = ratio.float()
    return GRPOStats(
        clip_frac_low=mean((flags & FLAG_LOW) != 0),
        clip_frac_high=mean((flags & FLAG_HIGH) != 0),
        clip_frac_dual=mean((flags & FLAG_DUAL) != 0),
        kl_mean=mean(kl),
        ratio_mean=mean(ratio),
        ratio_min=torch.where(any_token, torch.where(mask, ratio, float("inf")).min(), 0.0),
        ratio_max=torch.where(any_token, torch.where(mask, ratio, float("-inf")).max(), 0.0),
    )


@dataclass(frozen=True)
class _Config:
    clip_low: float
    clip_high: float
    clip_c: float
    kl_coef: float
    inv_t: float
    num_tokens: float

    def terms_args(self) -> tuple[float, ...]:
        return (self.clip_low, self.clip_high, self.clip_c, self.kl_coef, 1.0 / self.num_tokens)


def _masked_loss(token_loss: torch.Tensor, mask: torch.Tensor, num_tokens: float) -> torch.Tensor:
    return torch.where(mask, token_loss, 0.0).sum() / num_tokens


class _FusedGRPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, old_logp, advantages, mask, ref_logp, cfg, rows, chunk_size):
        per_token, grads = _chunked.grpo_forward_backward(
            rows, hidden, weight, tokens, old_logp, advantages, mask, ref_logp, cfg.terms_args(), cfg.inv_t,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1], chunk_size,
        )
        ctx.save_for_backward(grads.hidden, grads.weight)
        ctx.mark_non_differentiable(per_token.ratio, per_token.kl, per_token.flags)
        return _masked_loss(per_token.loss, mask, cfg.num_tokens), per_token.ratio, per_token.kl, per_token.flags

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *_):
        dh, dw = ctx.saved_tensors
        dh = dh * grad_loss.to(dh.dtype) if dh is not None else None
        dw = dw * grad_loss.to(dw.dtype) if dw is not None else None
        return dh, dw, *([None] * 8)


class _GRPOLossFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, tokens, old_logp, advantages, mask, ref_logp, cfg, rows):
        logp, lse = rows.row_logprobs(logits, tokens, cfg.inv_t)
        coef, loss, ratio, kl, flags = rows.grpo_token_terms(logp, old_logp, advantages, mask, ref_logp,
                                                              *cfg.terms_args())
        ctx.save_for_backward(logits, tokens, lse, coef)
        ctx.args = (cfg.inv_t, rows)
        ctx.mark_non_differentiable(ratio, kl, flags)
        return _masked_loss(loss, mask, cfg.num_tokens), ratio, kl, flags

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *_):
        logits, tokens, lse, coef = ctx.saved_tensors
        inv_t, rows = ctx.args
        grad = logits.detach().clone()  # [N, V], overwritten with the gradient
        rows.row_logprobs_backward_(grad, tokens, lse, (coef * grad_loss.to(coef.dtype)).contiguous(), inv_t, True)
        return grad, *([None] * 7)


def _prepare(n, device, acc, old_logp, advantages, mask, ref_logp, clip_low, clip_high, clip_c, kl_coef,
             temperature, num_tokens):
    """Check the per-token inputs and scalars; return them contiguous in the accumulation dtype + _Config."""
    check_per_token(n, old_logp=old_logp, advantages=advantages, mask=mask, ref_logp=ref_logp)
    check_same_device("hidden/logits", device, old_logp=old_logp, advantages=advantages, mask=mask,
                      ref_logp=ref_logp)
    check_positive("temperature", temperature)
    if not 0 <= clip_low < 1:
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low}")
    if not clip_high >= 0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    if not clip_c > 1:
        raise ValueError(f"clip_c (dual-clip bound) must be > 1, got {clip_c}")
    mask = mask if mask.dtype == torch.bool else mask != 0
    if num_tokens is None:
        count = max(int(mask.sum()), 1)
    else:
        count = float(num_tokens)
        check_positive("num_tokens", count)
    use_ref = ref_logp is not None and kl_coef != 0.0
    vec = [t.to(acc).contiguous() for t in (old_logp, advantages)]
    ref = ref_logp.to(acc).contiguous() if use_ref else None
    cfg = _Config(float(clip_low), float(clip_high), float(clip_c), float(kl_coef), 1.0 / temperature, float(count))
    return (*vec, mask.contiguous(), ref, cfg)


def _finish(outputs, mask: torch.Tensor) -> tuple[torch.Tensor, GRPOStats]:
    loss, ratio, kl, flags = outputs
    return loss, _stats(ratio, kl, flags, mask)


def _reference_result(loss, stats: dict) -> tuple[torch.Tensor, GRPOStats]:
    return loss, GRPOStats(**{k: v.detach().float() for k, v in stats.items()})


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
    num_tokens: float | torch.Tensor | None = None,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, GRPOStats]:
    """GRPO clipped policy-gradient loss (+ k3 KL) from hidden states, differentiable w.r.t. hidden, weight.

    Args:
        hidden: [N, H] response-token hidden states (float16/bfloat16/float32/float64).
        weight: [V, H] lm-head weight, hidden's dtype.
        tokens: [N] sampled tokens in [0, V).
        old_logp: [N] log-probs under the sampling policy.
        advantages: [N] per-token advantages (``rl.grpo_advantages`` broadcast over the response).
        mask: [N] bool (or 0/1) — tokens that count.
        ref_logp: [N] reference-policy log-probs, used when ``kl_coef != 0``.
        clip_low, clip_high: ratio clip range [1 - clip_low, 1 + clip_high].
        clip_c: dual-clip bound (> 1) for negative advantages.
        kl_coef: weight of the k3 KL penalty.
        temperature: sampling temperature the logits are divided by.
        num_tokens: loss denominator (default ``max(mask.sum(), 1)``); pass the global token count of the
            mini-batch so accumulation and data parallelism match one big batch.
        impl: "auto" | "reference" | "cpp" | "triton" | "cuda".
        chunk_size: rows per chunk of the fused paths.

    Returns:
        (loss: 0-d tensor in the accumulation dtype, stats: GRPOStats).
    """
    check_linear(hidden, weight)
    n = hidden.shape[0]
    check_tokens(tokens, n, weight.shape[0])
    acc = acc_dtype(hidden.dtype)
    old, adv, mask_b, ref, cfg = _prepare(n, hidden.device, acc, old_logp, advantages, mask, ref_logp,
                                          clip_low, clip_high, clip_c, kl_coef, temperature, num_tokens)
    backend = _dispatch.resolve(impl, hidden.device)
    if backend == "reference":
        return _reference_result(*reference.grpo_loss(
            hidden, weight, tokens, old, adv, mask_b, ref, clip_low=clip_low, clip_high=clip_high, clip_c=clip_c,
            kl_coef=kl_coef, temperature=temperature, num_tokens=cfg.num_tokens,
        ))
    tokens = tokens.to(torch.int64).contiguous()
    outputs = _FusedGRPOLoss.apply(hidden, weight, tokens, old, adv, mask_b, ref, cfg, row_backend(backend),
                                   chunk_size)
    return _finish(outputs, mask_b)


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
    num_tokens: float | torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, GRPOStats]:
    """GRPO loss from logits [N, V] (rows contiguous in V), differentiable w.r.t. the logits.

    Same arguments and result as ``grpo_loss`` with ``logits`` in place of (hidden, weight). The log-softmax
    runs in fp32 (fp64 for fp64 logits) without an fp32 copy of the logits; the gradient is written once,
    in the logits dtype.
    """
    check_tensor("logits", logits, ndim=2, floating=True)
    n, vocab = logits.shape
    if vocab and logits.stride(1) != 1:
        raise ValueError(f"logits must be contiguous in the vocab dim (stride 1), got strides {logits.stride()}")
    check_tokens(tokens, n, vocab)
    acc = acc_dtype(logits.dtype)
    old, adv, mask_b, ref, cfg = _prepare(n, logits.device, acc, old_logp, advantages, mask, ref_logp,
                                          clip_low, clip_high, clip_c, kl_coef, temperature, num_tokens)
    backend = _dispatch.resolve(impl, logits.device)
    if backend == "reference":
        return _reference_result(*reference.grpo_loss_from_logits(
            logits, tokens, old, adv, mask_b, ref, clip_low=clip_low, clip_high=clip_high, clip_c=clip_c,
            kl_coef=kl_coef, temperature=temperature, num_tokens=cfg.num_tokens,
        ))
    tokens = tokens.to(torch.int64).contiguous()
    outputs = _GRPOLossFromLogits.apply(logits, tokens, old, adv, mask_b, ref, cfg, row_backend(backend))
    return _finish(outputs, mask_b)
