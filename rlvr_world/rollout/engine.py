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
  (forced positions too); the loop ends as soon as every row is finished (one host sync per sampled step;
  a captured loop would check every few steps with the same outputs).
* **Log-probs** are ``ops.sample_tokens``' exact log-probs of the distribution sampled from (after
  temperature, top-k, top-p), returned in fp32: the trainer's recomputation with the same truncation mask
  (``ops.reference.sampling_mask``) matches them. ``temperature=0`` is greedy with log-prob 0.
* Runs under ``torch.inference_mode()``, in the model's dtype and on its device (prompts are moved there);
  the returned tensors are ordinary (not inference) tensors, so the trainer can use them under autograd.

Hooks for what comes next (none changes the outputs): ``attn_impl`` picks the cache class whose ``attend``
runs the decode attention (``CACHE_IMPLS``: "eager" = ``SharedPrefixKVCache``; "triton" =
``TritonSharedPrefixKVCache``, whose one-token steps run ``kernels/cascade_decode.py``); the per-step state is device tensors (``positions``, ``row_base``) and the step
itself (``_append``, ``_sample``) has no Python-side state beyond the step index, so it can be captured
in CUDA graphs per shape bucket; ``sample_impl`` is passed to ``ops.sample_tokens``.

Departures from the reference (vLLM 0.6.3 / HF generate): the prompt is prefilled once per group, not G
times; multi-step turns append their action tokens instead of re-prefilling the whole sequence; sampling
randomness is reproducible per sequence rather than per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlvr_world.models.kv_cache import KVCache, SharedPrefixKVCache, TritonSharedPrefixKVCache
from rlvr_world.ops import sample_tokens
from rlvr_world.rl.types import Rollout

__all__ = ["CACHE_IMPLS", "Rollout", "cache_bytes", "generate", "max_prompts_per_batch"]

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
                forced_mask, forced_fn, eos_id, sequence_ids, prompts_per_batch, attn_impl):
    a = model.args
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


def _segments(forced_mask: torch.Tensor | None, n: int) -> list[tuple[int, int, bool]]:
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


def _generate_chunk(model, cache: SharedPrefixKVCache, prompts: torch.Tensor, seq_ids: torch.Tensor,
                    forced_tokens: torch.Tensor | None, spec: _Spec, out: Rollout, rows: slice) -> None:
    """Sample the P_c * G rows of one prompt chunk into out.tokens[rows] etc. (cache sized for this chunk)."""
    P, Lp = prompts.shape
    G, N, eos = spec.group_size, spec.max_new_tokens, spec.eos_id
    B, dev = P * G, prompts.device
    tokens, logp, mask = out.tokens[rows], out.logprobs[rows], out.mask[rows]  # views [B, N]
    row_base = ((seq_ids.to(dev, torch.int64) * G).unsqueeze(1) + torch.arange(G, device=dev)).reshape(B) << 32
    positions = (Lp + torch.arange(N, device=dev)).expand(B, N)  # [B, N] absolute positions of the response
    finished = torch.zeros(B, dtype=torch.bool, device=dev) if eos is not None else None

    logits = model.prefill(prompts, cache).repeat_interleave(G, dim=0)  # [B, V]
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
) -> Rollout:
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

    Returns:
        ``Rollout(tokens [P*G, N] int64, logprobs [P*G, N] fp32, mask [P*G, N] bool)``.
    """
    _check_args(model, prompts, group_size, max_new_tokens, temperature, top_k, top_p, seed, forced_tokens,
                forced_mask, forced_fn, eos_id, sequence_ids, prompts_per_batch, attn_impl)
    weight = model.lm_head_weight
    dev, dtype = weight.device, weight.dtype
    P, Lp = prompts.shape
    G, N = group_size, max_new_tokens
    chunk = P if prompts_per_batch is None else min(prompts_per_batch, P)

    limit = _default_max_bytes(dev) if max_cache_bytes is None else int(max_cache_bytes)
    need = cache_bytes(model, chunk, G, Lp, N, dtype)
    if limit is not None and need > limit:
        fit = max_prompts_per_batch(model, G, Lp, N, limit, dtype)
        advice = (f"at most {fit} prompts per micro-batch fit: pass prompts_per_batch={fit}" if fit else
                  "not even one prompt fits: shorten the prompt or max_new_tokens, or lower group_size")
        raise ValueError(
            f"the KV cache for {chunk} prompts x group_size {G} (prompt {Lp} + {N} new tokens, {dtype}) needs "
            f"{_fmt_bytes(need)} ({need} bytes), more than max_cache_bytes={_fmt_bytes(limit)} ({limit} bytes); "
            f"{advice}")

    spec = _Spec(G, N, float(temperature), top_k, float(top_p), seed, eos_id, _segments(forced_mask, N), forced_fn,
                 sample_impl)
    pad = 0 if eos_id is None else eos_id
    with torch.inference_mode():
        prompts = prompts.to(dev)
        seq_ids = torch.arange(P, device=dev) if sequence_ids is None else sequence_ids.to(dev, torch.int64)
        if forced_tokens is not None:
            forced_tokens = forced_tokens.to(dev, torch.int64)
        out = Rollout(torch.full((P * G, N), pad, dtype=torch.int64, device=dev),
                      torch.zeros(P * G, N, dtype=torch.float32, device=dev),
                      torch.zeros(P * G, N, dtype=torch.bool, device=dev))
        a = model.args
        full = CACHE_IMPLS[attn_impl].allocate(a.n_layers, chunk, G, a.n_kv_heads, Lp, N, a.head_dim, dtype=dtype,
                                               device=dev)
        for p0 in range(0, P, chunk):
            p1 = min(P, p0 + chunk)
            cache = full if p1 - p0 == chunk else _cache_view(full, p1 - p0)
            _generate_chunk(model, cache, prompts[p0:p1], seq_ids[p0:p1],
                            None if forced_tokens is None else forced_tokens[p0:p1], spec, out,
                            slice(p0 * G, p1 * G))
    # ordinary tensors (clones made outside inference mode), so the trainer may save them for backward
    return Rollout(out.tokens.clone(), out.logprobs.clone(), out.mask.clone())


def _cache_view(cache: SharedPrefixKVCache, num_prompts: int) -> SharedPrefixKVCache:
    """The first ``num_prompts`` prompts' part of a cache (views of the same storage, same class)."""
    G = cache.group_size
    prefix = KVCache(cache.prefix.k[:, :num_prompts], cache.prefix.v[:, :num_prompts])
    suffix = KVCache(cache.suffix.k[:, : num_prompts * G], cache.suffix.v[:, : num_prompts * G])
    return type(cache)(prefix, suffix, G)
