"""Benchmark of the rollout engine: group sampling with a shared-prefix KV cache
(``rlvr_world.rollout.generate``) beside Hugging Face ``generate``, a gpt-fast-style static-cache loop and,
for multi-step video, the re-prefill-every-turn protocol.

What it decides:

* **Workloads** (``--workloads``; the ``gpu`` shape set is paper scale, the ``cpu`` set a tiny stand-in):

  - ``w1`` single-step video: ``Transformer(ModelArgs.from_name("vwm-s", vocab_size=4633))`` (LLaMA 768 x 12,
    random init), prompt 1,333, exactly 320 new tokens, G 16, prompts in {1, 8, 32, 128}. cpu: ``vwm-tiny``,
    prompt 64, 32 new, G 4, prompts {1, 4}.
  - ``w2`` multi-step interactive: ``vwm-s`` with vocab 9,008, prompt 1,373, then 7 x (80 sampled frame
    tokens + 13 forced action tokens): ``forced_tokens`` / ``forced_mask`` from
    ``data.video_layout.MultiStepLayout().forced(action_bins)`` (F 80, A 13, S 7: response 651, vocab
    9,008) with random action bins; the prompt is 1,373 random ids (the layout's own prompt with one
    context frame is 334 tokens; the paper's 1,373 is kept). Prompts {8, 32}, G 16. cpu: ``vwm-tiny``
    (vocab 9,008), prompt 64, ``MultiStepLayout(tokens_per_frame=8, future_frames=3, action_dims=4)``
    (3 x (8 + 4) = 36), G 4, prompts {1, 4}.
  - ``w3`` text: Qwen2-1.5B's shape (``QWEN2_1_5B``: H 1,536, 28 layers, 12 query / 2 kv heads of 128,
    MLP 8,960, vocab 151,936, q/k/v biases, tied embeddings, RoPE theta 1e6), random init, prompt 512,
    at most 1,024 new tokens in EOS mode (``eos_id`` 151,643, Qwen2's <|endoftext|>), G 5 and 16,
    prompts {8}. cpu: the same vocab and layout at H 128, 2 layers (``QWEN2_TINY``), prompt 64, <= 32
    new, G 4, prompts {1, 4}. **EOS with random weights**: the logits are near-uniform over 151,936 ids, so
    EOS is sampled with probability ~1/V per step and practically every row runs to the cap. Every
    implementation runs in EOS mode all the same (it checks for "all rows finished" after each sampled
    step, a host sync, and stops early when that happens); tokens/s counts the tokens each
    implementation actually generated (up to and including a row's first EOS), so a row that stops early
    is not credited with padding. The W3 numbers are therefore the worst case of EOS mode (every row at
    the 1,024 cap); shorter caps: ``--max-new``.

* **Implementations** (every one on the same weights, prompts and shapes, one process; ``--baselines``):

  - ``ours:<attn>``: ``rollout.generate(model, prompts, group_size=G, max_new_tokens=N, temperature=1,
    seed, attn_impl=<attn>)`` for every ``attn_impl`` in ``rollout.CACHE_IMPLS`` (``--attn-impls``), with
    ``forced_tokens`` / ``forced_mask`` (w2) and ``eos_id`` (w3): each prompt prefilled once, its KV kept
    once per group, cascade decode attention, 13 action tokens appended by one forward per turn.
  - ``hf``: ``transformers`` ``generate(input_ids [P, Lp], num_return_sequences=G, do_sample=True,
    temperature=1, top_k=0, top_p=1, max_new_tokens=N (and min_new_tokens=N without EOS),
    eos_token_id=eos_id or None)``, default dynamic cache, SDPA attention: each prompt expanded G times
    and prefilled G times. The HF model (``LlamaForCausalLM`` / ``Qwen2ForCausalLM``) is built from
    ``models.hf_format.hf_config_from_args`` and loaded with our state dict (``ours_to_hf`` names), so
    the weights are identical.
  - ``hf_static``: the same call with ``cache_implementation="static"``; on CUDA HF then compiles the
    decoding forward itself (``torch.compile`` with its default ``CompileConfig``), so the cold start
    includes compiling. GPU-oriented (on a CPU it is a static cache without compilation); default on
    CUDA only.
  - ``gptfast``: gpt-fast's loop on our model: one static ``KVCache`` of P*G rows x (Lp + N) slots
    (``model.new_cache``, allocated once per row and reused by every call, as gpt-fast's ``setup_caches``;
    its allocation is counted in ``cold_s`` and ``mem_mib``), the prompts repeated G times and prefilled G
    times (no prefix sharing, in
    memory or in attention), then one ``model.decode_step`` per token followed by gpt-fast's sampler
    (softmax(logits / T), argmax(probs / Exp(1) noise), no top-k); w2's forced runs are appended by one
    forward of the 13 (+1) tokens (as ours); w3 checks for all-finished after each step (as ours).
  - ``gptfast_compile``: the same with the step (decode + sample) under ``torch.compile(fullgraph=True,
    mode="reduce-overhead")`` on CUDA (CUDA graphs; the cache tensors marked static addresses), plain
    ``torch.compile`` on a CPU; ``torch._dynamo.reset()`` before the row so the cold start includes the
    compile. Default on CUDA only.
  - ``reprefill`` (w2): the reference's multi-step protocol with our engine: each turn is a fresh
    ``generate`` call that re-prefills the whole sequence so far (turn 1: the P prompts with G; later
    turns: the P*G histories with G 1) and samples the turn's 80 frame tokens; the 13 action tokens are
    then concatenated on the host side. It isolates the protocol's cost from engine quality (the
    reference uses vLLM, which is not installed here).
  - ``reprefill_hf`` (w2): the same protocol with HF ``generate`` per turn (dynamic cache).

* **Correctness gate** (``--check``, on by default) before any timing, per workload, on a small case
  (P 2, G 2, the workload's prompt length; N = min(N, 32) for w1/w3, the full forced pattern for w2) in
  **fp32** copies of the weights, greedy (temperature 0): our engine's tokens must equal the gpt-fast
  loop's token for token, else every ``ours`` row of the workload is ``failed: ...`` and not timed.
  Every other eager implementation's greedy tokens are compared with ours and the fraction of equal
  tokens is the ``agree`` column (HF may differ in the last ulp and then diverge: reported, not asserted;
  HF greedy has no num_return_sequences, so it gets each prompt repeated G times). Compiled variants
  (``hf_static`` on CUDA, ``gptfast_compile``) compute the same function as their eager twin and are not
  gated (``agree`` blank), to keep compiling to the timed shapes.

* **Timing**: per row one cold call (``cold_s``: the first call at these shapes in this process, with the
  cache allocation and any compilation; CUDA context and cuBLAS are already initialised by then), then
  ``--warmup`` - 1 untimed calls and ``--reps`` timed calls (``_harness.time_fn``: CUDA events, else
  ``perf_counter``); median and p20 / p80; a cold call slower than 2 s on a CPU, 5 s on CUDA (not
  compiled rows) gets no further warm-up and ``min(reps, 3)`` timed calls. The timed call is the whole
  rollout (prefill + decode +
  sampling + forced appends), under ``torch.inference_mode``, temperature 1, weights in ``--precision``
  (auto: bf16 on CUDA, fp32 on a CPU). CUDA out-of-memory is caught per row (``oom``: e.g. 2,048 unshared
  rollouts of w1).

* **Columns**: ``tok_per_s`` = generated tokens (sampled, mask True: w2's forced tokens are not counted;
  w3 up to each row's first EOS) / median; ``ms_per_step`` = median / sampled positions run (the whole
  call, prefill included, per decode step); ``x_hf`` / ``x_gptfast`` / ``x_reprefill`` = that baseline's
  median / this row's; ``frac_shared`` and ``frac_unshared`` = the roofline floor / median, the floor
  being the bytes a decode must read per forward (weights once + KV) summed over the decode forwards,
  over the harness's HBM bandwidth (H100 3.0 TB/s, H200 4.8 TB/s; blank on a CPU): unshared = every
  row reads its own copy of the prompt's KV (B (Lp + t) tokens at response position t), shared = the
  prompt's KV once per group (P Lp + B t tokens); one forward per sampled position after the first (w2's
  forced runs ride in the forward of the sampled position after them, as in ours and gptfast).
  W1 at 128 prompts on an H100 (bf16): shared 1.98 s, unshared 12.0 s (the design's ~2.0 s / ~12 s floors).
  ``mem_mib`` = CUDA peak allocation of the timed calls beyond what was allocated before the row's call was
  built (cache, activations, outputs; gptfast's reused cache included); ``n/a`` on a CPU. ``agree`` = the gate's greedy agreement with ours.

Rows go to ``benchmarks/results/rollout_<device>.csv``. Nothing here touches CUDA at import; transformers
is imported only when an HF baseline runs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import _harness
import torch

from rlvr_world.data.video_layout import MultiStepLayout
from rlvr_world.models.hf_format import hf_config_from_args, ours_to_hf
from rlvr_world.models.transformer import ModelArgs, Transformer
from rlvr_world.rollout import CACHE_IMPLS, forced_runs, generate

WORKLOADS = ("w1", "w2", "w3")
BASELINES = ("hf", "hf_static", "gptfast", "gptfast_compile", "reprefill", "reprefill_hf")
APPLIES = {"w1": ("hf", "hf_static", "gptfast", "gptfast_compile"),
           "w2": ("gptfast", "gptfast_compile", "reprefill", "reprefill_hf"),
           "w3": ("hf", "hf_static", "gptfast", "gptfast_compile")}
COMPILED = ("hf_static", "gptfast_compile")
PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
SLOW_CALL_S = {"cpu": 2.0, "cuda": 5.0}  # a cold call slower than this: no warm-up, min(reps, 3) timed calls
GATE_PROMPTS, GATE_GROUP, GATE_NEW = 2, 2, 32
QWEN2_EOS = 151643  # Qwen2's <|endoftext|>
QWEN2_1_5B = {"vocab_size": 151936, "dim": 1536, "n_layers": 28, "n_heads": 12, "n_kv_heads": 2,
              "intermediate_size": 8960, "head_dim": 128, "rope_theta": 1e6, "norm_eps": 1e-6, "max_seq_len": 32768,
              "qkv_bias": True, "tie_embeddings": True}
QWEN2_TINY = {**QWEN2_1_5B, "dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 512,
              "head_dim": 32, "max_seq_len": 2048}
COLUMNS = ["wl", "set", "P", "G", "Lp", "N", "impl", "median_ms", "p20_ms", "p80_ms", "tok_per_s", "ms_per_step",
           "x_hf", "x_gptfast", "x_reprefill", "frac_shared", "frac_unshared", "mem_mib", "cold_s", "agree", "status"]
CSV_COLUMNS = COLUMNS[:-1] + ["model", "dtype", "gen_tokens", "steps", "floor_shared_s", "floor_unshared_s",
                              "warmup", "reps", "status"]


@dataclass(frozen=True)
class Workload:
    model: dict  # ModelArgs fields
    model_name: str
    prompt_len: int
    new_tokens: int  # N response positions (the cap in EOS mode)
    groups: tuple[int, ...]
    prompts: tuple[int, ...]
    layout: MultiStepLayout | None = None  # w2: forced action tokens
    eos_id: int | None = None  # w3: EOS mode


def _vwm(preset: str, vocab: int) -> dict:
    return {**vars(ModelArgs.from_name(preset, vocab_size=vocab))}


SHAPES = {
    "gpu": {
        "w1": Workload(_vwm("vwm-s", 4633), "vwm-s", 1333, 320, (16,), (1, 8, 32, 128)),
        "w2": Workload(_vwm("vwm-s", 9008), "vwm-s", 1373, 651, (16,), (8, 32), layout=MultiStepLayout()),
        "w3": Workload(QWEN2_1_5B, "qwen2-1.5b", 512, 1024, (5, 16), (8,), eos_id=QWEN2_EOS),
    },
    "cpu": {
        "w1": Workload(_vwm("vwm-tiny", 4633), "vwm-tiny", 64, 32, (4,), (1, 4)),
        "w2": Workload(_vwm("vwm-tiny", 9008), "vwm-tiny", 64, 36, (4,), (1, 4),
                       layout=MultiStepLayout(tokens_per_frame=8, future_frames=3, action_dims=4)),
        "w3": Workload(QWEN2_TINY, "qwen2-tiny", 64, 32, (4,), (1, 4), eos_id=QWEN2_EOS),
    },
}


# ---- helpers ---------------------------------------------------------------------------------------------
def attn_unavailable(attn: str, device) -> str | None:
    """Why ``attn_impl=attn`` cannot run on ``device`` (None when it can): a 1-token cache is allocated."""
    try:
        CACHE_IMPLS[attn].allocate(1, 1, 1, 1, 1, 1, 2, device=device)
    except RuntimeError as err:
        return (str(err).splitlines() or [""])[0][:160]
    return None


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def _status(err: BaseException) -> str:
    if _is_oom(err):
        return "oom"
    first_line = (str(err).splitlines() or [""])[0][:120]
    return f"error: {type(err).__name__}: {first_line}"


def count_generated(tokens: torch.Tensor, eos_id: int | None, forced: torch.Tensor | None = None) -> int:
    """Sampled tokens of [B, N] outputs: positions not forced, up to and including each row's first EOS."""
    B, N = tokens.shape
    per_pos = torch.ones(N, dtype=torch.bool, device=tokens.device) if forced is None else ~forced.to(tokens.device)
    if eos_id is None:
        return int(per_pos.sum()) * B
    hit = tokens == eos_id
    first = torch.where(hit.any(1), hit.int().argmax(1), torch.full((B,), N, device=tokens.device))  # [B]
    live = torch.arange(N, device=tokens.device).unsqueeze(0) <= first.unsqueeze(1)  # [B, N]
    return int((live & per_pos).sum())


# ---- inputs and models ---------------------------------------------------------------------------------------
@dataclass
class Inputs:
    prompts: torch.Tensor  # [P, Lp] int64
    forced_tokens: torch.Tensor | None  # [P, N]
    forced_mask: torch.Tensor | None  # [N] bool


def make_inputs(wl: Workload, P: int, device, seed: int, prompt_len: int | None = None) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, wl.model["vocab_size"], (P, prompt_len or wl.prompt_len), generator=gen)
    forced_tokens = forced_mask = None
    if wl.layout is not None:
        lay = wl.layout
        bins = torch.randint(0, lay.action_bins, (P, lay.num_actions, lay.action_dims), generator=gen)
        forced_tokens, forced_mask = lay.forced(bins)
        forced_tokens, forced_mask = forced_tokens.to(device), forced_mask.to(device)
    return Inputs(prompts.to(device), forced_tokens, forced_mask)


def build_model(wl: Workload, dtype: torch.dtype, device, seed: int) -> Transformer:
    torch.manual_seed(seed)
    with torch.device(device):
        model = Transformer(ModelArgs(**wl.model))
    return model.to(dtype).eval().requires_grad_(False)


def build_hf(model: Transformer, device):
    """An HF LlamaForCausalLM / Qwen2ForCausalLM with our model's config and weights (copied), eval mode."""
    from rlvr_world.testing import prepare_torchvision

    prepare_torchvision()  # transformers imports torchvision, whose CUDA wheel fails beside a CPU torch
    import transformers

    transformers.logging.set_verbosity_error()
    dtype = model.lm_head_weight.dtype
    cfg = hf_config_from_args(model.args, dtype)
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    with torch.device(device):
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {ours_to_hf(k): v for k, v in model.state_dict().items()
             if not (model.args.tie_embeddings and k == "output.weight")}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (model.args.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"our weights do not map onto the HF model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    if model.args.tie_embeddings:
        hf.tie_weights()
    return hf.eval().requires_grad_(False)


# ---- implementations: each returns a no-argument call -> tokens [P*G, N] --------------------------------------
def ours_call(model, inp: Inputs, wl: Workload, G: int, N: int, attn: str, temperature: float, seed: int):
    kw = {"group_size": G, "max_new_tokens": N, "temperature": temperature, "seed": seed, "attn_impl": attn,
          "eos_id": wl.eos_id}
    if inp.forced_mask is not None:
        kw.update(forced_tokens=inp.forced_tokens, forced_mask=inp.forced_mask)
    return lambda: generate(model, inp.prompts, **kw).tokens


def gptfast_sample(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """gpt-fast's sampler without top-k: softmax(logits / T), argmax(probs / Exp(1)); greedy at T = 0."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    q = torch.empty_like(probs).exponential_(1)
    return torch.argmax(probs / q, dim=-1)


def gptfast_call(model, inp: Inputs, wl: Workload, G: int, N: int, temperature: float, seed: int,
                 compiled: bool, device):
    """gpt-fast's loop: per-row static cache, the prompts prefilled G times, one decode step per token."""
    P, Lp = inp.prompts.shape
    B, eos = P * G, wl.eos_id
    segs = forced_runs(inp.forced_mask, N)

    def step(cache, tok, pos):  # tokens [B], positions [B] -> next tokens [B]
        return gptfast_sample(model.decode_step(tok, pos, cache), temperature)

    if compiled:
        torch._dynamo.reset()
        mode = "reduce-overhead" if device.type == "cuda" else None
        compiled_step = torch.compile(step, fullgraph=True, mode=mode)

        def step(cache, tok, pos):  # a CUDA-graph output is overwritten by the next replay: copy it (gpt-fast)
            return compiled_step(cache, tok, pos).clone()

    # allocated once and reused by every call, as gpt-fast's setup_caches (stale slots are never read)
    cache = model.new_cache(B, Lp + N)
    if compiled:
        torch._dynamo.mark_static_address(cache.k)
        torch._dynamo.mark_static_address(cache.v)

    def call():
        torch.manual_seed(seed)
        with torch.inference_mode():
            x = inp.prompts.repeat_interleave(G, dim=0)  # [B, Lp]: every sample prefills its own copy
            first = gptfast_sample(model.prefill(x, cache), temperature)  # [B]
            tokens = torch.full((B, N), 0 if eos is None else eos, dtype=torch.int64, device=x.device)
            done = torch.zeros(B, dtype=torch.bool, device=x.device) if eos is not None else None
            nxt, pend = first, None  # nxt: the sampled token of position t (not yet in the cache); pend: (s, e)
            for s, e, forced in segs:
                if forced:
                    run = inp.forced_tokens[:, s:e].repeat_interleave(G, dim=0)
                    tokens[:, s:e] = run if done is None else torch.where(done.unsqueeze(1), eos, run)
                    pend = (pend[0] if pend else s, e)
                    continue
                for t in range(s, e):
                    if t > 0:
                        if pend is not None and pend[1] - pend[0] > 1:  # sampled token + forced run: one forward
                            a, b = pend
                            pos = (Lp + torch.arange(a, b, device=x.device)).expand(B, b - a)
                            h = model.hidden_states(tokens[:, a:b], positions=pos, cache=cache)
                            nxt = gptfast_sample(model.output(h[:, -1]), temperature)
                        else:
                            pos = torch.full((B,), Lp + t - 1, dtype=torch.int64, device=x.device)
                            nxt = step(cache, tokens[:, t - 1].clone(), pos)
                    tok = nxt
                    if done is not None:
                        tok = torch.where(done, eos, tok)
                        done |= tok == eos
                    tokens[:, t] = tok
                    pend = (t, t + 1)
                    if done is not None and bool(done.all()):
                        return tokens.clone()
            return tokens.clone()

    return call


def hf_call(hf, inp: Inputs, wl: Workload, G: int, N: int, temperature: float, seed: int, static: bool):
    _P, Lp = inp.prompts.shape
    greedy = temperature == 0
    ids = inp.prompts.repeat_interleave(G, dim=0) if greedy else inp.prompts  # greedy: no num_return_sequences
    kw = {"do_sample": not greedy, "max_new_tokens": N, "num_return_sequences": 1 if greedy else G,
              "eos_token_id": wl.eos_id, "pad_token_id": 0 if wl.eos_id is None else wl.eos_id,
              "attention_mask": torch.ones_like(ids)}
    if not greedy:
        kw.update(temperature=temperature, top_k=0, top_p=1.0)
    if wl.eos_id is None:
        kw["min_new_tokens"] = N
    if static:
        kw["cache_implementation"] = "static"

    def call():
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = hf.generate(ids, **kw)[:, Lp:]  # [P*G, <= N]
        if out.shape[1] < N:  # every row finished early: pad as ours does
            out = torch.cat([out, out.new_full((out.shape[0], N - out.shape[1]), wl.eos_id or 0)], dim=1)
        return out

    return call


def reprefill_call(model_or_hf, inp: Inputs, wl: Workload, G: int, N: int, temperature: float, seed: int,
                   use_hf: bool):
    """The reference's multi-step protocol: each turn re-runs the whole sequence, then samples its frame."""
    P, _Lp = inp.prompts.shape
    segs = forced_runs(inp.forced_mask, N)
    greedy = temperature == 0

    def sample_turn(seq, g, n, turn):
        if use_hf:
            ids = seq.repeat_interleave(g, dim=0) if greedy else seq
            kw = {"do_sample": not greedy, "max_new_tokens": n, "min_new_tokens": n,
                  "num_return_sequences": 1 if greedy else g,
                      "eos_token_id": None, "pad_token_id": 0, "attention_mask": torch.ones_like(ids)}
            if not greedy:
                kw.update(temperature=temperature, top_k=0, top_p=1.0)
            with torch.inference_mode():
                return model_or_hf.generate(ids, **kw)[:, seq.shape[1]:]
        return generate(model_or_hf, seq, group_size=g, max_new_tokens=n, temperature=temperature,
                        seed=seed + turn).tokens

    def call():
        torch.manual_seed(seed)
        seq, turn, pieces = inp.prompts, 0, []
        for s, e, forced in segs:
            if forced:
                piece = inp.forced_tokens[:, s:e].repeat_interleave(G, dim=0)
                if seq.shape[0] != P * G:  # forced tokens before any sampled turn
                    seq = seq.repeat_interleave(G, dim=0)
            else:
                piece = sample_turn(seq, G if turn == 0 else 1, e - s, turn)  # [P*G, e - s]
                if turn == 0:
                    seq = seq.repeat_interleave(G, dim=0)
                turn += 1
            seq = torch.cat([seq, piece], dim=1)
            pieces.append(piece)
        return torch.cat(pieces, dim=1)

    return call


# ---- roofline ---------------------------------------------------------------------------------------------------
def decode_forwards(inp: Inputs, N: int, steps: int) -> list[int]:
    """Response offsets t of the decode forwards, one per sampled position after the first (whose logits come
    from the prefill); the forward giving position t's logits reads the KV of Lp + t tokens. A forced run is
    appended by the forward of the sampled position after it (with the token before it), so it adds none."""
    sampled = [t for s, e, forced in forced_runs(inp.forced_mask, N) if not forced for t in range(s, e)]
    return [t for t in sampled[:steps] if t >= 1]


def floors(model: Transformer, wl: Workload, inp: Inputs, G: int, N: int, steps: int, device):
    """(shared, unshared) seconds: bytes every decode forward must read / HBM bandwidth (None off known GPUs)."""
    tbps = _harness.peak_tbps(device)
    if tbps is None:
        return None, None
    a = model.args
    itemsize = model.lm_head_weight.dtype.itemsize
    params = {id(p): p for p in model.parameters()}
    embed = model.tok_embeddings.weight
    weights = sum(p.numel() for p in params.values() if a.tie_embeddings or p is not embed) * itemsize
    kv_tok = 2 * a.n_layers * a.n_kv_heads * a.head_dim * itemsize
    P, Lp = inp.prompts.shape
    B = P * G
    ts = decode_forwards(inp, N, steps)
    shared = sum(weights + (P * Lp + B * t) * kv_tok for t in ts)
    unshared = sum(weights + B * (Lp + t) * kv_tok for t in ts)
    return shared / (tbps * 1e12), unshared / (tbps * 1e12)


# ---- gate ------------------------------------------------------------------------------------------------------
def gate(wl: Workload, impls: list[str], device, args) -> tuple[dict[str, str], dict[str, float]]:
    """Greedy tokens of ours vs the gpt-fast loop (must be equal) and vs the other eager impls (agreement)."""
    model = build_model(wl, torch.float32, device, args.seed)
    inp = make_inputs(wl, GATE_PROMPTS, device, args.seed + 1)
    N = wl.new_tokens if wl.layout is not None else min(args.max_new or wl.new_tokens, GATE_NEW)
    G, agree = GATE_GROUP, {}
    ref = ours_call(model, inp, wl, G, N, "eager", 0.0, args.seed)()
    attns = [a for a in CACHE_IMPLS if a != "eager" and f"ours:{a}" in impls and attn_unavailable(a, device) is None]
    calls = {a: ours_call(model, inp, wl, G, N, a, 0.0, args.seed) for a in attns}
    calls["gptfast"] = gptfast_call(model, inp, wl, G, N, 0.0, args.seed, False, device)
    hf = None
    for impl in impls:
        if impl in ("hf", "reprefill_hf") or (impl == "hf_static" and device.type != "cuda"):
            hf = hf or build_hf(model, device)
            if impl == "reprefill_hf":
                calls[impl] = reprefill_call(hf, inp, wl, G, N, 0.0, args.seed, True)
            else:
                calls[impl] = hf_call(hf, inp, wl, G, N, 0.0, args.seed, impl == "hf_static")
        elif impl == "reprefill":
            calls[impl] = reprefill_call(model, inp, wl, G, N, 0.0, args.seed, False)
    for name, call in calls.items():
        try:
            out = call()
            agree[name] = float((out.to(ref.device) == ref).float().mean()) if out.shape == ref.shape else 0.0
        except Exception as err:  # noqa: BLE001 - one baseline's failure must not end the gate
            print(f"[gate {wl.model_name}] {name}: {_status(err)}", file=sys.stderr)
    agree["ours:eager"] = 1.0
    for a in attns:
        agree[f"ours:{a}"] = agree.pop(a, None)
    del model, hf
    _harness.free_memory(device)
    fails = {}
    if agree.get("gptfast") != 1.0:
        fails = {f"ours:{a}": f"greedy tokens differ from the gpt-fast loop (agree {agree.get('gptfast')})"
                 for a in CACHE_IMPLS}
    for a in attns:
        if agree.get(f"ours:{a}") != 1.0:
            fails.setdefault(f"ours:{a}", f"greedy tokens differ from attn_impl eager (agree {agree.get(f'ours:{a}')})")
    return fails, agree


# ---- running -----------------------------------------------------------------------------------------------------
def run_row(call, wl: Workload, inp: Inputs, model, G: int, N: int, device, args, row: dict, compiled: bool,
            build_s: float, base_bytes: int | None) -> None:
    """Cold call, warm-up, timed calls, peak memory; fills ``row``. ``build_s`` (making ``call``, e.g. a cache
    allocated once) is added to the cold start; memory is counted from ``base_bytes`` (allocated before it)."""
    _harness.sync(device)
    start = time.perf_counter()
    out = call()
    _harness.sync(device)
    cold = time.perf_counter() - start + build_s
    gen_tokens = count_generated(out, wl.eos_id, inp.forced_mask)
    if wl.eos_id is None:
        steps = N - (0 if inp.forced_mask is None else int(inp.forced_mask.sum()))
    else:
        steps = _steps_run(out, wl.eos_id)
    del out
    slow = cold > SLOW_CALL_S[device.type] and not compiled  # compiled: the 2nd call may still record graphs
    warmup = 0 if slow else max(args.warmup - 1, 0)
    reps = min(args.reps, 3) if slow else args.reps
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timing = _harness.time_fn(call, warmup=warmup, reps=reps, device=device)
    mem = torch.cuda.max_memory_allocated(device) - base_bytes if base_bytes is not None else None
    sec = timing.median_ms * 1e-3
    fs, fu = floors(model, wl, inp, G, N, steps, device)
    row.update(median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms, tok_per_s=gen_tokens / sec,
               ms_per_step=timing.median_ms / max(steps, 1), frac_shared=fs / sec if fs else None,
               frac_unshared=fu / sec if fu else None, floor_shared_s=fs, floor_unshared_s=fu,
               mem_mib=mem / 2**20 if mem is not None else None, cold_s=cold, gen_tokens=gen_tokens, steps=steps,
               warmup=1 + warmup, reps=reps, status="ok")


def _steps_run(tokens: torch.Tensor, eos_id: int) -> int:
    """Sampled positions run in EOS mode: up to the last row's first EOS (the loop stops when all are done)."""
    B, N = tokens.shape
    hit = tokens == eos_id
    first = torch.where(hit.any(1), hit.int().argmax(1), torch.full((B,), N - 1, device=tokens.device))
    return int(first.max()) + 1


def add_speedups(rows: list[dict]) -> None:
    ok = {r["impl"]: r["median_ms"] for r in rows if r.get("status") == "ok"}
    for r in rows:
        if r.get("status") != "ok":
            continue
        for col, base in (("x_hf", "hf"), ("x_gptfast", "gptfast"), ("x_reprefill", "reprefill")):
            if base in ok and r["impl"] != base:
                r[col] = ok[base] / r["median_ms"]


def bench_workload(set_name: str, name: str, wl: Workload, device, args) -> list[dict]:
    impls = [f"ours:{a}" for a in args.attn_impls] + [b for b in args.baselines if b in APPLIES[name]]
    dtype = PRECISIONS[args.precision_name]
    N = min(args.max_new, wl.new_tokens) if args.max_new and wl.layout is None else wl.new_tokens
    fails, agree = {}, {}
    if args.check:
        try:
            fails, agree = gate(wl, impls, device, args)
        except Exception as err:  # noqa: BLE001 - a gate that cannot run fails our rows, not the run
            fails = {f"ours:{a}": f"gate {_status(err)}" for a in CACHE_IMPLS}
        print(f"[{name}] gate: {fails or 'ok'}; agree {agree}", file=sys.stderr)
    model = build_model(wl, dtype, device, args.seed)
    hf = None
    rows = []
    for P in args.prompts or wl.prompts:
        for G in args.groups or wl.groups:
            inp = make_inputs(wl, P, device, args.seed + 1)
            base = {"wl": name, "set": set_name, "model": wl.model_name, "dtype": args.precision_name, "P": P, "G": G,
                    "Lp": wl.prompt_len, "N": N}
            group_rows = []
            for impl in impls:
                row = {**base, "impl": impl, "agree": agree.get(impl)}
                group_rows.append(row)
                why = attn_unavailable(impl[5:], device) if impl.startswith("ours:") else None
                if why is not None:
                    row["status"] = f"skipped: {why}"
                    continue
                if impl in fails:
                    row["status"] = f"failed: {fails[impl]}"
                    continue
                try:
                    if impl in ("hf", "hf_static", "reprefill_hf"):
                        hf = hf or build_hf(model, device)
                    _harness.sync(device)
                    base_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
                    start = time.perf_counter()
                    if impl.startswith("ours:"):
                        call = ours_call(model, inp, wl, G, N, impl.split(":", 1)[1], args.temperature, args.seed)
                    elif impl in ("gptfast", "gptfast_compile"):
                        call = gptfast_call(model, inp, wl, G, N, args.temperature, args.seed,
                                            impl == "gptfast_compile", device)
                    elif impl == "reprefill":
                        call = reprefill_call(model, inp, wl, G, N, args.temperature, args.seed, False)
                    else:
                        call = (reprefill_call(hf, inp, wl, G, N, args.temperature, args.seed, True)
                                if impl == "reprefill_hf" else
                                hf_call(hf, inp, wl, G, N, args.temperature, args.seed, impl == "hf_static"))
                    compiled = impl == "gptfast_compile" or (impl == "hf_static" and device.type == "cuda")
                    _harness.sync(device)
                    run_row(call, wl, inp, model, G, N, device, args, row, compiled, time.perf_counter() - start,
                            base_bytes)
                except Exception as err:  # noqa: BLE001 - one implementation's failure must not end the run
                    row["status"] = _status(err)
                finally:
                    call = None
                    _harness.free_memory(device)
                timing = f", {row['median_ms']:.1f} ms" if row.get("median_ms") is not None else ""
                print(f"[{name} {wl.model_name} P={P} G={G} Lp={wl.prompt_len} N={N}] {impl}: {row.get('status')}"
                      f"{timing}", file=sys.stderr)
            add_speedups(group_rows)
            rows += group_rows
    del model, hf
    _harness.free_memory(device)
    return rows


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description="Time rollouts (rlvr_world.rollout.generate: prefill once per group, shared-prefix KV cache, "
                    "cascade decode attention, forced action tokens) beside HF generate(num_return_sequences=G) "
                    "(dynamic cache; static cache + torch.compile), a gpt-fast-style static-cache loop (one row "
                    "per sample, no prefix sharing; optionally compiled) and, for multi-step video, the "
                    "re-prefill-every-turn protocol. Workloads: w1 single-step video (vwm-s, prompt 1,333, "
                    "320 new, G 16), w2 multi-step (prompt 1,373, 7 x (80 sampled + 13 forced)), w3 text "
                    "(Qwen2-1.5B shape, prompt 512, <= 1,024 new with EOS, G 5/16). A greedy fp32 gate "
                    "checks ours == the gpt-fast loop token for token first. Prints a table and appends CSV "
                    "rows tagged with device, versions, git SHA.",
        epilog="Examples: OMP_NUM_THREADS=1 python benchmarks/bench_rollout.py --device cpu --shapes cpu --reps 2 | "
               "python benchmarks/bench_rollout.py  (on a GPU: paper-scale shapes, bf16, every baseline)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu",
                   help="where to run (default: cuda if available, else cpu)")
    p.add_argument("--shapes", choices=list(SHAPES), default=None,
                   help="gpu (paper-scale shapes: vwm-s / Qwen2-1.5B shape) or cpu (vwm-tiny / a 2-layer Qwen2-"
                        "shaped model, prompt 64, 32 new, G 4); default gpu on cuda, cpu on cpu")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma list among w1 (single-step video), w2 (multi-step interactive), w3 (text) "
                        "(default all)")
    p.add_argument("--prompts", default=None,
                   help="comma list of prompt counts P for every selected workload (default per workload: gpu "
                        "w1 1,8,32,128, w2 8,32, w3 8; cpu 1,4)")
    p.add_argument("--groups", default=None,
                   help="comma list of group sizes G for every selected workload (default: gpu w1/w2 16, w3 5,16; "
                        "cpu 4)")
    p.add_argument("--baselines", default=None,
                   help=f"comma list among {','.join(BASELINES)} (each runs where it applies: hf/hf_static on "
                        "w1/w3, reprefill/reprefill_hf on w2, gptfast* everywhere); default cuda: all; cpu: "
                        "hf,gptfast,reprefill,reprefill_hf; 'none' for ours only")
    p.add_argument("--attn-impls", default=None,
                   help=f"our engine's attn_impl values to time (rollout.CACHE_IMPLS: {','.join(CACHE_IMPLS)}; "
                        "default every one that runs on the device; a named one that cannot gets a 'skipped' row)")
    p.add_argument("--max-new", type=int, default=None,
                   help="cap on new tokens for w1/w3 (default the workload's: 320 / 1,024; w2's length is its "
                        "layout's)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="weights and KV cache dtype (auto: bf16 on cuda, fp32 on cpu); the gate always runs fp32")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the timed calls (default 1)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed calls per row (default 5 on cuda, 3 on cpu; min(reps, 3) when the cold call took more "
                        "than 2 s on cpu, 5 s on cuda)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls first, the cold call included (default 2 on cuda, 1 on cpu)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="greedy fp32 gate before timing (default on; see the module docstring)")
    p.add_argument("--seed", type=int, default=0, help="weight, input and sampling seed (default 0)")
    p.add_argument("--csv", "--out", dest="csv", type=Path, default=None,
                   help="CSV to append to (default benchmarks/results/rollout_<device>.csv)")
    args = p.parse_args(argv)
    device = _harness.resolve_common(args, p, stem="rollout", reps=(5, 3), warmup=(2, 1))
    args.shapes = args.shapes or ("gpu" if device.type == "cuda" else "cpu")
    args.workloads = _harness.parse_choices(args.workloads, WORKLOADS, "workload(s)", p)
    args.prompts = _harness.parse_ints(args.prompts, "--prompts", p) if args.prompts else None
    args.groups = _harness.parse_ints(args.groups, "--groups", p) if args.groups else None
    if args.baselines is None:
        args.baselines = list(BASELINES) if device.type == "cuda" else ["hf", "gptfast", "reprefill", "reprefill_hf"]
    elif args.baselines == "none":
        args.baselines = []
    else:
        args.baselines = _harness.parse_choices(args.baselines, BASELINES, "baseline(s)", p)
    if args.attn_impls is None:
        args.attn_impls = [a for a in CACHE_IMPLS if attn_unavailable(a, device) is None]
    else:
        args.attn_impls = _harness.parse_choices(args.attn_impls, CACHE_IMPLS, "attn impl(s)", p)
    if args.max_new is not None and args.max_new < 1:
        p.error("--max-new must be >= 1")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        p.error("--temperature must be a finite number >= 0")
    args.precision_name = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    tags = _harness.announce(device)
    rows = []
    for name in args.workloads:
        wl_rows = bench_workload(args.shapes, name, SHAPES[args.shapes][name], device, args)
        _harness.write_rows(args.csv, [{c: r.get(c) for c in CSV_COLUMNS} for r in wl_rows], device=device)
        rows += wl_rows
    title = (f"Rollouts on {tags['device']} (torch {tags['torch']}, git {tags['git_sha']}); random init, "
             f"{args.precision_name}, temperature {args.temperature:g}; median of the whole call")
    _harness.show_results(rows, COLUMNS, device, title, args.csv)
    return rows


if __name__ == "__main__":
    main()
