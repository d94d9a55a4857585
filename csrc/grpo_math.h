// GRPO per-token math (DESIGN §5) and its analytic derivative w.r.t. the token log-prob.
// Shared by the CPU and CUDA ops; the Triton twin is kernels/grpo_terms.py. Ties follow the reference
// (ops/reference.py): the gradient flows through the unclipped branch, clamps pass the gradient on
// their closed interval, as torch.clamp does.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define RLVR_HD __host__ __device__ __forceinline__
#else
#define RLVR_HD inline
#endif

namespace rlvr {

struct GRPOParams {
  double clip_low, clip_high, clip_c, kl_coef, scale;  // scale = 1 / num_tokens
  bool has_ref;
};

// Flag bits of GRPOTerms::flags.
constexpr int kClippedLow = 1, kClippedHigh = 2, kClippedDual = 4;

template <typename acc_t>
struct GRPOTerms {
  acc_t coef;   // d(loss)/d(logp) including mask and scale
  acc_t loss;   // pg + kl_coef * kl (unmasked, unscaled)
  acc_t ratio;  // exp(clamp(logp - old_logp, -20, 20))
  acc_t kl;     // k3, 0 without a reference
  int flags;    // kClipped* bits
};

template <typename acc_t>
RLVR_HD acc_t clamp_(acc_t x, acc_t lo, acc_t hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

template <typename acc_t>
RLVR_HD GRPOTerms<acc_t> grpo_token(acc_t logp, acc_t old_logp, acc_t adv, bool mask, acc_t ref_logp,
                                    const GRPOParams& p) {
  const acc_t lo = acc_t(1) - acc_t(p.clip_low), hi = acc_t(1) + acc_t(p.clip_high);
  const acc_t lr_raw = logp - old_logp;
  const acc_t ratio = exp(clamp_(lr_raw, acc_t(-20), acc_t(20)));
  const acc_t pg_unclipped = -adv * ratio;
  const acc_t pg_clipped = -adv * clamp_(ratio, lo, hi);
  const bool clip_wins = pg_clipped > pg_unclipped;
  acc_t pg = clip_wins ? pg_clipped : pg_unclipped;
  const acc_t pg_dual = -adv * acc_t(p.clip_c);
  const bool dual_wins = adv < acc_t(0) && pg_dual < pg;
  // d pg / d ratio through the branch that won
  acc_t dpg = clip_wins ? ((ratio >= lo && ratio <= hi) ? -adv : acc_t(0)) : -adv;
  if (dual_wins) {
    pg = pg_dual;
    dpg = acc_t(0);
  }
  const acc_t dratio = (lr_raw >= acc_t(-20) && lr_raw <= acc_t(20)) ? ratio : acc_t(0);
  acc_t grad = dpg * dratio;
  acc_t kl = acc_t(0);
  if (p.has_ref) {
    const acc_t k_raw = ref_logp - logp;
    const acc_t k = clamp_(k_raw, acc_t(-20), acc_t(20));
    const acc_t ek = exp(k);
    const acc_t kl_raw = ek - k - acc_t(1);
    kl = clamp_(kl_raw, acc_t(-10), acc_t(10));
    const bool pass = k_raw >= acc_t(-20) && k_raw <= acc_t(20) && kl_raw >= acc_t(-10) && kl_raw <= acc_t(10);
    grad += acc_t(p.kl_coef) * (pass ? (acc_t(1) - ek) : acc_t(0));  // d kl / d logp = -(e^k - 1)
  }
  GRPOTerms<acc_t> t;
  t.loss = pg + (p.has_ref ? acc_t(p.kl_coef) * kl : acc_t(0));
  t.coef = mask ? grad * acc_t(p.scale) : acc_t(0);
  t.ratio = ratio;
  t.kl = kl;
  t.flags = dual_wins ? kClippedDual : (clip_wins ? (ratio < lo ? kClippedLow : (ratio > hi ? kClippedHigh : 0)) : 0);
  return t;
}

}  // namespace rlvr
