"""``token_logprobs``: log-prob of each token under an lm head, from hidden states, without [N, V] logits.

Layers: row kernels (kernels/, csrc/) -> ``_TokenLogprobs`` (autograd; chunked forward, chunked
recomputing backward) -> ``token_logprobs`` (checks + backend choice).
"""

from __future__ import annotations

import torch

from . import _chunked, _dispatch, reference
from ._checks import check_linear, check_positive, check_tokens
from ._rows import row_backend


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, inv_t, rows, chunk_size):
        logp, lse = _chunked.logprobs_forward(rows, hidden, weight, tokens, inv_t, chunk_size)
        ctx.save_for_backward(hidden, weight, tokens, lse)
        ctx.args = (inv_t, rows, chunk_size)
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp):
        hidden, weight, tokens, lse = ctx.saved_tensors
        inv_t, rows, chunk_size = ctx.args
        coef = grad_logp.to(lse.dtype).contiguous()  # [N]
        grads = _chunked.logprobs_backward(
            rows, hidden, weight, tokens, lse, coef, inv_t,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1], chunk_size,
        )
        return grads.hidden, grads.weight, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    impl: str = "auto",
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``log_softmax(hidden @ weight.T / temperature)[token]`` per token, differentiable.

    Args:
        hidden: [N, H] float16/bfloat16/float32/float64.
        weight: [V, H] lm-head weight, hidden's dtype and device.
        tokens: [N] integer in [0, V).
        temperature: > 0; logits are divided by it before the softmax.
        impl: "auto" | "reference" | "cpp" | "triton" | "cuda" (see ``rlvr_world.ops._dispatch``).
        chunk_size: rows per chunk of the fused path (default: a per-device memory budget).

    Returns:
        [N] fp32 log-probs (fp64 for fp64 inputs). Memory of the fused paths is O(chunk x V).

    >>> h, w = torch.randn(3, 8), torch.randn(5, 8)
    >>> token_logprobs(h, w, torch.tensor([0, 4, 2])).shape
    torch.Size([3])
    """
    check_linear(hidden, weight)
    check_tokens(tokens, hidden.shape[0], weight.shape[0])
    check_positive("temperature", temperature)
    backend = _dispatch.resolve(impl, hidden.device)
    if backend == "reference":
        return reference.token_logprobs(hidden, weight, tokens, temperature)
    tokens = tokens.to(torch.int64).contiguous()
    return _TokenLogprobs.apply(hidden, weight, tokens, 1.0 / temperature, row_backend(backend), chunk_size)

