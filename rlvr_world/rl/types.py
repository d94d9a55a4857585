"""Typed containers of RL data (torchtune's GRPOTrajectory style), with documented shapes.

``GRPOStats`` is produced by the loss op and defined beside it (``rlvr_world.ops.grpo_loss``) so that
imports point down (ops -> rl); it is re-exported here as the RL-facing name. ``Rollout`` is what
``rlvr_world.rollout.generate`` returns.
"""

from dataclasses import dataclass

import torch

from rlvr_world.ops.grpo_loss import GRPOStats

__all__ = ["GRPOStats", "Rollout"]


@dataclass
class Rollout:
    """The sampled responses of ``generate``; rows p*G .. p*G+G-1 belong to prompt p.

    tokens [P*G, N] int64 (forced tokens included; ``eos_id`` as padding after EOS), logprobs [P*G, N] fp32
    (0 where mask is False), mask [P*G, N] bool (True where the token was sampled).
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor
    mask: torch.Tensor

