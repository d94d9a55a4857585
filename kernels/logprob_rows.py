"""Row kernels over a [N, V] logits matrix: one program per row, a flat 1-D grid over tokens.

``row_logprobs``: an online log-sum-exp over the vocab in blocks (fp32, or fp64 for fp64 logits),
then the token's log-prob. ``row_logprobs_backward_``: rewrites the row in place with
``coef * ([onehot] - softmax) * inv_t`` in the logits dtype (the onehot term only ``WITH_TARGET``), so
the chunk that held the logits holds the gradient fed to the two backward GEMMs, and no [N, V] fp32
buffer ever exists.

The temperature enters as a pointer to an fp64 scalar (Triton passes Python floats as fp32, which
would cost fp64 inputs eight digits). bf16/fp16 logits are upcast right after the load (the CPU
interpreter computes bf16 arithmetic wrongly).
"""

import torch
import triton
import triton.language as tl

from . import interpreting


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_v(V: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps): big blocks for the interpreter (per-program cost dominates)."""
    if interpreting():
        return min(triton.next_power_of_2(V), 16384), 4
    block = min(triton.next_power_of_2(V), 4096)
    return block, 8 if block >= 2048 else 4


@triton.jit
def _row_logprobs_kernel(
    logits_ptr, stride_row, tokens_ptr, inv_t_ptr, logp_ptr, lse_ptr, V,
    BLOCK_V: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    inv_t = tl.load(inv_t_ptr).to(ACC)
    m = tl.full((), float("-inf"), ACC)
    s = tl.zeros((), ACC)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(ACC) * inv_t
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    tok = tl.load(tokens_ptr + row)
    x_tok = tl.load(row_ptr + tok).to(ACC) * inv_t
    tl.store(lse_ptr + row, lse)
    tl.store(logp_ptr + row, x_tok - lse)


@triton.jit
def _row_logprobs_backward_kernel(
    logits_ptr, stride_row, tokens_ptr, inv_t_ptr, lse_ptr, coef_ptr, V,
    WITH_TARGET: tl.constexpr, BLOCK_V: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    inv_t = tl.load(inv_t_ptr).to(ACC)
    g = tl.load(coef_ptr + row).to(ACC) * inv_t
    lse = tl.load(lse_ptr + row).to(ACC)
    tok = tl.load(tokens_ptr + row)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        in_row = offs < V
        x = tl.load(row_ptr + offs, mask=in_row, other=float("-inf")).to(ACC)
        gp = g * tl.exp(x * inv_t - lse)
        grad = tl.where(offs == tok, g - gp, -gp) if WITH_TARGET else -gp
        tl.store(row_ptr + offs, grad.to(logits_ptr.dtype.element_ty), mask=in_row)


def _inv_t(inv_temperature: float, device) -> torch.Tensor:
    return torch.tensor([inv_temperature], dtype=torch.float64, device=device)


def row_logprobs(logits: torch.Tensor, tokens: torch.Tensor, inv_temperature: float):
    """logits [N, V] (rows contiguous), tokens [N] int64 -> (logp [N], lse [N]) in the acc dtype."""
    N, V = logits.shape
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = torch.empty(N, dtype=acc, device=logits.device)
    lse = torch.empty(N, dtype=acc, device=logits.device)
    if N == 0:
        return logp, lse
    block, warps = _block_v(V)
    _row_logprobs_kernel[(N,)](
        logits, logits.stride(0), tokens, _inv_t(inv_temperature, logits.device), logp, lse, V,
        BLOCK_V=block, ACC=_acc(logits.dtype), num_warps=warps,
    )
    return logp, lse


def row_logprobs_backward_(logits, tokens, lse, coef, inv_temperature: float, with_target: bool) -> None:
    """In place: logits [N, V] <- coef * ([onehot(tokens)] - softmax(logits * inv_t)) * inv_t."""
    N, V = logits.shape
    if N == 0:
        return
    block, warps = _block_v(V)
    _row_logprobs_backward_kernel[(N,)](
        logits, logits.stride(0), tokens, _inv_t(inv_temperature, logits.device), lse, coef, V,
        WITH_TARGET=with_target, BLOCK_V=block, ACC=_acc(logits.dtype), num_warps=warps,
    )
