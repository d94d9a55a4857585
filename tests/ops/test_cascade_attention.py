"""Cascade decode attention: the Triton kernel (under TRITON_INTERPRET=1 on the CPU) against the eager
reference (fp64 truth; error within 2x the same-dtype eager error), GQA / MHA / MQA, per-row suffix lengths
(0 included), several prefix splits and M blocks, strided cache views; the reference against the eager
``SharedPrefixKVCache`` parts; the ``TritonSharedPrefixKVCache`` through ``Transformer.decode_step`` and
``rollout.generate(attn_impl="triton")`` on tiny models; bad inputs; larger shapes on a GPU."""

import math

import pytest
import torch

from rlvr_world.models.kv_cache import SharedPrefixKVCache, TritonSharedPrefixKVCache
from rlvr_world.ops.cascade_attention import cascade_decode_attention, cascade_decode_reference
from rlvr_world.testing import assert_close, assert_within_eager_error
from tests.conftest import cpu_impls


def needs_triton(fn):
    """Runs Triton (under TRITON_INTERPRET=1 on the CPU)."""
    skip = pytest.mark.skipif("triton" not in cpu_impls(), reason="needs triton (TRITON_INTERPRET=1 on CPU)")
    return pytest.mark.triton(skip(fn))


def _inputs(P=2, G=3, Hq=4, Hkv=2, D=16, Lp=37, N=9, lens=(0, 1, 5, 9, 3, 2), dtype=torch.float32,
            device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)

    q, pk, pv = r(P * G, Hq, D), r(P, Hkv, Lp, D), r(P, Hkv, Lp, D)
    sk, sv = r(P * G, Hkv, N, D), r(P * G, Hkv, N, D)
    lens = torch.tensor(lens, dtype=torch.int64, device=device)
    return [x.to(dtype) for x in (q, pk, pv, sk, sv)] + [lens]


def _check(name, args, scale=None, **kernel_kw):
    truth = cascade_decode_reference(*[a.double() if a.is_floating_point() else a for a in args], scale)
    eager = cascade_decode_reference(*args, scale)
    if kernel_kw:
        from rlvr_world.kernels import cascade_decode as kernel

        q = args[0]
        G = q.shape[0] // args[1].shape[0]
        got = kernel.cascade_decode(*args, G, 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale, **kernel_kw)
    else:
        got = cascade_decode_attention(*args, scale=scale, impl="triton")
    assert got.dtype == args[0].dtype and got.shape == args[0].shape
    assert_within_eager_error(name, got, eager, truth)


# ------------------------------------------------------------------------------------------ reference
def test_reference_matches_shared_prefix_cache_parts():
    """The op's reference is SharedPrefixKVCache.attend's math: same numbers through the cache."""
    P, G, Hq, Hkv, D, Lp, N = 2, 3, 4, 2, 16, 7, 5
    cache = SharedPrefixKVCache.allocate(1, P, G, Hkv, Lp + 3, N, D)  # prefix buffer longer than Lp
    cache.prefix.k.normal_()
    cache.prefix.v.normal_()
    cache.prefix_len = Lp
    g = torch.Generator().manual_seed(1)
    slots = torch.tensor([0, 2, 4, 1, 3, 0])
    cache.suffix.k.normal_(generator=g)
    cache.suffix.v.normal_(generator=g)
    q = torch.randn(P * G, Hq, 1, D)
    k, v = torch.randn(P * G, Hkv, 1, D), torch.randn(P * G, Hkv, 1, D)
    got = cache.attend(0, q, k, v, (slots + Lp).unsqueeze(1))[:, :, 0]  # writes k, v at the slots
    want = cascade_decode_attention(q[:, :, 0], cache.prefix.k[0, :, :, :Lp], cache.prefix.v[0, :, :, :Lp],
                                    cache.suffix.k[0], cache.suffix.v[0], slots + 1, impl="reference")
    assert_close("reference vs cache", want, got, atol=1e-6)


def test_reference_fp64_and_doctest():
    args = _inputs(dtype=torch.float64)
    out = cascade_decode_attention(*args, impl="reference")
    assert out.dtype == torch.float64
    # brute force: softmax over the concatenated keys of each row
    q, pk, pv, sk, sv, lens = args
    G, rep = 3, 2
    for r in range(q.shape[0]):
        for h in range(q.shape[1]):
            kv = h // rep
            n = int(lens[r])
            keys = torch.cat([pk[r // G, kv], sk[r, kv, :n]])
            vals = torch.cat([pv[r // G, kv], sv[r, kv, :n]])
            p = torch.softmax(keys @ q[r, h] / math.sqrt(q.shape[-1]), 0)
            assert_close(f"row {r} head {h}", out[r, h], p @ vals, atol=1e-12)
    import doctest

    from rlvr_world.ops import cascade_attention

    assert doctest.testmod(cascade_attention).failed == 0


# ------------------------------------------------------------------------------------------ Triton kernel
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("Hq, Hkv", [(4, 2), (4, 4), (4, 1)], ids=["gqa", "mha", "mqa"])
def test_triton_matches_reference(dtype, Hq, Hkv):
    """Suffix lengths 0, 1, 5, 9 (= N), 3, 2; Lp = 37 (not a multiple of the key tile)."""
    _check(f"{dtype} Hq={Hq} Hkv={Hkv}", _inputs(Hq=Hq, Hkv=Hkv, dtype=dtype))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_n, num_splits", [(16, 3), (16, 2), (16, 9)])
def test_triton_prefix_splits(dtype, block_n, num_splits):
    """Lp = 37 in key tiles of 16 (a partial last tile), over 2-3 split-K programs; num_splits > tiles clamps."""
    _check(f"splits {num_splits}", _inputs(dtype=dtype), block_n=block_n, num_splits=num_splits)


@needs_triton
def test_triton_several_m_blocks(monkeypatch):
    """G * rep = 20 query rows per group over M blocks of 16: each block reads the prefix, all rows correct."""
    from rlvr_world.kernels import cascade_decode as kernel

    monkeypatch.setattr(kernel, "MAX_BLOCK_M", 16)
    _check("m blocks", _inputs(P=1, G=5, lens=(3, 0, 9, 1, 4)), block_n=16, num_splits=2)


@needs_triton
def test_triton_odd_shapes_views_and_int_length():
    # head_dim 24 (not a power of two), Lp = 1, a single group, G = 1, an explicit scale
    _check("D=24", _inputs(D=24, Lp=5, lens=(4, 0, 9, 9, 1, 2)))
    _check("Lp=1", _inputs(Lp=1, N=3, lens=(0, 1, 3, 2, 0, 3)), scale=0.3)
    _check("G=1", _inputs(P=3, G=1, lens=(2, 0, 9)))
    # N = 0: no suffix slots at all, every row reads the prefix only
    _check("N=0", _inputs(N=0, lens=(0,) * 6))
    # strided views of a cache: prefix [..., :Lp, :] of a longer buffer, suffix rows of a bigger batch
    q, pk, pv, sk, sv, _ = _inputs(Lp=40, N=12, lens=(1,) * 6)
    args = [q, pk[:, :, :37], pv[:, :, :37], sk[:, :, :9], sv[:, :, :9]]
    truth = cascade_decode_reference(*args, torch.full((6,), 5))
    got = cascade_decode_attention(*args, 5, impl="triton")
    assert_close("views, suffix_len=5", got, truth, atol=2e-6)
    # q with a non-unit last stride is made contiguous
    qt = q.transpose(0, 2).contiguous().transpose(0, 2)
    assert_close("strided q", cascade_decode_attention(qt, *args[1:], 5, impl="triton"), truth, atol=2e-6)


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("change, match", [
    (lambda a: a.__setitem__(0, a[0][:, :, :8]), r"prefix_k must have head_dim 8"),
    (lambda a: a.__setitem__(0, a[0][:5]), r"q must have P \* G rows for the P = 2 prompts of prefix_k, got 5"),
    (lambda a: a.__setitem__(0, a[0][:, :3]), r"number of kv heads dividing q's 3 heads, got 2"),
    (lambda a: a.__setitem__(0, a[0][0]), r"q must be 3-D"),
    (lambda a: a.__setitem__(2, a[2].double()), r"prefix_v must have q's dtype torch.float32, got torch.float64"),
    (lambda a: a.__setitem__(2, a[2][:, :, :5]), r"prefix_v must have prefix_k's shape"),
    (lambda a: a.__setitem__(3, a[3][:4]), r"suffix_k must have shape \[B=6, Hkv=2, N, D=16\], got \(4, 2, 9, 16\)"),
    (lambda a: a.__setitem__(4, a[4][:, :, :3]), r"suffix_v must have suffix_k's shape"),
    (lambda a: a.__setitem__(1, a[1][:, :, :0]), r"prefix_k must hold at least one key"),
    (lambda a: a.__setitem__(5, torch.tensor([0, 1, 10, 0, 0, 0])), r"suffix_len must lie in \[0, N=9\].*got 10 at row 2"),
    (lambda a: a.__setitem__(5, torch.tensor([0, 1, -1, 0, 0, 0])), r"got -1 at row 2"),
    (lambda a: a.__setitem__(5, torch.zeros(5, dtype=torch.long)), r"suffix_len must have shape \(6,\)"),
    (lambda a: a.__setitem__(5, torch.zeros(6)), r"suffix_len must be an integer tensor"),
    (lambda a: a.__setitem__(5, 10), r"suffix_len must be an int in \[0, N=9\]"),
    (lambda a: a.__setitem__(5, True), r"suffix_len must be an int"),
    (lambda a: a.__setitem__(1, a[1].numpy()), r"prefix_k must be a torch.Tensor"),
])
def test_bad_inputs(change, match):
    args = _inputs()
    change(args)
    with pytest.raises(ValueError, match=match):
        cascade_decode_attention(*args, impl="reference")


def test_bad_scale_and_impl():
    args = _inputs()
    for scale in (0.0, -1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="scale must be None"):
            cascade_decode_attention(*args, scale=scale, impl="reference")
    with pytest.raises(ValueError, match="impl must be one of"):
        cascade_decode_attention(*args, impl="nope")
    with pytest.raises(RuntimeError, match="this op has no cpp backend"):
        cascade_decode_attention(*args, impl="cpp")
    if "triton" in cpu_impls():
        with pytest.raises(RuntimeError, match="kernel takes float16/bfloat16/float32, got torch.float64"):
            cascade_decode_attention(*_inputs(dtype=torch.float64), impl="triton")
    # auto on CPU tensors is the reference (the interpreter is for tests)
    torch.testing.assert_close(cascade_decode_attention(*args), cascade_decode_reference(*args), rtol=0, atol=0)


def test_triton_unavailable_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="impl='triton' is unavailable: .*TRITON_INTERPRET=1"):
        cascade_decode_attention(*_inputs(), impl="triton")
    with pytest.raises(RuntimeError, match=r"attn_impl='triton'\) is unavailable"):
        TritonSharedPrefixKVCache.allocate(1, 1, 2, 1, 4, 4, 8)


# ------------------------------------------------------------------------------------------ KV cache / engine
def _tiny(n_kv_heads=2, dtype=torch.float32):
    from rlvr_world.models.transformer import ModelArgs, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                                  intermediate_size=64, max_seq_len=64))
    model.reset_parameters(std=0.15)
    return model.to(dtype).eval()


@needs_triton
@pytest.mark.parametrize("n_kv_heads", [2, 4], ids=["gqa", "mha"])
def test_triton_cache_decode_matches_eager(n_kv_heads):
    model = _tiny(n_kv_heads)
    a = model.args
    P, G, Lp, T = 2, 3, 11, 4
    prompts = torch.randint(0, 64, (P, Lp), generator=torch.Generator().manual_seed(2))
    steps = torch.randint(0, 64, (P * G, T + 2), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eager = SharedPrefixKVCache.allocate(a.n_layers, P, G, a.n_kv_heads, Lp, T + 2, a.head_dim)
        tri = TritonSharedPrefixKVCache.allocate(a.n_layers, P, G, a.n_kv_heads, Lp, T + 2, a.head_dim)
        torch.testing.assert_close(model.prefill(prompts, tri), model.prefill(prompts, eager), rtol=0, atol=0)
        for t in range(T):
            pos = torch.full((P * G,), Lp + t)
            got = model.decode_step(steps[:, t], pos, tri)
            want = model.decode_step(steps[:, t], pos, eager)
            assert_close(f"decode step {t}", got, want, atol=2e-5)
        # rows at different positions in one step (different suffix lengths per row)
        pos = Lp + T - torch.arange(P * G) % 3
        assert_close("ragged step", model.decode_step(steps[:, T], pos, tri),
                     model.decode_step(steps[:, T], pos, eager), atol=2e-5)
        # two tokens per row: the eager fallback (the caches differ by the kernel's rounding only)
        ids, pos2 = steps[:, T:T + 2], torch.full((P * G, 2), Lp + T) + torch.arange(2)
        assert_close("two-token step", model(ids, positions=pos2, cache=tri),
                     model(ids, positions=pos2, cache=eager), atol=2e-5)


@needs_triton
def test_generate_triton_matches_eager():
    from rlvr_world.rollout import CACHE_IMPLS, generate

    assert CACHE_IMPLS["triton"] is TritonSharedPrefixKVCache
    model = _tiny()
    prompts = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(4))
    kw = {"group_size": 2, "max_new_tokens": 5, "top_k": 8, "seed": 3, "sample_impl": "reference"}
    want = generate(model, prompts, **kw)
    got = generate(model, prompts, attn_impl="triton", **kw)
    assert torch.equal(got.tokens, want.tokens)
    assert_close("logprobs", got.logprobs, want.logprobs, atol=1e-5)
    # forced tokens: multi-token appends go through the fallback, sampled steps through the kernel
    forced_mask = torch.tensor([False, True, True, False, False])
    forced = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(5))
    kw.update(forced_tokens=forced, forced_mask=forced_mask)
    assert torch.equal(generate(model, prompts, attn_impl="triton", **kw).tokens, generate(model, prompts, **kw).tokens)


# ------------------------------------------------------------------------------------------ GPU
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("P, G, Hq, Hkv, D, Lp, N", [
    (2, 16, 12, 12, 64, 1333, 320),  # W1 shape (120M: MHA, rep 1), fewer prompts
    (3, 16, 12, 2, 128, 517, 100),   # Qwen2-1.5B heads (rep 6): G * rep = 96
    (1, 40, 8, 2, 64, 300, 33),      # G * rep = 160: two M blocks
    (5, 5, 4, 1, 80, 77, 7),         # head_dim 80, MQA
])
def test_cuda_matches_reference(dtype, P, G, Hq, Hkv, D, Lp, N):
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(0, N + 1, (P * G,), generator=g).tolist()
    args = _inputs(P, G, Hq, Hkv, D, Lp, N, lens, dtype=dtype, device="cuda")
    _check(f"cuda {dtype}", args)


@pytest.mark.cuda
def test_cuda_generate_triton_matches_eager():
    from rlvr_world.rollout import generate

    model = _tiny().cuda()
    prompts = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(4))
    kw = {"group_size": 4, "max_new_tokens": 12, "top_k": 8, "seed": 3}
    assert torch.equal(generate(model, prompts, attn_impl="triton", **kw).tokens, generate(model, prompts, **kw).tokens)


# ------------------------------------------------------------------------------------------ sm_90 compile
_COMPILE = r'''
import triton, triton.language as tl
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from rlvr_world.kernels.cascade_decode import _prefix_kernel, _suffix_merge_kernel

target = GPUTarget("cuda", 90, 32)
built = 0
for dt in ("bf16", "fp16", "fp32"):
    prec = "ieee" if dt == "fp32" else "tf32"
    kv = {"k_ptr": "*" + dt, "v_ptr": "*" + dt, **{n: "i32" for n in ("sk_p", "sk_h", "sk_n", "sv_p", "sv_h", "sv_n")}}
    common = {"G": "constexpr", "REP": "constexpr", "HKV": "constexpr", "D": "constexpr", "BLOCK_M": "constexpr",
              "BLOCK_N": "constexpr", "BLOCK_D": "constexpr", "UPCAST": "constexpr", "QK_PREC": "constexpr",
              "PV_PREC": "constexpr"}
    # (G, REP, HKV, D, BLOCK_M, BLOCK_N, BLOCK_D, warps): W1 (MHA, D 64), Qwen2-1.5B (rep 6, D 128), D 80
    for g, rep, hkv, d, bm, bn, bd, warps in ((16, 1, 12, 64, 16, 64, 64, 4), (16, 6, 2, 128, 128, 32, 128, 8),
                                              (5, 4, 1, 80, 32, 64, 128, 4)):
        consts = {"G": g, "REP": rep, "HKV": hkv, "D": d, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd,
                  "UPCAST": False, "QK_PREC": prec, "PV_PREC": prec}
        sig = {"q_ptr": "*" + dt, "sq_b": "i32", "sq_h": "i32", **kv, "po_ptr": "*fp32", "plse_ptr": "*fp32",
               "Lp": "i32", "split_len": "i32", "n_splits": "i32", "qk_scale": "fp32", **common}
        k = triton.compile(ASTSource(fn=_prefix_kernel, signature=sig, constexprs=consts), target=target,
                           options=dict(num_warps=warps))
        assert len(k.asm["cubin"]) > 0
        sig = {"q_ptr": "*" + dt, "sq_b": "i32", "sq_h": "i32", **{n.replace("sk_p", "sk_b").replace("sv_p", "sv_b"): t for n, t in kv.items()},
               "len_ptr": "*i64", "po_ptr": "*fp32", "plse_ptr": "*fp32", "o_ptr": "*" + dt, "so_b": "i32",
               "so_h": "i32", "n_splits": "i32", "qk_scale": "fp32", **common}
        consts = {**consts, "BLOCK_M": max(16, triton.next_power_of_2(rep)), "BLOCK_N": 32}
        k = triton.compile(ASTSource(fn=_suffix_merge_kernel, signature=sig, constexprs=consts), target=target,
                           options=dict(num_warps=4))
        assert len(k.asm["cubin"]) > 0
        built += 2
print("built", built)
'''


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.skipif("triton" not in cpu_impls(), reason="triton not installed")
def test_kernels_compile_for_sm90(tmp_path):
    """Triton's real compiler (IR -> PTX -> cubin), not the interpreter, on the GPU code path."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    r = subprocess.run([sys.executable, "-c", _COMPILE], check=False, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "built 18" in r.stdout
