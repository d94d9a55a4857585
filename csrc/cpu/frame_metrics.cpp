// CPU kernel of frame_metrics (schema and contract in rlvr_world/ops/_library.py, DESIGN §5 video rewards):
//   frame_metrics(pred[B,C,H,W], target[B/G,C,H,W], window[K], G, with_ssim)
//       -> (sq_err[B], abs_err[B], ssim[B] or [0])     (acc dtype: fp64 for fp64 frames, else fp32)
//
// One fused pass per (group, channel, strip of output rows) task:
// * the target strip is read once per task, converted to acc lanes and blurred once (mu_y, sigma_yy rows
//   kept for the strip); the G predictions of the group then reuse it;
// * per prediction row: d = x - y feeds the MSE/MAE sums (rows owned by the strip) and the three SSIM
//   quantities d~, d~^2, x~^2, which are filtered horizontally (Gaussian, valid) into a ring of K rows
//   (each row stored twice, at slot and slot + K, so the K rows of an output row lie at one stride);
//   each new row completes one output row: vertical pass over the ring, then the SSIM map row is summed.
// * Numerics: SSIM is computed in the algebraically equal form piqa's formula reduces to,
//     l  = 1 - mu_d^2 / (mu_x^2 + mu_y^2 + C1),   cs = 1 - sigma_dd / (sigma_xx + sigma_yy + C2),
//   with d = x - y, sigma_dd = E[d^2] - mu_d^2 (= sigma_xx + sigma_yy - 2 sigma_xy). The cancellation of
//   E[q^2] - mu_q^2 in fp32 then lands in the numerator only through sigma_dd, which is small wherever
//   the prediction is close; each quantity is also shifted by a per-task constant (the mean of its middle
//   input row), so flat regions and constant offsets do not cancel large numbers. Against the fp64
//   reference the fp32 SSIM stays within 3e-7 on random, smooth, flat and offset frames (the same
//   formula as piqa's in fp32 errs by 2e-4 on flat frames a brightness step apart).
// * fp32 lanes (Vectorized<float>, AVX2 when built with -mavx2) for every non-fp64 dtype; fp64 runs the
//   same template with Vectorized<double>. Row sums are taken in lanes over blocks of 256 columns and
//   carried in fp64. uint8 is read directly and its error sums are exact: integer differences, whose
//   squares summed over 32 columns a lane stay below 2^24, scaled by 1/255 in fp64 at the end.
// * Determinism: the task split depends only on the shapes (strips of 16..64 output rows); tasks are
//   claimed dynamically by the threads but each writes its own partial sums, reduced afterwards in a
//   fixed order, so the result does not depend on the thread count.
#include "vec.h"  // first: it sets the vector ISA of ATen's Vectorized

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cpu/vec/functional.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"

namespace rlvr {
namespace {

constexpr double kC1 = 0.01 * 0.01, kC2 = 0.03 * 0.03;  // piqa: (k1 * range)^2, (k2 * range)^2, range 1
constexpr int64_t kStripRows = 64;     // output rows per task at most (halo: K - 1 extra input rows)
constexpr int64_t kMinStripRows = 16;  // ... and at least, when strips are cut finer to reach kMinTasks
constexpr int64_t kMinTasks = 8;       // tasks wanted, so that few large frames still spread over threads
constexpr int64_t kSumBlock = 256;     // columns summed in lanes before the sum goes to fp64

template <typename T>
using Vec = at::vec::Vectorized<T>;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename acc_t>
inline double lanes_sum(Vec<acc_t> v) {
  constexpr int64_t L = Vec<acc_t>::size();
  acc_t buf[L];
  v.store(buf);
  double s = 0.0;
  for (int64_t i = 0; i < L; ++i) s += buf[i];
  return s;
}

// x < 0 ? 0 : (x > 1 ? 1 : x): NaN stays NaN (comparisons with NaN are false).
template <typename acc_t>
inline Vec<acc_t> clamp_unit(Vec<acc_t> x) {
  const Vec<acc_t> zero(acc_t(0)), one(acc_t(1));
  x = Vec<acc_t>::blendv(x, zero, x < zero);
  return Vec<acc_t>::blendv(x, one, x > one);
}

// L = Vec<acc_t>::size() frame values at p as acc lanes in raw units: uint8 -> its integer value (the
// caller scales by 1/255), floats -> clamped to [0, 1].
template <typename scalar_t, typename acc_t>
inline Vec<acc_t> load_raw(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, uint8_t>) {
#ifdef CPU_CAPABILITY_AVX2
    static_assert(Vec<float>::size() == 8);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
    float buf[Vec<float>::size()];
    for (int64_t i = 0; i < Vec<float>::size(); ++i) buf[i] = static_cast<float>(p[i]);
    return Vec<float>::loadu(buf);
#endif
  } else if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return clamp_unit<acc_t>(Vec<acc_t>::loadu(p));
  } else {  // Half / BFloat16 -> float
    Vec<float> v;
    at::vec::load_to_float<scalar_t>(p, v);
    return clamp_unit<float>(v);
  }
}

// The first n (< L) values, zeros after them.
template <typename scalar_t, typename acc_t>
inline Vec<acc_t> load_raw_part(const scalar_t* p, int64_t n) {
  constexpr int64_t L = Vec<acc_t>::size();
  scalar_t buf[L];
  for (int64_t i = 0; i < L; ++i) buf[i] = i < n ? p[i] : scalar_t(0);
  return load_raw<scalar_t, acc_t>(buf);
}

template <typename scalar_t, typename acc_t>
struct FrameMetrics {
  using V = Vec<acc_t>;
  static constexpr int64_t L = V::size();
  static constexpr bool kU8 = std::is_same_v<scalar_t, uint8_t>;

  // Buffers of one worker, reused across its tasks.
  struct Work {
    std::vector<acc_t> yraw;  // target rows of the strip, raw units, [rows][Wp] (zeros past W)
    std::vector<acc_t> tmp;   // per-row quantities before the horizontal pass, [3][Wp]
    std::vector<acc_t> ring;  // horizontally filtered rows, [3][2K][Wr] (row i at slots i % K and i % K + K)
    std::vector<acc_t> vout;  // vertically filtered row, [3][Wr]
    std::vector<acc_t> muy;   // mu_y - dy of the strip's output rows, [S][Wr]
    std::vector<acc_t> syy;   // sigma_yy of the strip's output rows, [S][Wr]
  };

  const scalar_t* pred;
  const scalar_t* target;
  int64_t G, C, H, W, K, Ho, Wo, S, nstrips, Wp, Wr;
  bool with_ssim;
  std::vector<V> w;       // window weights, broadcast
  bool symmetric = true;  // w[k] == w[K - 1 - k]
  acc_t scale;            // 1/255 for uint8 frames, else 1

  FrameMetrics(const at::Tensor& p, const at::Tensor& t, const at::Tensor& window, int64_t group, bool ssim)
      : pred(p.const_data_ptr<scalar_t>()), target(t.const_data_ptr<scalar_t>()), G(group), C(p.size(1)),
        H(p.size(2)), W(p.size(3)), K(ssim ? window.size(0) : 1), with_ssim(ssim),
        scale(kU8 ? acc_t(1) / acc_t(255) : acc_t(1)) {
    Ho = H - K + 1;
    Wo = W - K + 1;
    const int64_t rows = with_ssim ? Ho : H;
    // The split depends on the shapes only (never on the thread count): strips of <= 64 rows, cut
    // finer (down to 16 rows) when fewer than kMinTasks (group, channel, strip) tasks would result.
    nstrips = rows > 0 ? (rows + kStripRows - 1) / kStripRows : 0;
    const int64_t planes = (G > 0 ? p.size(0) / G : 0) * C;
    if (planes > 0 && nstrips > 0 && planes * nstrips < kMinTasks)
      nstrips = std::max(nstrips, std::min((kMinTasks + planes - 1) / planes, rows / kMinStripRows));
    S = nstrips > 0 ? (rows + nstrips - 1) / nstrips : 0;
    Wp = round_up(W, L) + 2 * L;
    Wr = round_up(std::max<int64_t>(Wo, 1), 2 * L);
    if (with_ssim) {
      const acc_t* wp = window.const_data_ptr<acc_t>();
      for (int64_t k = 0; k < K; ++k) {
        w.emplace_back(wp[k]);
        symmetric = symmetric && wp[k] == wp[K - 1 - k];
      }
    }
  }

  void init_work(Work& ws) const {
    const int64_t in_rows = with_ssim ? S + K - 1 : S;
    ws.yraw.assign(in_rows * Wp, acc_t(0));
    if (!with_ssim) return;
    ws.tmp.assign(3 * Wp, acc_t(0));
    ws.ring.assign(3 * 2 * K * Wr, acc_t(0));
    ws.vout.assign(3 * Wr, acc_t(0));
    ws.muy.assign(S * Wr, acc_t(0));
    ws.syy.assign(S * Wr, acc_t(0));
  }

  // One frame row -> raw acc lanes (zeros past W; the buffer is padded).
  void load_row(const scalar_t* src, acc_t* dst) const {
    int64_t j = 0;
    for (; j + L <= W; j += L) load_raw<scalar_t, acc_t>(src + j).store(dst + j);
    if (j < W) load_raw_part<scalar_t, acc_t>(src + j, W - j).store(dst + j);
  }

  // The mean over one row of x - y in acc units (x: a frame row, yr: a raw target row): the shift of d~.
  acc_t row_mean_diff(const scalar_t* x, const acc_t* yr) const {
    double s = 0.0;
    int64_t j = 0;
    while (j < W) {
      const int64_t stop = std::min(W, j + kSumBlock);
      V acc(acc_t(0));
      for (; j < stop; j += L) {
        const V rx = j + L <= W ? load_raw<scalar_t, acc_t>(x + j) : load_raw_part<scalar_t, acc_t>(x + j, W - j);
        acc += rx - V::loadu(yr + j);
      }
      s += lanes_sum<acc_t>(acc);
    }
    return static_cast<acc_t>(s / static_cast<double>(W) * static_cast<double>(scale));
  }

  acc_t row_mean(const acc_t* yr) const {
    double s = 0.0;
    for (int64_t j = 0; j < W; ++j) s += yr[j];
    return static_cast<acc_t>(s / static_cast<double>(W) * static_cast<double>(scale));
  }

  // One block of NC column vectors at column j of a valid 1-D Gaussian over K rows:
  //   acc[c][q] = sum_k w[k] src(q, k)[j + c L .. + L).
  // A symmetric window (a Gaussian, exactly) pairs taps k and K-1-k: K/2 adds + K/2 + 1 FMAs, not K FMAs.
  template <int NQ, int NC, typename Src>
  inline void filter_block(const Src& src, int64_t j, V (&acc)[NC][NQ]) const {
    if (symmetric) {
      const int64_t h = K / 2;
      for (int c = 0; c < NC; ++c)
        for (int q = 0; q < NQ; ++q) acc[c][q] = V::loadu(src(q, h) + j + c * L) * w[h];
      for (int64_t k = 0; k < h; ++k) {
        const V wk = w[k];
        for (int c = 0; c < NC; ++c)
          for (int q = 0; q < NQ; ++q)
            acc[c][q] = at::vec::fmadd(V::loadu(src(q, k) + j + c * L) + V::loadu(src(q, K - 1 - k) + j + c * L), wk,
                                       acc[c][q]);
      }
    } else {
      for (int c = 0; c < NC; ++c)
        for (int q = 0; q < NQ; ++q) acc[c][q] = V(acc_t(0));
      for (int64_t k = 0; k < K; ++k) {
        const V wk = w[k];
        for (int c = 0; c < NC; ++c)
          for (int q = 0; q < NQ; ++q) acc[c][q] = at::vec::fmadd(V::loadu(src(q, k) + j + c * L), wk, acc[c][q]);
      }
    }
  }

  // out[q][j] (and out2[q][j] if given) for j < round_up(Wo, L), two column vectors at a time (2 NQ
  // independent chains).
  template <int NQ, typename Src>
  void filter_row(const Src& src, acc_t* const* out, acc_t* const* out2) const {
    const int64_t n = round_up(Wo, L);
    int64_t j = 0;
    for (; j + 2 * L <= n; j += 2 * L) {
      V acc[2][NQ];
      filter_block<NQ, 2>(src, j, acc);
      for (int q = 0; q < NQ; ++q) {
        acc[0][q].store(out[q] + j);
        acc[1][q].store(out[q] + j + L);
        if (out2) {
          acc[0][q].store(out2[q] + j);
          acc[1][q].store(out2[q] + j + L);
        }
      }
    }
    if (j < n) {
      V acc[1][NQ];
      filter_block<NQ, 1>(src, j, acc);
      for (int q = 0; q < NQ; ++q) {
        acc[0][q].store(out[q] + j);
        if (out2) acc[0][q].store(out2[q] + j);
      }
    }
  }

  // Horizontal pass of NQ rows into ring row i: ring[q][i % K] = ring[q][i % K + K] = sum_k w[k] in[q][j + k].
  template <int NQ>
  void hfilter(const acc_t* const* in, acc_t* ring, int64_t i) const {
    const int64_t slot = i % K;
    acc_t* out[NQ];
    acc_t* out2[NQ];
    for (int q = 0; q < NQ; ++q) {
      out[q] = ring + (q * 2 * K + slot) * Wr;
      out2[q] = out[q] + K * Wr;
    }
    filter_row<NQ>([in](int q, int64_t k) { return in[q] + k; }, out, out2);
  }

  // Vertical pass over ring rows i .. i + K - 1: out[q][j] = sum_k w[k] ring[q][(i + k) % K][j].
  template <int NQ>
  void vfilter(const acc_t* ring, int64_t i, acc_t* const* out) const {
    const acc_t* base = ring + (i % K) * Wr;
    const int64_t qstride = 2 * K * Wr, stride = Wr;
    filter_row<NQ>([base, qstride, stride](int q, int64_t k) { return base + q * qstride + k * stride; }, out,
                   nullptr);
  }

  // Squared and absolute differences of one prediction row against a raw target row, added to sq, ab.
  void err_row(const scalar_t* x, const acc_t* yr, double& sq, double& ab) const {
    int64_t j = 0;
    while (j < W) {
      const int64_t stop = std::min(W, j + kSumBlock);
      V vsq(acc_t(0)), vab(acc_t(0));
      for (; j < stop; j += L) {
        const V rx = j + L <= W ? load_raw<scalar_t, acc_t>(x + j) : load_raw_part<scalar_t, acc_t>(x + j, W - j);
        const V d = rx - V::loadu(yr + j);  // zeros past W on both sides; uint8: exact integers
        vsq = at::vec::fmadd(d, d, vsq);
        vab += d.abs();
      }
      sq += lanes_sum<acc_t>(vsq);
      ab += lanes_sum<acc_t>(vab);
    }
  }

  // One prediction row of the SSIM pass: the error sums (if the strip owns the row) and the rows
  // d~ = d - dd, d~^2, x~^2 with x~ = x - dx.
  template <bool kOwned>
  void pred_row(const scalar_t* x, const acc_t* yr, acc_t dd, acc_t dx, acc_t* const* q, double& sq,
                double& ab) const {
    const V vs(scale), vdd(dd), vdx(dx);
    int64_t j = 0;
    while (j < W) {
      const int64_t stop = std::min(W, j + kSumBlock);
      V vsq(acc_t(0)), vab(acc_t(0));
      for (; j < stop; j += L) {
        const V rx = j + L <= W ? load_raw<scalar_t, acc_t>(x + j) : load_raw_part<scalar_t, acc_t>(x + j, W - j);
        const V draw = rx - V::loadu(yr + j);  // uint8: the exact integer difference
        if constexpr (kOwned) {
          vsq = at::vec::fmadd(draw, draw, vsq);
          vab += draw.abs();
        }
        V d, xt;
        if constexpr (kU8) {
          d = draw * vs;
          xt = at::vec::fmsub(rx, vs, vdx);
        } else {
          d = draw;
          xt = rx - vdx;
        }
        const V dt = d - vdd;
        dt.store(q[0] + j);
        (dt * dt).store(q[1] + j);
        (xt * xt).store(q[2] + j);
      }
      if constexpr (kOwned) {
        sq += lanes_sum<acc_t>(vsq);
        ab += lanes_sum<acc_t>(vab);
      }
    }
  }

  // Sum over the Wo valid columns of one SSIM map row from the blurred rows of a prediction
  // (mu_d~, E[d~^2], E[x~^2]) and of the target (mu_y~, sigma_yy).
  double ssim_row(const acc_t* const* v, const acc_t* muy, const acc_t* syy, acc_t dd, acc_t dx, acc_t dy) const {
    const V c1(static_cast<acc_t>(kC1)), c2(static_cast<acc_t>(kC2)), vdd(dd), vdx(dx), vdy(dy), zero(acc_t(0));
    double s = 0.0;
    int64_t j = 0;
    while (j < Wo) {
      const int64_t stop = std::min(Wo, j + kSumBlock);
      V acc(acc_t(0));
      for (; j < stop; j += L) {
        const V mdt = V::loadu(v[0] + j), edd = V::loadu(v[1] + j), exx = V::loadu(v[2] + j);
        const V myt = V::loadu(muy + j), sy = V::loadu(syy + j);
        const V mxt = myt + mdt;              // mu_x - dx (dx = dy + dd)
        const V sxx = exx - mxt * mxt;         // sigma_xx
        const V sdd = edd - mdt * mdt;         // sigma_dd = sigma_xx + sigma_yy - 2 sigma_xy
        const V md = mdt + vdd, mx = mxt + vdx, my = myt + vdy;
        const V a = at::vec::fmadd(mx, mx, at::vec::fmadd(my, my, c1));  // mu_x^2 + mu_y^2 + C1
        const V b = sxx + sy + c2;                                         // sigma_xx + sigma_yy + C2
        V ss = (a - md * md) * (b - sdd) / (a * b);
        if (j + L > Wo) ss = V::set(zero, ss, Wo - j);
        acc += ss;
      }
      s += lanes_sum<acc_t>(acc);
    }
    return s;
  }

  // Task t = (group g, channel c, strip s): part[i * 3 + {0, 1, 2}] = sums of prediction g * G + i.
  void run_task(int64_t t, Work& ws, double* part) const {
    const int64_t s = t % nstrips, c = (t / nstrips) % C, g = t / nstrips / C;
    const int64_t plane = H * W;
    const scalar_t* tp = target + (g * C + c) * plane;
    std::fill(part, part + 3 * G, 0.0);
    if (!with_ssim) {
      const int64_t r0 = s * S, r1 = std::min(H, r0 + S);
      for (int64_t r = r0; r < r1; ++r) load_row(tp + r * W, ws.yraw.data() + (r - r0) * Wp);
      for (int64_t i = 0; i < G; ++i) {
        const scalar_t* pp = pred + ((g * G + i) * C + c) * plane;
        double sq = 0.0, ab = 0.0;
        for (int64_t r = r0; r < r1; ++r) err_row(pp + r * W, ws.yraw.data() + (r - r0) * Wp, sq, ab);
        part[3 * i] = sq;
        part[3 * i + 1] = ab;
      }
      return;
    }
    const int64_t o0 = s * S, o1 = std::min(Ho, o0 + S);
    const int64_t r0 = o0, r1 = o1 + K - 1;  // input rows of the strip
    const int64_t own1 = s == nstrips - 1 ? H : o1;  // rows [o0, own1) count in the error sums
    const int64_t mid = (r1 - r0) / 2;  // the row that sets the shifts
    acc_t* yraw = ws.yraw.data();
    for (int64_t r = r0; r < r1; ++r) load_row(tp + r * W, yraw + (r - r0) * Wp);
    const acc_t dy = row_mean(yraw + mid * Wp);
    acc_t* tq[3] = {ws.tmp.data(), ws.tmp.data() + Wp, ws.tmp.data() + 2 * Wp};
    acc_t* vo[3] = {ws.vout.data(), ws.vout.data() + Wr, ws.vout.data() + 2 * Wr};
    acc_t* ring = ws.ring.data();

    // Target: y~ = y - dy and y~^2 blurred once per strip -> mu_y~ and sigma_yy rows.
    {
      const V vs(scale), vdy(dy);
      for (int64_t r = r0; r < r1; ++r) {
        const acc_t* yr = yraw + (r - r0) * Wp;
        for (int64_t j = 0; j < W; j += L) {
          const V yt = at::vec::fmsub(V::loadu(yr + j), vs, vdy);
          yt.store(tq[0] + j);
          (yt * yt).store(tq[1] + j);
        }
        hfilter<2>(tq, ring, r - r0);
        if (r - r0 >= K - 1) {
          const int64_t o = r - K + 1;
          acc_t* my = ws.muy.data() + (o - o0) * Wr;
          acc_t* sy = ws.syy.data() + (o - o0) * Wr;
          acc_t* vout[2] = {my, sy};
          vfilter<2>(ring, o - o0, vout);
          for (int64_t j = 0; j < Wr; j += L) {
            const V m = V::loadu(my + j);
            (V::loadu(sy + j) - m * m).store(sy + j);
          }
        }
      }
    }

    for (int64_t i = 0; i < G; ++i) {
      const scalar_t* pp = pred + ((g * G + i) * C + c) * plane;
      const acc_t dd = row_mean_diff(pp + (r0 + mid) * W, yraw + mid * Wp);
      const acc_t dx = dy + dd;
      double sq = 0.0, ab = 0.0, ss = 0.0;
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* x = pp + r * W;
        const acc_t* yr = yraw + (r - r0) * Wp;
        if (r < own1) {
          pred_row<true>(x, yr, dd, dx, tq, sq, ab);
        } else {
          pred_row<false>(x, yr, dd, dx, tq, sq, ab);
        }
        hfilter<3>(tq, ring, r - r0);
        if (r - r0 >= K - 1) {
          const int64_t o = r - K + 1;
          vfilter<3>(ring, o - o0, vo);
          ss += ssim_row(vo, ws.muy.data() + (o - o0) * Wr, ws.syy.data() + (o - o0) * Wr, dd, dx, dy);
        }
      }
      part[3 * i] = sq;
      part[3 * i + 1] = ab;
      part[3 * i + 2] = ss;
    }
  }

  void run(at::Tensor& sq_err, at::Tensor& abs_err, at::Tensor& ssim) const {
    const int64_t B = sq_err.size(0), ntasks = B / std::max<int64_t>(G, 1) * C * nstrips;
    std::vector<double> part(std::max<int64_t>(ntasks, 1) * 3 * G, 0.0);
    if (ntasks > 0) {
      std::atomic<int64_t> next{0};
      const int64_t workers = std::min<int64_t>(at::get_num_threads(), ntasks);
      at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
        Work ws;
        init_work(ws);
        for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) run_task(t, ws, part.data() + t * 3 * G);
      });
    }
    acc_t* o_sq = sq_err.mutable_data_ptr<acc_t>();
    acc_t* o_ab = abs_err.mutable_data_ptr<acc_t>();
    acc_t* o_ss = with_ssim ? ssim.mutable_data_ptr<acc_t>() : nullptr;
    const double err_scale = kU8 ? 1.0 / 255.0 : 1.0;  // uint8 error sums are in integer units
    const double n_err = static_cast<double>(C * H * W), n_ssim = static_cast<double>(C * Ho * Wo);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t g = b / G, i = b % G;
      double sq = 0.0, ab = 0.0, ss = 0.0;
      for (int64_t cs = 0; cs < C * nstrips; ++cs) {  // fixed order: channel, then strip
        const double* p = part.data() + ((g * C * nstrips + cs) * G + i) * 3;
        sq += p[0];
        ab += p[1];
        ss += p[2];
      }
      o_sq[b] = static_cast<acc_t>(sq * (err_scale * err_scale) / n_err);
      o_ab[b] = static_cast<acc_t>(ab * err_scale / n_err);
      if (o_ss) o_ss[b] = static_cast<acc_t>(ss / n_ssim);
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> frame_metrics_cpu(const at::Tensor& pred, const at::Tensor& target,
                                                                 const at::Tensor& window, int64_t group_size,
                                                                 bool with_ssim) {
  rlvr_check_frames(pred, target, window, group_size, with_ssim);
  const auto opts = pred.options().dtype(rlvr_acc_dtype(pred.scalar_type()));
  const int64_t B = pred.size(0);
  at::Tensor sq_err = at::empty({B}, opts), abs_err = at::empty({B}, opts);
  at::Tensor ssim = at::empty({with_ssim ? B : 0}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, pred.scalar_type(), "frame_metrics_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    FrameMetrics<scalar_t, acc_t>(pred, target, window, group_size, with_ssim).run(sq_err, abs_err, ssim);
  });
  return {sq_err, abs_err, ssim};
}

}  // namespace
}  // namespace rlvr

TORCH_LIBRARY_IMPL(rlvr_world, CPU, m) { m.impl("frame_metrics", &rlvr::frame_metrics_cpu); }
