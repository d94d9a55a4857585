"""Thin setup: metadata lives in pyproject.toml; this file drives the CMake build of csrc/ into
rlvr_world/_C and maps kernels/ to the package rlvr_world.kernels.

Switches (environment):
  RLVR_WORLD_BUILD_EXT=auto|0|1  auto (default): build, and on failure print one line and go on
                                 pure-Python; 0: never build; 1: a failed build is an error.
  RLVR_WORLD_CUDA_ARCHS=90       CUDA architectures (";"-separated) when torch has CUDA and nvcc exists.
  RLVR_WORLD_AVX2=0              compile the CPU kernels without -mavx2 -mfma.
  MAX_JOBS=N                     parallel compile jobs.

The CMake build directory (build/ext-<python>-<torch>) is kept, so a rebuild after editing one file
recompiles only that file: `pip install -e . --no-build-isolation` again, or `make ext`.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
BUILD_EXT = os.environ.get("RLVR_WORLD_BUILD_EXT", "auto").strip().lower()
if BUILD_EXT not in ("auto", "0", "1"):
    sys.exit(f"RLVR_WORLD_BUILD_EXT must be auto, 0 or 1, got {BUILD_EXT!r}")


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _nvcc() -> Path | None:
    nvcc = shutil.which("nvcc") or (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin/nvcc")
    return Path(nvcc) if Path(nvcc).exists() else None


class CMakeBuild(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - auto mode degrades to a pure-Python install
            if BUILD_EXT == "1":
                raise
            print(f"rlvr_world: C++ extension not built ({type(err).__name__}: {err}); "
                  "installing pure Python, impl='auto' falls back", file=sys.stderr)

    def build_extension(self, ext):
        import torch
        from torch.utils import cpp_extension

        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        tag = f"{sys.implementation.cache_tag}-torch{torch.__version__.replace('+', '_')}"
        build_dir = ROOT / "build" / f"ext-{tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        nvcc = _nvcc()
        with_cuda = torch.version.cuda is not None and nvcc is not None
        args = [
            f"-DRLVR_WORLD_TORCH_INCLUDE={';'.join(cpp_extension.include_paths())}",
            f"-DRLVR_WORLD_TORCH_LIBDIR={cpp_extension.library_paths()[0]}",
            f"-DRLVR_WORLD_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DRLVR_WORLD_EXT_PATH={ext_path}",
            f"-DRLVR_WORLD_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DRLVR_WORLD_CUDA_ARCHS={os.environ.get('RLVR_WORLD_CUDA_ARCHS', '90')}",
            f"-DRLVR_WORLD_AVX2={'OFF' if os.environ.get('RLVR_WORLD_AVX2') == '0' else 'ON'}",
        ]
        if with_cuda:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        print(f"rlvr_world: building _C ({'CPU + CUDA' if with_cuda else 'CPU only: torch has no CUDA or no nvcc'})")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(
    ext_modules=[] if BUILD_EXT == "0" else [CMakeExtension("rlvr_world._C")],
    cmdclass={"build_ext": CMakeBuild},
)
