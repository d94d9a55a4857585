"""The rollout engine's static decode loop: persistent device buffers advanced in place by step functions that
can be captured once in CUDA graphs per shape bucket and replayed (``StaticDecoder``; used by
``engine.generate(cuda_graphs=...)``).

What it decides:

* **A bucket** is one ``StaticDecoder``: the shapes (P prompts per micro-batch, G, prompt length Lp,
  N new tokens), the cache class (``attn_impl``), dtype and device. It owns everything a captured step reads
  or writes, allocated once: the shared-prefix KV cache, the outputs ``tokens`` / ``logprobs`` / ``mask``
  [B, N] (B = P * G) and the per-step state

      cur [B] int64      the last decided token (appended to the cache by the next step)
      pos [B] int64      its absolute position (Lp + column)
      offset [B] int64   the RNG offset of the next sampled column, row_base + step
      row_base [B]       (sequence_id * G + g) << 32, copied in per micro-batch
      step [1] int64     the next column to sample
      finished [B] bool  EOS mode: rows that sampled EOS
      forced_in[k] [B, k] the tokens of the current forced run of length k

  Buckets are cached per model (weakly: they die with the model) and per exact shape, at most
  ``MAX_BUCKETS`` per model (least recently used evicted): a second ``generate`` with the same shapes reuses
  the cache, the buffers and the graphs (no allocation, no capture). ``clear_graphs`` frees them (the KV
  cache of a bucket stays allocated between calls; that is what makes the graphs reusable).
* **Three step functions**, none with a host sync or Python branching on data (the model's value checks are
  skipped with ``check=False``; sampling reads ``offset`` on the device; outputs are written at column
  ``step`` by ``index_copy_`` / ``index_fill_`` with the device index):

  - ``emit(logits)``: sample column ``step`` from logits [B, V], write token / log-prob / mask, update
    ``finished``, then ``cur = token``, ``pos = Lp + step``, ``step += 1``, ``offset = row_base + step``.
    Run eagerly once per micro-batch on the prefill's logits (never captured).
  - ``decode``: ``model.decode_step(cur, pos)`` then ``emit`` -- the one-token step, captured once.
  - ``forced(k, lead)``: one forward of [cur ‖ forced_in[k]] (``lead=1``; ``lead=0`` for a run at column 0,
    which has no sampled token before it) at positions Lp + step - lead + arange(k + lead), then
    ``step += k`` and ``emit`` (samples the column right after the run) -- captured once per run length
    (14 tokens for the video layout's 13 action tokens).

* **Graphs** are keyed per bucket by (step, k, lead, sampling parameters): temperature, top_k, top_p, the
  seed, eos_id and sample_impl are Python scalars baked into the captured kernels, so a new seed captures
  new graphs (the trainer keeps the seed and varies ``sequence_ids``, which live in ``row_base``). At most
  ``MAX_GRAPHS`` per bucket (LRU). A model whose parameters moved (new storage) drops its graphs.
* **Capture recipe** (PyTorch's CUDA-graph notes): the first time a step key is met, the step runs for real on
  a side stream (the warm-up: lazy initialisation, Triton compilation and autotuning happen there, and its
  results are the step's results), then it is captured with ``torch.cuda.graph`` into one memory pool per
  device shared by all buckets; later occurrences replay. Sharing the pool is safe because every step writes
  its results into the bucket's buffers (allocated outside the pool) and graphs replay one after another on
  one stream, so no graph's pool memory is live across another's replay.
* **Capture failure**: with ``strict`` (``cuda_graphs=True``) a RuntimeError naming the step; otherwise
  (``"auto"``) one ``CudaGraphWarning`` line, and the bucket runs its steps eagerly from then on (the
  warm-up already produced the step's results, so nothing is lost or repeated).
* Without capture (``cuda_graphs="static"``, any device, the CPU tests) the same step functions run eagerly,
  so the CPU tests exercise exactly the code that the GPU captures.
"""

from __future__ import annotations

import time
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from rlvr_world.models.kv_cache import SharedPrefixKVCache
from rlvr_world.ops import sample_tokens

__all__ = ["MAX_BUCKETS", "MAX_GRAPHS", "BucketKey", "CudaGraphWarning", "SamplingKey", "StaticDecoder",
           "clear_graphs", "find_bucket", "get_bucket", "has_buckets"]

MAX_BUCKETS = 2  # buckets (each holding a KV cache) kept per model
MAX_GRAPHS = 32  # graphs kept per bucket


class CudaGraphWarning(RuntimeWarning):
    """A CUDA-graph capture failed and the engine decodes eagerly instead (``cuda_graphs="auto"`` only)."""


@dataclass(frozen=True)
class SamplingKey:
    """The Python scalars a captured step bakes in."""

    temperature: float
    top_k: int
    top_p: float
    seed: int
    eos_id: int | None
    sample_impl: str


@dataclass(frozen=True)
class BucketKey:
    cache_cls: type
    num_prompts: int
    group_size: int
    prompt_len: int
    max_new_tokens: int
    dtype: torch.dtype
    device: torch.device


_BUCKETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> OrderedDict[BucketKey, StaticDecoder]
_POOLS: dict = {}  # device -> graph memory pool handle


def _pool(device: torch.device):
    if device not in _POOLS:
        _POOLS[device] = torch.cuda.graph_pool_handle()
    return _POOLS[device]


def _fingerprint(model) -> tuple:
    return tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))


def clear_graphs(model=None) -> None:
    """Free the buckets (KV caches, buffers, graphs) of ``model``, or of every model when None."""
    if model is None:
        _BUCKETS.clear()
    else:
        _BUCKETS.pop(model, None)


def has_buckets(model) -> bool:
    return bool(_BUCKETS.get(model))


def find_bucket(model, key: BucketKey) -> StaticDecoder | None:
    return _BUCKETS.get(model, {}).get(key)


def get_bucket(model, key: BucketKey) -> StaticDecoder:
    """The cached bucket of these shapes, else a new one (the least recently used beyond MAX_BUCKETS evicted
    first, so its memory is free before the new cache is allocated)."""
    buckets = _BUCKETS.setdefault(model, OrderedDict())
    bucket = buckets.get(key)
    if bucket is None:
        while len(buckets) >= MAX_BUCKETS:
            buckets.popitem(last=False)
        bucket = buckets[key] = StaticDecoder(model, key)
    buckets.move_to_end(key)
    bucket.check_weights()
    return bucket


class StaticDecoder:
    """One shape bucket: the KV cache, the persistent state and outputs, the step functions and their graphs
    (module docstring)."""

    def __init__(self, model, key: BucketKey):
        a = model.args
        P, G, Lp, N = key.num_prompts, key.group_size, key.prompt_len, key.max_new_tokens
        B, dev = P * G, key.device
        self.model_ref = weakref.ref(model)  # the model owns its buckets: no strong cycle
        self.key, self.B, self.Lp, self.N = key, B, Lp, N
        self.cache: SharedPrefixKVCache = key.cache_cls.allocate(
            a.n_layers, P, G, a.n_kv_heads, Lp, N, a.head_dim, dtype=key.dtype, device=dev)
        self.cache.prefix_len = Lp  # always Lp in this bucket (the prefill rewrites the prefix in place)
        i64 = {"dtype": torch.int64, "device": dev}
        self.tokens = torch.zeros(B, N, **i64)  # [B, N]
        self.logprobs = torch.zeros(B, N, dtype=torch.float32, device=dev)  # [B, N]
        self.mask = torch.zeros(B, N, dtype=torch.bool, device=dev)  # [B, N]
        self.cur = torch.zeros(B, **i64)  # [B]
        self.pos = torch.zeros(B, **i64)  # [B]
        self.offset = torch.zeros(B, **i64)  # [B]
        self.row_base = torch.zeros(B, **i64)  # [B]
        self.step = torch.zeros(1, **i64)  # [1]
        self.finished = torch.zeros(B, dtype=torch.bool, device=dev)  # [B]
        self.arange = torch.arange(N + 1, **i64)  # [N + 1]
        self.forced_in: dict[int, torch.Tensor] = {}  # k -> [B, k]
        self.graphs: OrderedDict = OrderedDict()
        self.capture_failed = False
        self.weights = _fingerprint(model)

    @property
    def model(self):
        return self.model_ref()

    def check_weights(self) -> None:
        """Drop the graphs when the model's parameters live in new storage (they captured the old addresses)."""
        fp = _fingerprint(self.model)
        if fp != self.weights:
            self.graphs.clear()
            self.weights = fp

    # ------------------------------------------------------------------ state
    def reset(self, row_base: torch.Tensor, pad: int) -> None:
        """Start a micro-batch: row_base [B] int64; outputs to padding, step 0."""
        self.tokens.fill_(pad)
        self.logprobs.zero_()
        self.mask.zero_()
        self.finished.zero_()
        self.step.zero_()
        self.cur.zero_()
        self.pos.fill_(self.Lp)
        self.row_base.copy_(row_base)
        self.offset.copy_(row_base)

    def forced_buffer(self, k: int) -> torch.Tensor:
        if k not in self.forced_in:
            self.forced_in[k] = torch.zeros(self.B, k, dtype=torch.int64, device=self.key.device)
        return self.forced_in[k]

    # ------------------------------------------------------------------ step functions (captured)
    def emit(self, logits: torch.Tensor, s: SamplingKey) -> None:
        """Sample column ``step`` from logits [B, V] and advance the state (no host sync)."""
        tok, lp = sample_tokens(logits, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed,
                                offset=self.offset, impl=s.sample_impl)  # [B], [B]
        if s.eos_id is None:
            self.mask.index_fill_(1, self.step, True)
        else:
            live = ~self.finished  # [B]
            tok = torch.where(live, tok, s.eos_id)
            lp = torch.where(live, lp, torch.zeros_like(lp))
            self.mask.index_copy_(1, self.step, live.unsqueeze(1))
            self.finished.logical_or_(tok == s.eos_id)
        self.tokens.index_copy_(1, self.step, tok.unsqueeze(1))
        self.logprobs.index_copy_(1, self.step, lp.to(self.logprobs.dtype).unsqueeze(1))
        self.cur.copy_(tok)
        self.pos.copy_((self.step + self.Lp).expand(self.B))
        self.step.add_(1)
        torch.add(self.row_base, self.step, out=self.offset)

    def decode(self, s: SamplingKey) -> None:
        """Append ``cur`` at ``pos``, sample column ``step``."""
        logits = self.model.decode_step(self.cur, self.pos, self.cache, check=False)  # [B, V]
        self.emit(logits, s)

    def forced(self, k: int, lead: int, s: SamplingKey) -> None:
        """Append [cur ‖ forced_in[k]] (lead=1) or forced_in[k] (lead=0) in one forward; the run covers columns
        step .. step + k - 1; sample column step + k."""
        run = self.forced_in[k]  # [B, k]
        inp = torch.cat([self.cur.unsqueeze(1), run], 1) if lead else run  # [B, k + lead]
        S = k + lead
        positions = ((self.step + (self.Lp - lead)) + self.arange[:S]).expand(self.B, S)  # [B, S]
        h = self.model.hidden_states(inp, positions=positions, cache=self.cache, check=False)  # [B, S, H]
        logits = self.model.output(h[:, -1])  # [B, V]
        self.step.add_(k)
        torch.add(self.row_base, self.step, out=self.offset)
        self.emit(logits, s)

    # ------------------------------------------------------------------ graphs
    def run(self, key: tuple, fn, *, capture: bool, strict: bool, stats) -> None:
        """Run one step: replay its graph, or (first time, ``capture``) warm up, capture and keep it, or run
        ``fn`` eagerly. ``stats`` gains steps / graphs_captured / graphs_replayed / capture_s."""
        stats.steps += 1
        if not capture or self.capture_failed:
            fn()
            return
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            graph.replay()
            stats.graphs_replayed += 1
            return
        dev = self.key.device
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        _warm_up(fn, dev)
        try:
            graph = _capture(fn, dev)
        except Exception as e:  # any capture failure falls back (or raises when strict)
            torch.cuda.synchronize(dev)
            stats.capture_s += time.perf_counter() - t0
            if strict:
                raise RuntimeError(f"CUDA graph capture of the rollout step {key[0]!r} failed "
                                   f"({type(e).__name__}: {e})") from e
            first_line = str(e).splitlines()[0] if str(e) else ""
            warnings.warn(f"rollout: CUDA graph capture of step {key[0]!r} failed ({type(e).__name__}: "
                          f"{first_line}); decoding eagerly", CudaGraphWarning, stacklevel=5)
            self.capture_failed = True
            self.graphs.clear()
            return
        self.graphs[key] = graph
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        torch.cuda.synchronize(dev)
        stats.capture_s += time.perf_counter() - t0
        stats.graphs_captured += 1


def _warm_up(fn, device: torch.device) -> None:
    """Run ``fn`` (for real) on a side stream, as PyTorch's CUDA-graph recipe asks before a capture."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)


def _capture(fn, device: torch.device) -> torch.cuda.CUDAGraph:
    """Capture ``fn`` into a new graph in the device's shared pool (nothing runs)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=_pool(device)):
        fn()
    return graph
