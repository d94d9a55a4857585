// Boundary checks shared by every C++/CUDA op: each message names the tensor and what was expected.
// (The public Python functions validate first with friendlier messages; these guard direct
// torch.ops.rlvr_world.* calls.)
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>
#include <vector>

#define RLVR_CHECK_DIM(x, n) \
  TORCH_CHECK_VALUE((x).dim() == (n), #x " must have ", (n), " dims, got shape ", (x).sizes())

#define RLVR_CHECK_SHAPE(x, ...)                                                             \
  TORCH_CHECK_VALUE((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape (", \
                    #__VA_ARGS__, "), got ", (x).sizes())

#define RLVR_CHECK_DTYPE(x, dt) \
  TORCH_CHECK_VALUE((x).scalar_type() == (dt), #x " must be ", (dt), ", got ", (x).scalar_type())

#define RLVR_CHECK_FLOATING(x) \
  TORCH_CHECK_VALUE(at::isFloatingType((x).scalar_type()), #x " must be a float tensor, got ", (x).scalar_type())

#define RLVR_CHECK_DEVICE(x, ref) \
  TORCH_CHECK_VALUE((x).device() == (ref).device(), #x " must be on ", (ref).device(), ", got ", (x).device())

#define RLVR_CHECK_CONTIGUOUS(x) TORCH_CHECK_VALUE((x).is_contiguous(), #x " must be contiguous")

#define RLVR_CHECK_LAST_DIM_CONTIGUOUS(x) \
  TORCH_CHECK_VALUE((x).stride(-1) == 1, #x " must be contiguous in its last dim, got strides ", (x).strides())

// Accumulation dtype of the row ops: fp64 inputs stay fp64, every other float dtype computes in fp32.
inline at::ScalarType rlvr_acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks shared by the three row ops: logits [N, V] rows contiguous, tokens [N] int64 on the same device.
inline void rlvr_check_rows(const at::Tensor& logits, const at::Tensor& tokens) {
  RLVR_CHECK_DIM(logits, 2);
  RLVR_CHECK_FLOATING(logits);
  RLVR_CHECK_LAST_DIM_CONTIGUOUS(logits);
  RLVR_CHECK_SHAPE(tokens, logits.size(0));
  RLVR_CHECK_DTYPE(tokens, at::kLong);
  RLVR_CHECK_DEVICE(tokens, logits);
  RLVR_CHECK_CONTIGUOUS(tokens);
}

// A per-row vector [N] in the accumulation dtype of `logits`.
#define RLVR_CHECK_ROW_VECTOR(x, logits)                      \
  do {                                                        \
    RLVR_CHECK_SHAPE(x, (logits).size(0));                    \
    RLVR_CHECK_DTYPE(x, rlvr_acc_dtype((logits).scalar_type())); \
    RLVR_CHECK_DEVICE(x, logits);                             \
    RLVR_CHECK_CONTIGUOUS(x);                                 \
  } while (0)

// grpo_token_terms: logp [N] fp32/fp64 contiguous; old_logp, advantages, ref_logp (optional) alike, on
// logp's device; mask [N] bool.
inline void rlvr_check_grpo_terms(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& advantages,
                                  const at::Tensor& mask, const std::optional<at::Tensor>& ref_logp) {
  RLVR_CHECK_DIM(logp, 1);
  TORCH_CHECK_VALUE(logp.scalar_type() == at::kFloat || logp.scalar_type() == at::kDouble,
                    "logp must be float32 or float64, got ", logp.scalar_type());
  RLVR_CHECK_CONTIGUOUS(logp);
  auto like_logp = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.sizes() == logp.sizes() && t.scalar_type() == logp.scalar_type() && t.is_contiguous() &&
                          t.device() == logp.device(),
                      name, " must be a contiguous ", logp.scalar_type(), " tensor of shape ", logp.sizes(), " on ",
                      logp.device(), ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
  };
  like_logp(old_logp, "old_logp");
  like_logp(advantages, "advantages");
  if (ref_logp.has_value()) like_logp(*ref_logp, "ref_logp");
  RLVR_CHECK_SHAPE(mask, logp.size(0));
  RLVR_CHECK_DTYPE(mask, at::kBool);
  RLVR_CHECK_DEVICE(mask, logp);
  RLVR_CHECK_CONTIGUOUS(mask);
}

// Outputs of grpo_token_terms: (coef, loss, ratio, kl) like logp, flags uint8.
using RlvrGRPOTermsOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
inline RlvrGRPOTermsOut rlvr_empty_grpo_terms(const at::Tensor& logp) {
  return {at::empty_like(logp), at::empty_like(logp), at::empty_like(logp), at::empty_like(logp),
          at::empty(logp.sizes(), logp.options().dtype(at::kByte))};
}

// frame_metrics: pred [B, C, H, W] and target [B / group_size, C, H, W], contiguous, one dtype (uint8 or
// float), on one device; window [K] (K odd, K <= H, K <= W when with_ssim) contiguous in the accumulation
// dtype (fp64 for fp64 frames, else fp32).
inline void rlvr_check_frames(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& window,
                              int64_t group_size, bool with_ssim) {
  RLVR_CHECK_DIM(pred, 4);
  TORCH_CHECK_VALUE(pred.scalar_type() == at::kByte || at::isFloatingType(pred.scalar_type()),
                    "pred must be uint8 or a float tensor, got ", pred.scalar_type());
  RLVR_CHECK_CONTIGUOUS(pred);
  TORCH_CHECK_VALUE(group_size >= 1 && pred.size(0) % group_size == 0, "group_size must be >= 1 and divide pred's ",
                    pred.size(0), " frames, got ", group_size);
  const std::vector<int64_t> target_shape{pred.size(0) / group_size, pred.size(1), pred.size(2), pred.size(3)};
  TORCH_CHECK_VALUE(target.sizes() == at::IntArrayRef(target_shape), "target must have shape ",
                    at::IntArrayRef(target_shape), " (B / group_size frames like pred's), got ", target.sizes());
  RLVR_CHECK_DTYPE(target, pred.scalar_type());
  RLVR_CHECK_DEVICE(target, pred);
  RLVR_CHECK_CONTIGUOUS(target);
  RLVR_CHECK_DIM(window, 1);
  RLVR_CHECK_DTYPE(window, rlvr_acc_dtype(pred.scalar_type()));
  RLVR_CHECK_DEVICE(window, pred);
  RLVR_CHECK_CONTIGUOUS(window);
  if (with_ssim) {
    const int64_t K = window.size(0);
    TORCH_CHECK_VALUE(K % 2 == 1 && K <= pred.size(2) && K <= pred.size(3), "window must have an odd size K <= H = ",
                      pred.size(2), " and <= W = ", pred.size(3), ", got K = ", K);
  }
}
