"""``lpips_head``: the distance of one LPIPS stage between predicted and true feature maps.

Layers: ``kernels/lpips_head.py`` (one fused Triton kernel: features read once, five channel sums per
pixel, per-block partial sums, a fixed-order reduction) -> ``lpips_head`` here (checks, backend choice).
The eager spec is ``reference.lpips_head``. There is no autograd: LPIPS is a reward here, never a loss.

``feat_target`` holds one map per group of ``group_size`` consecutive predictions (the true frame's
features, computed once per group); prediction b is compared with target b // G without repeating it.
"""

from __future__ import annotations

import torch

from . import _dispatch, reference
from ._checks import check_group_size, check_tensor

IMPLS = ("auto", "reference", "triton")


def _check(feat_pred, feat_target, weight, group_size) -> None:
    check_tensor("feat_pred", feat_pred, ndim=4, floating=True)
    check_tensor("feat_target", feat_target, ndim=4, floating=True)
    check_tensor("weight", weight, ndim=1, floating=True)
    check_group_size(group_size)
    B, C, H, W = feat_pred.shape
    if feat_target.dtype != feat_pred.dtype:
        raise ValueError(f"feat_target must have feat_pred's dtype {feat_pred.dtype}, got {feat_target.dtype}")
    if feat_target.shape[1:] != feat_pred.shape[1:]:
        raise ValueError(f"feat_target must have feat_pred's (C, H, W) = {(C, H, W)}, got {tuple(feat_target.shape[1:])}")
    if B % group_size or feat_target.shape[0] != B // group_size:
        raise ValueError(f"feat_target must have B / group_size = {B} / {group_size} maps (one per group), "
                         f"got {feat_target.shape[0]}")
    if H * W == 0:
        raise ValueError(f"feat_pred must have a non-empty spatial size, got (H, W) = {(H, W)}")
    if weight.shape[0] != C:
        raise ValueError(f"weight must have shape ({C},) (one weight per channel of feat_pred), got {tuple(weight.shape)}")
    for name, x in (("feat_target", feat_target), ("weight", weight)):
        if x.device != feat_pred.device:
            raise ValueError(f"{name} must be on feat_pred's device {feat_pred.device}, got {x.device}")


def lpips_head(
    feat_pred: torch.Tensor,
    feat_target: torch.Tensor,
    weight: torch.Tensor,
    group_size: int = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Mean over space of ``sum_c w_c (x_c / (|x| + eps) - y_c / (|y| + eps))^2`` per predicted map.

    Args:
        feat_pred: [B, C, H, W] float16/bfloat16/float32/float64, NCHW or channels_last (any strides).
        feat_target: [B / group_size, C, H, W], feat_pred's dtype and device; map b // G goes with
            prediction b.
        weight: [C] float, the stage's 1x1 linear head (``lin{k}.model.1.weight`` flattened).
        group_size: G, the number of consecutive predictions sharing a target map.
        impl: "auto" | "reference" | "triton" (auto: triton on CUDA tensors, else the reference).

    Returns:
        [B] fp32 (fp64 for fp64 features).

    >>> x, y = torch.rand(4, 8, 5, 5), torch.rand(2, 8, 5, 5)
    >>> lpips_head(x, y, torch.ones(8), group_size=2).shape
    torch.Size([4])
    """
    _check(feat_pred, feat_target, weight, group_size)
    backend = _dispatch.resolve(impl, feat_pred.device, impls=IMPLS)
    if backend == "reference":
        return reference.lpips_head(feat_pred, feat_target, weight, group_size)
    from rlvr_world.kernels.lpips_head import lpips_head as triton_lpips_head

    acc = torch.float64 if feat_pred.dtype == torch.float64 else torch.float32
    return triton_lpips_head(feat_pred, feat_target, weight.to(acc).contiguous(), group_size)
