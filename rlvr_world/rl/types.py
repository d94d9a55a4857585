"""Typed containers of RL data (torchtune's GRPOTrajectory style), with documented shapes.

``GRPOStats`` is produced by the loss op and defined beside it (``rlvr_world.ops.grpo_loss``) so that
imports point down (ops -> rl); it is re-exported here as the RL-facing name.
"""

from rlvr_world.ops.grpo_loss import GRPOStats

__all__ = ["GRPOStats"]
