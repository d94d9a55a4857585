"""Rollouts: prefill-once group sampling with a shared-prefix KV cache (``engine.generate``), its CUDA-graph
decode loop (``graphs``), policy-in-the-loop multi-step rollouts (``interactive``) and the optional vLLM
backend (``vllm_backend``, imported on use)."""

from .engine import (
    CACHE_IMPLS,
    GenerateStats,
    Rollout,
    cache_bytes,
    forced_runs,
    generate,
    max_prompts_per_batch,
    prefill_chunk_size,
)
from .graphs import CudaGraphWarning, clear_graphs
from .interactive import generate_interactive, latest_frame_policy

__all__ = ["CACHE_IMPLS", "CudaGraphWarning", "GenerateStats", "Rollout", "cache_bytes", "clear_graphs", "forced_runs",
           "generate", "generate_interactive", "latest_frame_policy", "max_prompts_per_batch", "prefill_chunk_size"]
