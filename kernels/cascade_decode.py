"""Cascade decode attention: one query token per row over [its group's shared prefix ‖ its own suffix].

The semantics are ``rlvr_world.ops.cascade_attention.cascade_decode_attention`` (the eager spec:
``cascade_decode_reference``); this file only computes them. Shapes (B = P * G decode rows, rows
p*G .. p*G+G-1 belong to prompt p; GQA: query head h reads kv head h // rep, rep = Hq / Hkv)::

    q [B, Hq, D]   prefix_k/v [P, Hkv, Lp, D]   suffix_k/v [B, Hkv, N, D]   suffix_len [B]   -> out [B, Hq, D]

Row r attends to all Lp keys of prompt r // G and to the first ``suffix_len[r]`` (0 .. N) keys of its own
suffix. Two kernels (split-K "flash-decoding" with a cascade twist):

1. ``_prefix_kernel``, grid (P * Hkv, M blocks, splits). The G samples of a group and the rep query heads
   of one kv head all read the SAME prefix keys, so they are folded into the M dimension of one
   ``tl.dot``: M = G * rep query rows (row m = g * rep + j is query head hkv * rep + j of row p * G + g),
   padded to a power of two >= 16 and capped at ``MAX_BLOCK_M`` (a group with more rows takes several M
   blocks; each re-reads the prefix, normally from L2). Each program streams its split of the prefix in
   [BLOCK_N, D] tiles: every K/V tile is loaded ONCE and used by all M rows -- the prefix is read once
   per group (and kv head) per step, not G times, which turns decode from G matrix-vector products into
   one matrix-matrix product (arithmetic intensity x G * rep). Online softmax (running max and sum, exp2
   with the scale folded into log2 units), fp32 accumulators. The key range is split so that the grid
   has about two programs per SM even for few prompts (flash-decoding); each split writes its
   normalised partial output and its log-sum-exp to fp32 scratch [P * Hkv, splits, G * rep, (D)].
   An empty split (past Lp) writes lse = -inf and is ignored by the merge.
2. ``_suffix_merge_kernel``, grid (B, Hkv). The row's own suffix (its rep query heads as M, padded to
   16) with the same online softmax, over ``suffix_len[r]`` keys (a runtime loop bound, so rows of
   different lengths cost what they hold), then the LSE merge of the prefix splits and the suffix part
   (FlashInfer's cascade merge), written in q's dtype. The suffix is private to each row, so there is
   nothing to share there; fusing the merge into it saves a launch and a round trip of the suffix partial.

Precision: fp32 accumulation everywhere. On a GPU, fp32 inputs use ``input_precision="ieee"`` dots (no
TF32); bf16/fp16 inputs use the native dtype for q @ k^T (exact products, fp32 accumulation) and TF32 for
p @ v (v is exact in TF32; p rounds to 11 bits, finer than the 8/11 bits of the output); under the
interpreter every load is upcast to fp32 at once (it computes bf16 wrongly) and the output is stored in
fp32 and cast by torch (its fp32 -> bf16 store truncates instead of rounding to nearest). fp64 is not a kernel dtype
(the reference handles it).

No argument checks here (layer 1, DESIGN §3.1): the op checks; the KV-cache subclass passes tensors it
allocated itself. Last dims must be contiguous (stride 1); other strides are free (views of the cache).
"""

import functools

import torch
import triton
import triton.language as tl

from . import interpreting

MAX_BLOCK_M = 128
LOG2E = 1.4426950408889634


@triton.jit
def _prefix_kernel(
    q_ptr, sq_b, sq_h,
    k_ptr, v_ptr, sk_p, sk_h, sk_n, sv_p, sv_h, sv_n,
    po_ptr, plse_ptr,
    Lp, split_len, n_splits, qk_scale,
    G: tl.constexpr, REP: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, QK_PREC: tl.constexpr, PV_PREC: tl.constexpr,
):
    pid_ph = tl.program_id(0)  # p * HKV + hkv
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    p = pid_ph // HKV
    hkv = pid_ph % HKV
    M: tl.constexpr = G * REP

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row m = g * REP + j of the group
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    d_ok = offs_d < D
    q_row = (p * G + offs_m // REP).to(tl.int64)
    q_head = hkv * REP + offs_m % REP
    q = tl.load(q_ptr + q_row[:, None] * sq_b + q_head[:, None] * sq_h + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    if UPCAST:
        q = q.to(tl.float32)

    base_k = k_ptr + p.to(tl.int64) * sk_p + hkv.to(tl.int64) * sk_h
    base_v = v_ptr + p.to(tl.int64) * sv_p + hkv.to(tl.int64) * sv_h
    start = pid_s * split_len
    end = tl.minimum(start + split_len, Lp)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + offs_n
        n_ok = n < end
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(base_k + n[:, None].to(tl.int64) * sk_n + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(base_v + n[:, None].to(tl.int64) * sv_n + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=QK_PREC) * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        pr = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, axis=1)
        acc = acc * alpha[:, None] + tl.dot(pr, v.to(tl.float32), input_precision=PV_PREC)
        m_i = m_new

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))  # log2 units
    row = (pid_ph * n_splits + pid_s).to(tl.int64) * M + offs_m  # scratch [P*HKV, n_splits, M, (D)]
    tl.store(plse_ptr + row, lse, mask=m_ok)
    tl.store(po_ptr + row[:, None] * D + offs_d[None, :], out, mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _suffix_merge_kernel(
    q_ptr, sq_b, sq_h,
    k_ptr, v_ptr, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
    len_ptr, po_ptr, plse_ptr, o_ptr, so_b, so_h,
    n_splits, qk_scale,
    G: tl.constexpr, REP: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, QK_PREC: tl.constexpr, PV_PREC: tl.constexpr,
):
    r = tl.program_id(0)
    hkv = tl.program_id(1)
    p = r // G
    g = r % G
    M: tl.constexpr = G * REP

    offs_j = tl.arange(0, BLOCK_M)  # query head hkv * REP + j of row r
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    j_ok = offs_j < REP
    d_ok = offs_d < D
    q_head = hkv * REP + offs_j
    q = tl.load(q_ptr + r.to(tl.int64) * sq_b + q_head[:, None] * sq_h + offs_d[None, :],
                mask=j_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # the row's own suffix
    slen = tl.load(len_ptr + r).to(tl.int32)
    base_k = k_ptr + r.to(tl.int64) * sk_b + hkv.to(tl.int64) * sk_h
    base_v = v_ptr + r.to(tl.int64) * sv_b + hkv.to(tl.int64) * sv_h
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(0, slen, BLOCK_N):
        n = n0 + offs_n
        n_ok = n < slen
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(base_k + n[:, None].to(tl.int64) * sk_n + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(base_v + n[:, None].to(tl.int64) * sv_n + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=QK_PREC) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        pr = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, axis=1)
        acc = acc * alpha[:, None] + tl.dot(pr, v.to(tl.float32), input_precision=PV_PREC)
        m_i = m_new

    # merge with the prefix splits: out = (sum_i w_i o_i + w_s acc) / (sum_i w_i + w_s l), w = 2^(lse - mx)
    prow = (p * HKV + hkv).to(tl.int64) * n_splits * M + g * REP + offs_j  # split 0 of these rows
    mx = m_i
    for i in range(n_splits):
        mx = tl.maximum(mx, tl.load(plse_ptr + prow + i * M, mask=j_ok, other=float("-inf")))
    mx = tl.where(mx == float("-inf"), 0.0, mx)  # no key at all (padded heads): everything below is 0
    w_s = tl.exp2(m_i - mx)
    num = acc * w_s[:, None]
    den = l_i * w_s
    for i in range(n_splits):
        lse_i = tl.load(plse_ptr + prow + i * M, mask=j_ok, other=float("-inf"))
        w_i = tl.exp2(lse_i - mx)
        o_i = tl.load(po_ptr + (prow + i * M)[:, None] * D + offs_d[None, :],
                      mask=j_ok[:, None] & d_ok[None, :], other=0.0)
        num += o_i * w_i[:, None]
        den += w_i
    out = num / tl.where(den > 0, den, 1.0)[:, None]
    tl.store(o_ptr + r.to(tl.int64) * so_b + q_head[:, None] * so_h + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=j_ok[:, None] & d_ok[None, :])


@functools.cache
def _num_sms(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).multi_processor_count
    return 1


def _plan(P: int, Hkv: int, G: int, rep: int, Lp: int, D: int, device: str, block_n, num_splits):
    """(BLOCK_M, m_blocks, BLOCK_N, split_len, n_splits) of the prefix kernel."""
    block_m = max(16, triton.next_power_of_2(G * rep))
    block_d = max(16, triton.next_power_of_2(D))
    cap = MAX_BLOCK_M if block_d <= 128 else MAX_BLOCK_M // 2
    block_m = min(block_m, cap)
    m_blocks = triton.cdiv(G * rep, block_m)
    if block_n is None:
        block_n = 64 if interpreting() else (64 if block_m * block_d <= 64 * 128 else 32)
        block_n = min(block_n, max(16, triton.next_power_of_2(Lp)))
    n_blocks = triton.cdiv(Lp, block_n)
    if num_splits is None:  # about two programs per SM, at least 2 key blocks per split
        base = P * Hkv * m_blocks
        num_splits = 1 if interpreting() else max(1, min(triton.cdiv(2 * _num_sms(device), base), n_blocks // 2))
    num_splits = max(1, min(num_splits, n_blocks))
    split_len = triton.cdiv(n_blocks, num_splits) * block_n
    return block_m, m_blocks, block_n, split_len, triton.cdiv(Lp, split_len)


def _precisions(dtype: torch.dtype) -> tuple[bool, str, str]:
    if interpreting():
        return True, "ieee", "ieee"
    if dtype == torch.float32:
        return False, "ieee", "ieee"
    return False, "tf32", "tf32"  # q @ k^T runs in the native 16-bit dtype; the precision applies to fp32 only


def cascade_decode(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, suffix_k: torch.Tensor,
                   suffix_v: torch.Tensor, suffix_len: torch.Tensor, group_size: int, scale: float, *,
                   block_n: int | None = None, num_splits: int | None = None) -> torch.Tensor:
    """q [B, Hq, D], prefix_k/v [P, Hkv, Lp, D], suffix_k/v [B, Hkv, N, D], suffix_len [B] int -> out [B, Hq, D].

    B = P * group_size, Lp >= 1, 0 <= suffix_len <= N, last dims contiguous, all on one device, k/v in one
    dtype (q's or not). ``block_n`` / ``num_splits`` force the key tile and the number of prefix splits
    (tests use them to run several splits at small Lp).
    """
    B, Hq, D = q.shape
    P, Hkv, Lp, _ = prefix_k.shape
    G, rep = group_size, Hq // Hkv
    upcast, qk_prec, pv_prec = _precisions(prefix_k.dtype)
    out_dtype = q.dtype
    # the interpreter also rounds fp32 -> bf16 wrongly (it truncates): store fp32 there, cast in torch
    out = torch.empty((B, Hq, D), dtype=torch.float32 if upcast else out_dtype, device=q.device)
    if B == 0:
        return out.to(out_dtype)
    dev = str(q.device)
    block_m, m_blocks, bn, split_len, n_splits = _plan(P, Hkv, G, rep, Lp, D, dev, block_n, num_splits)
    block_d = max(16, triton.next_power_of_2(D))
    if q.dtype != prefix_k.dtype and not upcast:
        q = q.to(prefix_k.dtype)  # one dot dtype
    qk_scale = float(scale) * LOG2E
    po = torch.empty((P * Hkv, n_splits, G * rep, D), dtype=torch.float32, device=q.device)
    plse = torch.empty((P * Hkv, n_splits, G * rep), dtype=torch.float32, device=q.device)
    warps = 4 if interpreting() or block_m * block_d <= 64 * 128 else 8
    _prefix_kernel[(P * Hkv, m_blocks, n_splits)](
        q, q.stride(0), q.stride(1),
        prefix_k, prefix_v, prefix_k.stride(0), prefix_k.stride(1), prefix_k.stride(2),
        prefix_v.stride(0), prefix_v.stride(1), prefix_v.stride(2),
        po, plse, Lp, split_len, n_splits, qk_scale,
        G=G, REP=rep, HKV=Hkv, D=D, BLOCK_M=block_m, BLOCK_N=bn, BLOCK_D=block_d,
        UPCAST=upcast, QK_PREC=qk_prec, PV_PREC=pv_prec, num_warps=warps,
    )
    block_m_s = max(16, triton.next_power_of_2(rep))
    bn_s = block_n if block_n is not None else (64 if interpreting() else 32)
    N = suffix_k.shape[2]
    bn_s = min(bn_s, max(16, triton.next_power_of_2(max(N, 1))))
    _suffix_merge_kernel[(B, Hkv)](
        q, q.stride(0), q.stride(1),
        suffix_k, suffix_v, suffix_k.stride(0), suffix_k.stride(1), suffix_k.stride(2),
        suffix_v.stride(0), suffix_v.stride(1), suffix_v.stride(2),
        suffix_len, po, plse, out, out.stride(0), out.stride(1),
        n_splits, qk_scale,
        G=G, REP=rep, HKV=Hkv, D=D, BLOCK_M=block_m_s, BLOCK_N=bn_s, BLOCK_D=block_d,
        UPCAST=upcast, QK_PREC=qk_prec, PV_PREC=pv_prec, num_warps=4,
    )
    return out if out.dtype == out_dtype else out.to(out_dtype)
