"""Language world models: tokenizer, prompts, SFT data/loss, and the sft / text-GRPO recipes end to end (tiny,
on synthetic transitions: no simulator)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from rlvr_world import cli
from rlvr_world import config as C
from rlvr_world.data import text_domains, text_tokenizer
from rlvr_world.data.textgame import prompts as tg_prompts
from rlvr_world.data.web import prompts as web_prompts
from rlvr_world.models import Transformer
from rlvr_world.train import sft, text_data, text_grpo, text_model
from rlvr_world.train.text_eval import sample

from .text_fixtures import textgame_records, web_records, write_domain

TINY = {"dim": 64, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "intermediate_size": 128}


def _tok(tmp_path, records=None):
    d = text_domains.get("textgame")
    records = records or textgame_records(40, 0)
    texts = [f"{d.messages(r)[0]}\n{d.messages(r)[1]}\n{d.answer(r)}" for r in records]
    return text_tokenizer.train_bpe(texts, 400, tmp_path / "tok")


# ----------------------------------------------------------------------------------------------- tokenizer


def test_bpe_round_trip_and_chat_prompt(tmp_path):
    tok = _tok(tmp_path)
    text = '{"modified":[{"name":"lamp 2","uuid":2}],"removed":[]}'
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    prompt = text_tokenizer.chat_prompt(tok, "rules", "state")
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok.encode(prompt, add_special_tokens=False)
    assert ids.count(tok.get_vocab()["<|im_start|>"]) == 3  # specials are single tokens
    assert text_tokenizer.end_id(tok) == tok.get_vocab()["<|im_end|>"]


def test_tokenizer_saved_beside_a_qwen2_model_encodes_the_same(tmp_path):
    """A model directory has a qwen2 config.json: loading its tokenizer must not swap in Qwen2's pre-tokenizer."""
    tok = _tok(tmp_path)
    model = Transformer.from_name("lm-tiny", vocab_size=len(tok), **TINY)
    text_model.save(model, tok, tmp_path / "model")
    loaded = text_tokenizer.load(tmp_path / "model")
    rec = textgame_records(1, 3)[0]
    prompt = text_tokenizer.chat_prompt(tok, *tg_prompts.messages(rec))
    assert loaded.encode(prompt, add_special_tokens=False) == tok.encode(prompt, add_special_tokens=False)
    assert text_tokenizer.end_id(loaded) == text_tokenizer.end_id(tok)


def test_bpe_vocab_too_small_is_an_error():
    with pytest.raises(ValueError, match="vocab_size must be >= 259"):
        text_tokenizer.train_bpe(["a"], 100)


# ----------------------------------------------------------------------------------------------- prompts


def test_textgame_prompt_and_answer():
    rec = textgame_records(1, 0)[0]
    system, user = tg_prompts.messages(rec)
    assert "modified" in system and f"Action: {rec['action']}" in user
    assert "New objects get uuids from 4." in user  # max_uuid 3
    assert tg_prompts.compact(rec["current_state"]) in user
    answer = json.loads(tg_prompts.answer(rec))
    assert set(answer) == {"modified", "removed", "score"}
    # the gold answer scores 1 under the domain's reward
    d = text_domains.get("textgame")
    assert d.reward(tg_prompts.answer(rec), rec, "binary") == 1.0
    assert d.exact(tg_prompts.answer(rec), rec)


def test_prompt_missing_field_names_it():
    rec = textgame_records(1, 0)[0]
    del rec["action"]
    with pytest.raises(KeyError, match="'action'"):
        tg_prompts.messages(rec)
    web = web_records(1, 0)[0]
    del web["current_page"]
    with pytest.raises(KeyError, match="current_page"):
        web_prompts.messages(web)


def test_web_prompt_and_reward():
    rec = web_records(1, 0)[0]
    rec["previous_actions"] = ["click [3]", "type [2] [x]"]
    system, user = web_prompts.messages(rec)
    assert "New items:" in system and "Previous actions: click [3]; type [2] [x]" in user
    assert rec["current_page"] in user
    d = text_domains.get("web")
    assert d.reward(web_prompts.answer(rec), rec, "f1") == 1.0
    assert d.reward("New items:\n[9] link 'x'", rec, "f1") < 1.0


# ----------------------------------------------------------------------------------------------- data


def test_collate_masks_everything_but_the_answer(tmp_path):
    tok = _tok(tmp_path)
    d = text_domains.get("textgame")
    exs, dropped = text_data.encode_records(d, tok, textgame_records(3, 1), 4096, 512)
    assert dropped == 0 and all(e.answer[-1] == text_tokenizer.end_id(tok) for e in exs)
    ids, labels = text_data.collate(exs, pad_id=0)
    for b, e in enumerate(exs):
        n = len(e)
        assert ids[b, :n].tolist() == e.prompt + e.answer
        assert (labels[b, :len(e.prompt)] == -100).all() and (labels[b, n:] == -100).all()
        assert labels[b, len(e.prompt):n].tolist() == e.answer


def test_answer_loss_is_the_cross_entropy_of_the_answer_tokens(tmp_path):
    tok = _tok(tmp_path)
    d = text_domains.get("textgame")
    exs, _ = text_data.encode_records(d, tok, textgame_records(3, 1), 4096, 512)
    torch.manual_seed(0)
    model = Transformer.from_name("lm-tiny", vocab_size=len(tok), **TINY).double()
    ids, labels = text_data.collate(exs, pad_id=0)
    loss, correct, n = text_data.answer_loss(model.hidden_states, ids, labels, model.lm_head_weight, accuracy=True)
    logits = model(ids)[:, :-1]                                                     # [B, S-1, V]
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert n == sum(len(e.answer) for e in exs)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    hits = (logits.argmax(-1) == labels[:, 1:])[labels[:, 1:] != -100].sum()
    assert int(correct) == int(hits)
    assert text_data.answer_loss(model.hidden_states, ids, labels, model.lm_head_weight)[1] is None


def test_length_limits(tmp_path):
    tok = _tok(tmp_path)
    d = text_domains.get("textgame")
    rec = textgame_records(1, 2)[0]
    with pytest.raises(ValueError, match="max_prompt_tokens=10"):
        text_data.encode_one(d, tok, rec, 10, 512)
    with pytest.raises(ValueError, match="max_answer_tokens=3"):
        text_data.encode_one(d, tok, rec, 4096, 3)
    with pytest.raises(ValueError, match="every one of the 2 records is longer"):
        text_data.encode_records(d, tok, textgame_records(2, 2), 10, 512)
    kept, dropped = text_data.encode_records(d, tok, textgame_records(4, 2), 4096, 512)
    assert (len(kept), dropped) == (4, 0)


def test_length_batches_cover_every_example_once_and_are_deterministic():
    lengths = [5, 50, 7, 30, 9, 8, 100, 1, 2, 3]
    a = text_data.length_batches(lengths, 3, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(10))
    assert a == text_data.length_batches(lengths, 3, seed=1, epoch=0)
    assert a != text_data.length_batches(lengths, 3, seed=1, epoch=1)


def test_records_errors(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"id": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: not valid JSON"):
        text_domains.read_records(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="no val split"):
        text_domains.read_records(tmp_path, "val")
    with pytest.raises(ValueError, match="domain must be one of"):
        text_domains.get("chess")
    with pytest.raises(FileNotFoundError, match="data.source is 'none'"):
        text_domains.ensure_data(text_domains.get("web"), tmp_path / "empty", "none", {})


def test_malformed_state_scores_zero():
    rec = textgame_records(1, 0)[0]
    d = text_domains.get("textgame")
    assert d.reward('{"modified": [ {"name": ', rec, "binary") == 0.0
    assert d.reward("no json at all", rec, "task_specific") == 0.0


# ----------------------------------------------------------------------------------------------- recipes


def _sft_cfg(tmp_path, domain="textgame", **over):
    root = write_domain(tmp_path / "data" / domain, domain, n_train=24, n_eval=4)
    cfg = C.load_config("sft", preset=f"sft-{domain}-smoke", overrides=[
        f"data.root={root}", "data.source=none", f"train.out_dir={tmp_path / 'sft'}", "train.steps=4",
        "train.batch_size=4", "model.bpe_vocab_size=300", "progress=false",
        *[f"model.overrides.{k}={v}" for k, v in TINY.items()], *[f"{k}={v}" for k, v in over.items()]])
    return cfg


@pytest.mark.slow
def test_sft_then_text_grpo_end_to_end(tmp_path):
    cfg = _sft_cfg(tmp_path)
    out = sft.run(cfg)
    model_dir = tmp_path / "sft" / "model"
    assert out["model_dir"] == str(model_dir) and (tmp_path / "sft" / "report.md").is_file()
    assert {"exact", "exact_changed", "exact_unchanged", "reward_binary", "reward_task_specific"} <= set(out["eval"])
    # the saved directory is an ordinary HF model + tokenizer
    from rlvr_world.testing import prepare_torchvision

    prepare_torchvision()
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([[1, 5, 9, 4]])
    ours = Transformer.from_pretrained(model_dir, dtype=torch.float32)
    torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)

    gcfg = C.load_config("grpo", preset="grpo-textgame-smoke", overrides=[
        f"data.root={cfg.data.root}", "data.source=none", f"model.init_from={tmp_path / 'sft'}",
        f"train.out_dir={tmp_path / 'grpo'}", "train.steps=2", "progress=false"])
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    res = text_grpo.run(gcfg)
    assert res["step"] == 2 and (tmp_path / "grpo" / "report.md").is_file()
    assert res["before"]["exact"] == pytest.approx(out["eval"]["exact"])  # step 0 = the SFT model
    rows = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    assert len(train) == 2 and all("reward_mean" in r and "kl_mean" in r for r in train)
    # resuming continues from the checkpoint, and the report still compares with the step-0 (SFT) numbers
    more = C.load_config("grpo", preset="grpo-textgame-smoke", overrides=[
        f"data.root={cfg.data.root}", "data.source=none", f"model.init_from={tmp_path / 'sft'}",
        f"train.out_dir={tmp_path / 'grpo'}", "train.steps=3", "train.resume=true", "progress=false"])
    resumed = text_grpo.run(more)
    assert resumed["step"] == 3
    assert json.dumps(resumed["before"], sort_keys=True) == json.dumps(res["before"], sort_keys=True)  # NaN-safe
    after = Transformer.from_pretrained(tmp_path / "grpo" / "model", dtype=torch.float32).state_dict()
    if all(r["reward_std"] == 0 for r in train):  # equal rewards in every group: zero advantages, no change
        assert all(torch.equal(before[k], after[k]) for k in before)

    # an update with non-zero advantages moves the policy, and only through the sampled tokens
    s = text_grpo.setup(C.load_config("grpo", preset="grpo-textgame-smoke", overrides=[
        f"data.root={cfg.data.root}", "data.source=none", f"model.init_from={tmp_path / 'sft'}",
        f"train.out_dir={tmp_path / 'grpo2'}", "progress=false"]))
    b = text_grpo.rollout(s, text_grpo.prompts(s))
    G = s.cfg.grpo.group_size
    b.rewards = torch.arange(len(b.examples) * G, dtype=torch.float32) % G
    b = text_grpo.advantages(s, b)
    start = {k: v.clone() for k, v in s.model.state_dict().items()}
    stats = text_grpo.update(s, b)
    s.logger.close()
    assert torch.isfinite(torch.tensor(stats["loss"])) and stats["skipped_updates"] == 0
    assert any(not torch.equal(start[k], v) for k, v in s.model.state_dict().items())


def test_text_grpo_logprobs_line_up_with_the_sampler(tmp_path):
    """The trainer's packed recompute of the sampled tokens' log-probs equals the engine's (alignment of the
    right-padded, variable-length rows)."""
    tok = _tok(tmp_path)
    d = text_domains.get("textgame")
    exs, _ = text_data.encode_records(d, tok, textgame_records(3, 4), 4096, 64)
    torch.manual_seed(0)
    model = Transformer.from_name("lm-tiny", vocab_size=len(tok), **TINY)
    s = sample(model, tok, exs, text_tokenizer.end_id(tok), group_size=3, max_new_tokens=12, temperature=1.0, seed=3)
    b = text_grpo.Batch(exs, 0, s, torch.zeros(9), torch.ones(9))
    rows = text_grpo._rows(b, 3)
    ids, ri, ti = text_grpo._packed(rows, torch.device("cpu"))
    tokens, old, mask, _ = text_grpo._flat(rows, torch.device("cpu"))
    with torch.no_grad():
        new = text_grpo.token_logprobs(model.hidden_states(ids)[ri, ti], model.lm_head_weight, tokens)
    assert mask.any()
    torch.testing.assert_close(new[mask], old[mask], rtol=0, atol=1e-4)


def test_truncated_answers_score_zero(tmp_path):
    tok = _tok(tmp_path)
    d = text_domains.get("textgame")
    exs, _ = text_data.encode_records(d, tok, textgame_records(2, 4), 4096, 512)
    model = Transformer.from_name("lm-tiny", vocab_size=len(tok), **TINY)
    s = sample(model, tok, exs, text_tokenizer.end_id(tok), group_size=2, max_new_tokens=2, temperature=1.0, seed=0)
    s.texts = [[tg_prompts.answer(ex.record)] * 2 for ex in exs]  # even a perfect text scores 0 when cut
    s.truncated = [[True, False] for _ in exs]
    from rlvr_world.train.text_eval import rewards_of

    assert rewards_of(d, s, exs, "binary") == [[0.0, 1.0], [0.0, 1.0]]


def test_lora_trains_only_adapters_and_saves_merged(tmp_path):
    tok = _tok(tmp_path)
    torch.manual_seed(0)
    model = Transformer.from_name("lm-tiny", vocab_size=len(tok), **TINY)
    text_model.add_lora(model, rank=4, alpha=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # non-zero adapters: the merge must carry them
    ids = torch.tensor([[3, 8, 2, 7, 1]])
    with torch.no_grad():
        expected = model(ids)
    text_model.save(model, tok, tmp_path / "merged")
    merged = Transformer.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), expected, rtol=1e-5, atol=1e-5)


def test_configs_and_cli(tmp_path, capsys):
    cfg = C.load_config("grpo", preset="textgame-small")
    assert type(cfg).__name__ == "TextGRPORun" and cfg.grpo.group_size == 5
    path = tmp_path / "g.yaml"
    C.to_yaml(cfg, path)
    assert path.read_text().startswith("recipe: grpo\nkind: text\n")
    assert C.load_config("grpo", path) == cfg
    assert type(C.load_config("grpo")).__name__ == "GRPORun"  # the video root stays the default
    with pytest.raises(ValueError, match="grpo.reward of domain 'web' must be one of"):
        text_domains.get("web").check_mode("binary", "grpo.reward")
    with pytest.raises(ValueError, match="grpo.mini_batch_prompts must divide"):
        C.load_config("grpo", preset="textgame-small", overrides=["grpo.mini_batch_prompts=5"])
    assert cli.main(["grpo", "--preset", "web-smoke", "--print-config"]) == 0
    assert "kind: text" in capsys.readouterr().out
    assert cli.main(["sft", "--preset", "sft-web-smoke", "model.lora_rank=-1"]) == 2
    assert "model.lora_rank must be >= 0" in capsys.readouterr().err


def test_grpo_needs_a_model(tmp_path, capsys):
    root = write_domain(tmp_path / "d", "web", n_train=4, n_eval=2)
    assert cli.main(["grpo", "--preset", "web-smoke", f"data.root={root}", "data.source=none", "model.init_from=null",
                     f"train.out_dir={tmp_path / 'g'}"]) == 1
    assert "model.init_from is required" in capsys.readouterr().err


def test_text_grpo_rollout_through_vllm(tmp_path, monkeypatch):
    """backend=vllm: the policy's weights go to the LLM before the rollout and its samples come back per prompt."""
    import sys

    from tests.rollout.test_vllm_backend import _fake_vllm, _StubLLM

    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm())
    root = write_domain(tmp_path / "d", "web", n_train=4, n_eval=2)
    tok = text_tokenizer.train_bpe([json.dumps(r) for r in web_records(20, 0)], 300, None)
    text_model.save(Transformer.from_name("lm-tiny", vocab_size=len(tok), **TINY), tok, tmp_path / "m")
    llm = _StubLLM(eos=text_tokenizer.end_id(tok))
    loaded = []
    monkeypatch.setattr("rlvr_world.rollout.vllm_backend.make_llm", lambda path: llm)
    monkeypatch.setattr("rlvr_world.rollout.vllm_backend.load_weights", lambda l, m: loaded.append(m) or 0)
    s = text_grpo.setup(C.load_config("grpo", preset="grpo-web-smoke", overrides=[
        f"data.root={root}", "data.source=none", f"model.init_from={tmp_path / 'm'}", "grpo.backend=vllm",
        f"train.out_dir={tmp_path / 'g'}", "progress=false"]))
    s.logger.close()
    b = text_grpo.rollout(s, text_grpo.prompts(s))
    assert len(loaded) == 1 and s.llm is llm and len(llm.calls) == len(b.examples)
    G = s.cfg.grpo.group_size
    assert all(t.shape[0] == G for t in b.samples.tokens)
    assert not any(cuts[1] or cuts[3] for cuts in b.samples.truncated)  # the stub's odd samples stop at the end id


def _simulator_missing(domain: str) -> str | None:
    import importlib.util
    import shutil

    if domain == "web":
        if shutil.which("chromedriver") is None or shutil.which("chromium") is None:
            return "needs chromium + chromedriver (apt-get install -y chromium chromium-driver)"
        return None if importlib.util.find_spec("miniwob") else "needs the miniwob package (the [lang] extra)"
    if shutil.which("java") is None:
        return "needs a Java runtime (apt-get install -y default-jre-headless)"
    return None if importlib.util.find_spec("scienceworld") else "needs the scienceworld package (the [lang] extra)"


@pytest.mark.slow
@pytest.mark.parametrize("domain", [pytest.param("web", marks=pytest.mark.browser),
                                    pytest.param("textgame", marks=pytest.mark.java)])
def test_smoke_presets_collect_then_sft_then_grpo(tmp_path, domain, capsys):
    """What a fresh clone runs: the smoke presets collect their data with the built-in simulator first."""
    reason = _simulator_missing(domain)
    if reason:
        pytest.skip(reason)
    tiny = [f"model.overrides.{k}={v}" for k, v in TINY.items()]
    common = [f"data.root={tmp_path / 'data'}", "progress=false"]
    assert cli.main(["sft", "--preset", f"sft-{domain}-smoke", *common, *tiny, "train.steps=3",
                     f"train.out_dir={tmp_path / 'sft'}"]) == 0
    assert {f"{s}.jsonl" for s in ("train", "val", "test")} <= {p.name for p in (tmp_path / "data").iterdir()}
    assert cli.main(["grpo", "--preset", f"{domain}-smoke", *common, f"model.init_from={tmp_path / 'sft'}",
                     "train.steps=1", f"train.out_dir={tmp_path / 'grpo'}"]) == 0
    out = capsys.readouterr().out
    assert "| exact match |" in out and (tmp_path / "grpo" / "report.md").is_file()


def test_mpc_cli_names_a_missing_world_model(tmp_path, capsys):
    assert cli.main(["mpc", "--preset", "mpc-smoke", f"mpc.world_models={{base: {tmp_path / 'nope'}}}",
                     f"mpc.out_dir={tmp_path / 'mpc'}", "progress=false"]) == 1
    assert str(tmp_path / "nope") in capsys.readouterr().err
    assert cli.main(["mpc", "mpc.world_models={oracle: x}"]) == 2
    assert "reserved for the baseline arms" in capsys.readouterr().err


@pytest.mark.slow
def test_sft_from_a_transformers_qwen2_directory_with_lora(tmp_path):
    """model.init_from = an HF Qwen2 directory written by transformers (with its tokenizer): LoRA SFT runs and the
    saved model (adapters merged) loads back in transformers."""
    from rlvr_world.testing import prepare_torchvision

    prepare_torchvision()
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = _tok(tmp_path)
    hf_dir = tmp_path / "qwen2"
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                                 tie_word_embeddings=False)).save_pretrained(hf_dir)
    tok.save_pretrained(str(hf_dir))
    cfg = _sft_cfg(tmp_path, **{"model.init_from": str(hf_dir), "model.lora_rank": 4, "model.lora_alpha": 8})
    out = sft.run(cfg)
    assert out["step"] == 4 and "exact" in out["eval"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "model")
    base = AutoModelForCausalLM.from_pretrained(hf_dir)
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all(any(k in n for k in ("q_proj", "k_proj", "v_proj", "o_proj", "mlp")) for n in changed)
