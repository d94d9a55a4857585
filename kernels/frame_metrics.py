"""Frame-metric rewards (DESIGN §5 video rewards): per-frame sums of (p - t)^2 and |p - t|, and SSIM.

Layer 1 of the ``frame_metrics`` op (contract in ``ops/_library.py``): kernels and the launcher, no
argument checks, no autograd. Prediction b is compared with target b // G. Frames are uint8 or
fp16/bf16/fp32/fp64; float frames are clamped to [0, 1] right after the load (upcast first: the CPU
interpreter computes bf16 wrongly) with NaN kept (``max.NaN``/``min.NaN`` in fp32, compare-and-select in
fp64, which PTX lacks a NaN-propagating min/max for). fp64 frames accumulate in fp64, all others in fp32.
uint8 frames are computed in raw units 0..255 (exact integer differences; SSIM with C1, C2 scaled by
255^2, which leaves it unchanged) and the sums are scaled by 1/255, 1/255^2 at the end: no /255 per load.
Every reduction has a fixed order (per-program partial sums in a [B, P] buffer, then ``torch.sum`` over
P): results are reproducible bit for bit, no float atomics.

**Pixel metrics only** (``with_ssim=False``): ``_pixel_sums_kernel``, a streaming pass over a 2-D grid
(frame b, chunk s). b is the fast grid axis, so the G predictions that share a target chunk run side by
side and the target comes from L2: HBM reads each byte about once, B*N + (B/G)*N elements. Blocks of 4096
elements (16 B per thread per load at 8 warps for uint8, 64 B for fp32), chunks of up to 8 blocks, enough
chunks per frame for >= 4 programs per SM. 6 flops per element pair: bandwidth bound; the design target is
>= 80% of HBM (1024 uint8 frames of 3 x 256 x 320 with G = 16: 0.27 GB, 89 us at 3 TB/s).

**SSIM** (``with_ssim=True``): ``_ssim_tiles_kernel``, one fused kernel that also returns the two pixel
sums from the same loads. A program owns a tile - group q, channel c, BH x BWO outputs of the valid
(H-K+1) x (W-K+1) map - and loops over the G predictions of the group: the target's blurred mean mu_y
and E[y^2] (and mu_y^2 + C1, sigma_y^2 + C2) are computed once per tile and reused G times. The grid is
persistent (one program per SM; a program walks tiles pid, pid + nprog, ..., so neighbouring programs
hold neighbouring tiles of one plane and share the halos through L2). Separable Gaussian, fp32 math:

1. *vertical pass from the frames*: for each tap i (K is a constexpr; the loop is unrolled, the K taps
   are loaded once per pass) load the [BH, BW] tile of x and y at row offset i and accumulate w_i x,
   w_i x^2, w_i x y. Row shifts keep columns aligned, so these loads are vectorised (4 bytes of uint8 per
   thread with W % 16 == 0) and all but the first hit L1.
2. the three [BH, BW] planes go to a per-program scratch in global memory (3 x BH x (BW + 16) fp32:
   27 KB at 8 x 128; 3.6 MB for 132 programs, L2/L1 resident), then ``debug_barrier`` (bar.sync, which
   orders the CTA's global writes before its reads);
3. *horizontal pass from the scratch*: K re-reads shifted by one column. Each thread owns 4 consecutive
   columns, so the compiler merges the K shifted loads into 4 + K - 1 loads per row (SASS checked).

Why this shape: Triton cannot shift a register tile, so one of the two passes must go through memory or
through a banded-matrix ``tl.dot``. A banded dot does R/K times the FMAs (R = padded tile extent, 32-128
vs K = 11) - fp32 "ieee" dots run on the FMA units - and tf32/tf32x3 are too coarse for E[x^2] - mu^2
(SSIM within 1e-5 needs fp32 products); direct 2-D shifted loads cost K^2 taps. Shifted re-reads of an
on-chip scratch keep the exact separable FMA count in plain fp32. The vertical pass goes first because
its shifts are along rows (aligned, vectorised loads of the narrow frame dtype) and the horizontal shifts
then read fp32 scratch, where the in-thread load merging applies. (Horizontal-first from the frames was
tried: uint8 loads at odd column shifts come out as mixed 1- and 2-byte loads that the compiler does not
merge, and the halo rows cost (BH + K - 1) / BH.) BW = 128 input columns give BWO = 112 outputs (halo
rounded to 16 to keep tile origins 16-aligned); the launcher picks BW in {64, 128, 256} to waste the
fewest columns for W and BH = 1024 / BW (4 outputs per thread at 8 warps: 189 registers for uint8 on
sm_90, no spills; fp64 tiles are half as tall).

Cost per valid output per prediction (K = 11, uint8, sm_90 SASS of the G loop): 880 instructions per 4
output slots of a thread, x 128 / 112 for the column halo = ~250 issued instructions, of which ~72 are
FFMA (the vertical pass re-converts each input K times: 2 PRMT + 2 I2F per tap; the x*x and x*y products
are per tap, too). The roofline (max(bytes / 3 TB/s, separable-filter flops / 60 TFLOP/s)) counts
3 x 2 x K x 2 = 132 flops (+ 88 / G for y, y^2) per output, and 1 byte per input pixel and frame: for 1024
uint8 frames of 3 x 256 x 320 with G = 16, 32 GFLOP = 0.54 ms vs 0.27 GB = 0.09 ms. At the issue limit
(~33 T lane-instructions/s on an H100 SXM) the kernel needs ~1.8 ms: ~30% of that roofline, less at 8
resident warps per SM (expect 20-30%); against DESIGN §7's 1 ms floor (220 flops, no per-group reuse)
~50%. Scratch traffic: 3 x 4 B x 128 / 112 = 14 B of L2 writes per output (3.2 GB per such batch, under
the issue time at L2 bandwidth). Where this lands is for the benchmark to say.

Pixel-sum ownership in the SSIM kernel: tiles partition the *input* (n_rt = ceil(H / BH), n_ct =
ceil(W / BWO)); tile (ti, tj) sums input rows [r0, r0 + BH) and columns [c0, c0 + BWO), all read by its
tap-0 load. A tile that holds only input (r0 >= H - K + 1 or c0 >= W - K + 1: the last K - 1 rows or
columns, when they spill into one more tile) skips the filter and only sums.

Scalars that must keep fp64 precision (C1, C2) come in an fp64 tensor (Triton passes Python floats as
fp32). Under ``TRITON_INTERPRET=1`` the launcher picks whole-image tiles and one tile per program.
"""

import torch
import triton
import triton.language as tl

from . import interpreting

SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2
# SSIM on a GPU: tiles of 1024 outputs, 8 warps (4 per thread: 189 registers on sm_90, no spills), so
# one program per SM; each program walks tiles pid, pid + nprog, ... with its own scratch.
_GPU_TILE, _GPU_WARPS, _GPU_PROGS_PER_SM = 1024, 8, 1


@triton.jit
def _unit(x, IS_U8: tl.constexpr, ACC: tl.constexpr):
    """Loaded frame values -> ACC: uint8 stays in raw units (0..255); floats clamp to [0, 1], NaN kept."""
    x = x.to(ACC)
    if not IS_U8:
        if ACC == tl.float64:  # PTX has no NaN-propagating fp64 min/max: compare and select
            x = tl.where(x < 0, 0.0, tl.where(x > 1, 1.0, x))
        else:  # max.NaN / min.NaN: two instructions, NaN propagates
            x = tl.clamp(x, 0.0, 1.0, propagate_nan=tl.PropagateNan.ALL)
    return x


@triton.jit
def _pixel_sums_kernel(
    pred_ptr, target_ptr, sq_ptr, abs_ptr, G, N, S,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr, IS_U8: tl.constexpr, ACC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    p_row = pred_ptr + b * N
    t_row = target_ptr + (b // G) * N
    sq = tl.zeros((BLOCK,), ACC)
    ab = tl.zeros((BLOCK,), ACC)
    for start in range(0, CHUNK, BLOCK):
        offs = s * CHUNK + start + tl.arange(0, BLOCK)
        m = offs < N
        x = _unit(tl.load(p_row + offs, mask=m, other=0), IS_U8, ACC)
        y = _unit(tl.load(t_row + offs, mask=m, other=0), IS_U8, ACC)
        d = x - y
        sq += d * d
        ab += tl.abs(d)
    tl.store(sq_ptr + b * S + s, tl.sum(sq, axis=0))
    tl.store(abs_ptr + b * S + s, tl.sum(ab, axis=0))


@triton.jit
def _ssim_tile(pred_ptr, tgt, window_ptr, scr, ssim_ptr, sq_ptr, abs_ptr, c1, c2, q, c, ti, tj, G, C, H, W,
               plane, n_part, N_RT, N_CT, rows, cols, col_ok, out_ok, own,
               K: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, SW: tl.constexpr,
               IS_U8: tl.constexpr, ACC: tl.constexpr):
    """One output tile of one channel of group q: the target's statistics, then the G predictions."""
    rl = tl.arange(0, BH)[:, None]
    cl = tl.arange(0, BW)[None, :]
    s_off = rl * SW + cl  # [BH, BW] offsets in one scratch plane
    # ground truth, once per group: vertical pass from the frame, horizontal from the scratch
    vy = tl.zeros((BH, BW), ACC)
    vyy = tl.zeros((BH, BW), ACC)
    for i in tl.static_range(K):
        w = tl.load(window_ptr + i)
        y = _unit(tl.load(tgt + (rows + i) * W + cols, mask=(rows + i < H) & col_ok, other=0), IS_U8, ACC)
        vy += w * y
        vyy += w * (y * y)
    tl.store(scr + s_off, vy)
    tl.store(scr + BH * SW + s_off, vyy)
    tl.debug_barrier()
    mu_y = tl.zeros((BH, BW), ACC)
    e_yy = tl.zeros((BH, BW), ACC)
    for j in tl.static_range(K):
        w = tl.load(window_ptr + j)
        mu_y += w * tl.load(scr + s_off + j)
        e_yy += w * tl.load(scr + BH * SW + s_off + j)
    tl.debug_barrier()
    myy_c1 = mu_y * mu_y + c1  # mu_y^2 + C1
    syy_c2 = e_yy - mu_y * mu_y + c2  # sigma_y^2 + C2

    for g in range(G):
        b = q * G + g
        prd = pred_ptr + (b * C + c).to(tl.int64) * plane
        vx = tl.zeros((BH, BW), ACC)
        vxx = tl.zeros((BH, BW), ACC)
        vxy = tl.zeros((BH, BW), ACC)
        sq = tl.zeros((BH, BW), ACC)
        ab = tl.zeros((BH, BW), ACC)
        for i in tl.static_range(K):
            w = tl.load(window_ptr + i)
            m = (rows + i < H) & col_ok
            off = (rows + i) * W + cols
            x = _unit(tl.load(prd + off, mask=m, other=0), IS_U8, ACC)
            y = _unit(tl.load(tgt + off, mask=m, other=0), IS_U8, ACC)
            vx += w * x
            vxx += w * (x * x)
            vxy += w * (x * y)
            if i == 0:
                d = tl.where(own, x - y, 0.0)
                sq += d * d
                ab += tl.abs(d)
        tl.store(scr + s_off, vx)
        tl.store(scr + BH * SW + s_off, vxx)
        tl.store(scr + 2 * BH * SW + s_off, vxy)
        tl.debug_barrier()
        mu_x = tl.zeros((BH, BW), ACC)
        e_xx = tl.zeros((BH, BW), ACC)
        e_xy = tl.zeros((BH, BW), ACC)
        for j in tl.static_range(K):
            w = tl.load(window_ptr + j)
            mu_x += w * tl.load(scr + s_off + j)
            e_xx += w * tl.load(scr + BH * SW + s_off + j)
            e_xy += w * tl.load(scr + 2 * BH * SW + s_off + j)
        tl.debug_barrier()
        mxy = mu_x * mu_y
        mxx = mu_x * mu_x
        num = (2 * mxy + c1) * (2 * (e_xy - mxy) + c2)
        den = (mxx + myy_c1) * (e_xx - mxx + syy_c2)
        ssim = tl.where(out_ok, num / den, 0.0)
        part = b * n_part + (c * N_RT + ti) * N_CT + tj
        tl.store(ssim_ptr + part, tl.sum(ssim))
        tl.store(sq_ptr + part, tl.sum(sq))
        tl.store(abs_ptr + part, tl.sum(ab))


@triton.jit
def _ssim_tiles_kernel(
    pred_ptr, target_ptr, window_ptr, params_ptr, scratch_ptr, ssim_ptr, sq_ptr, abs_ptr,
    G, C, H, W, H_OUT, W_OUT, N_RT, N_CT, N_TILES,
    K: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BWO: tl.constexpr, SW: tl.constexpr,
    IS_U8: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    c1 = tl.load(params_ptr + 0).to(ACC)
    c2 = tl.load(params_ptr + 1).to(ACC)
    rl = tl.arange(0, BH)[:, None]  # local rows    [BH, 1]
    cl = tl.arange(0, BW)[None, :]  # local columns [1, BW]
    scr = scratch_ptr + pid.to(tl.int64) * (3 * BH * SW)
    plane = H.to(tl.int64) * W
    n_part = C * N_RT * N_CT  # partial sums per frame
    for t in range(pid, N_TILES, nprog):
        tj = t % N_CT
        ti = (t // N_CT) % N_RT
        c = (t // (N_CT * N_RT)) % C
        q = t // (N_CT * N_RT * C)
        r0 = ti * BH
        c0 = tj * BWO
        rows = r0 + rl  # [BH, 1] first input row of each output row
        cols = c0 + cl  # [1, BW] input columns
        col_ok = cols < W
        out_ok = (rows < H_OUT) & (cl < BWO) & (cols < W_OUT)  # [BH, BW]
        own = (rows < H) & (cl < BWO) & col_ok  # pixel sums: the tile owns input [r0, r0 + BH) x [c0, c0 + BWO)
        tgt = target_ptr + (q * C + c).to(tl.int64) * plane
        if (r0 < H_OUT) & (c0 < W_OUT):
            _ssim_tile(pred_ptr, tgt, window_ptr, scr, ssim_ptr, sq_ptr, abs_ptr, c1, c2, q, c, ti, tj, G, C, H, W,
                       plane, n_part, N_RT, N_CT, rows, cols, col_ok, out_ok, own, K, BH, BW, SW, IS_U8, ACC)
        else:  # a tile of the last K - 1 input rows or columns: pixel sums only
            for g in range(G):
                b = q * G + g
                prd = pred_ptr + (b * C + c).to(tl.int64) * plane
                off = rows * W + cols
                x = _unit(tl.load(prd + off, mask=own, other=0), IS_U8, ACC)
                y = _unit(tl.load(tgt + off, mask=own, other=0), IS_U8, ACC)
                d = tl.where(own, x - y, 0.0)
                part = b * n_part + (c * N_RT + ti) * N_CT + tj
                tl.store(ssim_ptr + part, 0.0)
                tl.store(sq_ptr + part, tl.sum(d * d))
                tl.store(abs_ptr + part, tl.sum(tl.abs(d)))


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _pixel_launch(B: int, N: int, device) -> tuple[int, int, int]:
    """(CHUNK, BLOCK, num_warps) for the streaming pass."""
    if interpreting():
        block = min(triton.next_power_of_2(N), 1 << 16)
        return block, block, 4
    block = 4096
    min_progs = 4 * _num_sms(device)
    per_frame = triton.cdiv(min_progs, B)  # chunks per frame to fill the GPU
    chunk = triton.next_power_of_2(max(triton.cdiv(N, per_frame), 1))
    return max(block, min(chunk, 8 * block)), block, 8


def _ssim_programs(n_tiles: int, device) -> int:
    """Persistent grid size: a few programs per SM (each owns a scratch), one per tile when interpreting."""
    return n_tiles if interpreting() else min(n_tiles, _GPU_PROGS_PER_SM * _num_sms(device))


def _ssim_launch(H: int, W: int, K: int, wide: bool) -> tuple[int, int, int, int]:
    """(BH, BW, BWO, num_warps): a tile owns BH x BWO input pixels and outputs; its vertical pass reads
    BH + K - 1 rows of BW >= BWO + K - 1 columns. On a GPU, BW is the width in {64, 128, 256} that wastes
    the fewest columns and BH keeps 4 elements per thread (a tile of 1024 at 8 warps; 2 for fp64 = ``wide``)."""
    if interpreting():  # whole image per tile where it fits: per-program cost dominates
        bw = triton.next_power_of_2(W + K - 1)
        bw = bw if bw <= 512 else max(512, triton.next_power_of_2(K - 1 + 64))
        return min(triton.next_power_of_2(H), 64), bw, bw - (K - 1), 4
    pad = -(-(K - 1) // 16) * 16  # halo columns, rounded so that tile origins stay 16-aligned
    widths = [w for w in (64, 128, 256) if w > pad] or [triton.next_power_of_2(pad + 64)]
    bw = min(widths, key=lambda w: (triton.cdiv(W, w - pad) * w, -w))
    return max(1, (_GPU_TILE // 2 if wide else _GPU_TILE) // bw), bw, bw - pad, _GPU_WARPS


def frame_metrics(pred: torch.Tensor, target: torch.Tensor, window: torch.Tensor, group_size: int,
                  with_ssim: bool):
    """pred [B, C, H, W], target [B/G, C, H, W] (contiguous, one dtype), window [K] (acc dtype)
    -> (sq_err [B], abs_err [B], ssim [B] or [0]) in the acc dtype (fp64 for fp64 frames, else fp32)."""
    B, C, H, W = pred.shape
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    is_u8 = pred.dtype == torch.uint8
    dev = pred.device
    n = C * H * W
    if B == 0:
        e = torch.empty(0, dtype=acc, device=dev)
        return e, e.clone(), e.clone()
    scale = 1 / 255 if is_u8 else 1.0  # raw uint8 units -> [0, 1]
    if not with_ssim:
        chunk, block, warps = _pixel_launch(B, n, dev)
        S = max(triton.cdiv(n, chunk), 1)
        sq = torch.empty(B, S, dtype=acc, device=dev)
        ab = torch.empty(B, S, dtype=acc, device=dev)
        _pixel_sums_kernel[(B, S)](
            pred, target, sq, ab, group_size, n, S,
            CHUNK=chunk, BLOCK=block, IS_U8=is_u8, ACC=_acc(pred.dtype), num_warps=warps,
        )
        return sq.sum(1).mul_(scale * scale).div_(n), ab.sum(1).mul_(scale).div_(n), torch.empty(0, dtype=acc, device=dev)

    K = window.numel()
    h_out, w_out = H - K + 1, W - K + 1
    bh, bw, bwo, warps = _ssim_launch(H, W, K, acc == torch.float64)
    sw = bw + max(16, triton.next_power_of_2(K))  # scratch row: the horizontal taps read up to BW + K - 2
    n_rt, n_ct = triton.cdiv(H, bh), triton.cdiv(W, bwo)
    n_tiles = (B // group_size) * C * n_rt * n_ct
    nprog = _ssim_programs(n_tiles, dev)
    alloc = torch.zeros if interpreting() else torch.empty  # columns >= BW are read, never used
    scratch = alloc(nprog * 3 * bh * sw, dtype=acc, device=dev)
    parts = torch.empty(3, B, C * n_rt * n_ct, dtype=acc, device=dev)
    params = torch.tensor([SSIM_C1, SSIM_C2], dtype=torch.float64, device=dev) / (scale * scale)
    _ssim_tiles_kernel[(nprog,)](
        pred, target, window, params, scratch, parts[0], parts[1], parts[2],
        group_size, C, H, W, h_out, w_out, n_rt, n_ct, n_tiles,
        K=K, BH=bh, BW=bw, BWO=bwo, SW=sw, IS_U8=is_u8, ACC=_acc(pred.dtype), num_warps=warps,
    )
    sums = parts.sum(2)  # [3, B]
    return sums[1].mul_(scale * scale).div_(n), sums[2].mul_(scale).div_(n), sums[0].div_(C * h_out * w_out)
