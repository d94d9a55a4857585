"""Triton kernels compiled ahead of time for sm_90 by Triton's real compiler (Triton IR -> PTX -> cubin
with its bundled ptxas), not the interpreter: catches what only the compiler rejects (types changing in
loop-carried values, constexpr branches, pointer dtypes) on a machine without a GPU. Each signature
matches how the launchers call the kernel."""

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

SCRIPT = r'''
import triton, triton.language as tl
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from rlvr_world.kernels.logprob_rows import _row_logprobs_kernel, _row_logprobs_backward_kernel
from rlvr_world.kernels.grpo_terms import _grpo_token_terms_kernel
from rlvr_world.kernels.lpips_head import _lpips_head_kernel

target = GPUTarget("cuda", 90, 32)
built = 0

def build(fn, sig, consts):
    global built
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target)
    assert len(k.asm["cubin"]) > 0, fn
    built += 1

for logits in ("bf16", "fp16", "fp32", "fp64"):
    acc, a = (tl.float64, "*fp64") if logits == "fp64" else (tl.float32, "*fp32")
    common = {"logits_ptr": "*" + logits, "stride_row": "i64", "tokens_ptr": "*i64", "inv_t_ptr": "*fp64"}
    build(_row_logprobs_kernel, {**common, "logp_ptr": a, "lse_ptr": a, "V": "i32",
                                 "BLOCK_V": "constexpr", "ACC": "constexpr"}, {"BLOCK_V": 4096, "ACC": acc})
    for with_target in (True, False):
        build(_row_logprobs_backward_kernel, {**common, "lse_ptr": a, "coef_ptr": a, "V": "i32",
              "WITH_TARGET": "constexpr", "BLOCK_V": "constexpr", "ACC": "constexpr"},
              {"WITH_TARGET": with_target, "BLOCK_V": 2048, "ACC": acc})
for acc, a in ((tl.float32, "*fp32"), (tl.float64, "*fp64")):
    sig = {"logp_ptr": a, "old_ptr": a, "adv_ptr": a, "mask_ptr": "*i1", "ref_ptr": a, "params_ptr": "*fp64",
           "coef_ptr": a, "loss_ptr": a, "ratio_ptr": a, "kl_ptr": a, "flags_ptr": "*u8", "N": "i32",
           "HAS_REF": "constexpr", "BLOCK": "constexpr", "ACC": "constexpr"}
    for has_ref in (True, False):
        build(_grpo_token_terms_kernel, sig, {"HAS_REF": has_ref, "BLOCK": 1024, "ACC": acc})
for feat in ("bf16", "fp16", "fp32", "fp64"):  # lpips_head: NCHW and channels_last tiles; i64 image strides
    acc, a = (tl.float64, "*fp64") if feat == "fp64" else (tl.float32, "*fp32")
    sig = {"x_ptr": "*" + feat, "y_ptr": "*" + feat, "w_ptr": a, "part_ptr": a,
           **{n: "i32" for n in ("C", "W", "HW", "G", "n_blocks", "sxb", "sxc", "sxh", "sxw", "syb", "syc", "syh", "syw")},
           "EPS": "constexpr", "BLOCK_C": "constexpr", "BLOCK_S": "constexpr", "ACC": "constexpr"}
    for block_c, block_s in ((16, 128), (64, 32)):
        build(_lpips_head_kernel, sig, {"EPS": 1e-10, "BLOCK_C": block_c, "BLOCK_S": block_s, "ACC": acc})
    if feat == "bf16":
        build(_lpips_head_kernel, {**sig, "sxb": "i64", "syb": "i64"}, {"EPS": 1e-10, "BLOCK_C": 16, "BLOCK_S": 128, "ACC": acc})
print("built", built)
'''


def test_kernels_compile_for_sm90(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "built 25" in r.stdout
