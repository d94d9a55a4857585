"""Fused sampler: temperature, top-k, top-p and Gumbel-max in one program per row of [B, V] logits.

The semantics and the RNG are those of ``rlvr_world.ops.sample_tokens`` (Philox-4x32-10 keyed on
(seed, offset[b], token)); this file only computes them. Two launch shapes:

* **on chip** (V <= ``MAX_ON_CHIP`` = 16,384): the row is loaded once into registers; every pass below
  is a reduction over that block.
* **chunked** (larger V): the same passes, each a loop over blocks of the row (re-read from L2).

Top-k and top-p need no sort: both kept sets are thresholds on the logit x, found by **bisection on
the bits of x**. An fp32 (fp64) logit maps to an int32 (int64) key with the same order (negative
floats have their magnitude bits flipped; -0 is taken as +0), so

* tau_k = the largest key T with #{key >= T} >= k: at most 33 (65 for fp64) count passes, exact;
* tau_p = the smallest key T with mass{key > T, key >= tau_k} < p * Z_k: as many masked-sum passes,
  and exactly the C++ sort-and-scan's decision, up to the summation order of the masses (fp32 sums
  here, fp64 there; a difference only when the mass lands within ~1e-6 of p * Z_k).

Then Z = mass{key >= tau}, the token is the argmax of x * inv_t - log(-log(u)) over kept tokens (first
index on ties) and logp = x_tok * inv_t - max - log(Z). bf16/fp16 logits are upcast right after the
load. The temperature enters as a pointer to an fp64 scalar (cached per value and device, so no host
copy happens in a CUDA-graph replay); the offsets are read from a device tensor.
"""

import functools

import torch
import triton
import triton.language as tl

from . import interpreting

MAX_ON_CHIP = 16384
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_STREAM = 0x736D706C  # counter word c3 of every sampler draw ("smpl"), as in ops/reference.py


@triton.jit
def _philox_word0(c0, c1, c2, c3, k0, k1):
    """Word 0 of Philox-4x32-10; all arguments uint32 (blocks or scalars)."""
    for _ in tl.static_range(10):
        _c0, _c2 = c0, c2
        c0 = tl.umulhi(_c2, _M1) ^ c1 ^ k0
        c2 = tl.umulhi(_c0, _M0) ^ c3 ^ k1
        c1 = tl.mul(_c2, _M1, sanitize_overflow=False)
        c3 = tl.mul(_c0, _M0, sanitize_overflow=False)
        k0 = tl.add(k0, _W0, sanitize_overflow=False)
        k1 = tl.add(k1, _W1, sanitize_overflow=False)
    return c0


@triton.jit
def _gumbel(offs, off_lo, off_hi, k0, k1, ACC: tl.constexpr):
    """-log(-log(u)) for tokens ``offs`` of the stream (seed, offset); u = (2 (r >> 9) + 1) / 2^24."""
    c0 = offs.to(tl.uint32)
    zero = tl.zeros_like(c0)
    k0 = tl.to_tensor(k0).to(tl.uint32)
    k1 = tl.to_tensor(k1).to(tl.uint32)
    r = _philox_word0(c0, zero + off_lo, zero + off_hi, zero + _STREAM, zero + k0, zero + k1)
    u = ((r >> 9).to(tl.int32) * 2 + 1).to(ACC) * (1.0 / 16777216.0)
    return -tl.log(-tl.log(u))


@triton.jit
def _key(x, ACC: tl.constexpr):
    """Order-preserving integer key of a float (int64 for both widths; -0 -> 0)."""
    if ACC == tl.float64:
        bits = x.to(tl.int64, bitcast=True)
        key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFFFFFFFFFF)
    else:
        bits = x.to(tl.int32, bitcast=True)
        key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
    return tl.where(x == 0, 0, key)


@triton.jit
def _ceil_mid(lo, hi):
    return (lo >> 1) + (hi >> 1) + ((lo | hi) & 1)


@triton.jit
def _floor_mid(lo, hi):
    return (lo >> 1) + (hi >> 1) + (lo & hi & 1)


@triton.jit
def _row_params(offset_ptr, params_ptr, row, ACC: tl.constexpr):
    off = tl.load(offset_ptr + row)
    off_lo = (off & 0xFFFFFFFF).to(tl.uint32)
    off_hi = ((off >> 32) & 0xFFFFFFFF).to(tl.uint32)
    inv_t = tl.load(params_ptr).to(ACC)
    top_p = tl.load(params_ptr + 1).to(ACC)
    return off_lo, off_hi, inv_t, top_p


@triton.jit
def _sample_on_chip_kernel(
    logits_ptr, stride_row, offset_ptr, params_ptr, tokens_ptr, logp_ptr, V, k0, k1, top_k,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, NITER: tl.constexpr, BLOCK_V: tl.constexpr,
    ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    off_lo, off_hi, inv_t, top_p = _row_params(offset_ptr, params_ptr, row, ACC)
    offs = tl.arange(0, BLOCK_V)
    valid = offs < V
    x = tl.load(logits_ptr + row * stride_row + offs, mask=valid, other=float("-inf")).to(ACC)
    smax = tl.max(x, axis=0) * inv_t
    e = tl.where(valid, tl.exp(x * inv_t - smax), 0.0)
    key = _key(x, ACC)
    big = tl.full((), 0x7FFFFFFFFFFFFFFF, tl.int64)
    tau = tl.min(tl.where(valid, key, big), axis=0)  # keep key >= tau: everything so far
    if HAS_TOP_K:  # largest T with #{key >= T} >= k
        lo = tau
        hi = tl.max(tl.where(valid, key, -big), axis=0)
        for _ in range(NITER):
            mid = _ceil_mid(lo, hi)
            enough = tl.sum((valid & (key >= mid)).to(tl.int32), axis=0) >= top_k
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
        tau = lo
    if HAS_TOP_P:  # smallest T with mass{key > T, key >= tau_k} < p * Z_k
        e_k = tl.where(key >= tau, e, 0.0)
        limit = top_p * tl.sum(e_k, axis=0)
        lo = tau - 1
        hi = tl.max(tl.where(valid, key, -big), axis=0)
        for _ in range(NITER):
            mid = _floor_mid(lo, hi)
            small = tl.sum(tl.where(key > mid, e_k, 0.0), axis=0) < limit
            lo = tl.where(small, lo, mid)
            hi = tl.where(small, mid, hi)
        tau = tl.maximum(tau, hi)
    keep = valid & (key >= tau)
    z = tl.sum(tl.where(keep, e, 0.0), axis=0)
    score = tl.where(keep, x * inv_t + _gumbel(offs, off_lo, off_hi, k0, k1, ACC), float("-inf"))
    tok = tl.argmax(score, axis=0)
    s_tok = tl.sum(tl.where(offs == tok, x, 0.0), axis=0) * inv_t
    tl.store(tokens_ptr + row, tok.to(tl.int64))
    tl.store(logp_ptr + row, s_tok - smax - tl.log(z))


@triton.jit
def _sample_chunked_kernel(
    logits_ptr, stride_row, offset_ptr, params_ptr, tokens_ptr, logp_ptr, V, k0, k1, top_k,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, NITER: tl.constexpr, BLOCK_V: tl.constexpr,
    ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    off_lo, off_hi, inv_t, top_p = _row_params(offset_ptr, params_ptr, row, ACC)
    big = tl.full((), 0x7FFFFFFFFFFFFFFF, tl.int64)
    xmax = tl.full((), float("-inf"), ACC)
    kmin = big
    kmax = -big
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(ACC)
        key = _key(x, ACC)
        xmax = tl.maximum(xmax, tl.max(x, axis=0))
        kmin = tl.minimum(kmin, tl.min(tl.where(valid, key, big), axis=0))
        kmax = tl.maximum(kmax, tl.max(tl.where(valid, key, -big), axis=0))
    smax = xmax * inv_t
    tau = kmin
    if HAS_TOP_K:
        lo = kmin
        hi = kmax
        for _ in range(NITER):
            mid = _ceil_mid(lo, hi)
            count = tl.zeros((), tl.int32)
            for start in range(0, V, BLOCK_V):
                offs = start + tl.arange(0, BLOCK_V)
                valid = offs < V
                key = _key(tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(ACC), ACC)
                count += tl.sum((valid & (key >= mid)).to(tl.int32), axis=0)
            enough = count >= top_k
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
        tau = lo
    if HAS_TOP_P:
        z_k = tl.zeros((), ACC)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            valid = offs < V
            x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(ACC)
            z_k += tl.sum(tl.where(valid & (_key(x, ACC) >= tau), tl.exp(x * inv_t - smax), 0.0), axis=0)
        limit = top_p * z_k
        lo = tau - 1
        hi = kmax
        for _ in range(NITER):
            mid = _floor_mid(lo, hi)
            mass = tl.zeros((), ACC)
            for start in range(0, V, BLOCK_V):
                offs = start + tl.arange(0, BLOCK_V)
                valid = offs < V
                x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(ACC)
                key = _key(x, ACC)
                mass += tl.sum(tl.where(valid & (key >= tau) & (key > mid), tl.exp(x * inv_t - smax), 0.0), axis=0)
            small = mass < limit
            lo = tl.where(small, lo, mid)
            hi = tl.where(small, mid, hi)
        tau = tl.maximum(tau, hi)
    z = tl.zeros((), ACC)
    best = tl.full((), float("-inf"), ACC)
    tok = tl.zeros((), tl.int64) - 1
    s_tok = tl.zeros((), ACC)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(ACC)
        keep = valid & (_key(x, ACC) >= tau)
        s = x * inv_t
        z += tl.sum(tl.where(keep, tl.exp(s - smax), 0.0), axis=0)
        score = tl.where(keep, s + _gumbel(offs, off_lo, off_hi, k0, k1, ACC), float("-inf"))
        c_best = tl.max(score, axis=0)
        c_arg = tl.argmax(score, axis=0)
        better = (c_best > best) | ((tok < 0) & (tl.sum(keep.to(tl.int32), axis=0) > 0))
        s_c = tl.sum(tl.where(offs == start + c_arg, s, 0.0), axis=0)
        tok = tl.where(better, (start + c_arg).to(tl.int64), tok)
        s_tok = tl.where(better, s_c, s_tok)
        best = tl.where(better, c_best, best)
    tok = tl.maximum(tok, 0)
    tl.store(tokens_ptr + row, tok)
    tl.store(logp_ptr + row, s_tok - smax - tl.log(z))


@functools.cache
def _params(inv_temperature: float, top_p: float, device: str) -> torch.Tensor:
    """[1 / T, top_p] in fp64, as the kernels read them (cached: warm calls and graph replays copy nothing)."""
    return torch.tensor([inv_temperature, top_p], dtype=torch.float64, device=device)


def sample_tokens(logits: torch.Tensor, offset: torch.Tensor, seed: int, inv_temperature: float, top_k: int,
                  top_p: float, *, block_v: int | None = None):
    """logits [B, V] (rows contiguous), offset [B] int64 -> (tokens [B] int64, logp [B] acc dtype).

    ``seed`` in [0, 2^64); ``top_k`` in [0, V] (0 or V: off); ``top_p`` in (0, 1] (1: off).
    ``block_v`` forces a block size (tests use it to run the chunked path at small V).
    """
    B, V = logits.shape
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    tokens = torch.empty(B, dtype=torch.int64, device=logits.device)
    logp = torch.empty(B, dtype=acc, device=logits.device)
    if B == 0:
        return tokens, logp
    if block_v is None:
        block_v = min(triton.next_power_of_2(V), MAX_ON_CHIP if interpreting() or V <= MAX_ON_CHIP else 4096)
    on_chip = block_v >= V
    kernel = _sample_on_chip_kernel if on_chip else _sample_chunked_kernel
    warps = 4 if interpreting() or block_v < 2048 else (16 if on_chip and block_v >= 8192 else 8)
    seed = int(seed) % 2**64
    kernel[(B,)](
        logits, logits.stride(0), offset, _params(float(inv_temperature), float(top_p), str(logits.device)),
        tokens, logp, V, seed & 0xFFFFFFFF, seed >> 32, int(top_k),
        HAS_TOP_K=0 < top_k < V, HAS_TOP_P=top_p < 1.0, NITER=65 if acc == torch.float64 else 33,
        BLOCK_V=block_v, ACC=tl.float64 if acc == torch.float64 else tl.float32, num_warps=warps,
    )
    return tokens, logp
