"""Argument checks of the public ops. Every error is a ValueError that names the argument, what was
expected and what was received, before any kernel runs."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x, *, ndim: int | None = None, floating: bool = False, integer: bool = False) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a float tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if integer and (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool):
        raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")


def check_same_device(ref_name: str, device: torch.device, **others: torch.Tensor | None) -> None:
    for name, x in others.items():
        if x is not None and x.device != device:
            raise ValueError(f"{name} must be on {ref_name}'s device {device}, got {x.device}")


def check_per_token(n: int, **vectors: torch.Tensor | None) -> None:
    """Each given vector must be 1-D of length n (per-token values)."""
    for name, x in vectors.items():
        if x is None:
            continue
        check_tensor(name, x, ndim=1)
        if x.shape[0] != n:
            raise ValueError(f"{name} must have shape ({n},) (one value per token), got {tuple(x.shape)}")
        if x.dtype.is_complex:
            raise ValueError(f"{name} must be real, got {x.dtype}")


def check_tokens(tokens: torch.Tensor, n: int, vocab: int) -> None:
    check_per_token(n, tokens=tokens)
    check_tensor("tokens", tokens, integer=True)
    if n and bool(((tokens < 0) | (tokens >= vocab)).any()):
        bad = tokens[(tokens < 0) | (tokens >= vocab)]
        raise ValueError(f"tokens must lie in [0, {vocab}) (the vocab size), got {bad.numel()} outside, e.g. {int(bad[0])}")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_linear(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    """hidden [N, H] and weight [V, H]: float, same dtype and device."""
    check_tensor("hidden", hidden, ndim=2, floating=True)
    check_tensor("weight", weight, ndim=2, floating=True)
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must have shape (V, {hidden.shape[1]}) to match hidden [N, H={hidden.shape[1]}], "
            f"got {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight must have hidden's dtype {hidden.dtype}, got {weight.dtype}")
    check_same_device("hidden", hidden.device, weight=weight)


def check_group_size(group_size) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")


def shared_target_factor(num_pred: int, num_target: int, group_size: int) -> int:
    """How many consecutive predictions share one target: 1 when there is a target per prediction,
    ``group_size`` when there is one per group; anything else is a ValueError."""
    check_group_size(group_size)
    if num_target == num_pred:
        return 1
    if num_pred % group_size or num_target != num_pred // group_size:
        raise ValueError(f"target must have {num_pred} frames (one per prediction) or {num_pred} / group_size = "
                         f"{num_pred / group_size:g} frames (one per group of {group_size}), got {num_target}")
    return group_size
