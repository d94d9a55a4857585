// CUDA kernel of the sampler (schema in rlvr_world/ops/_library.py; semantics in ops/sample_tokens.py; CPU
// twin csrc/cpu/sample_tokens.cpp; the Triton kernel kernels/sample_tokens.py is the same algorithm).
//
//   sample_tokens(logits[B,V], offset[B] int64, seed, inv_temperature, top_k, top_p) -> (tokens[B], logp[B])
//
// One block per row, each thread a strided slice of the vocab (the row stays in L1/L2 between passes):
// max and key range; top-k threshold by bisection on the order-preserving integer key of x (counts);
// top-p threshold by bisection on the key (masked sums of exp); then Z and the Gumbel argmax (first index
// on ties) with Philox-4x32-10 keyed (seed, offset[b], v). Accumulation in fp32 (fp64 for fp64 logits),
// exact expf/logf (no fast-math). Scalars come as kernel arguments and offsets from device memory, so the
// launch is CUDA-graph safe.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../checks.h"

namespace rlvr {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr uint32_t kSampleStream = 0x736D706Cu;

__device__ __forceinline__ uint32_t philox_word0(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                                 uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

template <typename acc_t>
__device__ __forceinline__ acc_t gumbel(uint32_t r) {
  const acc_t u = static_cast<acc_t>(static_cast<int32_t>((r >> 9) * 2u + 1u)) * static_cast<acc_t>(1.0 / 16777216.0);
  return -log(-log(u));
}

template <typename acc_t>
__device__ __forceinline__ int64_t order_key(acc_t x) {
  if constexpr (sizeof(acc_t) == 8) {
    const long long b = __double_as_longlong(x);
    return x == 0 ? 0 : (b >= 0 ? b : b ^ 0x7FFFFFFFFFFFFFFFLL);
  } else {
    const int b = __float_as_int(x);
    return x == 0 ? 0 : static_cast<int64_t>(b >= 0 ? b : b ^ 0x7FFFFFFF);
  }
}

struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct Min {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a < b ? a : b; }
};

// Block-wide reduction; every thread gets the result. `scratch` holds kWarps values of T.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* scratch) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffff, v, off));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, scratch[w]);
  return r;
}

// Block-wide argmax of (score, index): the larger score, the smaller index on ties; -1 index = none.
template <typename acc_t>
__device__ void block_argmax(acc_t& score, int64_t& idx, acc_t* s_scratch, int64_t* i_scratch) {
  auto better = [](acc_t s, int64_t i, acc_t bs, int64_t bi) {
    return bi < 0 || (i >= 0 && (s > bs || (s == bs && i < bi)));
  };
  for (int off = 16; off > 0; off >>= 1) {
    const acc_t s = __shfl_xor_sync(0xffffffff, score, off);
    const int64_t i = __shfl_xor_sync(0xffffffff, idx, off);
    if (better(s, i, score, idx)) score = s, idx = i;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) s_scratch[warp] = score, i_scratch[warp] = idx;
  __syncthreads();
  score = s_scratch[0];
  idx = i_scratch[0];
  for (int w = 1; w < kWarps; ++w)
    if (better(s_scratch[w], i_scratch[w], score, idx)) score = s_scratch[w], idx = i_scratch[w];
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) sample_tokens_kernel(
    const scalar_t* __restrict__ logits, int64_t ld, const int64_t* __restrict__ offset, int64_t V, uint32_t k0,
    uint32_t k1, acc_t inv_t, int64_t top_k, acc_t top_p, bool has_k, bool has_p, int niter,
    int64_t* __restrict__ tokens, acc_t* __restrict__ logp) {
  __shared__ acc_t acc_scratch[kWarps];
  __shared__ int64_t key_scratch[kWarps];
  const int64_t row = blockIdx.x;
  const scalar_t* x = logits + row * ld;
  const uint64_t off = static_cast<uint64_t>(offset[row]);
  auto load = [&](int64_t v) { return static_cast<acc_t>(x[v]); };

  acc_t xmax = -INFINITY;
  int64_t kmin = INT64_MAX, kmax = INT64_MIN;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const acc_t xv = load(v);
    const int64_t k = order_key(xv);
    xmax = xv > xmax ? xv : xmax;
    kmin = k < kmin ? k : kmin;
    kmax = k > kmax ? k : kmax;
  }
  xmax = block_reduce(xmax, Max(), acc_scratch);
  kmin = block_reduce(kmin, Min(), key_scratch);
  kmax = block_reduce(kmax, Max(), key_scratch);
  const acc_t smax = xmax * inv_t;
  int64_t tau = kmin;
  if (has_k) {  // the largest T with #{key >= T} >= k
    int64_t lo = kmin, hi = kmax;
    for (int it = 0; it < niter && lo < hi; ++it) {
      const int64_t mid = (lo >> 1) + (hi >> 1) + ((lo | hi) & 1);
      int64_t count = 0;
      for (int64_t v = threadIdx.x; v < V; v += kThreads) count += order_key(load(v)) >= mid;
      if (block_reduce(count, Sum(), key_scratch) >= top_k) lo = mid; else hi = mid - 1;
    }
    tau = lo;
  }
  if (has_p) {  // the smallest T with mass{key > T, key >= tau_k} < p * Z_k
    acc_t zk = 0;
    for (int64_t v = threadIdx.x; v < V; v += kThreads) {
      const acc_t xv = load(v);
      if (order_key(xv) >= tau) zk += exp(xv * inv_t - smax);
    }
    const acc_t limit = top_p * block_reduce(zk, Sum(), acc_scratch);
    int64_t lo = tau - 1, hi = kmax;
    for (int it = 0; it < niter && hi - lo > 1; ++it) {
      const int64_t mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1);
      acc_t mass = 0;
      for (int64_t v = threadIdx.x; v < V; v += kThreads) {
        const acc_t xv = load(v);
        const int64_t k = order_key(xv);
        if (k >= tau && k > mid) mass += exp(xv * inv_t - smax);
      }
      if (block_reduce(mass, Sum(), acc_scratch) < limit) hi = mid; else lo = mid;
    }
    tau = tau > hi ? tau : hi;
  }
  acc_t z = 0, best = -INFINITY;
  int64_t tok = -1;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const acc_t xv = load(v);
    if (order_key(xv) < tau || xv != xv) continue;
    const acc_t s = xv * inv_t;
    z += exp(s - smax);
    const acc_t score = s + gumbel<acc_t>(philox_word0(static_cast<uint32_t>(v), static_cast<uint32_t>(off),
                                                       static_cast<uint32_t>(off >> 32), kSampleStream, k0, k1));
    if (tok < 0 || score > best) best = score, tok = v;  // v ascends per thread: first index on ties
  }
  z = block_reduce(z, Sum(), acc_scratch);
  block_argmax(best, tok, acc_scratch, key_scratch);
  if (threadIdx.x == 0) {
    if (tok < 0) tok = 0;
    tokens[row] = tok;
    logp[row] = (load(tok) * inv_t - smax) - log(z);
  }
}

std::tuple<at::Tensor, at::Tensor> sample_tokens_cuda(const at::Tensor& logits, const at::Tensor& offset, int64_t seed,
                                                       double inv_temperature, int64_t top_k, double top_p) {
  RLVR_CHECK_DIM(logits, 2);
  RLVR_CHECK_FLOATING(logits);
  RLVR_CHECK_LAST_DIM_CONTIGUOUS(logits);
  TORCH_CHECK_VALUE(logits.size(1) > 0, "logits must have at least one vocab entry, got shape ", logits.sizes());
  RLVR_CHECK_SHAPE(offset, logits.size(0));
  RLVR_CHECK_DTYPE(offset, at::kLong);
  RLVR_CHECK_DEVICE(offset, logits);
  RLVR_CHECK_CONTIGUOUS(offset);
  TORCH_CHECK_VALUE(inv_temperature > 0 && std::isfinite(inv_temperature),
                    "inv_temperature must be finite and > 0, got ", inv_temperature);
  TORCH_CHECK_VALUE(top_k >= 0 && top_k <= logits.size(1), "top_k must be in [0, V = ", logits.size(1), "], got ", top_k);
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got ", top_p);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  at::Tensor tokens = at::empty({B}, logits.options().dtype(at::kLong));
  at::Tensor logp = at::empty({B}, logits.options().dtype(rlvr_acc_dtype(logits.scalar_type())));
  if (B == 0) return {tokens, logp};
  const uint64_t s = static_cast<uint64_t>(seed);
  const bool has_k = top_k > 0 && top_k < V, has_p = top_p < 1.0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "sample_tokens_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    sample_tokens_kernel<scalar_t, acc_t><<<B, kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), logits.stride(0), offset.const_data_ptr<int64_t>(), V,
        static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), static_cast<acc_t>(inv_temperature), top_k,
        static_cast<acc_t>(top_p), has_k, has_p, sizeof(acc_t) == 8 ? 65 : 33, tokens.mutable_data_ptr<int64_t>(),
        logp.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {tokens, logp};
}

}  // namespace
}  // namespace rlvr

TORCH_LIBRARY_IMPL(rlvr_world, CUDA, m) { m.impl("sample_tokens", &rlvr::sample_tokens_cuda); }
