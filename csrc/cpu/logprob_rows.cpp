// CPU kernels of the row ops (schemas in rlvr_world/ops/_library.py):
//   row_logprobs(logits[N,V], tokens[N], inv_temperature) -> (logp[N], lse[N])
//   row_logprobs_backward_(logits[N,V]!, tokens, lse, coef, inv_temperature, with_target)
//       logits <- coef * ([onehot(token)] - softmax(logits * inv_t)) * inv_t   (in place)
//   grpo_token_terms(logp, old_logp, advantages, mask, ref_logp?, ...) -> (coef, loss, ratio, kl, flags)
//
// Rows are split over threads with at::parallel_for. fp32 rows (the fused paths' CPU compute dtype)
// use ATen's Vectorized<float> explicitly: AVX2 lanes and Sleef's 1-ulp exp when built with -mavx2
// (CMake's default on x86-64), plain-width lanes otherwise; the sum of exponentials is taken in fp32
// lanes over blocks of 512 values and carried in fp64, so |Δlogp| stays ~1e-7 at V = 150k. Other
// dtypes (fp64, and bf16/fp16 logits given to grpo_loss_from_logits) take a scalar loop in their
// accumulation type.
#include "vec.h"  // first: it sets the vector ISA of ATen's Vectorized

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>

#include "../checks.h"
#include "../grpo_math.h"

namespace rlvr {
namespace {

using FVec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = FVec::size();

inline float lanes_max(FVec v) {
  float buf[kLanes];
  v.store(buf);
  return *std::max_element(buf, buf + kLanes);
}

inline double lanes_sum(FVec v) {
  float buf[kLanes];
  v.store(buf);
  double s = 0.0;
  for (int64_t i = 0; i < kLanes; ++i) s += buf[i];
  return s;
}

// log-sum-exp of x * inv_t over one fp32 row.
inline float row_lse_f32(const float* x, int64_t V, float inv_t) {
  const FVec vinv(inv_t);
  const int64_t body = V / kLanes * kLanes;
  FVec vmax(-std::numeric_limits<float>::infinity());
  for (int64_t v = 0; v < body; v += kLanes) vmax = at::vec::maximum(vmax, FVec::loadu(x + v) * vinv);
  float m = lanes_max(vmax);
  for (int64_t v = body; v < V; ++v) m = std::max(m, x[v] * inv_t);
  if (!std::isfinite(m)) return m;  // all -inf (or a +inf/nan logit): propagate
  const FVec vm(m);
  double s = 0.0;
  for (int64_t start = 0; start < body; start += 64 * kLanes) {
    const int64_t stop = std::min(body, start + 64 * kLanes);
    FVec acc(0.0f);
    for (int64_t v = start; v < stop; v += kLanes) acc += (FVec::loadu(x + v) * vinv - vm).exp();
    s += lanes_sum(acc);
  }
  for (int64_t v = body; v < V; ++v) s += std::exp(x[v] * inv_t - m);
  return m + static_cast<float>(std::log(s));
}

// row <- -g * exp(row * inv_t - lse), in place, over one fp32 row.
inline void row_neg_softmax_f32(float* x, int64_t V, float inv_t, float g, float lse) {
  const FVec vinv(inv_t), vlse(lse), vneg_g(-g);
  const int64_t body = V / kLanes * kLanes;
  for (int64_t v = 0; v < body; v += kLanes) (vneg_g * (FVec::loadu(x + v) * vinv - vlse).exp()).store(x + v);
  for (int64_t v = body; v < V; ++v) x[v] = -g * std::exp(x[v] * inv_t - lse);
}

// The same two passes for any other dtype, in its accumulation type.
template <typename scalar_t, typename acc_t>
inline acc_t row_lse(const scalar_t* x, int64_t V, acc_t inv_t) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return row_lse_f32(x, V, inv_t);
  } else {
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<acc_t>(x[v]) * inv_t);
    if (!std::isfinite(m)) return m;
    double s = 0.0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<acc_t>(x[v]) * inv_t - m);
    return m + static_cast<acc_t>(std::log(s));
  }
}

template <typename scalar_t, typename acc_t>
inline void row_neg_softmax(scalar_t* x, int64_t V, acc_t inv_t, acc_t g, acc_t lse) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    row_neg_softmax_f32(x, V, inv_t, g, lse);
  } else {
    for (int64_t v = 0; v < V; ++v) x[v] = static_cast<scalar_t>(-g * std::exp(static_cast<acc_t>(x[v]) * inv_t - lse));
  }
}

template <typename scalar_t>
void row_logprobs_impl(const at::Tensor& logits, const at::Tensor& tokens, double inv_temperature,
                       at::Tensor& logp, at::Tensor& lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const int64_t* tok = tokens.const_data_ptr<int64_t>();
  acc_t* lp = logp.mutable_data_ptr<acc_t>();
  acc_t* ls = lse.mutable_data_ptr<acc_t>();
  const acc_t inv_t = static_cast<acc_t>(inv_temperature);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* row = x + n * ld;
      const acc_t l = row_lse<scalar_t, acc_t>(row, V, inv_t);
      ls[n] = l;
      lp[n] = static_cast<acc_t>(row[tok[n]]) * inv_t - l;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> row_logprobs_cpu(const at::Tensor& logits, const at::Tensor& tokens,
                                                     double inv_temperature) {
  rlvr_check_rows(logits, tokens);
  auto opts = logits.options().dtype(rlvr_acc_dtype(logits.scalar_type()));
  at::Tensor logp = at::empty({logits.size(0)}, opts), lse = at::empty({logits.size(0)}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "row_logprobs_cpu", [&] {
    row_logprobs_impl<scalar_t>(logits, tokens, inv_temperature, logp, lse);
  });
  return {logp, lse};
}

template <typename scalar_t>
void row_backward_impl(at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& lse,
                       const at::Tensor& coef, double inv_temperature, bool with_target) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  scalar_t* x = logits.mutable_data_ptr<scalar_t>();
  const int64_t* tok = tokens.const_data_ptr<int64_t>();
  const acc_t* ls = lse.const_data_ptr<acc_t>();
  const acc_t* cf = coef.const_data_ptr<acc_t>();
  const acc_t inv_t = static_cast<acc_t>(inv_temperature);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      scalar_t* row = x + n * ld;
      const acc_t g = cf[n] * inv_t, l = ls[n];
      if (g == acc_t(0)) {  // masked or fully clipped row: exact zeros, no exp
        std::fill(row, row + V, scalar_t(0));
        continue;
      }
      const acc_t target = (with_target ? g : acc_t(0)) - g * std::exp(static_cast<acc_t>(row[tok[n]]) * inv_t - l);
      row_neg_softmax<scalar_t, acc_t>(row, V, inv_t, g, l);
      row[tok[n]] = static_cast<scalar_t>(target);
    }
  });
}

void row_logprobs_backward_cpu(at::Tensor logits, const at::Tensor& tokens, const at::Tensor& lse,
                               const at::Tensor& coef, double inv_temperature, bool with_target) {
  rlvr_check_rows(logits, tokens);
  RLVR_CHECK_ROW_VECTOR(lse, logits);
  RLVR_CHECK_ROW_VECTOR(coef, logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "row_logprobs_backward_cpu",
                                  [&] { row_backward_impl<scalar_t>(logits, tokens, lse, coef, inv_temperature, with_target); });
}

template <typename acc_t>
void grpo_terms_impl(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv,
                     const at::Tensor& mask, const std::optional<at::Tensor>& ref, const GRPOParams& p,
                     at::Tensor& coef, at::Tensor& loss, at::Tensor& ratio, at::Tensor& kl, at::Tensor& flags) {
  const acc_t *lp = logp.const_data_ptr<acc_t>(), *old = old_logp.const_data_ptr<acc_t>(),
              *a = adv.const_data_ptr<acc_t>();
  const acc_t* r = p.has_ref ? ref->const_data_ptr<acc_t>() : nullptr;
  const bool* m = mask.const_data_ptr<bool>();
  acc_t *cf = coef.mutable_data_ptr<acc_t>(), *ls = loss.mutable_data_ptr<acc_t>(),
        *ra = ratio.mutable_data_ptr<acc_t>(), *k = kl.mutable_data_ptr<acc_t>();
  uint8_t* fl = flags.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, logp.size(0), 2048, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const GRPOTerms<acc_t> t = grpo_token<acc_t>(lp[n], old[n], a[n], m[n], r ? r[n] : acc_t(0), p);
      cf[n] = t.coef;
      ls[n] = t.loss;
      ra[n] = t.ratio;
      k[n] = t.kl;
      fl[n] = static_cast<uint8_t>(t.flags);
    }
  });
}

RlvrGRPOTermsOut grpo_token_terms_cpu(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& advantages,
                                      const at::Tensor& mask, const std::optional<at::Tensor>& ref_logp,
                                      double clip_low, double clip_high, double clip_c, double kl_coef, double scale) {
  rlvr_check_grpo_terms(logp, old_logp, advantages, mask, ref_logp);
  const GRPOParams p{clip_low, clip_high, clip_c, kl_coef, scale, ref_logp.has_value()};
  RlvrGRPOTermsOut out = rlvr_empty_grpo_terms(logp);
  auto& [coef, loss, ratio, kl, flags] = out;
  AT_DISPATCH_FLOATING_TYPES(logp.scalar_type(), "grpo_token_terms_cpu", [&] {
    grpo_terms_impl<scalar_t>(logp, old_logp, advantages, mask, ref_logp, p, coef, loss, ratio, kl, flags);
  });
  return out;
}

}  // namespace
}  // namespace rlvr

TORCH_LIBRARY_IMPL(rlvr_world, CPU, m) {
  m.impl("row_logprobs", &rlvr::row_logprobs_cpu);
  m.impl("row_logprobs_backward_", &rlvr::row_logprobs_backward_cpu);
  m.impl("grpo_token_terms", &rlvr::grpo_token_terms_cpu);
}
