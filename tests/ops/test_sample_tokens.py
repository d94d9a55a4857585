"""sample_tokens: every impl draws the reference's token (exactly) with its log-prob; the kept set against a
brute-force definition; batch invariance; the counter-based RNG; the sampled distribution; bad inputs."""

import pytest
import torch

from rlvr_world import ops
from rlvr_world.ops import _library, reference
from rlvr_world.testing import assert_close
from tests.conftest import cpu_impls

needs_cpp = pytest.mark.skipif(not _library.has_kernel("sample_tokens", "cpu"), reason="C++ extension not built")
ALL = ["reference", *cpu_impls()]
CONFIGS = [  # (temperature, top_k, top_p)
    (1.0, 0, 1.0),
    (0.7, 20, 1.0),
    (1.3, 0, 0.9),
    (0.8, 10, 0.6),
]


def _logits(B, V, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, V, generator=g, dtype=torch.float64) * scale).to(dtype)


def _sample(impl, logits, **kw):
    if impl == "reference":
        return reference.sample_tokens(logits, kw.get("temperature", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0),
                                       kw.get("seed", 0), kw.get("offset", 0))
    return ops.sample_tokens(logits, impl=impl, **kw)


def _assert_tokens_equal(name, got, want):
    bad = (got != want).nonzero().flatten()
    assert bad.numel() == 0, f"{name}: {bad.numel()} rows differ, e.g. rows {bad[:5].tolist()}: " \
                             f"got {got[bad[:5]].tolist()}, expected {want[bad[:5]].tolist()}"


def brute_force_kept(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """DESIGN §5 literally, per token, in fp64: v survives top-k when fewer than k tokens are strictly more
    probable; it survives top-p when the top-k-renormalised mass strictly above it is < p. [B, V] bool."""
    x = logits.double()
    greater = x[:, None, :] > x[:, :, None]  # [B, v, u]: u strictly more probable than v
    keep = greater.sum(-1) < top_k if top_k > 0 else torch.ones_like(x, dtype=torch.bool)
    if top_p < 1.0:
        q = torch.softmax(torch.where(keep, x / temperature, float("-inf")), -1)  # [B, V]
        above = (greater & keep[:, None, :]).double() @ q[:, :, None]  # [B, V, 1]
        keep = keep & (above[..., 0] < top_p)
    return keep


# --------------------------------------------------------------------------------------------- RNG


def test_philox_known_answers():
    """Random123's known-answer vectors of Philox-4x32-10 pin the generator every backend reimplements."""
    def run(counter, key):
        return [int(w) for w in reference.philox4x32(tuple(torch.tensor(c) for c in counter), key)]

    assert run((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert run((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert run((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_uniforms_are_open_and_exact():
    u = reference.sample_uniforms(3, torch.arange(4), 5000, torch.float64)
    assert bool((u > 0).all() and (u < 1).all())
    assert torch.equal(u, u.float().double())  # exact in fp32
    assert abs(float(u.mean()) - 0.5) < 0.01


# ------------------------------------------------------------------------------------ vs reference


@pytest.mark.parametrize("impl", cpu_impls())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("temperature,top_k,top_p", CONFIGS)
def test_matches_reference(impl, dtype, temperature, top_k, top_p):
    logits = _logits(16, 257, dtype, seed=1)
    offset = torch.arange(16) * 1_000_003 + (5 << 32)  # high words in use
    kw = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": 2**63 + 12345, "offset": offset}
    want_tok, want_lp = _sample("reference", logits, **kw)
    tok, lp = _sample(impl, logits, **kw)
    assert tok.dtype == torch.int64 and lp.dtype == _library.acc_dtype(dtype)
    _assert_tokens_equal(f"{impl} tokens", tok, want_tok)
    assert_close(f"{impl} logp", lp, want_lp, atol=1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.skipif("triton" not in cpu_impls(), reason="needs triton (TRITON_INTERPRET=1 on CPU)")
@pytest.mark.parametrize("dtype,temperature,top_k,top_p", [(torch.float32, 0.7, 20, 0.9), (torch.bfloat16, 1.0, 0, 1.0)])
def test_triton_chunked_path_matches_reference(dtype, temperature, top_k, top_p):
    """V larger than the block: every pass loops over chunks (forced at small V with block_v)."""
    from rlvr_world.kernels import sample_tokens as kernel

    logits = _logits(3, 300, dtype, seed=2)
    offset = torch.tensor([7, 2**40 + 1, 12], dtype=torch.int64)
    want_tok, want_lp = reference.sample_tokens(logits, temperature, top_k, top_p, 99, offset)
    tok, lp = kernel.sample_tokens(logits, offset, 99, 1.0 / temperature, top_k, top_p, block_v=128)
    _assert_tokens_equal("triton chunked tokens", tok, want_tok)
    assert_close("triton chunked logp", lp, want_lp, atol=1e-5)


@pytest.mark.parametrize("impl", ALL)
def test_greedy_is_argmax_with_logp_zero(impl):
    logits = torch.tensor([[0.0, 3.0, 3.0, -1.0], [float("-inf"), -2.0, -5.0, -2.0]])
    tok, lp = _sample(impl, logits, temperature=0.0, top_k=2, top_p=0.5, seed=4, offset=torch.tensor([1, 2]))
    assert tok.tolist() == [1, 1] and lp.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("impl", ALL)
def test_masked_vocab_entries_are_never_drawn(impl):
    logits = _logits(32, 50, seed=3)
    logits[:, ::2] = float("-inf")
    for top_k, top_p in ((0, 1.0), (30, 1.0), (0, 0.95)):
        tok, lp = _sample(impl, logits, top_k=top_k, top_p=top_p, offset=torch.arange(32))
        assert bool((tok % 2 == 1).all()) and bool(torch.isfinite(lp).all())


@pytest.mark.parametrize("impl", ALL)
def test_non_contiguous_logits_and_int32_offsets(impl):
    base = _logits(40, 6, seed=4).t()  # [6, 40] with vocab stride 6
    offset = torch.arange(6, dtype=torch.int32)
    got = _sample(impl, base, top_k=5, offset=offset, seed=1)
    want = reference.sample_tokens(base.contiguous(), 1.0, 5, 1.0, 1, offset.long())
    _assert_tokens_equal(impl, got[0], want[0])


# -------------------------------------------------------------------------------- truncation sets


def _crafted_rows() -> tuple[torch.Tensor, list[tuple[int, float]]]:
    """Rows with ties at the k-th value and at the p-crossing token, and the (k, p) that hit them."""
    lg = torch.log(torch.tensor([0.4, 0.2, 0.2, 0.1, 0.05, 0.05], dtype=torch.float64))
    rows = torch.stack([
        torch.tensor([5.0, 4.0, 4.0, 4.0, 1.0, 0.0], dtype=torch.float64),  # k=2: three-way tie at 2nd
        lg,  # p=0.5 crosses at the tied pair 0.2/0.2 -> both kept; p=0.7 -> 4 tokens
        lg.flip(0),
        torch.zeros(6, dtype=torch.float64),  # all tied: every k, every p keeps all
    ])
    return rows, [(2, 1.0), (0, 0.5), (0, 0.75), (3, 0.3), (1, 1.0), (6, 0.99), (4, 0.55)]


def test_reference_mask_matches_brute_force():
    rows, cases = _crafted_rows()
    for temperature in (1.0, 0.6):
        for top_k, top_p in cases:
            want = brute_force_kept(rows, temperature, top_k, top_p)
            got = reference.sampling_mask(rows, temperature, top_k, top_p)
            assert torch.equal(got, want), (temperature, top_k, top_p, got, want)
    # tie rules spelled out (kept per row): k=2 keeps the three 4s of row 0 and both 0.2s of row 1; p=0.5 on
    # row 1 crosses at the first 0.2 (0.4 + 0.2 >= 0.5) and keeps its tie too
    expected = {(2, 1.0): [4, 3, 3, 6], (0, 0.5): [4, 3, 3, 6], (1, 1.0): [1, 1, 1, 6]}
    for (top_k, top_p), counts in expected.items():
        assert reference.sampling_mask(rows, 1.0, top_k, top_p).sum(-1).tolist() == counts
    logits = _logits(24, 40, torch.float64, seed=5)
    for temperature, top_k, top_p in CONFIGS + [(1.0, 40, 0.3), (2.0, 1, 1.0)]:
        want = brute_force_kept(logits, temperature, top_k, top_p)
        assert torch.equal(reference.sampling_mask(logits, temperature, top_k, top_p), want)


@pytest.mark.parametrize("impl", ALL)
def test_draws_cover_exactly_the_kept_set(impl):
    """Over many streams, the tokens drawn are the brute-force kept set: nothing outside, all of it inside.
    (Triton under the interpreter runs the two tie cases with fewer draws: only "nothing outside".)"""
    rows, cases = _crafted_rows()
    n, cases = (24, cases[:2]) if impl == "triton" else (200, cases[:4])  # smallest kept prob 0.1: 0.9^200
    for top_k, top_p in cases:
        keep = brute_force_kept(rows, 1.0, top_k, top_p)  # [4, 6]
        logits = rows.float().repeat_interleave(n, 0)  # [4n, 6]
        tok, _ = _sample(impl, logits, top_k=top_k, top_p=top_p, seed=11, offset=torch.arange(4 * n))
        drawn = torch.zeros_like(keep).index_put_((torch.arange(4).repeat_interleave(n), tok), torch.tensor(True))
        assert not bool((drawn & ~keep).any()), (impl, top_k, top_p, drawn, keep)
        if impl != "triton":
            assert torch.equal(drawn, keep), (impl, top_k, top_p, drawn, keep)


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("temperature,top_k,top_p", CONFIGS)
def test_logp_is_log_softmax_of_the_truncated_tempered_logits(impl, temperature, top_k, top_p):
    """The log-prob contract: the trainer's recomputation on the same truncation gives the same number."""
    logits = _logits(12, 200, seed=6)
    tok, lp = _sample(impl, logits, temperature=temperature, top_k=top_k, top_p=top_p, offset=torch.arange(12))
    keep = brute_force_kept(logits, temperature, top_k, top_p)
    assert bool(keep.gather(1, tok[:, None]).all())
    recomputed = reference.logprobs_from_logits(torch.where(keep, logits, float("-inf")), tok, temperature)
    assert_close(f"{impl} logp vs recomputation", lp, recomputed, atol=1e-5)
    truth = torch.log_softmax(torch.where(keep, logits.double() / temperature, float("-inf")), -1)
    assert_close(f"{impl} logp vs fp64", lp, truth.gather(1, tok[:, None])[:, 0], atol=1e-5)


# ------------------------------------------------------------------------- streams and invariance


@pytest.mark.parametrize("impl", ALL)
def test_batch_invariance(impl):
    """A row's draw depends on (seed, offset[b], its logits) only: not on other rows or their order."""
    logits = _logits(10, 97, seed=7)
    offset = torch.arange(10) * 320 + 17
    kw = {"temperature": 0.9, "top_k": 30, "top_p": 0.95, "seed": 5}
    tok, lp = _sample(impl, logits, offset=offset, **kw)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    tok_p, lp_p = _sample(impl, logits[perm], offset=offset[perm], **kw)
    assert torch.equal(tok_p, tok[perm]) and torch.equal(lp_p, lp[perm])
    extra = _logits(5, 97, seed=8)
    mixed = torch.cat([extra[:2], logits[3:6], extra[2:]])
    tok_m, lp_m = _sample(impl, mixed, offset=torch.cat([offset[:2] + 1, offset[3:6], offset[:3] + 2]), **kw)
    assert torch.equal(tok_m[2:5], tok[3:6]) and torch.equal(lp_m[2:5], lp[3:6])
    one_tok, _ = _sample(impl, logits[4:5], offset=offset[4:5], **kw)
    assert int(one_tok) == int(tok[4])


@pytest.mark.parametrize("impl", ALL)
def test_offsets_and_seeds_select_streams(impl):
    logits = torch.zeros(64, 1000)  # uniform: the draw is all noise
    offset = torch.arange(64) + 1000
    tok, _ = _sample(impl, logits, seed=1, offset=offset)
    assert tok.unique().numel() >= 56  # distinct offsets: (nearly) distinct draws (expected ~62 of 64)
    assert torch.equal(_sample(impl, logits, seed=1, offset=offset)[0], tok)  # same stream: same draw
    other_seed, _ = _sample(impl, logits, seed=2, offset=offset)
    assert int((other_seed != tok).sum()) >= 56
    high_word, _ = _sample(impl, logits, seed=1, offset=offset + (1 << 32))  # the high word counts too
    assert int((high_word != tok).sum()) >= 56
    same, _ = _sample(impl, logits, seed=1, offset=1234)  # an int offset is shared by every row
    assert torch.equal(same, torch.full_like(same, int(same[0])))
    assert torch.equal(same, _sample(impl, logits, seed=1, offset=torch.full((64,), 1234))[0])


@needs_cpp
def test_cpp_result_does_not_depend_on_the_thread_count():
    logits, offset = _logits(64, 500, seed=9), torch.arange(64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.sample_tokens(logits, top_k=50, top_p=0.9, offset=offset, impl="cpp")
        torch.set_num_threads(max(2, threads))
        many = ops.sample_tokens(logits, top_k=50, top_p=0.9, offset=offset, impl="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


# ------------------------------------------------------------------------------------ distribution


@pytest.mark.parametrize("impl", ["reference", *[i for i in cpu_impls() if i == "cpp"]])
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 6, 1.0), (1.2, 0, 0.8), (0.8, 6, 0.85)])
def test_distribution_matches_truncated_probabilities(impl, temperature, top_k, top_p):
    """10^5 draws (one per offset) at fixed logits: the empirical frequencies against the renormalised
    truncated probabilities -- nothing outside the kept set, total variation within 3x its Monte-Carlo
    scale, and a chi-square statistic below df + 6 sqrt(2 df) (both fail for a wrong temperature or mask)."""
    n = 100_000
    row = torch.tensor([[2.0, 1.5, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0]])
    keep = brute_force_kept(row, temperature, top_k, top_p)[0]
    q = torch.softmax(torch.where(keep, row[0].double() / temperature, float("-inf")), -1)  # [V]
    tok, _ = _sample(impl, row.expand(n, -1), temperature=temperature, top_k=top_k, top_p=top_p, seed=2024,
                     offset=torch.arange(n))
    freq = torch.bincount(tok, minlength=row.shape[1]).double() / n
    assert float(freq[~keep].sum()) == 0.0
    tv = 0.5 * float((freq - q).abs().sum())
    tv_scale = 0.5 * float(torch.sqrt(2 * q * (1 - q) / (torch.pi * n)).sum())  # E[TV] under exact sampling
    assert tv <= 3 * tv_scale, f"TV {tv:.2e} > 3 x {tv_scale:.2e}: freq {freq.tolist()} vs q {q.tolist()}"
    chi2 = float(((freq - q)[keep] ** 2 / q[keep]).sum() * n)
    df = int(keep.sum()) - 1
    assert chi2 <= df + 6 * (2 * df) ** 0.5, f"chi2 {chi2:.1f} with {df} dof"


# ----------------------------------------------------------------------------- library and errors


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_opcheck(dtype):
    logits, offset = _logits(5, 33, dtype, seed=10), torch.arange(5) + (3 << 32)
    for args in ((-5, 1.25, 0, 1.0), (7, 0.5, 4, 0.7), (0, 1.0, 33, 0.2)):
        torch.library.opcheck(torch.ops.rlvr_world.sample_tokens.default, (logits, offset, *args))


@needs_cpp
def test_registered_op_checks_its_inputs():
    op = torch.ops.rlvr_world.sample_tokens
    logits, offset = torch.randn(4, 10), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="offset must have shape"):
        op(logits, offset[:3], 0, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="offset must be Long"):
        op(logits, offset.int(), 0, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"top_k must be in \[0, V = 10\], got 11"):
        op(logits, offset, 0, 1.0, 11, 1.0)
    with pytest.raises(ValueError, match="logits must be contiguous in its last dim"):
        op(torch.randn(10, 4).t(), offset, 0, 1.0, 0, 1.0)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"logits": torch.randn(10)}, r"logits must be 2-D, got shape \(10,\)"),
        ({"logits": torch.randn(2, 3, 4)}, r"logits must be 2-D, got shape \(2, 3, 4\)"),
        ({"logits": torch.randint(0, 3, (4, 10))}, "logits must be a float tensor"),
        ({"logits": torch.randn(4, 0)}, r"logits must have at least one vocab entry .*got \(4, 0\)"),
        ({"top_p": 0.0}, r"top_p must be a number in \(0, 1\] \(1 = off\), got 0.0"),
        ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\] \(1 = off\), got 1.5"),
        ({"top_p": -0.1}, r"top_p must be a number in \(0, 1\]"),
        ({"top_k": -1}, r"top_k must be an int in \[0, V = 10\] \(0 = off\), got -1"),
        ({"top_k": 11}, r"top_k must be an int in \[0, V = 10\] \(0 = off\), got 11"),
        ({"top_k": 2.0}, r"top_k must be an int in \[0, V = 10\]"),
        ({"temperature": -0.5}, r"temperature must be a finite number >= 0 \(0 = greedy\), got -0.5"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
        ({"temperature": 1e-40}, "temperature must be 0 .* or >= 1e-30, got 1e-40"),
        ({"seed": -1}, r"seed must be an int in \[0, 2\^64\), got -1"),
        ({"seed": 2**64}, r"seed must be an int in \[0, 2\^64\)"),
        ({"offset": torch.arange(3)}, r"offset must be an int or a tensor of shape \(4,\) .*got shape \(3,\)"),
        ({"offset": torch.zeros(4, 1, dtype=torch.long)}, r"offset must be .* shape \(4,\) .*got shape \(4, 1\)"),
        ({"offset": torch.zeros(4)}, "offset must be an integer tensor, got torch.float32"),
        ({"offset": torch.zeros(4, dtype=torch.long, device="meta")}, "offset must be on logits's device cpu, got meta"),
        ({"offset": 1.5}, "offset must be an int64 or an integer tensor"),
        ({"impl": "fast"}, "impl must be one of"),
    ],
)
def test_bad_inputs(kw, match):
    args = {"logits": torch.randn(4, 10)} | kw
    with pytest.raises(ValueError, match=match):
        ops.sample_tokens(args.pop("logits"), **args)


def test_explicit_cuda_impl_needs_cuda_tensors():
    with pytest.raises(RuntimeError, match="impl='cuda' is unavailable: impl='cuda' needs CUDA tensors"):
        ops.sample_tokens(torch.randn(2, 5), impl="cuda")


def test_stale_extension_without_the_op(monkeypatch):
    """An _C built before sample_tokens existed: "auto" falls back to the reference, "cpp" says what is missing."""
    monkeypatch.setattr(_library, "has_kernel", lambda op, device: False)
    logits = _logits(4, 30, seed=13)
    if _library.cpp_available():
        with pytest.raises(RuntimeError, match="impl='cpp' is unavailable: rlvr_world._C has no CPU kernel of sample"):
            ops.sample_tokens(logits, impl="cpp")
    got = ops.sample_tokens(logits, top_k=5, offset=torch.arange(4))
    want = reference.sample_tokens(logits, 1.0, 5, 1.0, 0, torch.arange(4))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_empty_batch():
    for impl in ALL:
        tok, lp = _sample(impl, torch.randn(0, 7), offset=torch.zeros(0, dtype=torch.long))
        assert tok.shape == (0,) and lp.shape == (0,)


def _gpu_impls():
    if not torch.cuda.is_available():
        return ["triton"]
    from rlvr_world.ops import _dispatch

    return [i for i in ("triton", "cuda") if _dispatch.missing(i, torch.device("cuda")) is None]


@pytest.mark.cuda
@pytest.mark.parametrize("impl", _gpu_impls())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab,n", [(4633, 512), (9008, 64), (151936, 16)])
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 50, 0.9), (1.0, 0, 0.95)])
def test_gpu_matches_reference(impl, dtype, vocab, n, temperature, top_k, top_p):
    """On a GPU (on-chip and chunked Triton paths, the CUDA kernel when built) against the CPU reference."""
    logits = _logits(n, vocab, dtype, seed=12)
    offset = torch.arange(n) * 977 + (9 << 32)
    kw = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": 31337, "offset": offset}
    want_tok, want_lp = _sample("reference", logits, **kw)
    tok, lp = ops.sample_tokens(logits.cuda(), impl=impl, **(kw | {"offset": offset.cuda()}))
    # GPU libm (logf/expf) may differ by an ulp: allow a handful of near-tie rows, no more
    differ = int((tok.cpu() != want_tok).sum())
    assert differ <= max(1, n // 1000), f"{impl}: {differ} of {n} rows drew another token"
    same = tok.cpu() == want_tok
    assert_close(f"{impl} logp", lp.cpu()[same], want_lp[same], atol=1e-5)
