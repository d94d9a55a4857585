"""Compile-check of csrc/cuda/*.cu with nvcc where CUDA cannot link (a CPU-only torch): the CUDA ops
must at least build for sm_90 against this torch's headers. Skipped only when nvcc is absent, or when
torch has CUDA (then the real build in setup.py compiles and links them, and the cuda tests run them)."""

import glob
import os
import shutil
import subprocess

import pytest
import torch
from torch.utils import cpp_extension

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
SOURCES = sorted(glob.glob(os.path.join(REPO, "csrc", "cuda", "*.cu")))


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.skipif(torch.version.cuda is not None, reason="CUDA torch: setup.py builds and links the .cu files")
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_cuda_sources_compile(source, tmp_path):
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    if not any(os.path.exists(os.path.join(p, "c10/cuda/impl/cuda_cmake_macros.h")) for p in cpp_extension.include_paths()):
        # generated only in CUDA builds of torch; its whole content:
        shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes.append(f"-I{tmp_path / 'shim'}")
    cmd = [NVCC, "-std=c++20", "-O1", "--expt-relaxed-constexpr", "-arch=sm_90",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", f"-I{os.path.join(REPO, 'csrc')}",
           *includes, "-c", source, "-o", str(tmp_path / "out.o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    ours = [line for line in r.stderr.splitlines() if "warning" in line and os.path.join(REPO, "csrc") in line]
    assert not ours, "\n".join(ours)


def test_there_are_cuda_sources():
    assert SOURCES, "csrc/cuda/*.cu missing"
