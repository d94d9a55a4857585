"""Chunked fused linear log-prob: hidden [N, H] x weight [V, H] -> per-token log-probs and gradients
without an [N, V] logits tensor.

Tokens are processed in chunks of C rows. Per chunk: one GEMM writes the chunk's logits [C, V] in the
compute dtype, a row kernel reduces them to (logp, lse) with an fp32 online log-sum-exp, and, when a
gradient is wanted, a second row kernel rewrites the same buffer in place with the softmax part of
d loss / d logits, which two more GEMMs turn into dHidden[C] and an update of dWeight; the target-token
part (one term per row) is added beside the GEMMs, exactly. Memory: O(C x V) plus dWeight; FLOPs:
2NHV forward, 6NHV for forward + gradients in one sweep (the GRPO loss computes its gradient during the
forward, as Liger's fused linear losses do, because d loss / d logp is known as soon as logp is).

The GEMMs are torch.mm (cuBLAS / MKL): at these shapes they run at the tensor-core roofline, which a
hand-written tile loop does not beat; the row kernels are where the fusion happens. Compute dtype: the
input dtype on CUDA; fp32 on the CPU (CPUs without native bf16 FMA run bf16 GEMMs 10-50x slower), fp64
for fp64. dWeight accumulates in fp32 for half-precision inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._library import acc_dtype

CUDA_CHUNK_BYTES = 1 << 29  # 512 MiB of logits per chunk on a GPU: big GEMMs, bounded memory
CPU_CHUNK_BYTES = 1 << 24  # 16 MiB on a CPU: ~1k rows at V 4633, where MKL GEMMs reach full speed (measured)


def compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    if dtype == torch.float64:
        return dtype
    return dtype if device.type == "cuda" else torch.float32


def chunk_rows(n: int, vocab: int, dtype: torch.dtype, device: torch.device, chunk_size: int | None = None) -> int:
    """Rows per chunk: at most ``chunk_size`` if given, else as many as fit the device's byte budget;
    then evened out over the chunks, so no small tail chunk runs a skinny (slow, less accurate) GEMM."""
    if chunk_size is not None:
        rows = max(1, int(chunk_size))
    else:
        budget = CUDA_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES
        rows = budget // (vocab * torch.empty((), dtype=dtype).element_size())
        rows = max(128, rows // 128 * 128) if device.type == "cuda" else max(16, rows)
    if n <= rows:
        return max(1, n)
    num_chunks = -(-n // rows)
    return -(-n // num_chunks)


def _grad_weight_buffer(weight: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    acc = torch.float32 if cdt in (torch.float16, torch.bfloat16) else cdt
    return torch.zeros(weight.shape, dtype=acc, device=weight.device)


def _add_grad_weight(dw: torch.Tensor, dlogits: torch.Tensor, h: torch.Tensor) -> None:
    """dw [V, H] += dlogits[C, V].T @ h [C, H], accumulating in dw's dtype (fp32 dw with half-precision
    dlogits happens only on CUDA, where the compute dtype stays half: see ``compute_dtype``)."""
    if dw.dtype == dlogits.dtype:
        dw.addmm_(dlogits.t(), h)
    else:
        dw.copy_(torch.addmm(dw, dlogits.t(), h, out_dtype=dw.dtype))


class Chunks:
    """Iterates a [N, H] hidden matrix in chunks, producing each chunk's logits in the compute dtype."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, chunk_size: int | None):
        self.cdt = compute_dtype(hidden.dtype, hidden.device)
        self.weight = weight.to(self.cdt)  # [V, H]; a view when the dtype already matches
        self.n, self.vocab = hidden.shape[0], weight.shape[0]
        self.hidden = hidden
        self.rows = chunk_rows(self.n, self.vocab, self.cdt, hidden.device, chunk_size)

    def __iter__(self):
        for start in range(0, self.n, self.rows):
            end = min(self.n, start + self.rows)
            h = self.hidden[start:end].to(self.cdt)  # [C, H]
            yield start, end, h, torch.mm(h, self.weight.t())  # [C, V]


def logprobs_forward(rows, hidden, weight, tokens, inv_t: float, chunk_size=None):
    """-> (logp [N], lse [N]) in the accumulation dtype."""
    acc = acc_dtype(hidden.dtype)
    logp = hidden.new_empty(hidden.shape[0], dtype=acc)
    lse = torch.empty_like(logp)
    for s, e, _, logits in Chunks(hidden, weight, chunk_size):
        lp, ls = rows.row_logprobs(logits, tokens[s:e], inv_t)
        logp[s:e] = lp
        lse[s:e] = ls
    return logp, lse


class Grads(NamedTuple):
    hidden: torch.Tensor | None  # [N, H] in hidden's dtype
    weight: torch.Tensor | None  # [V, H] in weight's dtype


def _backward_chunk(chunks: Chunks, rows, s, e, h, logits, tokens, lse, coef, inv_t, dh, dw) -> None:
    """dlogits = g * (onehot - p), g = coef / T. The GEMMs see only -g * p; the onehot part (g W[token] for
    dHidden, g h scattered to dWeight's token rows) is added exactly beside them: inside the GEMM that one
    large term per row would set the rounding of the whole sum."""
    tok = tokens[s:e]
    rows.row_logprobs_backward_(logits, tok, lse, coef, inv_t, False)  # logits -> -g * p, in place
    g = (coef * inv_t)[:, None]  # [C, 1] accumulation dtype
    if dh is not None:
        target = chunks.weight.index_select(0, tok).to(g.dtype)  # [C, H]
        dh[s:e] = torch.mm(logits, chunks.weight).to(g.dtype).add_(target.mul_(g))  # [C, H]
    if dw is not None:
        _add_grad_weight(dw, logits, h)
        dw.index_add_(0, tok, (h.to(g.dtype) * g).to(dw.dtype))


def _grad_buffers(chunks: Chunks, hidden, weight, need_dh: bool, need_dw: bool):
    dh = torch.empty_like(hidden) if need_dh else None
    dw = _grad_weight_buffer(weight, chunks.cdt) if need_dw else None
    return dh, dw


def _grads(dh, dw, weight) -> Grads:
    return Grads(dh, dw.to(weight.dtype) if dw is not None else None)


def logprobs_backward(rows, hidden, weight, tokens, lse, coef, inv_t, need_dh, need_dw, chunk_size=None) -> Grads:
    """Gradients of sum(coef * logp) w.r.t. hidden and weight (recomputing each chunk's logits)."""
    chunks = Chunks(hidden, weight, chunk_size)
    dh, dw = _grad_buffers(chunks, hidden, weight, need_dh, need_dw)
    for s, e, h, logits in chunks:
        _backward_chunk(chunks, rows, s, e, h, logits, tokens, lse[s:e], coef[s:e], inv_t, dh, dw)
    return _grads(dh, dw, weight)


class GRPOTokens(NamedTuple):
    """Per-token outputs of the fused GRPO pass, all [N] (flags uint8)."""

    loss: torch.Tensor
    ratio: torch.Tensor
    kl: torch.Tensor
    flags: torch.Tensor


def grpo_forward_backward(rows, hidden, weight, tokens, old_logp, advantages, mask, ref_logp, terms_args,
                          inv_t, need_dh, need_dw, chunk_size=None) -> tuple[GRPOTokens, Grads]:
    """GRPO per-token outputs and the gradients of the loss (upstream gradient 1) in one sweep.

    ``terms_args`` = (clip_low, clip_high, clip_c, kl_coef, scale) of ``grpo_token_terms``. Tokens outside
    ``mask`` carry neither loss nor gradient, so they are dropped before the sweep (one gather of their
    hidden rows saves their 6H·V FLOPs each: padding is typically a third of a rollout batch); their
    per-token outputs are 0 and their dHidden rows zero.
    """
    keep = mask.nonzero().squeeze(1)  # [K]
    if keep.numel() == mask.numel():
        return _grpo_sweep(rows, hidden, weight, tokens, old_logp, advantages, mask, ref_logp, terms_args,
                           inv_t, need_dh, need_dw, chunk_size)

    def pick(x):
        return None if x is None else x.index_select(0, keep)

    per_token, grads = _grpo_sweep(rows, pick(hidden), weight, pick(tokens), pick(old_logp), pick(advantages),
                                   pick(mask), pick(ref_logp), terms_args, inv_t, need_dh, need_dw, chunk_size)
    n = mask.numel()
    full = GRPOTokens(*(x.new_zeros(n).index_copy_(0, keep, x) for x in per_token))
    dh = None if grads.hidden is None else torch.zeros_like(hidden).index_copy_(0, keep, grads.hidden)
    return full, Grads(dh, grads.weight)


def _grpo_sweep(rows, hidden, weight, tokens, old_logp, advantages, mask, ref_logp, terms_args, inv_t, need_dh,
                need_dw, chunk_size) -> tuple[GRPOTokens, Grads]:
    """Per chunk: logits -> logp -> GRPO terms -> dlogits (in place) -> dHidden, dWeight."""
    if not (need_dh or need_dw):
        logp, _ = logprobs_forward(rows, hidden, weight, tokens, inv_t, chunk_size)
        _, loss, ratio, kl, flags = rows.grpo_token_terms(logp, old_logp, advantages, mask, ref_logp, *terms_args)
        return GRPOTokens(loss, ratio, kl, flags), Grads(None, None)
    chunks = Chunks(hidden, weight, chunk_size)
    dh, dw = _grad_buffers(chunks, hidden, weight, need_dh, need_dw)
    acc = acc_dtype(hidden.dtype)
    out = GRPOTokens(*(hidden.new_empty(hidden.shape[0], dtype=acc) for _ in range(3)),
                     hidden.new_empty(hidden.shape[0], dtype=torch.uint8))
    for s, e, h, logits in chunks:
        lp, lse = rows.row_logprobs(logits, tokens[s:e], inv_t)
        ref = ref_logp[s:e] if ref_logp is not None else None
        coef, loss, ratio, kl, flags = rows.grpo_token_terms(
            lp, old_logp[s:e], advantages[s:e], mask[s:e], ref, *terms_args
        )
        for buf, val in zip(out, (loss, ratio, kl, flags)):
            buf[s:e] = val
        _backward_chunk(chunks, rows, s, e, h, logits, tokens, lse, coef, inv_t, dh, dw)
    return out, _grads(dh, dw, weight)
