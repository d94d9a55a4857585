// CUDA kernels of the row ops (schemas in rlvr_world/ops/_library.py; CPU twins in csrc/cpu/).
//
//   row_logprobs           one block per row: each thread keeps an online (max, sum-exp) over a strided
//                          slice of the vocab, then a warp-shuffle + shared-memory merge of the pairs.
//   row_logprobs_backward_ one block per row: logits <- coef * ([onehot] - softmax) * inv_t, in place.
//   grpo_token_terms       elementwise, grpo_math.h per token.
//
// Accumulation in fp32 (fp64 for fp64 logits), exact expf (no fast-math: |Δlogp| must stay ~1e-6).
// Grids are 1-D over rows/tokens, so N is bounded only by 2^31 - 1 blocks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <cmath>
#include <optional>

#include "../checks.h"
#include "../grpo_math.h"

namespace rlvr {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

template <typename acc_t>
struct MaxSum {
  acc_t m, s;  // running max and sum of exp(x - m)
};

template <typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> merge(MaxSum<acc_t> a, MaxSum<acc_t> b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const acc_t m = a.m > b.m ? a.m : b.m;
  return {m, a.s * exp(a.m - m) + b.s * exp(b.m - m)};
}

// Block-wide merge of the per-thread pairs; every thread gets the row's result.
template <typename acc_t>
__device__ MaxSum<acc_t> block_merge(MaxSum<acc_t> v) {
  __shared__ acc_t sm[kWarps], ss[kWarps];
  for (int off = 16; off > 0; off >>= 1) {
    MaxSum<acc_t> o{__shfl_xor_sync(0xffffffff, v.m, off), __shfl_xor_sync(0xffffffff, v.s, off)};
    v = merge(v, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = v.m;
    ss[warp] = v.s;
  }
  __syncthreads();
  MaxSum<acc_t> r{acc_t(-INFINITY), acc_t(0)};
  for (int w = 0; w < kWarps; ++w) r = merge(r, MaxSum<acc_t>{sm[w], ss[w]});
  return r;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) row_logprobs_kernel(const scalar_t* __restrict__ logits, int64_t ld,
                                                                const int64_t* __restrict__ tokens, acc_t inv_t,
                                                                int64_t V, acc_t* __restrict__ logp,
                                                                acc_t* __restrict__ lse) {
  const int64_t row = blockIdx.x;
  const scalar_t* x = logits + row * ld;
  MaxSum<acc_t> v{acc_t(-INFINITY), acc_t(0)};
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const acc_t xi = static_cast<acc_t>(x[i]) * inv_t;
    if (xi == acc_t(-INFINITY)) continue;  // a masked-out vocab entry adds nothing (and no NaN)
    if (xi > v.m) {
      v.s = v.s * exp(v.m - xi) + acc_t(1);
      v.m = xi;
    } else {
      v.s += exp(xi - v.m);
    }
  }
  const MaxSum<acc_t> r = block_merge(v);
  if (threadIdx.x == 0) {
    const acc_t l = r.m + log(r.s);
    lse[row] = l;
    logp[row] = static_cast<acc_t>(x[tokens[row]]) * inv_t - l;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) row_backward_kernel(scalar_t* __restrict__ logits, int64_t ld,
                                                                const int64_t* __restrict__ tokens,
                                                                const acc_t* __restrict__ lse,
                                                                const acc_t* __restrict__ coef, acc_t inv_t,
                                                                int64_t V, bool with_target) {
  const int64_t row = blockIdx.x;
  scalar_t* x = logits + row * ld;
  const acc_t g = coef[row] * inv_t, l = lse[row];
  const int64_t tok = tokens[row];
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const acc_t gp = g * exp(static_cast<acc_t>(x[i]) * inv_t - l);
    x[i] = static_cast<scalar_t>(with_target && i == tok ? g - gp : -gp);
  }
}

template <typename acc_t>
__global__ void grpo_terms_kernel(const acc_t* __restrict__ logp, const acc_t* __restrict__ old,
                                  const acc_t* __restrict__ adv, const bool* __restrict__ mask,
                                  const acc_t* __restrict__ ref, GRPOParams p, int64_t n, acc_t* __restrict__ coef,
                                  acc_t* __restrict__ loss, acc_t* __restrict__ ratio, acc_t* __restrict__ kl,
                                  uint8_t* __restrict__ flags) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const GRPOTerms<acc_t> t = grpo_token<acc_t>(logp[i], old[i], adv[i], mask[i], ref ? ref[i] : acc_t(0), p);
  coef[i] = t.coef;
  loss[i] = t.loss;
  ratio[i] = t.ratio;
  kl[i] = t.kl;
  flags[i] = static_cast<uint8_t>(t.flags);
}

std::tuple<at::Tensor, at::Tensor> row_logprobs_cuda(const at::Tensor& logits, const at::Tensor& tokens,
                                                      double inv_temperature) {
  rlvr_check_rows(logits, tokens);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto opts = logits.options().dtype(rlvr_acc_dtype(logits.scalar_type()));
  const int64_t N = logits.size(0), V = logits.size(1);
  at::Tensor logp = at::empty({N}, opts), lse = at::empty({N}, opts);
  if (N == 0) return {logp, lse};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "row_logprobs_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    row_logprobs_kernel<scalar_t, acc_t><<<N, kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), logits.stride(0), tokens.const_data_ptr<int64_t>(),
        static_cast<acc_t>(inv_temperature), V, logp.mutable_data_ptr<acc_t>(), lse.mutable_data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {logp, lse};
}

void row_logprobs_backward_cuda(at::Tensor logits, const at::Tensor& tokens, const at::Tensor& lse,
                                const at::Tensor& coef, double inv_temperature, bool with_target) {
  rlvr_check_rows(logits, tokens);
  RLVR_CHECK_ROW_VECTOR(lse, logits);
  RLVR_CHECK_ROW_VECTOR(coef, logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "row_logprobs_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    row_backward_kernel<scalar_t, acc_t><<<N, kThreads, 0, stream>>>(
        logits.mutable_data_ptr<scalar_t>(), logits.stride(0), tokens.const_data_ptr<int64_t>(),
        lse.const_data_ptr<acc_t>(), coef.const_data_ptr<acc_t>(), static_cast<acc_t>(inv_temperature), V, with_target);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

RlvrGRPOTermsOut grpo_token_terms_cuda(const at::Tensor& logp, const at::Tensor& old_logp,
                                       const at::Tensor& advantages, const at::Tensor& mask,
                                       const std::optional<at::Tensor>& ref_logp, double clip_low, double clip_high,
                                       double clip_c, double kl_coef, double scale) {
  rlvr_check_grpo_terms(logp, old_logp, advantages, mask, ref_logp);
  const c10::cuda::CUDAGuard guard(logp.device());
  const bool has_ref = ref_logp.has_value();
  const GRPOParams p{clip_low, clip_high, clip_c, kl_coef, scale, has_ref};
  RlvrGRPOTermsOut out = rlvr_empty_grpo_terms(logp);
  auto& [coef, loss, ratio, kl, flags] = out;
  const int64_t n = logp.numel();
  if (n == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  AT_DISPATCH_FLOATING_TYPES(logp.scalar_type(), "grpo_token_terms_cuda", [&] {
    grpo_terms_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        logp.const_data_ptr<scalar_t>(), old_logp.const_data_ptr<scalar_t>(), advantages.const_data_ptr<scalar_t>(),
        mask.const_data_ptr<bool>(), has_ref ? ref_logp->const_data_ptr<scalar_t>() : nullptr, p, n,
        coef.mutable_data_ptr<scalar_t>(), loss.mutable_data_ptr<scalar_t>(), ratio.mutable_data_ptr<scalar_t>(),
        kl.mutable_data_ptr<scalar_t>(), flags.mutable_data_ptr<uint8_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace rlvr

TORCH_LIBRARY_IMPL(rlvr_world, CUDA, m) {
  m.impl("row_logprobs", &rlvr::row_logprobs_cuda);
  m.impl("row_logprobs_backward_", &rlvr::row_logprobs_backward_cuda);
  m.impl("grpo_token_terms", &rlvr::grpo_token_terms_cuda);
}
