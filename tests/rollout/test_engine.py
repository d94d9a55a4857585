"""Rollout engine: token-for-token equality with a naive full-recompute decoder (same reference sampler, same
RNG offsets), the log-prob contract against the trainer's recomputation, forced tokens appended by one
forward per run, the policy-in-the-loop callback, row order, EOS mode, batch and chunking invariance, the
cache-memory error and bad inputs. Tiny random models, fp32 on the CPU."""

import pytest
import torch

from rlvr_world.data.video_layout import MultiStepLayout
from rlvr_world.models.kv_cache import SharedPrefixKVCache
from rlvr_world.models.transformer import ModelArgs, Transformer
from rlvr_world.ops import reference, token_logprobs
from rlvr_world.rollout import (
    CACHE_IMPLS,
    cache_bytes,
    generate,
    generate_interactive,
    latest_frame_policy,
)

V = 64


def tiny(n_kv_heads=2, qkv_bias=False, seed=0, dtype=torch.float32) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(vocab_size=V, dim=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                                  intermediate_size=64, max_seq_len=96, qkv_bias=qkv_bias))
    model.reset_parameters(std=0.15)  # sharper than HF's 0.02, so sampling is far from uniform
    if qkv_bias:
        with torch.no_grad():
            for layer in model.layers:
                for lin in (layer.attention.wq, layer.attention.wk, layer.attention.wv):
                    lin.bias.normal_(std=0.1)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


def prompts_for(P, Lp=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (P, Lp), generator=g)


# ------------------------------------------------------------------------------------------ naive reference
def row_offsets(P, G, sequence_ids=None):
    ids = torch.arange(P) if sequence_ids is None else sequence_ids
    return ((ids * G).unsqueeze(1) + torch.arange(G)).reshape(-1) << 32  # [P*G]


@torch.no_grad()
def naive_generate(model, prompts, G, N, *, temperature=1.0, top_k=0, top_p=1.0, seed=0, forced_tokens=None,
                   forced_mask=None, forced_fn=None, eos_id=None, sequence_ids=None):
    """Full forward over the whole sequence at every sampled step, ``reference.sample_tokens`` at the offsets
    (sequence_id * G + g) << 32 | t."""
    P, dev = prompts.shape[0], prompts.device
    B = P * G
    rows = prompts.repeat_interleave(G, 0)  # [B, Lp]
    base = row_offsets(P, G, sequence_ids).to(dev)
    gen = torch.zeros(B, 0, dtype=torch.long, device=dev)
    logps, masks = [], []
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    run, run_start = None, None
    for t in range(N):
        if forced_mask is not None and forced_mask[t]:
            if t == 0 or not forced_mask[t - 1]:
                run_start = t
                run = None if forced_fn is None else forced_fn(t, gen.clone())
            tok = forced_tokens[:, t].repeat_interleave(G) if forced_fn is None else run[:, t - run_start]
            lp, m = torch.zeros(B, device=dev), torch.zeros(B, dtype=torch.bool, device=dev)
            if eos_id is not None:
                tok = torch.where(finished, eos_id, tok)
        else:
            logits = model(torch.cat([rows, gen], 1))[:, -1]  # [B, V]
            tok, lp = reference.sample_tokens(logits, temperature, top_k, top_p, seed, base + t)
            m = torch.ones(B, dtype=torch.bool, device=dev)
            if eos_id is not None:
                tok = torch.where(finished, eos_id, tok)
                lp = torch.where(finished, 0.0, lp)
                m = ~finished
                finished = finished | (tok == eos_id)
        gen = torch.cat([gen, tok[:, None]], 1)
        logps.append(lp)
        masks.append(m)
    return gen, torch.stack(logps, 1), torch.stack(masks, 1)


@torch.no_grad()
def recompute_logprobs(model, prompts, G, tokens, temperature, top_k, top_p):
    """The trainer's recomputation from one full forward: log_softmax of the tempered logits restricted to
    ``reference.sampling_mask``, at the tokens. [B, N]"""
    Lp, N = prompts.shape[1], tokens.shape[1]
    seq = torch.cat([prompts.repeat_interleave(G, 0), tokens], 1)
    logits = model(seq)[:, Lp - 1: Lp - 1 + N].reshape(-1, V)  # [B*N, V]
    keep = reference.sampling_mask(logits, temperature, top_k, top_p)
    masked = torch.where(keep, logits / temperature, float("-inf"))
    return torch.log_softmax(masked, -1).gather(-1, tokens.reshape(-1, 1)).view_as(tokens)


class CountForwards:
    """Records the number of tokens per row of every forward (a hook on the embedding)."""

    def __init__(self, model):
        self.sizes = []
        self.handle = model.tok_embeddings.register_forward_hook(lambda m, i, o: self.sizes.append(i[0].shape[1]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def assert_same(out, ref_tokens, ref_logp, ref_mask):
    torch.testing.assert_close(out.tokens, ref_tokens, rtol=0, atol=0)
    torch.testing.assert_close(out.mask, ref_mask, rtol=0, atol=0)
    torch.testing.assert_close(out.logprobs, ref_logp.float(), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ tests
SAMPLING = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 10, "top_p": 0.9},
    {"temperature": 1.3, "top_p": 0.6},
    {"temperature": 0.0},
]


@pytest.mark.parametrize("sampling", SAMPLING, ids=["plain", "topk-topp", "topp", "greedy"])
@pytest.mark.parametrize("family", ["gqa", "mha-qkv-bias"])
def test_matches_naive_decoder(family, sampling):
    model = tiny(n_kv_heads=2) if family == "gqa" else tiny(n_kv_heads=4, qkv_bias=True)
    prompts = prompts_for(3)
    out = generate(model, prompts, group_size=4, max_new_tokens=12, seed=5, **sampling)
    ref = naive_generate(model, prompts, 4, 12, seed=5, **sampling)
    assert out.tokens.dtype == torch.int64 and out.logprobs.dtype == torch.float32 and out.mask.dtype == torch.bool
    assert out.tokens.shape == out.logprobs.shape == out.mask.shape == (12, 12)
    assert out.mask.all() and not out.tokens.is_inference() and not out.logprobs.is_inference()
    assert_same(out, *ref)
    if sampling["temperature"] > 0:  # G samples of a prompt differ (distinct RNG streams)
        assert len({tuple(r) for r in out.tokens[:4].tolist()}) > 1


def test_logprobs_match_trainer_recomputation(model):
    prompts = prompts_for(4)
    cfg = {"temperature": 0.8, "top_k": 12, "top_p": 0.85}
    out = generate(model, prompts, group_size=3, max_new_tokens=14, seed=11, **cfg)
    again = recompute_logprobs(model, prompts, 3, out.tokens, **cfg)
    torch.testing.assert_close(out.logprobs, again, rtol=0, atol=1e-5)
    # without truncation the recomputation is ops.token_logprobs on the hidden states (the trainer's op)
    out = generate(model, prompts, group_size=3, max_new_tokens=14, seed=11, temperature=0.8)
    Lp, N = prompts.shape[1], 14
    with torch.no_grad():
        h = model.hidden_states(torch.cat([prompts.repeat_interleave(3, 0), out.tokens], 1))[:, Lp - 1: Lp - 1 + N]
        lp = token_logprobs(h.reshape(-1, h.shape[-1]), model.lm_head_weight, out.tokens.reshape(-1), 0.8)
    torch.testing.assert_close(out.logprobs, lp.view_as(out.logprobs), rtol=0, atol=1e-5)


def test_row_order(model):
    """Rows p*G .. p*G+G-1 belong to prompt p: greedy rows equal prompt p decoded alone."""
    prompts = prompts_for(3)
    out = generate(model, prompts, group_size=2, max_new_tokens=8, temperature=0.0)
    for p in range(3):
        alone = generate(model, prompts[p: p + 1], group_size=1, max_new_tokens=8, temperature=0.0)
        assert torch.equal(out.tokens[2 * p], alone.tokens[0]) and torch.equal(out.tokens[2 * p + 1], alone.tokens[0])
    assert not torch.equal(out.tokens[0], out.tokens[2])


def multistep_layout():
    # vocab = 20 dynamics + 20 context codes + 22 action bins + BOS + EOS = 64
    return MultiStepLayout(tokens_per_frame=5, context_tokens_per_frame=4, context_frames=1, future_frames=2,
                           action_dims=3, codebook_size=20, context_codebook_size=20, action_bins=22)


def test_forced_tokens_multistep_layout(model):
    lay = multistep_layout()
    assert lay.vocab_size == V
    g = torch.Generator().manual_seed(3)
    P, G = 3, 2
    ctx = torch.randint(0, 20, (P, 1, 4), generator=g)
    acts = torch.randint(0, 22, (P, 3, 3), generator=g)
    prompts = lay.build_prompt(ctx, acts)  # [P, 8]
    forced_tokens, forced_mask = lay.forced(acts)  # [P, 16], [16]: 5 sampled, 3 forced, 5 sampled, 3 forced
    N = lay.response_len
    with CountForwards(model) as calls:
        out = generate(model, prompts, group_size=G, max_new_tokens=N, seed=2, forced_tokens=forced_tokens,
                       forced_mask=forced_mask)
    ref = naive_generate(model, prompts, G, N, seed=2, forced_tokens=forced_tokens, forced_mask=forced_mask)
    assert_same(out, *ref)  # the model saw the forced tokens: later samples match the full recompute
    rows_forced = forced_tokens.repeat_interleave(G, 0)[:, forced_mask]
    assert torch.equal(out.tokens[:, forced_mask], rows_forced)
    assert (out.logprobs[:, forced_mask] == 0).all() and not out.mask[:, forced_mask].any()
    assert out.mask[:, ~forced_mask].all()
    assert torch.equal(out.mask[0], lay.build(torch.zeros(1, 2, 5, dtype=torch.long), acts[:1],
                                              context_tokens=ctx[:1]).response_mask[0])
    # prefill, 4 single decode steps, ONE forward of the sampled token + the 3 action tokens, 4 steps; the
    # trailing action run is never run (nothing reads its logits)
    assert calls.sizes == [prompts.shape[1], 1, 1, 1, 1, 4, 1, 1, 1, 1]


def test_forced_run_at_start_and_end(model):
    prompts = prompts_for(2)
    N = 10
    forced_mask = torch.tensor([True, True, True, False, False, True, False, False, True, True])
    forced_tokens = torch.randint(0, V, (2, N), generator=torch.Generator().manual_seed(4))
    with CountForwards(model) as calls:
        out = generate(model, prompts, group_size=3, max_new_tokens=N, seed=9, temperature=0.9, top_k=20,
                       forced_tokens=forced_tokens, forced_mask=forced_mask)
    ref = naive_generate(model, prompts, 3, N, seed=9, temperature=0.9, top_k=20, forced_tokens=forced_tokens,
                         forced_mask=forced_mask)
    assert_same(out, *ref)
    assert calls.sizes == [prompts.shape[1], 3, 1, 2, 1]


def test_policy_callback(model):
    lay = multistep_layout()
    prompts = prompts_for(2, Lp=8)
    _, forced_mask = lay.forced(torch.zeros(1, 3, 3, dtype=torch.long))
    calls = []

    def act(frame):  # [P*G, F] frame codes -> [P*G, A] action ids, row-dependent
        calls.append(tuple(frame.shape))
        return lay.action_offset + (frame[:, :3] + torch.arange(frame.shape[0])[:, None]) % lay.action_bins

    policy = latest_frame_policy(act, tokens_per_frame=lay.tokens_per_frame)
    out = generate_interactive(model, prompts, forced_mask=forced_mask, policy=policy, group_size=3, seed=8)
    assert calls == [(6, 5), (6, 5)]
    calls.clear()
    ref = naive_generate(model, prompts, 3, lay.response_len, seed=8, forced_mask=forced_mask, forced_fn=policy)
    assert_same(out, *ref)
    steps = out.tokens.view(6, 2, lay.step_len)
    expected = lay.action_offset + (steps[:, :, :3] + torch.arange(6)[:, None, None]) % lay.action_bins
    assert torch.equal(steps[:, :, 5:], expected)  # each turn's actions come from the frame just imagined
    assert not out.mask[:, forced_mask].any() and (out.logprobs[:, forced_mask] == 0).all()


def test_policy_callback_bad_output(model):
    mask = torch.tensor([False, False, True, True])
    with pytest.raises(ValueError, match=r"forced_fn must return an integer tensor of shape \(4, 2\)"):
        generate(model, prompts_for(2), group_size=2, max_new_tokens=4, forced_mask=mask,
                 forced_fn=lambda t, gen: torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="forced_fn's tokens at step 2 must lie in"):
        generate(model, prompts_for(2), group_size=2, max_new_tokens=4, forced_mask=mask,
                 forced_fn=lambda t, gen: torch.full((4, 2), V))


def eos_model(eos_id, bias):
    model = tiny(seed=3)
    model.output.bias = torch.nn.Parameter(torch.zeros(V))
    with torch.no_grad():
        model.output.bias[eos_id] = bias
    return model


def test_eos_mode_matches_naive():
    eos = V - 1
    model = eos_model(eos, 2.0)  # EOS is likely: rows finish at different steps, some never
    prompts = prompts_for(3)
    forced_mask = torch.zeros(16, dtype=torch.bool)
    forced_mask[[6, 7]] = True
    forced_tokens = torch.full((3, 16), 5)
    out = generate(model, prompts, group_size=4, max_new_tokens=16, seed=21, eos_id=eos,
                   forced_tokens=forced_tokens, forced_mask=forced_mask)
    ref = naive_generate(model, prompts, 4, 16, seed=21, eos_id=eos, forced_tokens=forced_tokens,
                         forced_mask=forced_mask)
    assert_same(out, *ref)
    ends = []
    for r in range(12):
        hits = ((out.tokens[r] == eos) & out.mask[r]).nonzero().flatten().tolist()
        if not hits:
            ends.append(None)
            continue
        e = hits[0]
        ends.append(e)
        assert out.mask[r, e]  # the sampled EOS itself is a trained token
        assert (out.tokens[r, e + 1:] == eos).all() and not out.mask[r, e + 1:].any()
        assert (out.logprobs[r, e + 1:] == 0).all()
    finished = [e for e in ends if e is not None]
    assert len(set(finished)) > 2 and None in ends  # finished at several steps, and one ran to the end
    row = ends.index(None)
    assert out.mask[row, ~forced_mask].all()


def test_eos_all_finished_stops_the_loop():
    eos = 7
    model = eos_model(eos, 60.0)  # every row samples EOS at once
    prompts = prompts_for(2)
    with CountForwards(model) as calls:
        out = generate(model, prompts, group_size=3, max_new_tokens=10, eos_id=eos)
    assert calls.sizes == [prompts.shape[1]]  # the prefill only: no decode step after all rows finished
    assert (out.tokens == eos).all()
    assert out.mask[:, 0].all() and not out.mask[:, 1:].any()
    assert (out.logprobs[:, 1:] == 0).all() and (out.logprobs[:, 0] > -1e-6).all()
    fixed = generate(model, prompts, group_size=3, max_new_tokens=10)  # fixed length ignores EOS
    assert fixed.mask.all() and (fixed.tokens == eos).all()


def test_batch_invariance(model):
    prompts = prompts_for(5)
    cfg = {"group_size": 3, "max_new_tokens": 10, "seed": 13, "temperature": 0.9, "top_p": 0.95}
    full = generate(model, prompts, **cfg)
    pick = torch.tensor([3, 1])
    sub = generate(model, prompts[pick], sequence_ids=pick, **cfg)
    rows = (pick[:, None] * 3 + torch.arange(3)).reshape(-1)
    assert torch.equal(sub.tokens, full.tokens[rows])
    torch.testing.assert_close(sub.logprobs, full.logprobs[rows], rtol=0, atol=1e-5)
    other = generate(model, prompts[pick], **cfg)  # default ids 0, 1: different streams
    assert not torch.equal(other.tokens, sub.tokens)


def test_chunking_invariance(model):
    lay = multistep_layout()
    g = torch.Generator().manual_seed(6)
    acts = torch.randint(0, 22, (5, 3, 3), generator=g)
    prompts = lay.build_prompt(torch.randint(0, 20, (5, 1, 4), generator=g), acts)
    forced_tokens, forced_mask = lay.forced(acts)
    cfg = {"group_size": 2, "max_new_tokens": lay.response_len, "seed": 17, "forced_tokens": forced_tokens,
           "forced_mask": forced_mask, "sequence_ids": torch.tensor([10, 11, 12, 13, 14])}
    full = generate(model, prompts, **cfg)
    chunked = generate(model, prompts, prompts_per_batch=2, **cfg)  # chunks 2, 2, 1 (a view of the cache)
    assert torch.equal(chunked.tokens, full.tokens) and torch.equal(chunked.mask, full.mask)
    torch.testing.assert_close(chunked.logprobs, full.logprobs, rtol=0, atol=1e-5)


def test_cache_bytes_and_memory_error(model):
    prompts = prompts_for(5)
    cache = model.new_shared_prefix_cache(5, 4, prompts.shape[1], 12)
    allocated = sum(t.numel() * t.element_size() for t in (cache.prefix.k, cache.prefix.v, cache.suffix.k,
                                                           cache.suffix.v))
    assert cache_bytes(model, 5, 4, prompts.shape[1], 12) == allocated
    two = cache_bytes(model, 2, 4, prompts.shape[1], 12)
    with CountForwards(model) as calls, \
            pytest.raises(ValueError, match=r"at most 2 prompts per micro-batch fit: pass prompts_per_batch=2"):
        generate(model, prompts, group_size=4, max_new_tokens=12, max_cache_bytes=two + 100)
    assert calls.sizes == []  # raised before any work
    with pytest.raises(ValueError, match="not even one prompt fits"):
        generate(model, prompts, group_size=4, max_new_tokens=12, max_cache_bytes=100)
    with pytest.raises(ValueError, match="at most 2 prompts"):
        generate(model, prompts, group_size=4, max_new_tokens=12, max_cache_bytes=two, prompts_per_batch=3)
    out = generate(model, prompts, group_size=4, max_new_tokens=12, max_cache_bytes=two, prompts_per_batch=2)
    assert torch.equal(out.tokens, generate(model, prompts, group_size=4, max_new_tokens=12).tokens)


def test_attn_impl_hook_and_model_dtype(monkeypatch):
    seen = []

    class Spy(SharedPrefixKVCache):
        def attend(self, layer, q, k, v, positions):
            seen.append((self.prefix.k.dtype, q.shape[2]))
            return super().attend(layer, q, k, v, positions)

    monkeypatch.setitem(CACHE_IMPLS, "spy", Spy)
    model = tiny(dtype=torch.bfloat16)
    out = generate(model, prompts_for(2), group_size=2, max_new_tokens=5, attn_impl="spy", top_k=8)
    assert out.logprobs.dtype == torch.float32 and out.mask.all()
    assert ((out.tokens >= 0) & (out.tokens < V)).all() and (out.logprobs <= 0).all()
    assert seen and all(dtype == torch.bfloat16 for dtype, _ in seen)  # the cache is in the model's dtype
    assert [s for _, s in seen] == [1] * (2 * 4)  # 4 decode steps x 2 layers, one token each (prefill: prefix)


def test_doctests():
    import doctest

    from rlvr_world.rollout import engine, interactive

    for module in (engine, interactive):
        result = doctest.testmod(module, extraglobs={"torch": torch})
        assert result.failed == 0 and result.attempted > 0


def test_sample_impl_reference_matches_auto(model):
    prompts = prompts_for(2)
    a = generate(model, prompts, group_size=3, max_new_tokens=8, top_k=9, sample_impl="reference")
    b = generate(model, prompts, group_size=3, max_new_tokens=8, top_k=9)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=1e-6)


BAD = [
    ({"prompts": torch.zeros(2, 4, dtype=torch.int32)}, "prompts must be a 2-D int64 tensor"),
    ({"prompts": torch.zeros(8, dtype=torch.long)}, "prompts must be a 2-D int64 tensor"),
    ({"prompts": torch.full((2, 4), V)}, r"prompts must lie in \[0, vocab_size=64\)"),
    ({"group_size": 0}, "group_size must be an int > 0, got 0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an int > 0, got 0"),
    ({"max_new_tokens": 93}, r"prompt length \+ max_new_tokens must be <= the model's max_seq_len=96, got 4 \+ 93"),
    ({"top_k": V + 1}, r"top_k must be an int in \[0, vocab_size=64\]"),
    ({"top_p": 0.0}, r"top_p must be a number in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\]"),
    ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ({"seed": -1}, r"seed must be an int in \[0, 2\^64\)"),
    ({"forced_tokens": torch.zeros(2, 5, dtype=torch.long), "forced_mask": torch.zeros(6, dtype=torch.bool)},
     r"forced_tokens must be an integer tensor of shape \(2, 6\)"),
    ({"forced_tokens": torch.zeros(2, 6, dtype=torch.long), "forced_mask": torch.zeros(5, dtype=torch.bool)},
     r"forced_mask must be a bool tensor of shape \(6,\)"),
    ({"forced_tokens": torch.zeros(2, 6, dtype=torch.long), "forced_mask": torch.zeros(6, dtype=torch.long)},
     r"forced_mask must be a bool tensor"),
    ({"forced_tokens": torch.zeros(2, 6, dtype=torch.long)}, "forced_mask must be given with forced_tokens"),
    ({"forced_mask": torch.ones(6, dtype=torch.bool)}, "forced_tokens must be given where forced_mask has True"),
    ({"forced_tokens": torch.full((2, 6), V), "forced_mask": torch.ones(6, dtype=torch.bool)},
     r"forced_tokens \(where forced_mask is True\) must lie in"),
    ({"forced_fn": lambda t, g: g}, "forced_mask must be given with forced_fn"),
    ({"eos_id": V}, r"eos_id must be None or an int in \[0, vocab_size=64\)"),
    ({"sequence_ids": torch.arange(3)}, r"sequence_ids must be an integer tensor of shape \(2,\)"),
    ({"sequence_ids": torch.tensor([0, -1])}, r"sequence_ids must lie in \[0, 2\^31 / group_size"),
    ({"prompts_per_batch": 0}, "prompts_per_batch must be None or an int > 0"),
    ({"attn_impl": "nope"}, r"attn_impl must be one of \['eager'"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_inputs(model, kwargs, message):
    args = {"prompts": torch.zeros(2, 4, dtype=torch.long), "group_size": 2, "max_new_tokens": 6, **kwargs}
    prompts = args.pop("prompts")
    with pytest.raises(ValueError, match=message):
        generate(model, prompts, **args)


@pytest.mark.cuda
def test_cuda_matches_naive_decoder():
    model = tiny().cuda()
    prompts = prompts_for(3).cuda()
    cfg = {"temperature": 0.8, "top_k": 16, "top_p": 0.9, "seed": 4}
    out = generate(model, prompts, group_size=4, max_new_tokens=12, **cfg)
    ref = naive_generate(model, prompts, 4, 12, **cfg)
    assert out.tokens.is_cuda
    assert_same(out, *(x.cuda() for x in ref))
