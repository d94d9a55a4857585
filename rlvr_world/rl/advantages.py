"""Group-relative advantages of GRPO (DESIGN §5).

Rewards arrive flat, [N] with N = P * G, rows p*G .. p*G+G-1 belonging to prompt p (the rollout
engine's order). ``scale="std"`` is GRPO's (r - mean) / (std + eps) with the unbiased std;
``scale="none"`` is Dr. GRPO's r - mean. A group of one has advantage 0 (not NaN).
"""

from __future__ import annotations

import torch

SCALES = ("std", "none")


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6, scale: str = "std") -> torch.Tensor:
    """rewards [N] (N divisible by group_size) -> advantages [N] in rewards' float dtype (fp32 for ints).

    >>> grpo_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2)
    tensor([ 0.7071, -0.7071,  0.0000,  0.0000])
    """
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        shape = tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a 1-D tensor [N], got {shape}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"rewards length must be a multiple of group_size={group_size}, got {rewards.numel()}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not rewards.dtype.is_floating_point:
        rewards = rewards.float()
    grouped = rewards.reshape(-1, group_size)  # [P, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [P, G]
    if scale == "none":
        return centred.reshape(-1)  # [N]
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])  # [P, 1]
    return (centred / (std + eps)).reshape(-1)  # [N]
