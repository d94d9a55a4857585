"""The installed package: imports from outside the repository, kernels only as rlvr_world.kernels, and
the C++ extension present unless the install disabled it (so a broken build cannot pass silently)."""

import importlib.util
import os
import platform
import subprocess
import sys

import pytest

from rlvr_world.ops import _library

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_imports_from_outside_the_repo(tmp_path):
    r = _python(
        "import sys, rlvr_world, rlvr_world.kernels, rlvr_world.ops, rlvr_world.rl\n"
        "assert 'torch.cuda' not in sys.modules or not __import__('torch').cuda.is_initialized()\n"
        "assert 'triton' not in sys.modules, 'importing the package must not import triton'\n"
        "print(rlvr_world.kernels.__file__)",
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(os.path.join("kernels", "__init__.py"))


def test_kernels_is_not_a_top_level_package(tmp_path):
    r = _python("import kernels", tmp_path)
    assert r.returncode != 0 and "No module named 'kernels'" in r.stderr


def test_extension_built_unless_disabled():
    if os.environ.get("RLVR_WORLD_BUILD_EXT") == "0":
        assert _library.EXTENSION_PATH is None or _library.cpp_available()
        pytest.skip("install was made with RLVR_WORLD_BUILD_EXT=0: the cpp tests skip")
    assert _library.EXTENSION_PATH is not None, "rlvr_world._C missing: the CMake build failed (see pip's log)"
    assert _library.cpp_available("cpu")


@pytest.mark.skipif(platform.system() != "Linux", reason="Triton ships for Linux only")
def test_triton_is_installed_with_dev_extras():
    assert importlib.util.find_spec("triton") is not None, "pip install -e '.[dev]' installs triton on Linux"
