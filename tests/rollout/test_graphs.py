"""The static decode loop of the rollout engine (``rollout/graphs.py``): on the CPU the static-buffer steps run
eagerly (``cuda_graphs="static"``) and must give token-for-token the dynamic loop's outputs in fixed-length,
forced-token, policy-callback and EOS modes, with micro-batches and chunked prefill; ``eos_check_every`` does
not change outputs; the step functions make no Python-side host sync; buckets are reused; stats are
reported. ``cuda``-marked tests run the real capture / replay. Tiny random models, fp32."""

import warnings

import pytest
import torch

from rlvr_world.models.kv_cache import SharedPrefixKVCache
from rlvr_world.ops import cpp_available
from rlvr_world.rollout import CACHE_IMPLS, generate, generate_interactive, graphs, latest_frame_policy
from rlvr_world.rollout.engine import GenerateStats, _prefill, prefill_chunk_size
from rlvr_world.rollout.graphs import CudaGraphWarning, StaticDecoder

from .test_engine import (
    SAMPLING,
    CountForwards,
    V,
    assert_same,
    eos_model,
    multistep_layout,
    naive_generate,
    prompts_for,
    tiny,
)


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(autouse=True)
def _fresh_buckets():
    graphs.clear_graphs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CudaGraphWarning)  # a failed capture is a test failure, never a fallback
        yield
    graphs.clear_graphs()


def assert_identical(a, b, atol=0.0):
    """Token-for-token, mask-for-mask and log-prob-for-log-prob: bitwise where the same ops run on the same
    shapes; ``atol`` where the batch shapes differ (a padded micro-batch: matmuls of another size may round
    differently in the last bit)."""
    assert torch.equal(a.tokens, b.tokens), (a.tokens != b.tokens).nonzero()[:5]
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=atol)


def both(model, prompts, **kw):
    """(dynamic, static) outputs of the same call, with their forward sizes."""
    with CountForwards(model) as dyn_calls:
        dyn = generate(model, prompts, cuda_graphs=False, **kw)
    with CountForwards(model) as st_calls:
        st = generate(model, prompts, cuda_graphs="static", **kw)
    return dyn, st, dyn_calls.sizes, st_calls.sizes


def multistep_inputs(P, seed=3):
    lay = multistep_layout()
    g = torch.Generator().manual_seed(seed)
    acts = torch.randint(0, 22, (P, 3, 3), generator=g)
    prompts = lay.build_prompt(torch.randint(0, 20, (P, 1, 4), generator=g), acts)
    forced_tokens, forced_mask = lay.forced(acts)
    return lay, prompts, forced_tokens, forced_mask


# ------------------------------------------------------------------------------------------ equality
@pytest.mark.parametrize("sampling", SAMPLING, ids=["plain", "topk-topp", "topp", "greedy"])
@pytest.mark.parametrize("family", ["gqa", "mha-qkv-bias"])
def test_static_matches_dynamic_fixed_length(family, sampling):
    model = tiny(n_kv_heads=2) if family == "gqa" else tiny(n_kv_heads=4, qkv_bias=True)
    prompts = prompts_for(3)
    dyn, st, dyn_sizes, st_sizes = both(model, prompts, group_size=4, max_new_tokens=12, seed=5, **sampling)
    assert_identical(st, dyn)
    assert st_sizes == dyn_sizes == [prompts.shape[1]] + [1] * 11
    assert_same(st, *naive_generate(model, prompts, 4, 12, seed=5, **sampling))


def test_static_matches_dynamic_forced_multistep(model):
    lay, prompts, forced_tokens, forced_mask = multistep_inputs(3)
    kw = {"group_size": 2, "max_new_tokens": lay.response_len, "seed": 2, "forced_tokens": forced_tokens,
          "forced_mask": forced_mask}
    dyn, st, dyn_sizes, st_sizes = both(model, prompts, **kw)
    assert_identical(st, dyn)
    # the forced run (3 action tokens) is one forward of 4 tokens in both loops; the trailing run none
    assert st_sizes == dyn_sizes == [prompts.shape[1], 1, 1, 1, 1, 4, 1, 1, 1, 1]


def test_static_forced_run_at_start_and_end(model):
    prompts = prompts_for(2)
    N = 10
    forced_mask = torch.tensor([True, True, True, False, False, True, False, False, True, True])
    forced_tokens = torch.randint(0, V, (2, N), generator=torch.Generator().manual_seed(4))
    dyn, st, dyn_sizes, st_sizes = both(model, prompts, group_size=3, max_new_tokens=N, seed=9, temperature=0.9,
                                        top_k=20, forced_tokens=forced_tokens, forced_mask=forced_mask)
    assert_identical(st, dyn)
    assert st_sizes == dyn_sizes == [prompts.shape[1], 3, 1, 2, 1]  # lead-less run of 3 at column 0
    all_forced = torch.ones(N, dtype=torch.bool)
    dyn, st, _, st_sizes = both(model, prompts, group_size=2, max_new_tokens=N, forced_tokens=forced_tokens,
                                forced_mask=all_forced)
    assert_identical(st, dyn)
    assert st_sizes == [prompts.shape[1]]


def test_static_policy_callback_with_micro_batches(model):
    """forced_fn sees only the real rows of a padded last micro-batch; outputs equal the dynamic loop's."""
    lay = multistep_layout()
    prompts = prompts_for(3, Lp=8)
    _, forced_mask = lay.forced(torch.zeros(1, 3, 3, dtype=torch.long))
    shapes = {"dynamic": [], "static": []}

    def make_policy(which):
        def act(frame):
            shapes[which].append(tuple(frame.shape))
            return lay.action_offset + (frame[:, :3] + frame[:, 3:4]) % lay.action_bins
        return latest_frame_policy(act, tokens_per_frame=lay.tokens_per_frame)

    kw = {"forced_mask": forced_mask, "group_size": 2, "seed": 8, "prompts_per_batch": 2}
    dyn = generate_interactive(model, prompts, policy=make_policy("dynamic"), cuda_graphs=False, **kw)
    st = generate_interactive(model, prompts, policy=make_policy("static"), cuda_graphs="static", **kw)
    assert_identical(st, dyn, atol=1e-5)
    assert shapes["static"] == shapes["dynamic"] == [(4, 5), (4, 5), (2, 5), (2, 5)]


@pytest.mark.parametrize("every", [1, 3, 16, 100])
def test_static_eos_mode_and_check_interval(every):
    eos = V - 1
    model = eos_model(eos, 2.0)  # rows finish at different steps, some never
    prompts = prompts_for(3)
    forced_mask = torch.zeros(16, dtype=torch.bool)
    forced_mask[[6, 7]] = True
    kw = {"group_size": 4, "max_new_tokens": 16, "seed": 21, "eos_id": eos, "forced_tokens": torch.full((3, 16), 5),
          "forced_mask": forced_mask}
    dyn = generate(model, prompts, cuda_graphs=False, **kw)
    st = generate(model, prompts, cuda_graphs="static", eos_check_every=every, **kw)
    assert_identical(st, dyn)
    assert (st.tokens == eos).any() and not st.mask.all()


@pytest.mark.parametrize(("every", "decode_steps"), [(1, 0), (4, 3), (100, 9)])
def test_static_eos_all_finished_checked_every_k_steps(every, decode_steps):
    """Every row samples EOS at column 0: the static loop notices at its next check, and the extra steps in
    between only pad (same outputs as the dynamic loop, which stops at once)."""
    eos = 7
    model = eos_model(eos, 60.0)
    prompts = prompts_for(2)
    with CountForwards(model) as calls:
        st = generate(model, prompts, group_size=3, max_new_tokens=10, eos_id=eos, cuda_graphs="static",
                      eos_check_every=every)
    assert calls.sizes == [prompts.shape[1]] + [1] * decode_steps
    assert_identical(st, generate(model, prompts, group_size=3, max_new_tokens=10, eos_id=eos, cuda_graphs=False))


def test_static_micro_batches_equal_one_batch(model):
    """prompts_per_batch=2 over 5 prompts: chunks 2, 2, 1 (the last padded to the bucket's 2 prompts)."""
    _, prompts, forced_tokens, forced_mask = multistep_inputs(5, seed=6)
    kw = {"group_size": 2, "max_new_tokens": forced_mask.shape[0], "seed": 17, "forced_tokens": forced_tokens,
          "forced_mask": forced_mask, "sequence_ids": torch.tensor([10, 11, 12, 13, 14]), "top_p": 0.9}
    full = generate(model, prompts, cuda_graphs=False, **kw)
    st = generate(model, prompts, cuda_graphs="static", prompts_per_batch=2, **kw)
    assert_identical(st, full, atol=1e-5)
    st_eos = generate(model, prompts, cuda_graphs="static", prompts_per_batch=2, eos_id=3, **kw)
    assert_identical(st_eos, generate(model, prompts, cuda_graphs=False, eos_id=3, **kw), atol=1e-5)


# ------------------------------------------------------------------------------------------ chunked prefill
@pytest.mark.parametrize("chunk", [1, 2, 4, 5])
def test_chunked_prefill_equals_one_shot(model, chunk):
    prompts = prompts_for(5, Lp=11)
    one = model.new_shared_prefix_cache(5, 2, 11, 4)
    many = model.new_shared_prefix_cache(5, 2, 11, 4)
    with torch.inference_mode():
        a = model.prefill(prompts, one)
        b = _prefill(model, many, prompts, chunk)
    assert many.prefix_len == one.prefix_len == 11
    assert torch.equal(b, a)
    assert torch.equal(many.prefix.k, one.prefix.k) and torch.equal(many.prefix.v, one.prefix.v)


@pytest.mark.parametrize("cuda_graphs", [False, "static"])
def test_generate_with_chunked_prefill(model, cuda_graphs):
    _, prompts, forced_tokens, forced_mask = multistep_inputs(5, seed=2)
    kw = {"group_size": 3, "max_new_tokens": forced_mask.shape[0], "seed": 3, "forced_tokens": forced_tokens,
          "forced_mask": forced_mask, "temperature": 0.8}
    ref = generate(model, prompts, cuda_graphs=False, **kw)
    with CountForwards(model) as calls:
        out = generate(model, prompts, cuda_graphs=cuda_graphs, prefill_chunk=2, **kw)
    assert calls.sizes[:3] == [prompts.shape[1]] * 3  # prompts 0-1, 2-3, 4
    assert_identical(out, ref)


def test_prefill_chunk_size():
    m = tiny()
    a = m.args
    per_prompt = 100 * (2 * a.n_heads * 100 + 3 * a.intermediate_size) * 4
    assert prefill_chunk_size(m, 100, 10 * per_prompt) == 10
    assert prefill_chunk_size(m, 100, 10 * per_prompt - 1) == 9
    assert prefill_chunk_size(m, 100, 1) == 1


# ------------------------------------------------------------------------------------------ buckets, stats
def test_bucket_is_reused_and_reset(model):
    prompts = prompts_for(2)
    kw = {"group_size": 3, "max_new_tokens": 8}
    first = generate(model, prompts, cuda_graphs="static", seed=1, eos_id=5, **kw)
    (bucket,) = graphs._BUCKETS[model].values()
    again = generate(model, prompts, cuda_graphs="static", seed=1, eos_id=5, **kw)
    assert graphs._BUCKETS[model][bucket.key] is bucket and len(graphs._BUCKETS[model]) == 1
    assert_identical(again, first)  # the state of the first call does not leak into the second
    other = generate(model, prompts, cuda_graphs="static", seed=2, sequence_ids=torch.tensor([7, 3]), **kw)
    assert_identical(other, generate(model, prompts, cuda_graphs=False, seed=2, sequence_ids=torch.tensor([7, 3]),
                                     **kw))
    assert len(graphs._BUCKETS[model]) == 1  # a new seed or new sequence ids: the same bucket
    for n in (9, 10, 11):  # new shapes: new buckets, at most MAX_BUCKETS kept (least recently used evicted)
        generate(model, prompts, group_size=3, max_new_tokens=n, cuda_graphs="static")
    kept = [k.max_new_tokens for k in graphs._BUCKETS[model]]
    assert kept == [10, 11][-graphs.MAX_BUCKETS:]
    graphs.clear_graphs(model)
    assert not graphs.has_buckets(model)


def test_bucket_memory_check_counts_the_existing_cache(model):
    prompts = prompts_for(2)
    generate(model, prompts, group_size=2, max_new_tokens=6, cuda_graphs="static")
    # the bucket's cache exists: no new allocation, so the budget is not checked again
    generate(model, prompts, group_size=2, max_new_tokens=6, cuda_graphs="static", max_cache_bytes=1)
    with pytest.raises(ValueError, match="more than max_cache_bytes"):
        generate(model, prompts, group_size=2, max_new_tokens=7, cuda_graphs="static", max_cache_bytes=1)


@pytest.mark.parametrize("cuda_graphs", [False, "static"])
def test_stats(model, cuda_graphs):
    _, prompts, forced_tokens, forced_mask = multistep_inputs(2)
    out, stats = generate(model, prompts, group_size=2, max_new_tokens=forced_mask.shape[0],
                          forced_tokens=forced_tokens, forced_mask=forced_mask, cuda_graphs=cuda_graphs,
                          return_stats=True)
    assert isinstance(stats, GenerateStats) and out.tokens.shape == (4, forced_mask.shape[0])
    assert stats.mode == ("dynamic" if cuda_graphs is False else "static")
    for name in ("prefill_s", "capture_s", "decode_s"):
        assert getattr(stats, name) >= 0
    assert stats.prefill_s > 0 and stats.decode_s > 0 and stats.capture_s == 0  # no capture on the CPU
    assert stats.steps == 9 and stats.graphs_captured == stats.graphs_replayed == 0  # 8 one-token steps + 1 run


@pytest.mark.skipif(not cpp_available(), reason="needs the C++ sampler: the reference sampler draws its Philox "
                    "stream on the CPU (a host copy), the cpp / triton samplers read the offsets where they are")
def test_static_steps_make_no_host_sync(model, monkeypatch):
    """The step functions that would be captured never turn a tensor into a Python value (a host sync on a
    GPU, fatal under capture); C++-level syncs are checked on a GPU by the cuda test below."""
    state = {"in_step": False, "steps": 0}

    def guard(name):
        original = getattr(torch.Tensor, name)

        def f(self, *a, **k):
            if state["in_step"]:
                raise AssertionError(f"host sync: Tensor.{name} inside a static step")
            return original(self, *a, **k)
        return f

    for name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, guard(name))
    for step in ("decode", "forced"):
        original = getattr(StaticDecoder, step)

        def wrapped(self, *a, _original=original, **k):
            state["in_step"], state["steps"] = True, state["steps"] + 1
            try:
                return _original(self, *a, **k)
            finally:
                state["in_step"] = False
        monkeypatch.setattr(StaticDecoder, step, wrapped)
    _, prompts, forced_tokens, forced_mask = multistep_inputs(2)
    eos_mask = forced_mask.clone()
    for kw in ({"top_k": 10, "top_p": 0.9}, {"eos_id": 3}, {"temperature": 0.0}):
        generate(model, prompts, group_size=2, max_new_tokens=forced_mask.shape[0], forced_tokens=forced_tokens,
                 forced_mask=eos_mask, cuda_graphs="static", sample_impl="cpp", **kw)
    assert state["steps"] > 0


def test_static_with_a_custom_cache_class(model, monkeypatch):
    seen = []

    class Spy(SharedPrefixKVCache):
        def attend(self, layer, q, k, v, positions):
            seen.append(q.shape[2])
            return super().attend(layer, q, k, v, positions)

    monkeypatch.setitem(CACHE_IMPLS, "spy", Spy)
    out = generate(model, prompts_for(2), group_size=2, max_new_tokens=5, attn_impl="spy", cuda_graphs="static")
    assert seen == [1] * (2 * 4)
    assert_identical(out, generate(model, prompts_for(2), group_size=2, max_new_tokens=5, cuda_graphs=False))


BAD = [
    ({"cuda_graphs": "yes"}, r'cuda_graphs must be True, False, "auto" or "static", got \'yes\''),
    ({"cuda_graphs": True}, r"cuda_graphs=True needs the model on a CUDA device, got cpu"),
    ({"eos_check_every": 0}, "eos_check_every must be an int >= 1, got 0"),
    ({"prefill_chunk": 0}, "prefill_chunk must be None or an int >= 1, got 0"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[m.split(" ")[0] for _, m in BAD])
def test_bad_inputs(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, prompts_for(2), group_size=2, max_new_tokens=4, **kwargs)


# ------------------------------------------------------------------------------------------ CUDA
CUDA_CASES = {
    "fixed": {"top_k": 16, "top_p": 0.9, "temperature": 0.8},
    "forced": {},
    "eos": {"eos_id": 3},
}


def cuda_case(name):
    _, prompts, forced_tokens, forced_mask = multistep_inputs(3)
    kw = {"group_size": 4, "max_new_tokens": forced_mask.shape[0], "seed": 4, **CUDA_CASES[name]}
    if name != "fixed":
        kw.update(forced_tokens=forced_tokens.cuda(), forced_mask=forced_mask)
    return prompts.cuda(), kw


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(CUDA_CASES))
def test_cuda_graphs_match_eager(name):
    model = tiny().cuda()
    prompts, kw = cuda_case(name)
    eager = generate(model, prompts, cuda_graphs=False, **kw)
    static = generate(model, prompts, cuda_graphs="static", **kw)
    cold, cold_stats = generate(model, prompts, cuda_graphs=True, return_stats=True, **kw)
    warm, warm_stats = generate(model, prompts, cuda_graphs=True, return_stats=True, **kw)
    for out in (static, cold, warm):
        assert torch.equal(out.tokens, eager.tokens) and torch.equal(out.mask, eager.mask)
        torch.testing.assert_close(out.logprobs, eager.logprobs, rtol=0, atol=1e-5)
    assert cold_stats.mode == warm_stats.mode == "graphs"
    assert cold_stats.graphs_captured >= 1 and cold_stats.capture_s > 0
    assert warm_stats.graphs_captured == 0 and warm_stats.capture_s == 0 and warm_stats.graphs_replayed > 0
    ref = naive_generate(model, prompts, kw["group_size"], kw["max_new_tokens"], **{
        k: v for k, v in kw.items() if k not in ("group_size", "max_new_tokens")})
    assert_same(warm, *ref)


@pytest.mark.cuda
def test_cuda_graphs_replay_with_new_sequence_ids_and_micro_batches():
    model = tiny().cuda()
    prompts, kw = cuda_case("forced")
    for ids in (torch.tensor([0, 1, 2]), torch.tensor([9, 4, 5])):
        ref = generate(model, prompts, cuda_graphs=False, sequence_ids=ids.cuda(), **kw)
        out = generate(model, prompts, cuda_graphs=True, sequence_ids=ids.cuda(), prompts_per_batch=2, **kw)
        assert torch.equal(out.tokens, ref.tokens) and torch.equal(out.mask, ref.mask)


@pytest.mark.cuda
def test_cuda_static_steps_make_no_device_sync(monkeypatch):
    """The step functions run eagerly with torch's sync debug mode set to error."""
    for step in ("decode", "forced"):
        original = getattr(StaticDecoder, step)

        def wrapped(self, *a, _original=original, **k):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return _original(self, *a, **k)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        monkeypatch.setattr(StaticDecoder, step, wrapped)
    model = tiny().cuda()
    for name in CUDA_CASES:
        prompts, kw = cuda_case(name)
        generate(model, prompts, cuda_graphs="static", **kw)


@pytest.mark.cuda
def test_cuda_capture_failure_raises_or_falls_back(monkeypatch):
    model = tiny().cuda()
    prompts, kw = cuda_case("fixed")
    ref = generate(model, prompts, cuda_graphs=False, **kw)
    original = StaticDecoder.decode

    def syncing(self, s):
        original(self, s)
        _ = self.step.item()  # a host sync: not capturable

    monkeypatch.setattr(StaticDecoder, "decode", syncing)
    with pytest.raises(RuntimeError, match="CUDA graph capture of the rollout step 'decode' failed"):
        generate(model, prompts, cuda_graphs=True, **kw)
    graphs.clear_graphs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CudaGraphWarning)
        out, stats = generate(model, prompts, cuda_graphs="auto", return_stats=True, **kw)
    assert [w.category for w in caught] == [CudaGraphWarning]
    assert stats.mode == "static"
    assert torch.equal(out.tokens, ref.tokens)


@pytest.mark.triton
def test_static_with_the_triton_cascade_kernel(model):
    """attn_impl="triton": the static decode step runs the cascade decode kernel (under TRITON_INTERPRET=1 on
    the CPU), as the captured step does on a GPU."""
    from rlvr_world.ops import _dispatch

    why = _dispatch.missing("triton", torch.device("cpu"))
    if why is not None:
        pytest.skip(why)
    _, prompts, forced_tokens, forced_mask = multistep_inputs(2)
    kw = {"group_size": 2, "max_new_tokens": forced_mask.shape[0], "seed": 3, "top_k": 8, "attn_impl": "triton",
          "forced_tokens": forced_tokens, "forced_mask": forced_mask}
    dyn, st, dyn_sizes, st_sizes = both(model, prompts, **kw)
    assert_identical(st, dyn)
    assert st_sizes == dyn_sizes


# ------------------------------------------------------------------------------------------ capture logic, emulated
class FakeGraph:
    """Stands in for a CUDA graph on the CPU: replay re-runs the captured step function, after checking that
    no buffer the step reads or writes was reallocated since the capture (a real graph would use the old
    addresses)."""

    def __init__(self, fn, bucket):
        self.fn, self.bucket, self.ptrs = fn, bucket, self.addresses(bucket)

    @staticmethod
    def addresses(bucket):
        tensors = {k: v for k, v in vars(bucket).items() if isinstance(v, torch.Tensor)}
        tensors |= {f"forced_in[{k}]": v for k, v in bucket.forced_in.items()}
        c = bucket.cache
        tensors |= {"prefix.k": c.prefix.k, "prefix.v": c.prefix.v, "suffix.k": c.suffix.k, "suffix.v": c.suffix.v}
        return {k: v.data_ptr() for k, v in tensors.items()}

    def replay(self):
        now = self.addresses(self.bucket)
        assert all(now[k] == p for k, p in self.ptrs.items()), "a captured buffer was reallocated"
        self.fn()


@pytest.fixture
def emulated_cuda(monkeypatch):
    """cuda_graphs=True on the CPU with the capture emulated: the warm-up runs the step, the capture runs
    nothing and returns a FakeGraph; returns the list of captured graphs."""
    from rlvr_world.rollout import engine

    captured = []
    current = {}

    def capture(fn, device):
        captured.append(FakeGraph(fn, current["bucket"]))
        return captured[-1]

    original_run = StaticDecoder.run

    def run(self, *a, **k):
        current["bucket"] = self
        return original_run(self, *a, **k)

    original_check = engine._check_args
    monkeypatch.setattr(engine, "_check_args", lambda *a: original_check(*a[:15], "static", *a[16:]))
    monkeypatch.setattr(StaticDecoder, "run", run)
    monkeypatch.setattr(graphs, "_capture", capture)
    monkeypatch.setattr(graphs, "_warm_up", lambda fn, device: fn())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    return captured


@pytest.mark.parametrize("case", ["fixed", "forced", "eos"])
def test_emulated_capture_and_replay(model, emulated_cuda, case):
    lay, prompts, forced_tokens, forced_mask = multistep_inputs(3)
    kw = {"group_size": 2, "max_new_tokens": lay.response_len, "seed": 4, "top_p": 0.9}
    if case != "fixed":
        kw.update(forced_tokens=forced_tokens, forced_mask=forced_mask)
    if case == "eos":
        kw.update(eos_id=int(forced_tokens[0, 0]) % 20, eos_check_every=2)
    ref = generate(model, prompts, cuda_graphs=False, **kw)
    cold, cold_stats = generate(model, prompts, cuda_graphs=True, return_stats=True, **kw)
    warm, warm_stats = generate(model, prompts, cuda_graphs=True, return_stats=True, **kw)
    assert_identical(cold, ref)
    assert_identical(warm, ref)
    n_graphs = 1 if case == "fixed" else 2  # the one-token step (+ the forced run of 3 with its lead token)
    assert cold_stats.mode == warm_stats.mode == "graphs"
    assert cold_stats.graphs_captured == len(emulated_cuda) == n_graphs
    assert cold_stats.graphs_replayed == cold_stats.steps - n_graphs  # the first of each kind is the warm-up
    assert warm_stats.graphs_captured == 0 and warm_stats.capture_s == 0
    assert warm_stats.graphs_replayed == warm_stats.steps > 0
    # another seed: new graphs in the same bucket; other sequence ids: the same graphs
    generate(model, prompts, cuda_graphs=True, sequence_ids=torch.tensor([5, 6, 7]), **kw)
    assert len(emulated_cuda) == n_graphs
    other = generate(model, prompts, cuda_graphs=True, **{**kw, "seed": 5})
    assert len(emulated_cuda) == 2 * n_graphs
    assert_identical(other, generate(model, prompts, cuda_graphs=False, **{**kw, "seed": 5}))


def test_emulated_micro_batches_share_one_set_of_graphs(model, emulated_cuda):
    _, prompts, forced_tokens, forced_mask = multistep_inputs(5)
    kw = {"group_size": 2, "max_new_tokens": forced_mask.shape[0], "forced_tokens": forced_tokens,
          "forced_mask": forced_mask}
    out, stats = generate(model, prompts, cuda_graphs=True, prompts_per_batch=2, return_stats=True, **kw)
    assert stats.graphs_captured == 2  # chunks 2, 2, 1 (padded): one bucket, one set of graphs
    assert_identical(out, generate(model, prompts, cuda_graphs=False, **kw), atol=1e-5)


def test_emulated_weights_moved_drop_the_graphs(emulated_cuda):
    model = tiny()
    prompts = prompts_for(2)
    generate(model, prompts, group_size=2, max_new_tokens=5, cuda_graphs=True)
    with torch.no_grad():
        model.output.weight = torch.nn.Parameter(model.output.weight * 2)  # new storage
    out, stats = generate(model, prompts, group_size=2, max_new_tokens=5, cuda_graphs=True, return_stats=True)
    assert stats.graphs_captured == 1  # re-captured against the new weights
    assert_identical(out, generate(model, prompts, group_size=2, max_new_tokens=5, cuda_graphs=False))


def test_emulated_capture_failure(model, emulated_cuda, monkeypatch):
    def fail(fn, device):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(graphs, "_capture", fail)
    prompts = prompts_for(2)
    kw = {"group_size": 2, "max_new_tokens": 6, "seed": 3}
    with pytest.raises(RuntimeError, match="CUDA graph capture of the rollout step 'decode' failed"):
        generate(model, prompts, cuda_graphs=True, **kw)
    # "auto" (strict=False): one warning line, the step's warm-up result kept, eager steps from then on
    bucket = next(iter(graphs._BUCKETS[model].values()))
    calls = []
    stats = GenerateStats()
    with pytest.warns(CudaGraphWarning, match=r"capture of step 'decode' failed \(RuntimeError: operation not "
                                              r"permitted when stream is capturing\); decoding eagerly$"):
        bucket.run(("decode",), lambda: calls.append(1), capture=True, strict=False, stats=stats)
    bucket.run(("decode",), lambda: calls.append(1), capture=True, strict=False, stats=stats)
    assert calls == [1, 1] and bucket.capture_failed and stats.graphs_captured == 0 and stats.steps == 2
