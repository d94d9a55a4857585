"""Test set-up: CPU first. Without a GPU, Triton kernels run under its interpreter (TRITON_INTERPRET=1,
set here before any kernel module is imported). GPU tests carry the `cuda` marker and skip without one.
"""

import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rlvr_world.ops import _dispatch  # noqa: E402

# Triton's bundled LLVM must be loaded before Mesa's (MuJoCo's EGL rendering on a CPU loads llvmpipe):
# importing triton after a simulator test has rendered segfaults the test process.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: E402, F401


def cpu_impls() -> list[str]:
    """Optimized impls that can run on CPU tensors here."""
    return [impl for impl in ("cpp", "triton") if _dispatch.missing(impl, torch.device("cpu")) is None]


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
