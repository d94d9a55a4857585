// CUDA kernel of rlvr_world::frame_metrics (schema and contract in rlvr_world/ops/_library.py; the fp64
// eager spec is rlvr_world.ops.reference.frame_metrics / ssim_map; the CPU twin is csrc/cpu/).
//
//   pred [B, C, H, W], target [B / G, C, H, W] (prediction b uses target b / G), one dtype: uint8 (x / 255)
//   or half / bfloat16 / float / double (clamped to [0, 1], NaN kept). acc_t = double for double frames,
//   else float; outputs sq_err, abs_err, ssim are [B] acc_t (ssim [0] without with_ssim).
//
// Two paths, both ending in the same deterministic reduction (no atomics anywhere):
//
// 1. with_ssim: ssim_tile_kernel, one fused pass. Hv = H - K + 1, Wv = W - K + 1 is the valid region of
//    the SSIM map. It is cut into output tiles of TH x TW = 32 x 32 (nth = ceil(Hv / 32) tile rows,
//    ntw = ceil(Wv / 32) tile cols, ntiles = nth * ntw). A block (256 threads = 8 warps) owns
//    (group grp, chunk of predictions of the group, channel c, tile (ty, tx)); the 1-D grid is
//    blockIdx.x = ((grp * nchunk + chunk) * C + c) * ntiles + ty * ntw + tx, so neighbouring blocks are
//    neighbouring tiles of one plane (halo re-reads hit L2). With oy0 = 32 ty, ox0 = 32 tx:
//      output pixels   rows [oy0, oy0 + oh), cols [ox0, ox0 + ow), oh = min(32, Hv - oy0), ow likewise;
//      input window    rows [oy0, oy0 + IH), cols [ox0, ox0 + IW), IH = IW = 32 + K - 1; cells beyond the
//                      frame (only in the last tile row/col) are stored as 0 and only feed outputs that
//                      are masked out (r >= oh or col >= ow);
//      owned pixels    (for MSE / MAE, which cover all H x W pixels) rows [oy0, oy0 + own_h) with
//                      own_h = 32, or H - oy0 = oh + K - 1 <= IH in the last tile row; cols likewise.
//                      The owned rectangles partition [0, H) x [0, W) and lie inside the loaded window.
//    Shared memory (dynamic, acc_t, in this order):
//      win [32]        the K <= 31 taps (the K = 11 specialisation also keeps them in registers)
//      sy  [IH][IW]    target window, in [0, 1]
//      sx  [IH][IW]    prediction window, in [0, 1]
//      h0, h1, h2 [IH][32]  horizontal blur of (y, y^2) for the target, (x, x^2, x*y) for a prediction
//    = (32 + 2 IH IW + 96 IH) * sizeof(acc_t): K = 11: 30,368 B float / 60,736 B double; K = 31: 54,688 B
//    float / 109,376 B double (above 48 KB the opt-in attribute is set; H100 allows 227 KB).
//    Phases (each "|" is a __syncthreads):
//      load sy + win | h0 = blur_h(y), h1 = blur_h(y^2) | vertical blur -> mu_y, E[y^2] kept in registers
//      for each prediction g of the chunk:
//        load sx (and, for owned pixels, add (x - y)^2 and |x - y| to per-thread sums) |
//        h0..h2 = blur_h(x, x^2, x y) | vertical blur -> mu_x, E[x^2], E[xy]; SSIM per valid pixel;
//        block sum (warp xor-shuffles, then warp 0..7 in order) -> partial[q][b][c * ntiles + tile].
//    Horizontal pass: item idx in [0, IH * 32), row r = idx / 32, col = idx % 32 (a warp = one row, lanes =
//    consecutive columns: conflict-free), out = sum_k w[k] in[r][col + k], k ascending. Vertical pass: lane
//    = output column, warp w = output rows r0 = 4 w .. 4 w + 3; the thread streams h rows r0 .. r0 + K + 2
//    once and adds w[kk - j] * h[r0 + kk] to row r0 + j (k = kk - j ascending per output: the same order as
//    a plain K-tap sum), K + 3 shared loads per buffer for 4 outputs instead of 4 K.
//    Large groups are split into nchunk chunks of gp predictions (each chunk recomputes the target
//    statistics) only when the grid would otherwise have fewer than 8 blocks per SM; results do not
//    depend on the split.
//    Work per pixel and prediction (K = 11): horizontal 3 FMA + 2 MUL per tap on IH / 32 = 1.31 rows per
//    output row (~72 ops), vertical 3 FMA per tap (33), SSIM ~15 ops + 2 divisions: ~120 ops (~230 FLOP).
//    DRAM: each pred element read once, each target element once per chunk (halos re-read from L2), so
//    ~sizeof(scalar) * (1 + 1/G) bytes per pred pixel: the kernel is bound by FP32 issue and shared-memory
//    bandwidth, not by HBM (arithmetic intensity ~40-200 FLOP/B depending on dtype).
//
// 2. without SSIM: frame_err_kernel streams each image: grid = B * nblk blocks, block j of image b takes
//    the 16-byte packs i = j * 256 + t, step nblk * 256 (VEC = 16 / sizeof(scalar) elements per pack when
//    C H W is a multiple of VEC and both base pointers are 16-byte aligned, else VEC = 1). 2 loads, ~6
//    ops per pixel; HBM bound (sizeof(scalar) * (1 + 1/G) bytes per pixel at most, target from L2).
//
// Reduction: per-thread sums in acc_t, a fixed-order block sum in acc_t, one double partial per (q, b,
// block); frame_finalize_kernel (one block per prediction) sums the partials in double in a fixed order
// and divides by C H W (errors) or C Hv Wv (SSIM). Bitwise reproducible for a given shape and device.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../checks.h"

namespace rlvr {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileH = 32;                  // output rows per tile
constexpr int kTileW = 32;                  // output cols per tile (= warp size: one warp per row)
constexpr int kRows = kTileH / kWarps;      // output rows per thread in the vertical pass
constexpr int kMaxK = 31;                   // largest window
constexpr int kWinPad = 32;                 // smem slots for the taps (keeps the arrays after it aligned)
constexpr int kSmallSmem = 48 * 1024;       // dynamic smem above this needs the opt-in attribute
static_assert(kTileW == 32, "the horizontal pass maps one warp to one tile row");
static_assert(kTileH % kWarps == 0, "each warp owns kRows whole output rows");
static_assert(kWinPad >= kMaxK, "window slots");

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// A frame value in [0, 1]: uint8 / 255 (correctly rounded division, as the reference), floats clamped with
// NaN kept (both comparisons are false for NaN).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t to_unit(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, uint8_t>) {
    return static_cast<acc_t>(v) / acc_t(255);
  } else {
    const acc_t x = static_cast<acc_t>(v);
    return x < acc_t(0) ? acc_t(0) : (x > acc_t(1) ? acc_t(1) : x);
  }
}

// Sum of N values over the block, in a fixed order (xor butterflies, then warps 0..7); the result is valid
// in thread 0 only. `red` holds kWarps * N values. Ends with every warp past one __syncthreads.
template <typename T, int N>
__device__ __forceinline__ void block_sum(T (&v)[N], T* red) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v[i] += __shfl_xor_sync(0xffffffffu, v[i], off);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) red[warp * N + i] = v[i];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      T s = red[i];
      for (int w = 1; w < kWarps; ++w) s += red[w * N + i];
      v[i] = s;
    }
  }
}

// piqa's SSIM of one pixel from the blurred moments (same expression order as reference.ssim_map).
template <typename acc_t>
__device__ __forceinline__ acc_t ssim_pixel(acc_t mu_x, acc_t mu_y, acc_t e_xx, acc_t e_yy, acc_t e_xy) {
  const acc_t c1 = static_cast<acc_t>(0.01 * 0.01), c2 = static_cast<acc_t>(0.03 * 0.03);
  const acc_t s_xx = e_xx - mu_x * mu_x, s_yy = e_yy - mu_y * mu_y, s_xy = e_xy - mu_x * mu_y;
  const acc_t cs = (acc_t(2) * s_xy + c2) / (s_xx + s_yy + c2);
  return (acc_t(2) * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1) * cs;
}

// Window taps: from registers when K is a compile-time constant (KT > 0), else from shared memory.
template <typename acc_t, int KT>
struct Taps {
  acc_t w[KT > 0 ? KT : 1];
  const acc_t* s;
  __device__ __forceinline__ void load(const acc_t* swin) {
    s = swin;
    if constexpr (KT > 0) {
#pragma unroll
      for (int k = 0; k < KT; ++k) w[k] = swin[k];
    }
  }
  __device__ __forceinline__ acc_t operator[](int k) const {
    if constexpr (KT > 0) {
      return w[k];
    } else {
      return s[k];
    }
  }
};

// Copy the IH x IW input window whose top-left pixel is `src` (frame pixel (oy0, ox0) of one plane) into
// `dst` as values in [0, 1]; cells outside the frame (gy >= H or gx >= W) become 0. With `err` (a
// prediction), also add (x - y)^2 and |x - y| over the owned cells r < own_h, col < own_w, y from `sy`.
template <bool kErr, typename acc_t, typename scalar_t>
__device__ __forceinline__ void load_window(const scalar_t* __restrict__ src, acc_t* dst, const acc_t* sy, int IH,
                                            int IW, int rows_left, int cols_left, int64_t W, int own_h, int own_w,
                                            acc_t& sq, acc_t& ab) {
  for (int idx = threadIdx.x; idx < IH * IW; idx += kThreads) {
    const int r = idx / IW, col = idx - r * IW;
    acc_t v = acc_t(0);
    if (r < rows_left && col < cols_left) v = to_unit<acc_t>(src[r * W + col]);
    dst[idx] = v;
    if constexpr (kErr) {
      if (r < own_h && col < own_w) {
        const acc_t d = v - sy[idx];
        sq += d * d;
        ab += fabs(d);
      }
    }
  }
}

// Min blocks per SM for __launch_bounds__: caps registers at 64 (fp32) / 128 (fp64) per thread, what the
// K = 11 kernels need without spills (ptxas otherwise settles on 48 with spills in the fp32 kernels).
template <typename acc_t>
constexpr int kSsimMinBlocks = sizeof(acc_t) == 8 ? 2 : 4;

template <typename scalar_t, typename acc_t, int KT>
__global__ void __launch_bounds__(kThreads, kSsimMinBlocks<acc_t>) ssim_tile_kernel(const scalar_t* __restrict__ pred,
                                                             const scalar_t* __restrict__ target,
                                                             const acc_t* __restrict__ window, int K_arg, int C,
                                                             int H, int W, int64_t G, int64_t gp, int64_t nchunk,
                                                             int nth, int ntw, int64_t B,
                                                             double* __restrict__ partial) {
  const int K = KT > 0 ? KT : K_arg;
  const int IH = kTileH + K - 1, IW = kTileW + K - 1;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* swin = reinterpret_cast<acc_t*>(smem_raw);  // [kWinPad]
  acc_t* sy = swin + kWinPad;                         // [IH][IW]
  acc_t* sx = sy + IH * IW;                           // [IH][IW]
  acc_t* h0 = sx + IH * IW;                           // [IH][kTileW]
  acc_t* h1 = h0 + IH * kTileW;                       // [IH][kTileW]
  acc_t* h2 = h1 + IH * kTileW;                       // [IH][kTileW]
  __shared__ acc_t red[kWarps * 3];

  // Block -> (group, chunk, channel, tile).
  const int ntiles = nth * ntw;
  int64_t bid = blockIdx.x;
  const int tile = static_cast<int>(bid % ntiles);
  bid /= ntiles;
  const int c = static_cast<int>(bid % C);
  bid /= C;
  const int64_t chunk = bid % nchunk, grp = bid / nchunk;
  const int ty = tile / ntw, tx = tile - ty * ntw;
  const int Hv = H - K + 1, Wv = W - K + 1;
  const int oy0 = ty * kTileH, ox0 = tx * kTileW;
  const int oh = min(kTileH, Hv - oy0), ow = min(kTileW, Wv - ox0);  // valid outputs of this tile
  const int own_h = ty == nth - 1 ? H - oy0 : kTileH;                 // owned input pixels (MSE / MAE)
  const int own_w = tx == ntw - 1 ? W - ox0 : kTileW;
  const int rows_left = H - oy0, cols_left = W - ox0;                 // frame pixels right/below (oy0, ox0)
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t corner = static_cast<int64_t>(oy0) * W + ox0;
  const int nblk = C * ntiles;
  const int lane = threadIdx.x % 32, r0 = (threadIdx.x / 32) * kRows;

  // Target: window, horizontal blur of y and y^2, vertical blur into registers.
  for (int k = threadIdx.x; k < K; k += kThreads) swin[k] = window[k];
  acc_t unused_sq = acc_t(0), unused_ab = acc_t(0);
  load_window<false>(target + (grp * C + c) * plane + corner, sy, sy, IH, IW, rows_left, cols_left, W, own_h, own_w,
                     unused_sq, unused_ab);
  __syncthreads();
  Taps<acc_t, KT> w;
  w.load(swin);
  for (int idx = threadIdx.x; idx < IH * kTileW; idx += kThreads) {
    const acc_t* in = sy + (idx / kTileW) * IW + idx % kTileW;
    acc_t a = acc_t(0), b = acc_t(0);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const acc_t y = in[k];
      a += w[k] * y;
      b += w[k] * (y * y);
    }
    h0[idx] = a;
    h1[idx] = b;
  }
  __syncthreads();
  acc_t mu_y[kRows], e_yy[kRows];
#pragma unroll
  for (int j = 0; j < kRows; ++j) mu_y[j] = e_yy[j] = acc_t(0);
#pragma unroll
  for (int kk = 0; kk < K + kRows - 1; ++kk) {
    const int at = (r0 + kk) * kTileW + lane;
    const acc_t a = h0[at], b = h1[at];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int k = kk - j;
      if (k >= 0 && k < K) {
        mu_y[j] += w[k] * a;
        e_yy[j] += w[k] * b;
      }
    }
  }
  // (h0/h1 are next written after the __syncthreads that follows the first prediction's load.)

  const int64_t g_end = min(G, (chunk + 1) * gp);
  for (int64_t g = chunk * gp; g < g_end; ++g) {
    const int64_t b = grp * G + g;
    acc_t v[3] = {acc_t(0), acc_t(0), acc_t(0)};  // sq, abs, ssim
    load_window<true>(pred + (b * C + c) * plane + corner, sx, sy, IH, IW, rows_left, cols_left, W, own_h, own_w,
                      v[0], v[1]);
    __syncthreads();
    for (int idx = threadIdx.x; idx < IH * kTileW; idx += kThreads) {
      const int off = (idx / kTileW) * IW + idx % kTileW;
      const acc_t* inx = sx + off;
      const acc_t* iny = sy + off;
      acc_t a = acc_t(0), bb = acc_t(0), cc = acc_t(0);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const acc_t x = inx[k], y = iny[k];
        a += w[k] * x;
        bb += w[k] * (x * x);
        cc += w[k] * (x * y);
      }
      h0[idx] = a;
      h1[idx] = bb;
      h2[idx] = cc;
    }
    __syncthreads();
    acc_t mu_x[kRows], e_xx[kRows], e_xy[kRows];
#pragma unroll
    for (int j = 0; j < kRows; ++j) mu_x[j] = e_xx[j] = e_xy[j] = acc_t(0);
#pragma unroll
    for (int kk = 0; kk < K + kRows - 1; ++kk) {
      const int at = (r0 + kk) * kTileW + lane;
      const acc_t a = h0[at], bb = h1[at], cc = h2[at];
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        const int k = kk - j;
        if (k >= 0 && k < K) {
          mu_x[j] += w[k] * a;
          e_xx[j] += w[k] * bb;
          e_xy[j] += w[k] * cc;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      if (r0 + j < oh && lane < ow) v[2] += ssim_pixel(mu_x[j], mu_y[j], e_xx[j], e_yy[j], e_xy[j]);
    }
    // red is rewritten only after two more barriers, which thread 0 reaches after reading it.
    block_sum<acc_t, 3>(v, red);
    if (threadIdx.x == 0) {
      const int64_t at = b * nblk + c * ntiles + tile;
#pragma unroll
      for (int q = 0; q < 3; ++q) partial[q * B * nblk + at] = static_cast<double>(v[q]);
    }
  }
}

// VEC consecutive frame values, loaded as one aligned access (16 bytes when VEC = 16 / sizeof(scalar)).
template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kThreads) frame_err_kernel(const scalar_t* __restrict__ pred,
                                                             const scalar_t* __restrict__ target, int64_t n,
                                                             int64_t G, int nblk, int64_t B,
                                                             double* __restrict__ partial) {
  __shared__ acc_t red[kWarps * 2];
  const int64_t b = blockIdx.x / nblk;
  const int j = static_cast<int>(blockIdx.x % nblk);
  using P = Pack<scalar_t, VEC>;
  const P* p = reinterpret_cast<const P*>(pred + b * n);
  const P* t = reinterpret_cast<const P*>(target + (b / G) * n);
  const int64_t npack = n / VEC;
  acc_t v[2] = {acc_t(0), acc_t(0)};  // sq, abs
  for (int64_t i = static_cast<int64_t>(j) * kThreads + threadIdx.x; i < npack;
       i += static_cast<int64_t>(nblk) * kThreads) {
    const P pv = p[i], tv = t[i];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const acc_t d = to_unit<acc_t>(pv.v[e]) - to_unit<acc_t>(tv.v[e]);
      v[0] += d * d;
      v[1] += fabs(d);
    }
  }
  block_sum<acc_t, 2>(v, red);
  if (threadIdx.x == 0) {
    partial[b * nblk + j] = static_cast<double>(v[0]);
    partial[(B + b) * nblk + j] = static_cast<double>(v[1]);
  }
}

// One block per prediction b: out_q[b] = (sum over j of partial[q][b][j], in double, fixed order) / count_q.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) frame_finalize_kernel(const double* __restrict__ partial, int64_t B,
                                                                  int64_t nblk, double n_err, double n_ssim,
                                                                  acc_t* __restrict__ sq, acc_t* __restrict__ ab,
                                                                  acc_t* __restrict__ ss) {
  __shared__ double red[kWarps * 3];
  const int64_t b = blockIdx.x;
  const int nq = ss != nullptr ? 3 : 2;
  double v[3] = {0.0, 0.0, 0.0};
  for (int q = 0; q < nq; ++q) {
    const double* row = partial + (q * B + b) * nblk;
    for (int64_t j = threadIdx.x; j < nblk; j += kThreads) v[q] += row[j];
  }
  block_sum<double, 3>(v, red);
  if (threadIdx.x == 0) {
    sq[b] = static_cast<acc_t>(v[0] / n_err);
    ab[b] = static_cast<acc_t>(v[1] / n_err);
    if (ss != nullptr) ss[b] = static_cast<acc_t>(v[2] / n_ssim);
  }
}

int device_attribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

template <typename scalar_t, typename acc_t, int KT>
void launch_ssim(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& window, int K, int64_t G,
                 int64_t blocks, int64_t gp, int64_t nchunk, int nth, int ntw, double* partial, cudaStream_t stream) {
  auto kernel = ssim_tile_kernel<scalar_t, acc_t, KT>;
  const int IH = kTileH + K - 1, IW = kTileW + K - 1;
  const size_t smem = sizeof(acc_t) * (kWinPad + 2 * IH * IW + 3 * IH * kTileW);
  if (smem > static_cast<size_t>(kSmallSmem)) {
    const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, pred.get_device());
    TORCH_CHECK(smem <= static_cast<size_t>(optin), "frame_metrics: window K = ", K, " needs ", smem,
                " bytes of shared memory per block, the device allows ", optin);
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  kernel<<<static_cast<unsigned int>(blocks), kThreads, smem, stream>>>(
      pred.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(), window.const_data_ptr<acc_t>(), K,
      static_cast<int>(pred.size(1)), static_cast<int>(pred.size(2)), static_cast<int>(pred.size(3)), G, gp, nchunk,
      nth, ntw, pred.size(0), partial);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> frame_metrics_cuda(const at::Tensor& pred, const at::Tensor& target,
                                                                  const at::Tensor& window, int64_t group_size,
                                                                  bool with_ssim) {
  rlvr_check_frames(pred, target, window, group_size, with_ssim);
  const c10::cuda::CUDAGuard guard(pred.device());
  const auto opts = pred.options().dtype(rlvr_acc_dtype(pred.scalar_type()));
  const int64_t B = pred.size(0), C = pred.size(1), H = pred.size(2), W = pred.size(3), G = group_size;
  at::Tensor sq = at::empty({B}, opts), ab = at::empty({B}, opts), ss = at::empty({with_ssim ? B : 0}, opts);
  if (B == 0) return {sq, ab, ss};
  TORCH_CHECK_VALUE(C <= INT_MAX && H <= INT_MAX && W <= INT_MAX, "frame_metrics: C, H, W must fit in int32, got ",
                    pred.sizes());
  const int device = pred.get_device();
  const int64_t sms = device_attribute(cudaDevAttrMultiProcessorCount, device);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto dopts = pred.options().dtype(at::kDouble);
  const double n_err = static_cast<double>(C * H * W);

  if (with_ssim) {
    const int64_t K = window.size(0);
    TORCH_CHECK_VALUE(K <= kMaxK, "frame_metrics (CUDA): window size K must be <= ", kMaxK, ", got ", K);
    const int64_t Hv = H - K + 1, Wv = W - K + 1;
    const int64_t nth = (Hv + kTileH - 1) / kTileH, ntw = (Wv + kTileW - 1) / kTileW;
    const int64_t nblk = C * nth * ntw;  // blocks per prediction
    TORCH_CHECK_VALUE(nblk <= INT_MAX, "frame_metrics: too many tiles per frame (", nblk, ")");
    const int64_t ngroups = B / G;
    // Predictions per block: the whole group, unless that leaves fewer than 8 blocks per SM.
    auto blocks_for = [&](int64_t gp) { return ngroups * ((G + gp - 1) / gp) * nblk; };
    int64_t gp = G;
    while (gp > 1 && blocks_for(gp) < 8 * sms) gp = (gp + 1) / 2;
    const int64_t nchunk = (G + gp - 1) / gp, blocks = blocks_for(gp);
    TORCH_CHECK_VALUE(blocks <= INT_MAX, "frame_metrics: grid of ", blocks, " blocks is too large");
    at::Tensor partial = at::empty({3, B, nblk}, dopts);  // [sq, abs, ssim][B][C * tiles]
    if (blocks > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, pred.scalar_type(), "frame_metrics_cuda",
                                      [&] {
                                        using acc_t = acc_type<scalar_t>;
                                        auto* pp = partial.mutable_data_ptr<double>();
                                        if (K == 11) {
                                          launch_ssim<scalar_t, acc_t, 11>(pred, target, window, 11, G, blocks, gp,
                                                                           nchunk, nth, ntw, pp, stream);
                                        } else {
                                          launch_ssim<scalar_t, acc_t, 0>(pred, target, window, static_cast<int>(K),
                                                                          G, blocks, gp, nchunk, nth, ntw, pp,
                                                                          stream);
                                        }
                                      });
    }
    const double n_ssim = static_cast<double>(C * Hv * Wv);
    AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "frame_metrics_finalize_cuda", [&] {
      frame_finalize_kernel<scalar_t><<<static_cast<unsigned int>(B), kThreads, 0, stream>>>(
          partial.const_data_ptr<double>(), B, nblk, n_err, n_ssim, sq.mutable_data_ptr<scalar_t>(),
          ab.mutable_data_ptr<scalar_t>(), ss.mutable_data_ptr<scalar_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {sq, ab, ss};
  }

  // Pixel-only path: per-image streaming with 16-byte packs where the layout allows.
  const int64_t n = C * H * W;
  const int64_t vec = 16 / static_cast<int64_t>(pred.element_size());
  const bool packed = n % vec == 0 && reinterpret_cast<uintptr_t>(pred.const_data_ptr()) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(target.const_data_ptr()) % 16 == 0;
  const int64_t npack = n / (packed ? vec : 1);
  const int64_t most = std::min<int64_t>(1024, std::max<int64_t>(1, (npack + kThreads - 1) / kThreads));
  const int64_t want = std::max((npack + 16 * kThreads - 1) / (16 * kThreads), (4 * sms + B - 1) / B);
  const int64_t nblk = std::clamp<int64_t>(want, 1, most);
  TORCH_CHECK_VALUE(B * nblk <= INT_MAX, "frame_metrics: grid of ", B * nblk, " blocks is too large");
  at::Tensor partial = at::empty({2, B, nblk}, dopts);  // [sq, abs][B][blocks per image]
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, pred.scalar_type(), "frame_metrics_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const unsigned int blocks = static_cast<unsigned int>(B * nblk);
    auto* pp = partial.mutable_data_ptr<double>();
    if (packed) {
      frame_err_kernel<scalar_t, acc_t, kVec><<<blocks, kThreads, 0, stream>>>(
          pred.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(), n, G, static_cast<int>(nblk), B, pp);
    } else {
      frame_err_kernel<scalar_t, acc_t, 1><<<blocks, kThreads, 0, stream>>>(
          pred.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(), n, G, static_cast<int>(nblk), B, pp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "frame_metrics_finalize_cuda", [&] {
    frame_finalize_kernel<scalar_t><<<static_cast<unsigned int>(B), kThreads, 0, stream>>>(
        partial.const_data_ptr<double>(), B, nblk, n_err, 0.0, sq.mutable_data_ptr<scalar_t>(),
        ab.mutable_data_ptr<scalar_t>(), nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sq, ab, ss};
}

}  // namespace
}  // namespace rlvr

TORCH_LIBRARY_IMPL(rlvr_world, CUDA, m) { m.impl("frame_metrics", &rlvr::frame_metrics_cuda); }
