"""The ``impl=`` rule of every op (DESIGN §3.3).

``"reference"`` is the eager spec; ``"cpp"`` the compiled CPU (and, when built, CUDA) kernels of
``_C``; ``"cuda"`` the compiled CUDA kernels only; ``"triton"`` the Triton kernels (on a GPU, or on the
CPU under ``TRITON_INTERPRET=1``). Only ``"auto"`` may fall back, and it says so once per reason:
CUDA tensors -> triton, else cuda, else reference; CPU tensors -> cpp, else reference. An explicit
request that cannot be met raises a RuntimeError naming what is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch

from . import _library

IMPLS = ("auto", "reference", "cpp", "triton", "cuda")
log = logging.getLogger("rlvr_world")


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    from rlvr_world.kernels import interpreting

    return interpreting()


def missing(impl: str, device: torch.device) -> str | None:
    """Why ``impl`` cannot run on ``device`` (None when it can)."""
    if impl == "reference":
        return None
    if impl in ("cpp", "cuda"):
        if impl == "cuda" and device.type != "cuda":
            return f"impl='cuda' needs CUDA tensors, got tensors on {device}"
        if _library.EXTENSION_PATH is None:
            return "the C++ extension rlvr_world._C is not built (install with RLVR_WORLD_BUILD_EXT=1 to see why)"
        if not _library.cpp_available(device):
            return f"rlvr_world._C was built without {device.type.upper()} kernels"
        return None
    if impl == "triton":
        if not _has_triton():
            return "triton is not installed (pip install triton)"
        if device.type == "cuda" or (device.type == "cpu" and _interpreting()):
            return None
        return f"Triton runs on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1; got {device}"
    return f"unknown impl {impl!r}"


@functools.cache
def _note_fallback(choice: str, reason: str) -> None:
    log.warning("rlvr_world: impl='auto' uses %s (%s)", choice, reason)


def resolve(impl: str, device: torch.device, impls: tuple[str, ...] = IMPLS) -> str:
    """The backend that runs for ``impl`` on ``device``; raises if an explicit choice is unavailable.

    ``impls`` lists the backends an op has (``IMPLS`` when it has them all); ``auto`` picks among them.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl not in impls:
        raise RuntimeError(f"impl={impl!r} is unavailable: this op has no {impl} backend (it has {impls})")
    if impl != "auto":
        why = missing(impl, device)
        if why is not None:
            raise RuntimeError(f"impl={impl!r} is unavailable: {why}")
        return impl
    order = ("triton", "cuda") if device.type == "cuda" else ("cpp",)
    reasons = []
    for choice in (c for c in order if c in impls):
        why = missing(choice, device)
        if why is None:
            return choice
        reasons.append(why)
    if reasons:  # an op with no compiled backend for this device uses its reference without a note
        _note_fallback("reference", "; ".join(reasons))
    return "reference"
