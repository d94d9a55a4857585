"""The rollout engine: batched, KV-cached group sampling of G samples per prompt (``generate``).

What it decides:

* **Prefill once per group.** The P prompts (all of one length Lp) are prefilled once into a
  ``SharedPrefixKVCache``: the prompt's KV is stored once per group ([n_layers, P, Hkv, Lp, D]) and each of
  the P * G rows keeps KV only for its own generated tokens ([n_layers, P*G, Hkv, N, D]); decode attention
  reads [group prefix ‖ own suffix] and merges the two parts by log-sum-exp (cascade). Rows p*G .. p*G+G-1
  belong to prompt p. The cache is allocated once, before any work, at its full size; its byte count
  (``cache_bytes``) is checked against ``max_cache_bytes`` first and a ValueError says how many prompts
  per micro-batch would fit. With ``prompts_per_batch`` the prompts run in chunks that reuse one cache
  (views of it for a shorter last chunk).
* **RNG keyed on the sequence, never on the batch.** Response position t (0-based, counted from the first
  generated token) of sample g of prompt p draws from ``ops.sample_tokens``' Philox stream at

      offset = (sequence_id[p] * G + g) << 32 | t          seed = the ``seed`` argument

  (``sequence_id`` defaults to the prompt's index p; the trainer passes global prompt ids). So the same
  (prompt id, sample, seed) gives the same tokens whatever the batch composition, the chunking or the
  device step; ``(sequence_id + 1) * G`` must stay below 2^31 so the offset is a non-negative int64.
  Forced positions consume no random numbers, but keep their t, so streams never shift.
* **Forced tokens** (multi-step video: injected action tokens). Where ``forced_mask[t]`` is True the token
  is ``forced_tokens[p, t]`` for all G rows of prompt p (or what ``forced_fn`` returns, per row), with
  log-prob 0 and mask False. Tokens enter the cache lazily: a decided token is appended only when the next
  sampled position needs logits, so a forced run of k tokens (and the sampled token just before it) is
  appended by ONE forward of k (+ 1) tokens into the suffix cache -- a "prefill of 13 action tokens",
  never a re-prefill of the history; the logits after its last token feed the next sampled position. A
  trailing forced run is written to the output but never run through the model (nothing reads it).
* **Policy in the loop** (``forced_fn``): ``forced_fn(t, generated [P*G, t]) -> [P*G, k]`` is called when
  the forced run [t, t + k) starts, with every token decided so far, instead of reading ``forced_tokens``
  (see ``interactive.py``). With ``prompts_per_batch`` it is called once per chunk with that chunk's rows.
* **Fixed-length mode** (``eos_id=None``, video) runs exactly ``max_new_tokens`` positions; every sampled
  token has mask True. **EOS mode** (text): a row that samples ``eos_id`` is finished; the EOS token keeps
  mask True (it was sampled), later positions get ``eos_id`` as padding with log-prob 0 and mask False
  (forced positions too). The dynamic loop ends as soon as every row is finished (one host sync per sampled
  step); the static loop asks only every ``eos_check_every`` (16) sampled steps and before each forced run,
  finished rows being padded in between, so the outputs are the same.
* **Log-probs** are ``ops.sample_tokens``' exact log-probs of the distribution sampled from (after
  temperature, top-k, top-p), returned in fp32: the trainer's recomputation with the same truncation mask
  (``ops.reference.sampling_mask``) matches them. ``temperature=0`` is greedy with log-prob 0.
* **Two loops, the same outputs** (``cuda_graphs``). The *dynamic* loop (``False``; "auto" off CUDA) slices
  the output tensors with Python step indices. The *static* loop (``graphs.py``; "auto" on CUDA, True, or
  "static" to run it eagerly on any device) keeps every per-step value in persistent device buffers
  (current token, positions, RNG offsets ``row_base + t``, the step index, ``finished``) advanced in place by
  step functions with no host sync and no branching on data: the one-token step (``decode_step`` +
  ``sample_tokens`` + ``index_copy_`` of token / log-prob / mask at the device column index) and one
  forced-run step per run length (one forward of the run's k tokens plus the sampled token before it, then
  the next sample: 14 tokens for the video layout). On CUDA each is captured once per shape bucket (prompts
  per micro-batch, G, Lp, N, cache class, dtype) and replayed; buckets and their graphs are cached per
  model, so a second call with the same shapes captures nothing (``GenerateStats.capture_s`` = 0). The
  sampling scalars (temperature, top-k, top-p, seed, eos_id) are baked into the graphs: keep the seed and
  vary ``sequence_ids`` between calls to reuse them. A bucket keeps its KV cache allocated between calls
  (``graphs.clear_graphs(model)`` frees it). A short last micro-batch is padded to the bucket's prompt count
  (its last prompt repeated, rows dropped), so one set of graphs serves all micro-batches. A failed capture
  raises under True and falls back to eager static steps with one ``CudaGraphWarning`` under "auto". On the
  CPU the tests run the static steps eagerly ("static") and compare them token for token with the dynamic
  loop; bitwise where the shapes are the same (a padded micro-batch may differ in a log-prob's last bit).
* **Chunked prefill**: the prompts of a micro-batch are prefilled ``prefill_chunk`` at a time, each chunk
  writing into a view of the prefix cache (default ``prefill_chunk_size``: the eager attention's scores and
  the MLP's activations within ``PREFILL_BYTES`` = 1 GiB, 4 prompts of 1,333 tokens for vwm-s); the head runs
  once on the gathered last hidden states, so the logits equal the one-shot prefill's (bitwise on the CPU).
  The prefill is never captured (one forward per micro-batch).
* **Stats**: ``return_stats=True`` also returns ``GenerateStats`` (mode, prefill_s, capture_s -- the
  warm-up execution and capture of each newly captured step --, decode_s, steps, graphs_captured,
  graphs_replayed), timed with a device sync at each boundary.
* Runs under ``torch.inference_mode()``, in the model's dtype and on its device (prompts are moved there);
  the returned tensors are ordinary (not inference) tensors, so the trainer can use them under autograd.

``attn_impl`` picks the cache class whose ``attend`` runs the decode attention (``CACHE_IMPLS``: "eager" =
``SharedPrefixKVCache``; "triton" = ``TritonSharedPrefixKVCache``, whose one-token steps run
``kernels/cascade_decode.py``, captured like any other step); ``sample_impl`` is passed to
``ops.sample_tokens``.

Departures from the reference (vLLM 0.6.3 / HF generate): the prompt is prefilled once per group, not G
times; multi-step turns append their action tokens instead of re-prefilling the whole sequence; sampling
randomness is reproducible per sequence rather than per batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlvr_world.models.kv_cache import KVCache, SharedPrefixKVCache, TritonSharedPrefixKVCache
from rlvr_world.ops import sample_tokens
from rlvr_world.rl.types import Rollout

from . import graphs

__all__ = ["CACHE_IMPLS", "GenerateStats", "Rollout", "cache_bytes", "forced_runs", "generate",
           "max_prompts_per_batch", "prefill_chunk_size"]

#: attn_impl -> the SharedPrefixKVCache class whose ``attend`` computes the decode attention
CACHE_IMPLS: dict[str, type[SharedPrefixKVCache]] = {"eager": SharedPrefixKVCache,
                                                   "triton": TritonSharedPrefixKVCache}

ForcedFn = Callable[[int, torch.Tensor], torch.Tensor]

_GIB = 2**30


# ---------------------------------------------------------------------------------------------------- memory
def cache_bytes(model, num_prompts: int, group_size: int, prompt_len: int, max_new_tokens: int,
                dtype: torch.dtype | None = None) -> int:
    """Bytes of the shared-prefix KV cache: k and v of every layer, prefix P * Lp + suffix P * G * N tokens.

    >>> from rlvr_world.models import Transformer
    >>> with torch.device("meta"):                              # shapes only, no weights
    ...     m = Transformer.from_name("vwm-s")                   # 12 layers, 12 kv heads of 64, fp32
    >>> cache_bytes(m, 1, 16, 1333, 320) == 2 * 12 * 12 * 64 * 4 * (1333 + 16 * 320)
    True
    """
    a = model.args
    dtype = dtype or model.lm_head_weight.dtype
    per_token = 2 * a.n_layers * a.n_kv_heads * a.head_dim * dtype.itemsize
    return per_token * num_prompts * (prompt_len + group_size * max_new_tokens)


def max_prompts_per_batch(model, group_size: int, prompt_len: int, max_new_tokens: int, max_bytes: int,
                          dtype: torch.dtype | None = None) -> int:
    """How many prompts' caches fit in ``max_bytes`` (0 when not even one does)."""
    return max(0, int(max_bytes) // cache_bytes(model, 1, group_size, prompt_len, max_new_tokens, dtype))


def _default_max_bytes(device: torch.device) -> int | None:
    """CUDA: the free memory minus a margin (10% of the device, at least 1 GiB) for weights' working set,
    activations and logits; elsewhere no limit."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return max(0, free - max(_GIB, total // 10))


#: the budget of the eager prefill's working memory per chunk of prompts (``prefill_chunk_size``)
PREFILL_BYTES = 2**30


def prefill_chunk_size(model, prompt_len: int, max_bytes: int = PREFILL_BYTES) -> int:
    """Prompts per prefill chunk so that the eager prefill's working set stays within ``max_bytes``.

    Per prompt of Lp tokens the largest live tensors of one layer are the attention scores and probabilities
    (fp32 [n_heads, Lp, Lp] each, materialised by the masked attention) and the MLP's gate, up and product
    (fp32-sized [Lp, intermediate_size] each): Lp * (2 * n_heads * Lp + 3 * intermediate_size) * 4 bytes.
    For vwm-s at Lp = 1,333 that is ~0.23 GB, so 4 prompts per chunk at the 1 GiB default.

    >>> from rlvr_world.models import Transformer
    >>> with torch.device("meta"):
    ...     m = Transformer.from_name("vwm-s")
    >>> prefill_chunk_size(m, 1333)
    4
    """
    a = model.args
    per_prompt = prompt_len * (2 * a.n_heads * prompt_len + 3 * a.intermediate_size) * 4
    return max(1, int(max_bytes) // per_prompt)


def _fmt_bytes(n: int) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB else f"{n / 2**20:.2f} MiB"


# ---------------------------------------------------------------------------------------------------- checks
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_ids(name: str, x: torch.Tensor, vocab: int) -> None:
    if x.numel() and bool(((x < 0) | (x >= vocab)).any()):
        bad = ((x < 0) | (x >= vocab)).nonzero()[0].tolist()
        raise ValueError(f"{name} must lie in [0, vocab_size={vocab}), got {int(x[tuple(bad)])} at {tuple(bad)}")


def _check_args(model, prompts, group_size, max_new_tokens, temperature, top_k, top_p, seed, forced_tokens,
                forced_mask, forced_fn, eos_id, sequence_ids, prompts_per_batch, attn_impl, cuda_graphs,
                eos_check_every, prefill_chunk):
    a = model.args
    if not (cuda_graphs is True or cuda_graphs is False or cuda_graphs in ("auto", "static")):
        raise ValueError(f'cuda_graphs must be True, False, "auto" or "static", got {cuda_graphs!r}')
    if cuda_graphs is True and model.lm_head_weight.device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, got {model.lm_head_weight.device} "
                         '(cuda_graphs="static" runs the same static steps eagerly)')
    if not _is_int(eos_check_every) or eos_check_every < 1:
        raise ValueError(f"eos_check_every must be an int >= 1, got {eos_check_every!r}")
    if prefill_chunk is not None and (not _is_int(prefill_chunk) or prefill_chunk < 1):
        raise ValueError(f"prefill_chunk must be None or an int >= 1, got {prefill_chunk!r}")
    V = a.vocab_size
    if not isinstance(prompts, torch.Tensor) or prompts.dim() != 2 or prompts.dtype != torch.int64:
        got = f"{_shape(prompts)} {prompts.dtype}" if isinstance(prompts, torch.Tensor) else _shape(prompts)
        raise ValueError(f"prompts must be a 2-D int64 tensor [P, Lp], got {got}")
    P, Lp = prompts.shape
    if P < 1 or Lp < 1:
        raise ValueError(f"prompts must hold at least one prompt of at least one token, got shape {(P, Lp)}")
    _check_ids("prompts", prompts, V)
    if not _is_int(group_size) or group_size <= 0:
        raise ValueError(f"group_size must be an int > 0, got {group_size!r}")
    if not _is_int(max_new_tokens) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be an int > 0, got {max_new_tokens!r}")
    if Lp + max_new_tokens > a.max_seq_len:
        raise ValueError(f"prompt length + max_new_tokens must be <= the model's max_seq_len={a.max_seq_len}, "
                         f"got {Lp} + {max_new_tokens} = {Lp + max_new_tokens}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not _is_int(top_k) or not 0 <= top_k <= V:
        raise ValueError(f"top_k must be an int in [0, vocab_size={V}] (0 = off), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1] (1 = off), got {top_p!r}")
    if not _is_int(seed) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
    N = max_new_tokens
    if forced_mask is not None and (not isinstance(forced_mask, torch.Tensor) or forced_mask.dtype != torch.bool
                                    or forced_mask.shape != (N,)):
        got = f"{_shape(forced_mask)} {forced_mask.dtype}" if isinstance(forced_mask, torch.Tensor) \
            else _shape(forced_mask)
        raise ValueError(f"forced_mask must be a bool tensor of shape ({N},) (max_new_tokens), got {got}")
    if forced_fn is not None:
        if forced_tokens is not None:
            raise ValueError("forced_tokens must be None when forced_fn is given (the callback supplies them), "
                             f"got a tensor of shape {_shape(forced_tokens)}")
        if not callable(forced_fn):
            raise ValueError(f"forced_fn must be callable (step, generated) -> tokens, got {type(forced_fn).__name__}")
        if forced_mask is None:
            raise ValueError("forced_mask must be given with forced_fn (where the callback's tokens go), got None")
    elif forced_tokens is not None:
        if not isinstance(forced_tokens, torch.Tensor) or forced_tokens.shape != (P, N) \
                or forced_tokens.dtype.is_floating_point or forced_tokens.dtype.is_complex \
                or forced_tokens.dtype == torch.bool:
            got = f"{_shape(forced_tokens)} {getattr(forced_tokens, 'dtype', '')}".strip()
            raise ValueError(f"forced_tokens must be an integer tensor of shape ({P}, {N}) (prompts, "
                             f"max_new_tokens), got {got}")
        if forced_mask is None:
            raise ValueError(f"forced_mask must be given with forced_tokens: a bool tensor of shape ({N},), got None")
        _check_ids("forced_tokens (where forced_mask is True)", forced_tokens[:, forced_mask.to(forced_tokens.device)], V)
    elif forced_mask is not None and bool(forced_mask.any()):
        raise ValueError("forced_tokens must be given where forced_mask has True entries (or pass forced_fn), "
                         "got None")
    if eos_id is not None and (not _is_int(eos_id) or not 0 <= eos_id < V):
        raise ValueError(f"eos_id must be None or an int in [0, vocab_size={V}), got {eos_id!r}")
    if sequence_ids is not None:
        if not isinstance(sequence_ids, torch.Tensor) or sequence_ids.shape != (P,) \
                or sequence_ids.dtype.is_floating_point or sequence_ids.dtype == torch.bool:
            got = f"{_shape(sequence_ids)} {getattr(sequence_ids, 'dtype', '')}".strip()
            raise ValueError(f"sequence_ids must be an integer tensor of shape ({P},) (one id per prompt), got {got}")
        lo, hi = int(sequence_ids.min()), int(sequence_ids.max())
        if lo < 0 or (hi + 1) * group_size > 2**31:
            raise ValueError(f"sequence_ids must lie in [0, 2^31 / group_size = {2**31 // group_size}) (the RNG "
                             f"offset is (id * G + g) << 32 | t), got values in [{lo}, {hi}]")
    elif P * group_size > 2**31:
        raise ValueError(f"prompts x group_size must be <= 2^31 (RNG offsets), got {P} x {group_size}")
    if prompts_per_batch is not None and (not _is_int(prompts_per_batch) or prompts_per_batch <= 0):
        raise ValueError(f"prompts_per_batch must be None or an int > 0, got {prompts_per_batch!r}")
    if attn_impl not in CACHE_IMPLS:
        raise ValueError(f"attn_impl must be one of {sorted(CACHE_IMPLS)}, got {attn_impl!r}")


def forced_runs(forced_mask: torch.Tensor | None, n: int) -> list[tuple[int, int, bool]]:
    """Runs of equal forced_mask values: [(start, end, forced)] covering 0 .. n."""
    flags = [False] * n if forced_mask is None else [bool(f) for f in forced_mask.tolist()]
    runs, start = [], 0
    for t in range(1, n + 1):
        if t == n or flags[t] != flags[start]:
            runs.append((start, t, flags[start]))
            start = t
    return runs


# ---------------------------------------------------------------------------------------------------- engine
@dataclass
class _Spec:
    group_size: int
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    eos_id: int | None
    segments: list
    forced_fn: ForcedFn | None
    sample_impl: str
    prefill_chunk: int | None = None
    eos_check_every: int = 16

    def sampling_key(self) -> graphs.SamplingKey:
        return graphs.SamplingKey(self.temperature, self.top_k, self.top_p, self.seed, self.eos_id, self.sample_impl)


@dataclass
class GenerateStats:
    """Where ``generate``'s time went (``return_stats=True``); times in seconds, measured with a device sync at
    each boundary (only when stats are asked for).

    mode: "dynamic" (the eager loop, ``cuda_graphs=False``/CPU), "static" (static buffers, steps run eagerly)
    or "graphs" (static buffers, steps captured and replayed). prefill_s: the prompts' prefills. capture_s:
    the first execution (warm-up, on a side stream) and capture of every step captured in this call -- zero
    on a warm call that reuses its graphs. decode_s: every other step (replays or eager steps). steps: model
    forwards after the prefill (one-token steps and forced-run steps, warm-ups included); graphs_captured /
    graphs_replayed: how many graphs this call captured / replayed.
    """

    mode: str = "dynamic"
    prefill_s: float = 0.0
    capture_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0
    graphs_captured: int = 0
    graphs_replayed: int = 0


def _sync(device: torch.device, on: bool) -> None:
    if on and device.type == "cuda":
        torch.cuda.synchronize(device)


def _prefill(model, cache: SharedPrefixKVCache, prompts: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``model.prefill(prompts, cache)`` in chunks of ``chunk`` prompts, each writing into a view of the prefix
    cache (same results: the prompts are independent, and the head runs once on the [P, H] last hidden states,
    as in the one-shot prefill); logits [P, V] of the prompts' last positions."""
    P, Lp = prompts.shape
    chunk = prefill_chunk_size(model, Lp) if chunk is None else chunk
    if chunk >= P:
        return model.prefill(prompts, cache)
    last = []
    for c0 in range(0, P, chunk):
        c1 = min(P, c0 + chunk)
        view = KVCache(cache.prefix.k[:, c0:c1], cache.prefix.v[:, c0:c1])
        last.append(model.hidden_states(prompts[c0:c1], cache=view)[:, -1])  # [c, H]
    cache.prefix_len = Lp
    return model.output(torch.cat(last))  # [P, V]: one head matmul, of the one-shot prefill's shape


def _append(model, cache: SharedPrefixKVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Append tokens [B, S] at absolute positions [B, S] to the suffix cache; the last position's logits [B, V]."""
    if tokens.shape[1] == 1:
        return model.decode_step(tokens[:, 0], positions[:, 0], cache)
    h = model.hidden_states(tokens, positions=positions, cache=cache)  # [B, S, H]
    return model.output(h[:, -1])  # [B, V]


def _sample(logits: torch.Tensor, offset: torch.Tensor, spec: _Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B] int64, logp [B] of one sampled position; offset [B] int64 on the logits' device."""
    return sample_tokens(logits, temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p, seed=spec.seed,
                         offset=offset, impl=spec.sample_impl)


def _forced_run(spec: _Spec, forced_tokens: torch.Tensor | None, tokens: torch.Tensor, start: int,
                end: int, vocab: int) -> torch.Tensor:
    """The forced tokens [B, end - start] of one run, from the static tensor or the callback."""
    B, k, G = tokens.shape[0], end - start, spec.group_size
    if spec.forced_fn is None:
        return forced_tokens[:, start:end].repeat_interleave(G, dim=0)  # [B, k]
    out = spec.forced_fn(start, tokens[:, :start].clone())
    if not isinstance(out, torch.Tensor) or out.shape != (B, k) or out.dtype.is_floating_point \
            or out.dtype == torch.bool:
        got = f"{_shape(out)} {getattr(out, 'dtype', '')}".strip()
        raise ValueError(f"forced_fn must return an integer tensor of shape ({B}, {k}) (rows, forced run "
                         f"{start}..{end - 1}), got {got}")
    out = out.to(device=tokens.device, dtype=torch.int64)
    _check_ids(f"forced_fn's tokens at step {start}", out, vocab)
    return out


def _row_base(seq_ids: torch.Tensor, G: int, dev: torch.device) -> torch.Tensor:
    """(sequence_id * G + g) << 32 for the P * G rows: [P*G] int64."""
    B = seq_ids.shape[0] * G
    return ((seq_ids.to(dev, torch.int64) * G).unsqueeze(1) + torch.arange(G, device=dev)).reshape(B) << 32


def _generate_chunk(model, cache: SharedPrefixKVCache, prompts: torch.Tensor, seq_ids: torch.Tensor,
                    forced_tokens: torch.Tensor | None, spec: _Spec, out: Rollout, rows: slice,
                    stats: GenerateStats, timed: bool) -> None:
    """The dynamic loop: sample the P_c * G rows of one prompt chunk into out.tokens[rows] etc. (cache sized
    for this chunk)."""
    P, Lp = prompts.shape
    G, N, eos = spec.group_size, spec.max_new_tokens, spec.eos_id
    B, dev = P * G, prompts.device
    tokens, logp, mask = out.tokens[rows], out.logprobs[rows], out.mask[rows]  # views [B, N]
    row_base = _row_base(seq_ids, G, dev)  # [B]
    positions = (Lp + torch.arange(N, device=dev)).expand(B, N)  # [B, N] absolute positions of the response
    finished = torch.zeros(B, dtype=torch.bool, device=dev) if eos is not None else None

    t0 = time.perf_counter()
    logits = _prefill(model, cache, prompts, spec.prefill_chunk).repeat_interleave(G, dim=0)  # [B, V]
    _sync(dev, timed)
    t1 = time.perf_counter()
    stats.prefill_s += t1 - t0
    try:
        _dynamic_loop(model, cache, forced_tokens, spec, tokens, logp, mask, row_base, positions, finished, logits,
                      stats)
    finally:
        _sync(dev, timed)
        stats.decode_s += time.perf_counter() - t1


def _dynamic_loop(model, cache, forced_tokens, spec, tokens, logp, mask, row_base, positions, finished, logits,
                  stats) -> None:
    eos = spec.eos_id
    pend_start, pend_len = 0, 0  # tokens[:, pend_start : pend_start + pend_len] are decided, not yet cached
    for start, end, forced in spec.segments:
        if forced:
            run = _forced_run(spec, forced_tokens, tokens, start, end, model.args.vocab_size)  # [B, k]
            if finished is not None:
                run = torch.where(finished.unsqueeze(1), eos, run)
            tokens[:, start:end] = run
            pend_start, pend_len = (pend_start, pend_len + end - start) if pend_len else (start, end - start)
            continue
        for t in range(start, end):
            if pend_len:
                sl = slice(pend_start, pend_start + pend_len)
                logits = _append(model, cache, tokens[:, sl], positions[:, sl])
                stats.steps += 1
            tok, lp = _sample(logits, row_base + t, spec)  # [B], [B]
            if finished is None:
                mask[:, t] = True
            else:
                live = ~finished
                tok = torch.where(live, tok, eos)
                lp = torch.where(live, lp, torch.zeros_like(lp))
                mask[:, t] = live
                finished |= tok == eos
            tokens[:, t] = tok
            logp[:, t] = lp
            pend_start, pend_len = t, 1
            if finished is not None and bool(finished.all()):
                return


def _pad_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """x [R, ...] padded to n >= R rows by repeating its last row."""
    if x.shape[0] == n:
        return x
    return torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])


def _generate_chunk_static(model, bucket: graphs.StaticDecoder, prompts: torch.Tensor, seq_ids: torch.Tensor,
                           forced_tokens: torch.Tensor | None, spec: _Spec, out: Rollout, rows: slice,
                           stats: GenerateStats, timed: bool, capture: bool, strict: bool) -> None:
    """The static loop (``graphs.py``) for one micro-batch of P_c <= the bucket's prompts; a short last
    micro-batch is padded to the bucket's shape by repeating its last prompt (and sequence id), so one set of
    graphs serves every micro-batch; the padding rows are computed and dropped."""
    P, G = prompts.shape[0], spec.group_size
    B, dev = P * G, prompts.device
    Pb = bucket.key.num_prompts
    bucket.reset(_row_base(_pad_rows(seq_ids, Pb), G, dev), 0 if spec.eos_id is None else spec.eos_id)
    t0 = time.perf_counter()
    logits = _prefill(model, bucket.cache, _pad_rows(prompts, Pb), spec.prefill_chunk)
    logits = logits.repeat_interleave(G, dim=0)  # [B_bucket, V]
    _sync(dev, timed)
    t1 = time.perf_counter()
    stats.prefill_s += t1 - t0
    capture_before = stats.capture_s
    try:
        _static_loop(model, bucket, forced_tokens, spec, B, logits, stats, capture, strict)
    finally:
        _sync(dev, timed)
        stats.decode_s += time.perf_counter() - t1 - (stats.capture_s - capture_before)
    out.tokens[rows] = bucket.tokens[:B]
    out.logprobs[rows] = bucket.logprobs[:B]
    out.mask[rows] = bucket.mask[:B]


def _static_loop(model, bucket: graphs.StaticDecoder, forced_tokens, spec: _Spec, B: int, logits: torch.Tensor,
                 stats: GenerateStats, capture: bool, strict: bool) -> None:
    """Drive the bucket's step functions over the segments; host syncs only every ``eos_check_every`` sampled
    steps (EOS mode), before a forced run in EOS mode, and where ``forced_fn`` needs the tokens."""
    N, eos = spec.max_new_tokens, spec.eos_id
    s = spec.sampling_key()
    unchecked = 0  # sampled columns since the last "all rows finished?" check

    def all_finished() -> bool:
        return bool(bucket.finished[:B].all())

    for start, end, forced in spec.segments:
        if forced:
            if eos is not None and all_finished():
                return
            run = _forced_run(spec, forced_tokens, bucket.tokens[:B], start, end, model.args.vocab_size)  # [B, k]
            run = _pad_rows(run, bucket.B)  # [B_bucket, k]
            if eos is not None:
                run = torch.where(bucket.finished.unsqueeze(1), eos, run)
            bucket.tokens[:, start:end] = run
            if end == N:
                continue  # a trailing run is output only: nothing reads its logits
            k, lead = end - start, int(start > 0)
            bucket.forced_buffer(k).copy_(run)
            bucket.run(("forced", k, lead, s), lambda k=k, lead=lead: bucket.forced(k, lead, s), capture=capture,
                       strict=strict, stats=stats)  # samples column `end`
            unchecked += 1
            continue
        if start == 0:
            bucket.emit(logits, s)  # column 0 from the prefill's logits (eager, once per micro-batch)
            unchecked += 1
        for _ in range(start + 1, end):  # column `start` was sampled by the prefill or the forced run before
            if eos is not None and unchecked >= spec.eos_check_every:
                unchecked = 0
                if all_finished():
                    return
            bucket.run(("decode", 1, 1, s), lambda: bucket.decode(s), capture=capture, strict=strict, stats=stats)
            unchecked += 1


def generate(
    model,
    prompts: torch.Tensor,
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    forced_tokens: torch.Tensor | None = None,
    forced_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    sequence_ids: torch.Tensor | None = None,
    prompts_per_batch: int | None = None,
    max_cache_bytes: int | None = None,
    sample_impl: str = "auto",
    forced_fn: ForcedFn | None = None,
    attn_impl: str = "eager",
    cuda_graphs: bool | str = "auto",
    eos_check_every: int = 16,
    prefill_chunk: int | None = None,
    return_stats: bool = False,
    backend: str = "engine",
) -> Rollout | tuple[Rollout, GenerateStats]:
    """Sample ``group_size`` responses per prompt with a shared-prefix KV cache (decisions: module docstring).

    Args:
        model: a ``rlvr_world.models.Transformer`` (its dtype and device are used).
        prompts: [P, Lp] int64 token ids (one length for all prompts).
        group_size: G samples per prompt; rows p*G .. p*G+G-1 of the outputs belong to prompt p.
        max_new_tokens: N response positions (exactly N in fixed-length mode).
        temperature, top_k, top_p: the sampling distribution (DESIGN §5); temperature 0 is greedy.
        seed: the Philox key, in [0, 2^64).
        forced_tokens: [P, N] integer; read where ``forced_mask`` is True (same token for the G rows).
        forced_mask: [N] bool, True where the response token is forced (log-prob 0, mask False).
        eos_id: None (fixed length) or the EOS id (EOS mode; also the padding after EOS).
        sequence_ids: [P] integer global prompt ids keying the RNG streams (default arange(P)).
        prompts_per_batch: run the prompts in chunks of this many (same results as one batch).
        max_cache_bytes: the cache budget (default: CUDA free memory minus a margin; no limit on CPU).
        sample_impl: ``impl`` of ``ops.sample_tokens``.
        forced_fn: policy in the loop, ``(t, generated [P*G, t]) -> [P*G, k]`` tokens of the forced run
            [t, t + k); replaces ``forced_tokens`` (needs ``forced_mask``).
        attn_impl: the decode-attention cache implementation (``CACHE_IMPLS``).
        cuda_graphs: "auto" (static steps captured in CUDA graphs on a CUDA device, falling back to eager
            steps with a ``CudaGraphWarning`` if a capture fails; the dynamic loop elsewhere), True (capture;
            a ValueError off CUDA, a RuntimeError if a capture fails), False (the dynamic loop) or "static"
            (the static-buffer steps run eagerly, on any device: what the CPU tests check).
        eos_check_every: static loop, EOS mode: test "all rows finished" (a host sync) every this many
            sampled steps; finished rows keep being padded in between, so outputs do not depend on it.
        prefill_chunk: prompts per prefill forward (default ``prefill_chunk_size``: ~1 GiB of working memory).
        return_stats: also return a ``GenerateStats`` (times taken with a device sync at each boundary).
        backend: "engine" (this module) or "vllm": ``model`` is then a ``vllm.LLM`` (``vllm_backend.make_llm``)
            and the call goes to ``vllm_backend.generate_vllm`` (no forced tokens; the engine-only arguments
            ``prompts_per_batch`` .. ``prefill_chunk`` do not apply; the Rollout comes back on the CPU).

    Returns:
        ``Rollout(tokens [P*G, N] int64, logprobs [P*G, N] fp32, mask [P*G, N] bool)``, and the
        ``GenerateStats`` with ``return_stats``.
    """
    if backend not in ("engine", "vllm"):
        raise ValueError(f"backend must be 'engine' (default) or 'vllm', got {backend!r}")
    if backend == "vllm":
        if return_stats:
            raise ValueError("return_stats=True is not available with backend='vllm'")
        from .vllm_backend import generate_vllm  # imports vllm lazily, with a clear error when it is missing

        return generate_vllm(model, prompts, group_size=group_size, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_id=eos_id,
                             sequence_ids=sequence_ids, forced_tokens=forced_tokens, forced_mask=forced_mask,
                             forced_fn=forced_fn)
    _check_args(model, prompts, group_size, max_new_tokens, temperature, top_k, top_p, seed, forced_tokens,
                forced_mask, forced_fn, eos_id, sequence_ids, prompts_per_batch, attn_impl, cuda_graphs,
                eos_check_every, prefill_chunk)
    weight = model.lm_head_weight
    dev, dtype = weight.device, weight.dtype
    P, Lp = prompts.shape
    G, N = group_size, max_new_tokens
    chunk = P if prompts_per_batch is None else min(prompts_per_batch, P)

    static = cuda_graphs == "static" or cuda_graphs is True or (cuda_graphs == "auto" and dev.type == "cuda")
    capture, strict = static and cuda_graphs != "static", cuda_graphs is True
    key = graphs.BucketKey(CACHE_IMPLS[attn_impl], chunk, G, Lp, N, dtype, dev) if static else None

    limit = _default_max_bytes(dev) if max_cache_bytes is None else int(max_cache_bytes)
    need = cache_bytes(model, chunk, G, Lp, N, dtype)
    if static and graphs.find_bucket(model, key) is not None:
        limit = None  # this bucket's cache is already allocated
    elif static and limit is not None and need > limit and max_cache_bytes is None and graphs.has_buckets(model):
        graphs.clear_graphs(model)  # other buckets' caches hold the memory: free them and look again
        torch.cuda.empty_cache()
        limit = _default_max_bytes(dev)
    if limit is not None and need > limit:
        fit = max_prompts_per_batch(model, G, Lp, N, limit, dtype)
        advice = (f"at most {fit} prompts per micro-batch fit: pass prompts_per_batch={fit}" if fit else
                  "not even one prompt fits: shorten the prompt or max_new_tokens, or lower group_size")
        raise ValueError(
            f"the KV cache for {chunk} prompts x group_size {G} (prompt {Lp} + {N} new tokens, {dtype}) needs "
            f"{_fmt_bytes(need)} ({need} bytes), more than max_cache_bytes={_fmt_bytes(limit)} ({limit} bytes); "
            f"{advice}")

    spec = _Spec(G, N, float(temperature), top_k, float(top_p), seed, eos_id, forced_runs(forced_mask, N), forced_fn,
                 sample_impl, prefill_chunk, eos_check_every)
    stats = GenerateStats(mode="graphs" if capture else "static" if static else "dynamic")
    pad = 0 if eos_id is None else eos_id
    with torch.inference_mode():
        prompts = prompts.to(dev)
        seq_ids = torch.arange(P, device=dev) if sequence_ids is None else sequence_ids.to(dev, torch.int64)
        if forced_tokens is not None:
            forced_tokens = forced_tokens.to(dev, torch.int64)
        out = Rollout(torch.full((P * G, N), pad, dtype=torch.int64, device=dev),
                      torch.zeros(P * G, N, dtype=torch.float32, device=dev),
                      torch.zeros(P * G, N, dtype=torch.bool, device=dev))
        if static:
            bucket = graphs.get_bucket(model, key)
            for p0 in range(0, P, chunk):
                p1 = min(P, p0 + chunk)
                _generate_chunk_static(model, bucket, prompts[p0:p1], seq_ids[p0:p1],
                                       None if forced_tokens is None else forced_tokens[p0:p1], spec, out,
                                       slice(p0 * G, p1 * G), stats, return_stats, capture, strict)
            if capture and bucket.capture_failed:
                stats.mode = "static"
        else:
            a = model.args
            full = CACHE_IMPLS[attn_impl].allocate(a.n_layers, chunk, G, a.n_kv_heads, Lp, N, a.head_dim,
                                                   dtype=dtype, device=dev)
            for p0 in range(0, P, chunk):
                p1 = min(P, p0 + chunk)
                cache = full if p1 - p0 == chunk else _cache_view(full, p1 - p0)
                _generate_chunk(model, cache, prompts[p0:p1], seq_ids[p0:p1],
                                None if forced_tokens is None else forced_tokens[p0:p1], spec, out,
                                slice(p0 * G, p1 * G), stats, return_stats)
    # ordinary tensors (clones made outside inference mode), so the trainer may save them for backward
    result = Rollout(out.tokens.clone(), out.logprobs.clone(), out.mask.clone())
    return (result, stats) if return_stats else result


def _cache_view(cache: SharedPrefixKVCache, num_prompts: int) -> SharedPrefixKVCache:
    """The first ``num_prompts`` prompts' part of a cache (views of the same storage, same class)."""
    G = cache.group_size
    prefix = KVCache(cache.prefix.k[:, :num_prompts], cache.prefix.v[:, :num_prompts])
    suffix = KVCache(cache.suffix.k[:, : num_prompts * G], cache.suffix.v[:, : num_prompts * G])
    return type(cache)(prefix, suffix, G)
