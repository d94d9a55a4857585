// CPU kernel of the sampler (schema in rlvr_world/ops/_library.py, semantics in ops/sample_tokens.py):
//   sample_tokens(logits[B,V], offset[B] int64, seed, inv_temperature, top_k, top_p) -> (tokens[B] int64, logp[B])
//
// Per row, in the accumulation type (fp32; fp64 for fp64 logits), all in a thread-local buffer:
//   1. max of x (the tempered max is max(x) * inv_t: rounding is monotone);
//   2. top-k threshold tau_k = the k-th largest x by std::nth_element (O(V));
//   3. top-p: only the top-k candidates are sorted (descending), and scanned by tie groups while the mass
//      strictly above the group is < p * Z_k (the crossing group kept), stopping at the first group that
//      fails; exps are taken only up to there;
//   4. Gumbel-max over the kept tokens x >= tau: argmax of x * inv_t - log(-log(u)), first index on ties,
//      with u from Philox-4x32-10 keyed (seed, offset[b], v) -- Philox runs only for kept tokens;
//   5. logp = x_tok * inv_t - max - log(Z_kept).
// Sums are carried in fp64. Rows are split over threads with at::parallel_for; each row's result depends
// on that row (and offset[b]) only, so the result does not depend on the thread count or the batch.
#include "vec.h"  // first: it sets the vector ISA of ATen's Vectorized

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "../checks.h"

namespace rlvr {
namespace {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;
constexpr uint32_t kSampleStream = 0x736D706Cu;  // counter word c3 of every sampler draw ("smpl")

// Word 0 of Philox-4x32-10 at counter (c0, c1, c2, c3) under key (k0, k1).
inline uint32_t philox_word0(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0, p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return c0;
}

// Gumbel noise -log(-log(u)), u = (2 * (r >> 9) + 1) / 2^24 in (0, 1), exact in fp32.
template <typename acc_t>
inline acc_t gumbel(uint32_t r) {
  const acc_t u = static_cast<acc_t>(static_cast<int32_t>((r >> 9) * 2u + 1u)) * static_cast<acc_t>(1.0 / 16777216.0);
  return -std::log(-std::log(u));
}

struct SampleParams {
  uint32_t k0, k1;  // seed halves
  int64_t top_k;
  double top_p, inv_t;
};

template <typename scalar_t, typename acc_t>
void sample_row(const scalar_t* row, int64_t V, uint64_t offset, const SampleParams& p, std::vector<acc_t>& buf,
                int64_t& token, acc_t& logp) {
  const acc_t inv_t = static_cast<acc_t>(p.inv_t);
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  buf.resize(V);
  acc_t xmax = neg_inf;
  for (int64_t v = 0; v < V; ++v) {
    buf[v] = static_cast<acc_t>(row[v]);
    xmax = std::max(xmax, buf[v]);
  }
  const acc_t smax = xmax * inv_t;
  auto weight = [&](acc_t x) { return static_cast<double>(std::exp(x * inv_t - smax)); };

  acc_t tau = neg_inf;  // keep x >= tau
  if (p.top_k > 0 && p.top_k < V) {
    std::vector<acc_t> sel(buf);
    std::nth_element(sel.begin(), sel.begin() + (p.top_k - 1), sel.end(), std::greater<acc_t>());
    tau = sel[p.top_k - 1];
  }
  if (p.top_p < 1.0) {
    std::vector<acc_t> cand;
    cand.reserve(p.top_k > 0 ? p.top_k : V);
    double z = 0.0;
    for (int64_t v = 0; v < V; ++v) {
      if (buf[v] >= tau) {
        cand.push_back(buf[v]);
        z += weight(buf[v]);
      }
    }
    std::sort(cand.begin(), cand.end(), std::greater<acc_t>());
    const acc_t limit = static_cast<acc_t>(p.top_p) * static_cast<acc_t>(z);
    double above = 0.0;  // mass strictly above the current tie group
    acc_t tau_p = cand.empty() ? tau : cand[0];
    for (size_t i = 0; i < cand.size();) {
      if (!(static_cast<acc_t>(above) < limit)) break;
      tau_p = cand[i];
      for (; i < cand.size() && cand[i] == tau_p; ++i) above += weight(cand[i]);
    }
    tau = std::max(tau, tau_p);
  }

  const uint32_t c1 = static_cast<uint32_t>(offset), c2 = static_cast<uint32_t>(offset >> 32);
  double z = 0.0;
  acc_t best = neg_inf;
  int64_t tok = -1;
  for (int64_t v = 0; v < V; ++v) {
    const acc_t x = buf[v];
    if (!(x >= tau)) continue;
    z += weight(x);
    const acc_t score = x * inv_t + gumbel<acc_t>(philox_word0(static_cast<uint32_t>(v), c1, c2, kSampleStream, p.k0, p.k1));
    if (tok < 0 || score > best) {
      best = score;
      tok = v;
    }
  }
  if (tok < 0) tok = 0;  // no comparable logit (all NaN): undefined, stay in range
  token = tok;
  logp = (buf[tok] * inv_t - smax) - static_cast<acc_t>(std::log(z));
}

template <typename scalar_t>
void sample_impl(const at::Tensor& logits, const at::Tensor& offset, const SampleParams& p, at::Tensor& tokens,
                 at::Tensor& logp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const int64_t* off = offset.const_data_ptr<int64_t>();
  int64_t* tk = tokens.mutable_data_ptr<int64_t>();
  acc_t* lp = logp.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf;
    for (int64_t b = begin; b < end; ++b) {
      sample_row<scalar_t, acc_t>(x + b * ld, V, static_cast<uint64_t>(off[b]), p, buf, tk[b], lp[b]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> sample_tokens_cpu(const at::Tensor& logits, const at::Tensor& offset, int64_t seed,
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
  const uint64_t s = static_cast<uint64_t>(seed);
  const SampleParams p{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), top_k, top_p, inv_temperature};
  at::Tensor tokens = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  at::Tensor logp = at::empty({logits.size(0)}, logits.options().dtype(rlvr_acc_dtype(logits.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "sample_tokens_cpu", [&] {
    sample_impl<scalar_t>(logits, offset, p, tokens, logp);
  });
  return {tokens, logp};
}

}  // namespace
}  // namespace rlvr

TORCH_LIBRARY_IMPL(rlvr_world, CPU, m) { m.impl("sample_tokens", &rlvr::sample_tokens_cpu); }
