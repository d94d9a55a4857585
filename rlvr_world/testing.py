"""Closeness checks for optimized ops against the eager reference (DESIGN §3.7).

The rule (flash-attention's): an optimized result in dtype d is compared with the fp64 truth, and its
worst error must be at most ``factor`` (2) times the worst error of the eager reference run in the
same dtype d, plus a small floor for outputs the eager path gets exactly right. A failure prints the
worst indices with the three values side by side.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

__all__ = ["assert_close", "assert_within_eager_error", "mismatch_report", "prepare_torchvision"]

# Floor added to the 2x bound, relative to max |truth|: the last few ulps of each dtype.
_REL_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def mismatch_report(name: str, actual: torch.Tensor, expected: torch.Tensor, eager: torch.Tensor | None = None,
                    k: int = 5, excess: torch.Tensor | None = None) -> str:
    """The k worst elements (by ``excess`` over the tolerance if given, else by absolute error): index,
    actual, expected (and eager) values, absolute error."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    err = (a - e).abs().flatten()
    err = torch.where(torch.isnan(err), float("inf"), err)
    rank = err if excess is None else torch.nan_to_num(excess.flatten(), nan=float("inf"))
    worst = rank.topk(min(k, err.numel())).indices
    lines = [f"{name}: max abs error {float(err.max()):.3e} (shape {tuple(actual.shape)}, dtype {actual.dtype})"]
    for flat in worst.tolist():
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
        row = f"  at {idx}: actual {float(a.flatten()[flat]):.9g}  expected {float(e.flatten()[flat]):.9g}"
        if eager is not None:
            row += f"  eager {float(eager.detach().double().cpu().flatten()[flat]):.9g}"
        lines.append(row + f"  |err| {float(err[flat]):.3e}")
    return "\n".join(lines)


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, *, atol: float = 0.0,
                 rtol: float = 0.0) -> None:
    """|actual - expected| <= atol + rtol * |expected| elementwise, same shape, no NaN/inf where expected is finite."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    excess = (a - e).abs() - (atol + rtol * e.abs())
    if not bool((excess <= 0).all()):
        raise AssertionError(f"(atol {atol:g}, rtol {rtol:g})\n" + mismatch_report(name, actual, expected, excess=excess))


def assert_within_eager_error(name: str, actual: torch.Tensor, eager: torch.Tensor, truth: torch.Tensor, *,
                              factor: float = 2.0, floor: float | None = None) -> None:
    """max|actual - truth| <= factor * max|eager - truth| + floor.

    ``truth`` is the reference in fp64; ``eager`` the reference in ``actual``'s dtype. ``floor`` defaults to a
    few ulps of that dtype relative to max |truth|.
    """
    if actual.shape != truth.shape or eager.shape != truth.shape:
        raise AssertionError(f"{name}: shapes {tuple(actual.shape)}, eager {tuple(eager.shape)}, truth {tuple(truth.shape)}")
    a, g, t = (x.detach().double().cpu() for x in (actual, eager, truth))
    if floor is None:
        floor = _REL_FLOOR.get(actual.dtype, 1e-6) * float(t.abs().max()) if t.numel() else 0.0
    eager_err = float((g - t).abs().max()) if t.numel() else 0.0
    err = (a - t).abs()
    bound = factor * eager_err + floor
    if t.numel() and not float(torch.nan_to_num(err, nan=float("inf")).max()) <= bound:
        raise AssertionError(
            f"error above {factor:g} x eager error {eager_err:.3e} + floor {floor:.3e} = {bound:.3e}\n"
            + mismatch_report(name, actual, truth, eager)
        )


_TORCHVISION_SHIM = None


def prepare_torchvision() -> None:
    """Let ``import torchvision`` (needed by the ``lpips`` and ``piqa`` packages) work beside a CPU torch.

    The torchvision wheel that matches torch 2.13 on PyPI is a CUDA build: its compiled ops fail to load
    beside the CPU torch, and its import then stops at ``operator torchvision::nms does not exist``. When
    that would happen, the two schemas its Python side registers fakes for are defined here first (the
    detection ops stay unusable; the classification models these packages use need none). Does nothing
    when torchvision is missing, already imported, or its ops load.
    """
    global _TORCHVISION_SHIM
    spec = importlib.util.find_spec("torchvision")
    if spec is None or "torchvision" in sys.modules or _TORCHVISION_SHIM is not None:
        return
    for library in glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")):
        try:
            torch.ops.load_library(library)
        except (OSError, RuntimeError):
            continue
        if torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CPU"):
            return
    shim = torch.library.Library("torchvision", "FRAGMENT")  # noqa: TOR901 - only where the real ops cannot load
    for name in ("nms", "qnms"):
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        except RuntimeError:
            shim.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM = shim
