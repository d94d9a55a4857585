"""Transformer: HF interop both ways (tiny LLaMA and Qwen2 built locally with transformers, tied and untied),
KV-cache prefill + decode against the full forward, shared-prefix group decode against per-row copies,
the LSE merge, presets, activation checkpointing, and input / file errors. Tiny configs only (fp32, CPU)."""

import json
import os

import pytest
import torch

from rlvr_world.models.hf_format import HF_NAMES, model_args_from_hf_config
from rlvr_world.models.kv_cache import KVCache, SharedPrefixKVCache, attention_with_lse, merge_attention
from rlvr_world.models.transformer import ModelArgs, Transformer
from rlvr_world.testing import prepare_torchvision

V, H, L, NH, NKV, FF = 97, 64, 2, 4, 2, 128
TINY = {"vocab_size": V, "dim": H, "n_layers": L, "n_heads": NH, "n_kv_heads": NKV, "intermediate_size": FF,
        "max_seq_len": 64}


@pytest.fixture(scope="module")
def transformers():
    prepare_torchvision()  # transformers imports torchvision, whose CUDA wheel fails beside a CPU torch
    return pytest.importorskip("transformers")


def _hf_config(transformers, family: str, tied: bool):  # family: llama | llama-bias | qwen2
    common = {"vocab_size": V, "hidden_size": H, "num_hidden_layers": L, "num_attention_heads": NH,
              "num_key_value_heads": NKV, "intermediate_size": FF, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": tied}
    if family.startswith("llama"):
        return transformers.LlamaConfig(**common, rope_theta=500000.0, attention_bias=family == "llama-bias")
    return transformers.Qwen2Config(**common, rope_theta=1000000.0)


def _hf_model(transformers, family, tied):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_hf_config(transformers, family, tied)).eval()
    with torch.no_grad():  # HF zero-inits biases and ones-inits norms: randomise them so a mix-up shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _ids(b=2, s=11, seed=1):
    return torch.randint(0, V, (b, s), generator=torch.Generator().manual_seed(seed))


def _tiny(**overrides):
    torch.manual_seed(0)
    return Transformer(ModelArgs(**{**TINY, **overrides})).eval()


# ------------------------------------------------------------------ HF interop
@pytest.mark.parametrize("family, tied", [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True),
                                          ("llama-bias", False)])
def test_from_pretrained_matches_transformers(transformers, tmp_path, family, tied):
    hf = _hf_model(transformers, family, tied)
    hf.save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(tmp_path)
    assert ours.args.model_type == family.split("-")[0] and ours.args.tie_embeddings == tied
    assert ours.args.qkv_bias == (family != "llama") and ours.args.out_bias == (family == "llama-bias")
    assert ours.args.rope_theta == hf.config.rope_parameters["rope_theta"]
    if tied:
        assert ours.lm_head_weight is ours.tok_embeddings.weight
    ids = _ids()
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
        hidden = ours.hidden_states(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(hidden @ ours.lm_head_weight.T, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family, tied", [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True),
                                          ("llama-bias", False)])
def test_save_pretrained_loads_in_transformers(transformers, tmp_path, family, tied):
    ours = _tiny(qkv_bias=family != "llama", out_bias=family == "llama-bias", tie_embeddings=tied)
    family = family.split("-")[0]
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in ours.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ours.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temp files left
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == family and cfg["architectures"] == [{"llama": "LlamaForCausalLM",
                                                                     "qwen2": "Qwen2ForCausalLM"}[family]]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == cfg["architectures"][0]
    ids = _ids(s=9)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=0)
    again = Transformer.from_pretrained(tmp_path)  # and round-trips exactly
    assert again.args == ours.args
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_sharded_checkpoint_and_dtype(transformers, tmp_path):
    hf = _hf_model(transformers, "qwen2", False)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    ours = Transformer.from_pretrained(tmp_path)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)
    half = Transformer.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.lm_head_weight.dtype == torch.bfloat16 and half(ids).dtype == torch.bfloat16


def test_hf_names_cover_every_parameter():
    for bias in (False, True):
        model = _tiny(qkv_bias=bias, out_bias=bias)
        for name in model.state_dict():
            generic = name.replace(".0.", ".{i}.").replace(".1.", ".{i}.")
            assert generic in HF_NAMES, name


# ------------------------------------------------------------------ config errors
@pytest.mark.parametrize("field, value", [
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}),
    ("hidden_act", "gelu"),
    ("use_sliding_window", True),
    ("mlp_bias", True),
    ("model_type", "mistral"),
])
def test_unsupported_config_is_rejected(tmp_path, field, value):
    cfg = {"model_type": "llama", "vocab_size": V, "hidden_size": H, "num_hidden_layers": L,
           "num_attention_heads": NH, "num_key_value_heads": NKV, "intermediate_size": FF}
    cfg[field] = value
    with pytest.raises(ValueError, match=field.split("_")[0]) as err:
        model_args_from_hf_config(cfg)
    assert field in str(err.value) and repr(value)[:8] in str(err.value)
    _tiny().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=field):
        Transformer.from_pretrained(tmp_path)


def test_missing_files_raise_file_not_found(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        Transformer.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Transformer.from_pretrained(tmp_path)
    _tiny().save_pretrained(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Transformer.from_pretrained(tmp_path)


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    _tiny().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        Transformer.from_pretrained(tmp_path)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(FF + 1, H)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"up_proj\.weight.*\(128, 64\).*\(129, 64\)"):
        Transformer.from_pretrained(tmp_path)


# ------------------------------------------------------------------ KV cache
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_prefill_and_decode_match_full_forward(qkv_bias):
    model = _tiny(qkv_bias=qkv_bias)
    ids = _ids(b=3, s=12)
    with torch.no_grad():
        full = model(ids)  # [B, S, V]
        cache = model.new_cache(3, 20)
        cache.k.fill_(7.0)  # stale contents must never be read
        torch.testing.assert_close(model.prefill(ids[:, :5], cache), full[:, 4], atol=1e-5, rtol=0)
        for t in range(5, 12):
            logits = model.decode_step(ids[:, t], torch.full((3,), t), cache)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
        # a multi-token chunk through the cache equals the full forward as well
        chunk = model(ids[:, 12 - 4:], positions=torch.arange(8, 12).expand(3, 4), cache=model_cache(model, ids))
        torch.testing.assert_close(chunk, full[:, 8:], atol=1e-5, rtol=0)


def model_cache(model, ids):
    cache = model.new_cache(ids.shape[0], 16)
    model.prefill(ids[:, :8], cache)
    return cache


def test_cache_dtype_and_layout():
    model = _tiny()
    cache = model.new_cache(2, 10, dtype=torch.bfloat16)
    assert cache.k.shape == (L, 2, NKV, 10, H // NH) and cache.k.dtype == torch.bfloat16
    with torch.no_grad():
        model.prefill(_ids(b=2, s=4), cache)
    assert cache.k[:, :, :, :4].abs().sum() > 0 and cache.k[:, :, :, 4:].abs().sum() == 0


@pytest.mark.parametrize("group_size", [1, 3])
def test_shared_prefix_group_decode_matches_per_row_copies(group_size):
    model = _tiny()
    P, G, Lp, T = 2, group_size, 7, 5
    prompts = _ids(b=P, s=Lp, seed=2)
    steps = torch.randint(0, V, (P * G, T), generator=torch.Generator().manual_seed(3))  # per-row tokens
    with torch.no_grad():
        shared = model.new_shared_prefix_cache(P, G, Lp, T)
        first = model.prefill(prompts, shared)  # [P, V]
        assert shared.prefix_len == Lp
        copies = model.new_cache(P * G, Lp + T)
        first_rows = model.prefill(prompts.repeat_interleave(G, dim=0), copies)  # [P*G, V]
        torch.testing.assert_close(first.repeat_interleave(G, dim=0), first_rows, atol=1e-5, rtol=0)
        for t in range(T):
            pos = torch.full((P * G,), Lp + t)
            got = model.decode_step(steps[:, t], pos, shared)
            want = model.decode_step(steps[:, t], pos, copies)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        # the suffix holds the rows' own tokens only; the prefix was never duplicated
        assert shared.prefix.k.shape[1] == P and shared.suffix.k.shape[1] == P * G
        # a multi-token step (e.g. injected action tokens) through the shared cache
        more = model.new_shared_prefix_cache(P, G, Lp, T)
        model.prefill(prompts, more)
        chunk = model(steps, positions=torch.arange(Lp, Lp + T).expand(P * G, T), cache=more)
        ref = model(torch.cat([prompts.repeat_interleave(G, dim=0), steps], 1))[:, Lp:]
        torch.testing.assert_close(chunk, ref, atol=1e-5, rtol=0)


def test_lse_merge_equals_attention_over_the_union():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for n in (4, 9, 9))
    mask = torch.rand(2, 3, 4, 9, generator=g) < 0.7
    mask[..., 0] = True
    o, lse = attention_with_lse(q, k, v, mask)
    o1, l1 = attention_with_lse(q, k[..., :5, :], v[..., :5, :], mask[..., :5])
    o2, l2 = attention_with_lse(q, k[..., 5:, :], v[..., 5:, :], mask[..., 5:])
    om, lm = merge_attention(o1, l1, o2, l2)
    torch.testing.assert_close(om, o, atol=1e-6, rtol=0)
    torch.testing.assert_close(lm, lse, atol=1e-6, rtol=0)
    s = (q.float() @ k.float().transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(o, s.softmax(-1) @ v.float(), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ presets and training
@pytest.mark.parametrize("name, dim, layers, heads", [("vwm-s", 768, 12, 12), ("vwm-b", 1024, 24, 16),
                                                      ("vwm-xs", 256, 4, 4), ("vwm-tiny", 128, 2, 4)])
def test_presets(name, dim, layers, heads):
    args = ModelArgs.from_name(name)
    assert (args.dim, args.n_layers, args.n_heads, args.vocab_size) == (dim, layers, heads, 4633)
    with torch.device("meta"):
        model = Transformer(args)
    assert model.lm_head_weight.shape == (4633, dim)
    if name == "vwm-s":  # the paper's ~120M-parameter video world model
        assert 110e6 < sum(p.numel() for p in model.parameters()) < 125e6
    if name in ("vwm-tiny", "vwm-xs"):
        model = Transformer.from_name(name, vocab_size=V)
        assert model(_ids(b=1, s=5)).shape == (1, 5, V)
    with pytest.raises(ValueError, match=r"name must be one of .*vwm-s.*got 'vwm-xxl'"):
        ModelArgs.from_name("vwm-xxl")


def test_activation_checkpointing_gives_the_same_gradients():
    ids = _ids(s=6)
    grads = []
    for flag in (False, True):
        model = _tiny(activation_checkpointing=flag).train()
        model(ids).float().logsumexp(-1).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ input errors
def test_bad_inputs_name_argument_expected_and_received():
    model = _tiny()
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=97\), got 97"):
        model(torch.tensor([[1, 2, 97]]))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=97\), got -1"):
        model(torch.tensor([[-1]]))
    with pytest.raises(ValueError, match=r"input_ids must have 1 to max_seq_len=64 tokens per row, got 65"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must be a 2-D tensor \[B, S\], got \(5,\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor, got torch.float32"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 64\) \(max_seq_len\), got 64"):
        model(torch.zeros(1, 2, dtype=torch.long), positions=torch.tensor([[0, 64]]))
    cache = model.new_cache(2, 8)
    with pytest.raises(ValueError, match=r"input_ids must have at most the cache's max_len=8 tokens per row, got 9"):
        model.prefill(torch.zeros(2, 9, dtype=torch.long), cache)
    with pytest.raises(ValueError, match=r"input_ids must have the cache's batch size 2 rows, got 3"):
        model.prefill(torch.zeros(3, 4, dtype=torch.long), cache)
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 8\) \(the cache's max_len"):
        model.decode_step(torch.zeros(2, dtype=torch.long), torch.tensor([3, 8]), cache)
    with pytest.raises(ValueError, match=r"tokens must be a 1-D tensor \[B\], got \(2, 1\)"):
        model.decode_step(torch.zeros(2, 1, dtype=torch.long), torch.tensor([3, 4]), cache)
    shared = model.new_shared_prefix_cache(2, 2, 4, 3)
    with pytest.raises(ValueError, match="prefill"):
        model.decode_step(torch.zeros(4, dtype=torch.long), torch.full((4,), 4), shared)
    model.prefill(torch.zeros(2, 4, dtype=torch.long), shared)
    with pytest.raises(ValueError, match=r"positions must lie in \[4, 7\)"):
        model.decode_step(torch.zeros(4, dtype=torch.long), torch.full((4,), 3), shared)
    with pytest.raises(ValueError, match=r"cache n_layers must be the model's 2, got 3"):
        model.prefill(torch.zeros(2, 4, dtype=torch.long), KVCache.allocate(3, 2, NKV, 8, H // NH))
    with pytest.raises(ValueError, match=r"n_kv_heads must divide n_heads=4, got 3"):
        ModelArgs(**{**TINY, "n_kv_heads": 3})
    with pytest.raises(ValueError, match=r"suffix must hold P \* group_size = 4 rows, got 3"):
        SharedPrefixKVCache(KVCache.allocate(L, 2, NKV, 4, 16), KVCache.allocate(L, 3, NKV, 4, 16), 2)
