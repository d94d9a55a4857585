"""vLLM backend without vLLM: the SamplingParams mapping, RequestOutput -> Rollout conversion on hand-built
outputs, the weight hand-off names and tensors against transformers' LLaMA / Qwen2 state dicts, the lazy
import error, and generate_vllm end to end against a fake ``vllm`` module. CPU, fp32, tiny models."""

import builtins
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from rlvr_world.models.transformer import ModelArgs, Transformer
from rlvr_world.rollout import vllm_backend as vb
from rlvr_world.testing import prepare_torchvision

V = 97
TINY = {"vocab_size": V, "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 128,
        "max_seq_len": 64}


# ------------------------------------------------------------------ helpers
def _lp(logprob, rank=1):
    return SimpleNamespace(logprob=logprob, rank=rank, decoded_token=None)


def _completion(index, ids, lps, finish_reason="length", extra=None):
    """A fake CompletionOutput: logprobs as vLLM gives them, [{sampled id: Logprob, ...}] per position."""
    entries = []
    for t, (tok, lp) in enumerate(zip(ids, lps)):
        entry = {tok: _lp(lp)}
        if extra is not None:  # a top-1 entry beside the sampled one (logprobs=1)
            entry[extra] = _lp(-0.01)
        entries.append(entry)
    return SimpleNamespace(index=index, token_ids=list(ids), logprobs=entries, text="",
                           cumulative_logprob=float(sum(lps)), finish_reason=finish_reason, stop_reason=None)


def _request(*outputs):
    return SimpleNamespace(outputs=list(outputs), prompt_token_ids=[1, 2], finished=True)


# ------------------------------------------------------------------ sampling params
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
@pytest.mark.parametrize("top_k", [0, 5])
@pytest.mark.parametrize("top_p", [1.0, 0.9])
@pytest.mark.parametrize("eos_id", [None, 3])
def test_sampling_params_mapping(temperature, top_k, top_p, eos_id):
    got = vb.sampling_params(4, 12, temperature, top_k, top_p, 7, eos_id)
    greedy = temperature == 0
    assert got == {
        "n": 1 if greedy else 4,                      # vLLM refuses n > 1 with greedy sampling
        "temperature": temperature,
        "top_k": -1 if greedy or top_k == 0 else top_k,  # -1 = off in every vLLM version
        "top_p": 1.0 if greedy else top_p,
        "seed": 7,
        "max_tokens": 12,
        "min_tokens": 0,
        "logprobs": 0,                                # the sampled token's log-prob only
        "ignore_eos": True,                           # the checkpoint's own EOS never stops a row
        "stop_token_ids": [] if eos_id is None else [eos_id],
        "detokenize": False,
    }
    assert isinstance(got["temperature"], float) and isinstance(got["top_p"], float)


@pytest.mark.parametrize("kwargs, match", [
    ({"group_size": 0}, "group_size"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": 0.005}, "clamps"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"seed": 2**63}, "seed"),
    ({"eos_id": -2}, "eos_id"),
])
def test_sampling_params_bad_inputs(kwargs, match):
    args = {"group_size": 2, "max_new_tokens": 4, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0,
            "eos_id": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        vb.sampling_params(**args)


def test_prompt_seed_distinct_per_prompt_and_sample():
    G = 16
    seeds = {vb.prompt_seed(0, p, G) + g for p in range(64) for g in range(G)}
    assert len(seeds) == 64 * G  # V1 gives sample g the seed prompt_seed + g: all distinct
    assert vb.prompt_seed(0, 3, G) != vb.prompt_seed(1, 3, G)
    assert all(0 <= vb.prompt_seed(s, 2**31, G) < 2**62 for s in (0, 2**64 - 1))
    assert vb.prompt_seed(5, 7, G) == vb.prompt_seed(5, 7, G)


# ------------------------------------------------------------------ to_rollout
def test_to_rollout_fixed_length_row_order():
    # outputs of prompt 0 arrive out of index order: rows follow .index
    r0 = _request(_completion(1, [5, 6, 7], [-0.5, -0.6, -0.7]), _completion(0, [1, 2, 3], [-0.1, -0.2, -0.3]))
    r1 = _request(_completion(0, [8, 9, 10], [-1.0, -1.1, -1.2], extra=0),
                  _completion(1, [11, 12, 13], [-1.3, -1.4, -1.5]))
    out = vb.to_rollout([r0, r1], group_size=2, max_new_tokens=3, eos_id=None)
    assert out.tokens.dtype == torch.int64 and out.logprobs.dtype == torch.float32 and out.mask.dtype == torch.bool
    assert out.tokens.tolist() == [[1, 2, 3], [5, 6, 7], [8, 9, 10], [11, 12, 13]]
    torch.testing.assert_close(out.logprobs, torch.tensor([[-0.1, -0.2, -0.3], [-0.5, -0.6, -0.7],
                                                           [-1.0, -1.1, -1.2], [-1.3, -1.4, -1.5]]))
    assert out.mask.all()


def test_to_rollout_eos_mode_rows_of_different_lengths():
    eos = 2
    r0 = _request(_completion(0, [4, eos], [-0.4, -0.2], "stop"),                # EOS-terminated, 2 tokens
                  _completion(1, [5, 6, 7, 8], [-0.5, -0.6, -0.7, -0.8]))       # length-capped, no EOS
    r1 = _request(_completion(0, [eos], [-0.9], "stop"),                         # EOS first
                  _completion(1, [9, 10, eos, 11], [-1.0, -1.1, -1.2, -1.3]))   # past EOS: cut at the first one
    out = vb.to_rollout([r0, r1], group_size=2, max_new_tokens=4, eos_id=eos)
    assert out.tokens.tolist() == [[4, eos, eos, eos], [5, 6, 7, 8], [eos, eos, eos, eos], [9, 10, eos, eos]]
    assert out.mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False],
                                 [True, True, True, False]]
    want = torch.tensor([[-0.4, -0.2, 0, 0], [-0.5, -0.6, -0.7, -0.8], [-0.9, 0, 0, 0], [-1.0, -1.1, -1.2, 0]])
    torch.testing.assert_close(out.logprobs, want)
    assert (out.logprobs[~out.mask] == 0).all()


def test_to_rollout_greedy_repeats_the_single_output_with_zero_logprobs():
    r = _request(_completion(0, [3, 4], [-0.3, -0.2]))
    out = vb.to_rollout([r, r], group_size=3, max_new_tokens=2, eos_id=None, greedy=True)
    assert out.tokens.tolist() == [[3, 4]] * 6 and out.mask.all()
    assert (out.logprobs == 0).all()  # our engine's convention for temperature 0


def test_to_rollout_errors():
    ok = _completion(0, [1, 2], [-0.1, -0.2])
    with pytest.raises(ValueError, match="one RequestOutput per prompt"):
        vb.to_rollout([], 1, 2, None)
    with pytest.raises(ValueError, match="2 outputs, expected group_size=3"):
        vb.to_rollout([_request(ok, _completion(1, [1, 2], [-0.1, -0.2]))], 3, 2, None)
    with pytest.raises(ValueError, match="exactly max_new_tokens=3"):
        vb.to_rollout([_request(ok)], 1, 3, None)  # fixed length but short
    with pytest.raises(ValueError, match="at most max_new_tokens=1"):
        vb.to_rollout([_request(ok)], 1, 1, 9)
    with pytest.raises(ValueError, match="without eos_id=9"):
        vb.to_rollout([_request(ok)], 1, 4, 9)  # EOS mode, stopped early for another reason
    no_lp = SimpleNamespace(index=0, token_ids=[1, 2], logprobs=None, finish_reason="length")
    with pytest.raises(ValueError, match="logprobs=0"):
        vb.to_rollout([_request(no_lp)], 1, 2, None)
    wrong = _completion(0, [1, 2], [-0.1, -0.2])
    wrong.logprobs[1] = {7: _lp(-0.3)}  # entry lacks the sampled token
    with pytest.raises(ValueError, match="sampled token 2"):
        vb.to_rollout([_request(wrong)], 1, 2, None)
    masked = _completion(0, [1, 2], [-0.1, float("-inf")])
    with pytest.raises(ValueError, match="logprobs_mode"):
        vb.to_rollout([_request(masked)], 1, 2, None)


# ------------------------------------------------------------------ weight hand-off
@pytest.fixture(scope="module")
def transformers():
    prepare_torchvision()  # transformers imports torchvision, whose CUDA wheel fails beside a CPU torch
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("family, tied", [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True)])
def test_hf_state_dict_items_match_transformers(transformers, tmp_path, family, tied):
    torch.manual_seed(0)
    qwen = family == "qwen2"
    ours = Transformer(ModelArgs(**TINY, qkv_bias=qwen, tie_embeddings=tied)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mix-up shows
        for name, p in ours.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ours.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[family]
    want = {k: v for k, v in hf.state_dict().items() if not (tied and k == "lm_head.weight")}
    got = list(vb.hf_state_dict_items(ours))
    assert [n for n, _ in got] == list(want)  # same names, same order as transformers' state dict
    for name, tensor in got:
        assert not tensor.requires_grad
        assert torch.equal(tensor, want[name]), name
    names = [n for n, _ in vb.hf_state_dict_items(ours, include_tied_head=True)]
    assert ("lm_head.weight" in names) and len(names) == len(hf.state_dict())
    half = dict(vb.hf_state_dict_items(ours, dtype=torch.bfloat16))
    assert all(t.dtype == torch.bfloat16 for t in half.values())


class _VModel:
    def __init__(self):
        self.loaded = []

    def load_weights(self, weights):
        self.loaded.extend(weights)
        return {n for n, _ in weights}


def _tiny():
    torch.manual_seed(0)
    return Transformer(ModelArgs(**TINY)).eval()


@pytest.mark.parametrize("v1", [False, True])
def test_load_weights_in_process(v1):
    vmodel = _VModel()
    runner = SimpleNamespace(model_runner=SimpleNamespace(model=vmodel))
    driver = SimpleNamespace(worker=runner) if v1 else runner
    llm = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(driver_worker=driver)))
    model = _tiny()
    n = vb.load_weights(llm, model)
    assert n == len(model.state_dict()) == len(vmodel.loaded)
    first_name, first = vmodel.loaded[0]
    assert first_name == "model.embed_tokens.weight" and first.data_ptr() == model.tok_embeddings.weight.data_ptr()


def test_load_weights_apply_model_for_multiprocess_or_tensor_parallel():
    vmodel = _VModel()
    calls = []

    def apply_model(func):
        calls.append(func)
        return [func(vmodel)]

    # no in-process path (V1 multiprocess engine)
    llm = SimpleNamespace(llm_engine=SimpleNamespace(), apply_model=apply_model)
    model = _tiny()
    assert vb.load_weights(llm, model) == len(vmodel.loaded) == len(model.state_dict())
    assert all(t.device.type == "cpu" for _, t in vmodel.loaded) and len(calls) == 1
    # TP > 1: every worker must shard, so apply_model even where the driver's model is reachable
    driver_model = _VModel()
    llm = SimpleNamespace(apply_model=apply_model, llm_engine=SimpleNamespace(
        parallel_config=SimpleNamespace(tensor_parallel_size=2),
        model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=driver_model)))))
    vb.load_weights(llm, model)
    assert len(calls) == 2 and not driver_model.loaded
    with pytest.raises(RuntimeError, match="apply_model"):
        vb.load_weights(SimpleNamespace(), model)


# ------------------------------------------------------------------ lazy import
def test_make_llm_without_vllm_raises_clear_import_error(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(ImportError, match=r"pip install vllm") as err:
        vb.make_llm(tmp_path)
    text = str(err.value)
    assert "GPU" in text and "backend=\"engine\"" in text and "default" in text
    with pytest.raises(ImportError, match="pip install vllm"):
        vb.generate_vllm(object(), torch.zeros(1, 2, dtype=torch.int64), group_size=1, max_new_tokens=1)


def test_old_vllm_is_refused(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(version="0.5.4"))
    with pytest.raises(ImportError, match=r"vllm >= 0\.6\.3"):
        vb.make_llm(tmp_path)


# ------------------------------------------------------------------ fake vllm end to end
class _FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
        self.kwargs = kwargs


def _fake_vllm(version="0.11.0", logprobs_mode=True):
    mod = ModuleType("vllm")
    mod.__version__ = version
    mod.SamplingParams = _FakeSamplingParams
    created = []

    class LLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            created.append(self)

    fields = {"model": str, "skip_tokenizer_init": bool}
    if logprobs_mode:
        fields["logprobs_mode"] = str
    import dataclasses
    mod.EngineArgs = dataclasses.make_dataclass("EngineArgs", [(k, t, dataclasses.field(default=None))
                                                               for k, t in fields.items()])
    mod.LLM = LLM
    mod.created = created
    return mod


class _StubLLM:
    """Answers generate with canned outputs: sample g of a prompt emits tokens (prompt[0] + g + t) % V, log-prob
    -(t + 1) / 10; a sample of an odd g stops at ``eos`` after 2 tokens when ``eos`` is set."""

    def __init__(self, mode="processed_logprobs", eos=None):
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(logprobs_mode=mode))
        self.calls = []
        self.eos = eos

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params, use_tqdm))
        outs = []
        for prompt, sp in zip(prompts, sampling_params):
            comps = []
            for g in range(sp.n):
                ids = [(prompt["prompt_token_ids"][0] + g + t) % V for t in range(sp.max_tokens)]
                if self.eos is not None and g % 2 == 1:
                    ids = ids[:1] + [self.eos]
                comps.append(_completion(g, ids, [-(t + 1) / 10 for t in range(len(ids))]))
            outs.append(_request(*reversed(comps)))  # order by .index, not by position
        return outs


def test_generate_vllm_end_to_end_with_fake_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm())
    llm = _StubLLM()
    prompts = torch.tensor([[10, 11, 12], [20, 21, 22]])
    out = vb.generate_vllm(llm, prompts, group_size=3, max_new_tokens=4, temperature=0.8, top_k=5, top_p=0.9,
                           seed=11, sequence_ids=torch.tensor([7, 3]))
    (inputs, params, use_tqdm), = llm.calls
    assert inputs == [{"prompt_token_ids": [10, 11, 12]}, {"prompt_token_ids": [20, 21, 22]}] and not use_tqdm
    assert [p.seed for p in params] == [vb.prompt_seed(11, 7, 3), vb.prompt_seed(11, 3, 3)]
    for p in params:
        assert {k: v for k, v in p.kwargs.items() if k != "seed"} == {
            k: v for k, v in vb.sampling_params(3, 4, 0.8, 5, 0.9, 0, None).items() if k != "seed"}
    assert out.tokens.shape == out.logprobs.shape == out.mask.shape == (6, 4)
    assert out.tokens[0].tolist() == [10, 11, 12, 13] and out.tokens[4].tolist() == [21, 22, 23, 24]
    torch.testing.assert_close(out.logprobs, torch.tensor([[-0.1, -0.2, -0.3, -0.4]]).expand(6, 4))
    assert out.mask.all()


def test_generate_vllm_eos_mode_and_greedy(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm())
    eos = 0
    llm = _StubLLM(eos=eos)
    out = vb.generate_vllm(llm, torch.tensor([[5, 6]]), group_size=2, max_new_tokens=4, eos_id=eos)
    assert llm.calls[0][1][0].stop_token_ids == [eos] and llm.calls[0][1][0].ignore_eos
    assert out.tokens.tolist() == [[5, 6, 7, 8], [6, eos, eos, eos]]
    assert out.mask.tolist() == [[True] * 4, [True, True, False, False]]
    torch.testing.assert_close(out.logprobs[1], torch.tensor([-0.1, -0.2, 0.0, 0.0]))
    greedy = _StubLLM()
    out = vb.generate_vllm(greedy, torch.tensor([[5, 6]]), group_size=3, max_new_tokens=2, temperature=0.0)
    assert greedy.calls[0][1][0].n == 1
    assert out.tokens.tolist() == [[5, 6]] * 3 and (out.logprobs == 0).all() and out.mask.all()


def test_generate_vllm_refuses_raw_logprobs_of_a_transformed_distribution(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm())
    prompts = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="raw_logprobs.*recompute"):
        vb.generate_vllm(_StubLLM("raw_logprobs"), prompts, group_size=2, max_new_tokens=2, temperature=0.7)
    with pytest.warns(UserWarning, match="recompute"):
        out = vb.generate_vllm(_StubLLM("raw_logprobs"), prompts, group_size=2, max_new_tokens=2, top_p=0.5,
                               allow_raw_logprobs=True)
    assert out.tokens.shape == (2, 2)
    # raw == sampled distribution at temperature 1 without truncation, and greedy log-probs are 0 anyway
    vb.generate_vllm(_StubLLM("raw_logprobs"), prompts, group_size=2, max_new_tokens=2)
    vb.generate_vllm(_StubLLM("raw_logprobs"), prompts, group_size=2, max_new_tokens=2, temperature=0.0)


def test_logprobs_mode_of():
    assert vb.logprobs_mode_of(_StubLLM("processed_logprobs")) == "processed_logprobs"
    assert vb.logprobs_mode_of(_StubLLM("raw_logprobs")) == "raw_logprobs"
    v0 = type("LLMEngine", (), {"__module__": "vllm.engine.llm_engine"})()
    v1 = type("LLMEngine", (), {"__module__": "vllm.v1.engine.llm_engine"})()
    assert vb.logprobs_mode_of(SimpleNamespace(llm_engine=v0)) == "processed_logprobs"  # V0 sampler
    assert vb.logprobs_mode_of(SimpleNamespace(llm_engine=v1)) == "raw_logprobs"        # V1 before 0.10


def test_make_llm_defaults(monkeypatch, tmp_path):
    fake = _fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    llm = vb.make_llm(tmp_path, gpu_memory_utilization=0.5)
    assert llm.kwargs == {"model": str(tmp_path), "logprobs_mode": "processed_logprobs",
                          "skip_tokenizer_init": True, "gpu_memory_utilization": 0.5}
    (tmp_path / "tokenizer.json").write_text("{}")
    assert "skip_tokenizer_init" not in vb.make_llm(tmp_path).kwargs
    assert vb.make_llm(tmp_path, logprobs_mode="raw_logprobs").kwargs["logprobs_mode"] == "raw_logprobs"
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(version="0.8.5", logprobs_mode=False))
    assert "logprobs_mode" not in vb.make_llm(tmp_path).kwargs  # not an engine argument before 0.10


# ------------------------------------------------------------------ unsupported / bad inputs
@pytest.mark.parametrize("forced", [
    {"forced_tokens": torch.zeros(1, 3, dtype=torch.int64), "forced_mask": torch.tensor([False, True, False])},
    {"forced_fn": lambda t, gen: gen[:, :1], "forced_mask": torch.tensor([False, True, False])},
    {"forced_mask": torch.tensor([False, True, False])},
])
def test_forced_tokens_are_refused(forced):
    llm = _StubLLM()  # no vllm needed: refused before the import
    with pytest.raises(ValueError, match="forced_tokens.*default engine"):
        vb.generate_vllm(llm, torch.tensor([[1, 2]]), group_size=2, max_new_tokens=3, **forced)
    assert not llm.calls


def test_all_false_forced_mask_is_allowed(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm())
    out = vb.generate_vllm(_StubLLM(), torch.tensor([[1, 2]]), group_size=1, max_new_tokens=3,
                           forced_mask=torch.zeros(3, dtype=torch.bool))
    assert out.mask.all()


@pytest.mark.parametrize("kwargs, match", [
    ({"prompts": torch.tensor([[1.0, 2.0]])}, "int64"),
    ({"prompts": torch.tensor([1, 2])}, "2-D"),
    ({"prompts": torch.zeros(0, 2, dtype=torch.int64)}, "at least one"),
    ({"sequence_ids": torch.tensor([0, 1])}, "sequence_ids"),
    ({"sequence_ids": torch.tensor([-1])}, "sequence_ids"),
    ({"seed": -1}, "seed"),
    ({"top_p": 0.0}, "top_p"),
])
def test_generate_vllm_bad_inputs(kwargs, match):
    args = {"prompts": torch.tensor([[1, 2]]), "group_size": 1, "max_new_tokens": 2, **kwargs}
    prompts = args.pop("prompts")
    with pytest.raises(ValueError, match=match):
        vb.generate_vllm(_StubLLM(), prompts, **args)


def test_generate_dispatches_to_this_backend(monkeypatch):
    from rlvr_world.rollout import generate

    seen = {}

    def fake_generate_vllm(llm, prompts, **kw):
        seen.update(kw, llm=llm, prompts=prompts)
        return "rollout"

    monkeypatch.setattr(vb, "generate_vllm", fake_generate_vllm)
    prompts = torch.zeros(2, 3, dtype=torch.long)
    out = generate("an LLM", prompts, group_size=4, max_new_tokens=5, top_k=7, seed=3, eos_id=1, backend="vllm")
    assert out == "rollout" and seen["llm"] == "an LLM" and seen["prompts"] is prompts
    assert (seen["group_size"], seen["max_new_tokens"], seen["top_k"], seen["seed"], seen["eos_id"]) == (4, 5, 7, 3, 1)
    with pytest.raises(ValueError, match="return_stats=True is not available with backend='vllm'"):
        generate("an LLM", prompts, group_size=4, max_new_tokens=5, backend="vllm", return_stats=True)
    with pytest.raises(ValueError, match="backend must be 'engine' \\(default\\) or 'vllm', got 'hf'"):
        generate("an LLM", prompts, group_size=4, max_new_tokens=5, backend="hf")
