"""torch.library schemas of the compiled ops, their fake (meta) impls, and the optional ``_C`` load.

Schemas live here once; csrc/ registers CPU (and, when built, CUDA) kernels for them with
``TORCH_LIBRARY_IMPL(rlvr_world, ...)``. The fakes let ``torch.compile`` trace through the ops and
``torch.library.opcheck`` test them. Loading ``_C`` is optional: without it ``cpp_available()`` is False,
one line is logged, and ``impl="auto"`` picks another backend.

Row ops (N rows of a [N, V] logits matrix, rows contiguous; ``acc`` = fp64 for fp64 logits else fp32):

* ``row_logprobs(logits, tokens, inv_temperature) -> (logp[N] acc, lse[N] acc)``
* ``row_logprobs_backward_(logits!, tokens, lse, coef, inv_temperature, with_target)``: in place,
  ``logits <- coef * (onehot(token) - softmax(logits * inv_t)) * inv_t``, the gradient of
  ``sum(coef * logp)`` w.r.t. the logits; ``with_target=False`` leaves out the onehot term (the fused
  paths add ``coef * inv_t * W[token]`` exactly, outside the GEMM, where it would dominate the sum).
* ``grpo_token_terms(logp, old_logp, advantages, mask, ref_logp?, clip_low, clip_high, clip_c, kl_coef,
  scale) -> (coef, loss, ratio, kl, flags uint8)``: the elementwise GRPO math of DESIGN §5 and its
  derivative ``coef = mask * scale * d loss / d logp``; flags bits 1/2/4 = clipped low/high/dual.

Frame op (B predicted frames against B/G true frames, DESIGN §5 video rewards):

* ``frame_metrics(pred, target, window, group_size, with_ssim) -> (sq_err[B], abs_err[B], ssim[B] | [0])``.
  ``pred`` [B, C, H, W] and ``target`` [B/G, C, H, W], contiguous, one dtype: uint8 (read as x / 255) or
  float16/bfloat16/float32/float64 (clamped to [0, 1], NaN kept). Prediction b is compared with target
  b // G. ``window`` is the normalised 1-D Gaussian [K] (K odd, K <= H and K <= W) in the accumulation
  dtype (fp64 for fp64 frames, else fp32), which is also the dtype of the outputs. ``sq_err``/``abs_err``
  are the means of (p - t)^2 and |p - t| over C, H, W; ``ssim`` is the mean over C and the valid region
  (H - K + 1) x (W - K + 1) of the SSIM map with C1 = 0.01^2, C2 = 0.03^2 (piqa), or an empty [0] tensor
  when ``with_ssim`` is False.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

log = logging.getLogger("rlvr_world")

_DEFS = {
    "row_logprobs": "row_logprobs(Tensor logits, Tensor tokens, float inv_temperature) -> (Tensor, Tensor)",
    "row_logprobs_backward_": (
        "row_logprobs_backward_(Tensor(a!) logits, Tensor tokens, Tensor lse, Tensor coef, "
        "float inv_temperature, bool with_target) -> ()"
    ),
    "grpo_token_terms": (
        "grpo_token_terms(Tensor logp, Tensor old_logp, Tensor advantages, Tensor mask, Tensor? ref_logp, "
        "float clip_low, float clip_high, float clip_c, float kl_coef, float scale) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    "frame_metrics": (
        "frame_metrics(Tensor pred, Tensor target, Tensor window, int group_size, bool with_ssim) "
        "-> (Tensor, Tensor, Tensor)"
    ),
}

_lib = torch.library.Library("rlvr_world", "DEF")  # noqa: TOR901 - the schemas are defined here, once
for _schema in _DEFS.values():
    _lib.define(_schema)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the row ops: fp64 stays fp64, every other float dtype computes in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("rlvr_world::row_logprobs")
def _row_logprobs_fake(logits, tokens, inv_temperature):
    out = logits.new_empty(logits.shape[:1], dtype=acc_dtype(logits.dtype))
    return out, torch.empty_like(out)


@torch.library.register_fake("rlvr_world::row_logprobs_backward_")
def _row_logprobs_backward_fake(logits, tokens, lse, coef, inv_temperature, with_target):
    return None


@torch.library.register_fake("rlvr_world::grpo_token_terms")
def _grpo_token_terms_fake(logp, old_logp, advantages, mask, ref_logp, clip_low, clip_high, clip_c, kl_coef, scale):
    like = [torch.empty_like(logp) for _ in range(4)]
    return (*like, torch.empty_like(logp, dtype=torch.uint8))


@torch.library.register_fake("rlvr_world::frame_metrics")
def _frame_metrics_fake(pred, target, window, group_size, with_ssim):
    acc = acc_dtype(pred.dtype)  # fp32 for uint8 frames too
    err = pred.new_empty(pred.shape[:1], dtype=acc)
    return err, torch.empty_like(err), pred.new_empty((pred.shape[0] if with_ssim else 0,), dtype=acc)


def _load_extension() -> str | None:
    """Load rlvr_world/_C*.so if it was built; return its path, or None (logging why)."""
    spec = importlib.util.find_spec("rlvr_world._C")
    if spec is None or spec.origin is None:
        log.info("rlvr_world: C++ extension _C not built; impl='cpp'/'cuda' unavailable, 'auto' falls back")
        return None
    try:
        torch.ops.load_library(spec.origin)
    except OSError as err:  # built against another torch, missing CUDA runtime, ...
        log.warning("rlvr_world: C++ extension %s failed to load (%s); 'auto' falls back", spec.origin, err)
        return None
    return spec.origin


EXTENSION_PATH = _load_extension()


def cpp_available(device: torch.device | str = "cpu") -> bool:
    """True when the compiled ops have a kernel for ``device`` (CPU always when built; CUDA if built so)."""
    if EXTENSION_PATH is None:
        return False
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key("rlvr_world::row_logprobs", key)


# Sampler (DESIGN §5 "Sampling"; semantics and RNG in ops/sample_tokens.py):
# ``sample_tokens(logits[B, V], offset[B] int64, seed, inv_temperature, top_k, top_p)
#   -> (tokens[B] int64, logp[B] acc)``; ``seed`` is the 64-bit seed as a signed int64 bit pattern.
_DEFS["sample_tokens"] = (
    "sample_tokens(Tensor logits, Tensor offset, int seed, float inv_temperature, int top_k, float top_p) "
    "-> (Tensor, Tensor)"
)
_lib.define(_DEFS["sample_tokens"])


@torch.library.register_fake("rlvr_world::sample_tokens")
def _sample_tokens_fake(logits, offset, seed, inv_temperature, top_k, top_p):
    tokens = logits.new_empty(logits.shape[:1], dtype=torch.int64)
    return tokens, logits.new_empty(logits.shape[:1], dtype=acc_dtype(logits.dtype))


def has_kernel(op: str, device: torch.device | str) -> bool:
    """True when the compiled op ``rlvr_world::<op>`` has a kernel for ``device``'s dispatch key."""
    if EXTENSION_PATH is None:
        return False
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"rlvr_world::{op}", key)
