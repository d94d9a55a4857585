"""Rollouts: prefill-once group sampling with a shared-prefix KV cache (``engine.generate``) and
policy-in-the-loop multi-step rollouts (``interactive``)."""

from .engine import CACHE_IMPLS, Rollout, cache_bytes, generate, max_prompts_per_batch
from .interactive import generate_interactive, latest_frame_policy

__all__ = ["CACHE_IMPLS", "Rollout", "cache_bytes", "generate", "generate_interactive", "latest_frame_policy",
           "max_prompts_per_batch"]
