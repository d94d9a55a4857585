"""Public ops. Each accepts ``impl="auto" | "reference" | "cpp" | "triton" | "cuda"`` and runs on the CPU.

``reference`` (ops/reference.py) is the specification; the others are tested against it.
"""

from . import reference
from ._library import cpp_available
from .cascade_attention import cascade_decode_attention
from .frame_metrics import FrameErrors, frame_metrics
from .grpo_loss import GRPOStats, grpo_loss, grpo_loss_from_logits
from .lpips_head import lpips_head
from .sample_tokens import sample_tokens
from .token_logprobs import token_logprobs

__all__ = [
    "FrameErrors",
    "GRPOStats",
    "cascade_decode_attention",
    "cpp_available",
    "frame_metrics",
    "grpo_loss",
    "grpo_loss_from_logits",
    "lpips_head",
    "reference",
    "sample_tokens",
    "token_logprobs",
]
