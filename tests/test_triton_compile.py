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
from rlvr_world.kernels.frame_metrics import _pixel_sums_kernel, _ssim_tiles_kernel

target = GPUTarget("cuda", 90, 32)
built = 0

def build(fn, sig, consts, divisible=(), num_warps=4):
    """divisible: argument names the launcher's specialisation marks 16-divisible (aligned pointers, W % 16 == 0)."""
    global built
    attrs = {(list(sig).index(n),): [["tt.divisibility", 16]] for n in divisible}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=target,
                       options=dict(num_warps=num_warps))
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
for frame in ("u8", "bf16", "fp16", "fp32", "fp64"):  # frame_metrics: streaming pixel sums, fused SSIM tiles
    acc, a = (tl.float64, "*fp64") if frame == "fp64" else (tl.float32, "*fp32")
    ptrs = {"pred_ptr": "*" + frame, "target_ptr": "*" + frame}
    build(_pixel_sums_kernel, {**ptrs, "sq_ptr": a, "abs_ptr": a, "G": "i32", "N": "i32", "S": "i32",
          "CHUNK": "constexpr", "BLOCK": "constexpr", "IS_U8": "constexpr", "ACC": "constexpr"},
          {"CHUNK": 32768, "BLOCK": 4096, "IS_U8": frame == "u8", "ACC": acc},
          divisible=("pred_ptr", "target_ptr", "N"), num_warps=8)
    sig = {**ptrs, "window_ptr": a, "params_ptr": "*fp64", "scratch_ptr": a, "ssim_ptr": a, "sq_ptr": a, "abs_ptr": a,
           **{n: "i32" for n in ("G", "C", "H", "W", "H_OUT", "W_OUT", "N_RT", "N_CT", "N_TILES")},
           **{n: "constexpr" for n in ("K", "BH", "BW", "BWO", "SW", "IS_U8", "ACC")}}
    tiles = [(4, 128)] if frame == "fp64" else [(8, 128)] + [(16, 64), (4, 256)] * (frame == "u8")
    for bh, bw in tiles:  # the launcher's GPU tiles (K = 11: 16 halo columns); W % 16 == 0 and odd W
        consts = {"K": 11, "BH": bh, "BW": bw, "BWO": bw - 16, "SW": bw + 16, "IS_U8": frame == "u8", "ACC": acc}
        for divisible in ((), ("pred_ptr", "target_ptr", "window_ptr", "scratch_ptr", "W")):
            build(_ssim_tiles_kernel, sig, consts, divisible=divisible, num_warps=8)
print("built", built)
'''


def test_kernels_compile_for_sm90(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "built 44" in r.stdout
