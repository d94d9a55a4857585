"""Shared by the training recipes: the learning-rate schedule (a multiplier of ``train.lr`` for ``LambdaLR``) and
the autocast dtype of ``train.precision``."""

from __future__ import annotations

import math

import torch

from rlvr_world import config as C

__all__ = ["autocast_dtype", "lr_factor"]


def lr_factor(step: int, train: C.TrainConfig) -> float:
    """LR multiplier at ``step``: linear warm-up over warmup_steps, then cosine to min_lr_ratio (or constant)."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps))
    return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision``: None for fp32; bf16 on a GPU that has it ("auto" or "bf16");
    "bf16" elsewhere is a ValueError, "auto" elsewhere is fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if precision == "bf16":
        raise ValueError(f"train.precision='bf16' needs a GPU with bf16 support; this run is on {device}")
    return None
