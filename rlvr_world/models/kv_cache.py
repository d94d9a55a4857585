"""Static KV caches for ``Transformer`` and the eager attention over them (the spec the rollout kernels will
match).

Two caches, both preallocated once with a dtype and device chosen at allocation (CUDA-graph friendly: no
tensor is ever reallocated, lengths live in the position tensors, not in Python state):

* ``KVCache``: k and v, each [n_layers, B, n_kv_heads, max_len, head_dim]; slot t of a row holds the token
  at position t (gpt-fast's layout). A query at position p attends to the slots <= p of its own row, so
  stale slots from an earlier use are never read. Attention is ``scaled_dot_product_attention`` with a
  boolean mask and ``enable_gqa``.
* ``SharedPrefixKVCache``: the per-group shared prefix (cascade) mode of GRPO rollouts. P prompts of
  length Lp are prefilled once into ``prefix`` [n_layers, P, ...]; the P * G sampled rows (rows
  p*G .. p*G+G-1 belong to prompt p) write their new tokens into their own ``suffix`` [n_layers, P*G, ...]
  (suffix slot s holds position Lp + s). Each query attends over [its group's prefix ‖ its own suffix],
  computed as two attention parts, each returning its partial output and its log-sum-exp, merged by
  ``merge_attention`` (the LSE merge of FlashInfer's cascade attention, written out). The prefix part
  folds the G rows of a group into the query length, so the prefix is read once per group, not G times.

* ``TritonSharedPrefixKVCache``: the same cache whose one-token-per-row decode step runs the Triton
  cascade decode kernel (``kernels/cascade_decode.py``: each group's prefix tile is loaded once and used
  by all G * rep query rows, split-K over the prefix, suffix and LSE merge in a second kernel); steps of
  several tokens per row (forced-token runs) use the eager parts above.

Choices: the explicit parts compute in fp32 whatever the cache dtype (simple and exact; speed is for the
later kernel); all prompts of a shared-prefix cache have the same length Lp (no padding); GQA everywhere
(query head h reads kv head h // (n_heads / n_kv_heads), HF's ``repeat_kv`` order).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["KVCache", "SharedPrefixKVCache", "TritonSharedPrefixKVCache", "attention_with_lse", "merge_attention"]


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                       scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention part with its log-sum-exp, in fp32.

    q [..., M, D], k and v [..., N, D], mask [..., M, N] bool (True = attend) or None; leading dims
    broadcast. Returns (out [..., M, D] fp32, lse [..., M] fp32) with out = softmax(s) @ v and
    lse = logsumexp(s), s = q @ k^T * scale. A fully masked query row gives out 0 and lse -inf.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.float() @ k.float().transpose(-1, -2)) * scale  # [..., M, N]
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [..., M]
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - safe.unsqueeze(-1))  # [..., M, N], 0 where masked
    return p @ v.float(), lse


def merge_attention(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor,
                    lse2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two attention parts over disjoint key sets: o [..., M, D], lse [..., M] each.

    lse = log(exp(lse1) + exp(lse2)); out = o1 * exp(lse1 - lse) + o2 * exp(lse2 - lse), which equals
    attention over the union of both key sets.
    """
    lse = torch.logaddexp(lse1, lse2)  # [..., M]
    w1 = torch.exp(lse1 - lse).unsqueeze(-1)  # [..., M, 1]
    w2 = torch.exp(lse2 - lse).unsqueeze(-1)
    return o1 * w1 + o2 * w2, lse


class KVCache:
    """Static per-row KV cache: ``k``, ``v`` [n_layers, B, n_kv_heads, max_len, head_dim]."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        if k.dim() != 5 or k.shape != v.shape:
            raise ValueError(f"k and v must both be [n_layers, B, n_kv_heads, max_len, head_dim], got "
                             f"{tuple(k.shape)} and {tuple(v.shape)}")
        self.k, self.v = k, v

    @classmethod
    def allocate(cls, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> KVCache:
        for name, value in (("batch_size", batch_size), ("max_len", max_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    n_layers = property(lambda self: self.k.shape[0])
    batch_size = property(lambda self: self.k.shape[1])
    n_kv_heads = property(lambda self: self.k.shape[2])
    max_len = property(lambda self: self.k.shape[3])
    head_dim = property(lambda self: self.k.shape[4])
    dtype = property(lambda self: self.k.dtype)
    device = property(lambda self: self.k.device)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        """Store k, v [B, n_kv_heads, S, head_dim] of ``layer`` at slots [B, S] (int64) of each row."""
        B, S = slots.shape
        rows = torch.arange(B, device=slots.device).unsqueeze(1).expand(B, S)  # [B, S]
        # advanced indices split by a slice: the indexed view is [B, S, n_kv_heads, head_dim]
        self.k[layer][rows, :, slots] = k.transpose(1, 2).to(self.k.dtype)
        self.v[layer][rows, :, slots] = v.transpose(1, 2).to(self.v.dtype)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> torch.Tensor:
        """Write the new k, v at their positions, then attend over each row's slots <= the query's position.

        q [B, n_heads, S, D], k and v [B, n_kv_heads, S, D], positions [B, S] -> out [B, n_heads, S, D].
        """
        self.write(layer, k, v, positions)
        slot = torch.arange(self.max_len, device=positions.device)  # [L]
        mask = slot.view(1, 1, 1, -1) <= positions.unsqueeze(1).unsqueeze(-1)  # [B, 1, S, L]
        kc, vc = self.k[layer].to(q.dtype), self.v[layer].to(q.dtype)  # [B, n_kv_heads, L, D]
        return F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True)


class SharedPrefixKVCache:
    """Per-group shared prefix: ``prefix`` KVCache of the P prompts, ``suffix`` KVCache of the P * G rows.

    ``prefix_len`` (Lp) is set by ``Transformer.prefill(prompts, cache)``; afterwards row r decodes at
    absolute positions Lp .. Lp + suffix.max_len - 1 and attends over prompt r // G and its own suffix.
    """

    def __init__(self, prefix: KVCache, suffix: KVCache, group_size: int):
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if suffix.batch_size != prefix.batch_size * group_size:
            raise ValueError(f"suffix must hold P * group_size = {prefix.batch_size * group_size} rows, "
                             f"got {suffix.batch_size}")
        same = ("n_layers", "n_kv_heads", "head_dim", "dtype", "device")
        for name in same:
            if getattr(prefix, name) != getattr(suffix, name):
                raise ValueError(f"prefix and suffix must have the same {name}, got {getattr(prefix, name)} "
                                 f"and {getattr(suffix, name)}")
        self.prefix, self.suffix, self.group_size = prefix, suffix, group_size
        self.prefix_len: int | None = None  # set by Transformer.prefill

    @classmethod
    def allocate(cls, n_layers: int, num_prompts: int, group_size: int, n_kv_heads: int, prompt_len: int,
                 max_new_tokens: int, head_dim: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> SharedPrefixKVCache:
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        prefix = KVCache.allocate(n_layers, num_prompts, n_kv_heads, prompt_len, head_dim, dtype=dtype, device=device)
        suffix = KVCache.allocate(n_layers, num_prompts * group_size, n_kv_heads, max_new_tokens, head_dim,
                                  dtype=dtype, device=device)
        return cls(prefix, suffix, group_size)

    n_layers = property(lambda self: self.prefix.n_layers)
    n_kv_heads = property(lambda self: self.prefix.n_kv_heads)
    head_dim = property(lambda self: self.prefix.head_dim)
    batch_size = property(lambda self: self.suffix.batch_size)  # P * G decode rows
    max_len = property(lambda self: (self.prefix_len or 0) + self.suffix.max_len)  # positions < max_len

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> torch.Tensor:
        """q [P*G, n_heads, S, D], k and v [P*G, n_kv_heads, S, D], positions [P*G, S] (absolute, >= Lp)
        -> out [P*G, n_heads, S, D]: attention over [prefix of the row's group ‖ the row's own suffix]."""
        Lp, G = self.prefix_len, self.group_size
        B, Hq, S, D = q.shape
        P, Hkv = B // G, k.shape[1]
        rep = Hq // Hkv
        slots = positions - Lp  # [B, S] suffix slots
        self.suffix.write(layer, k, v, slots)

        # part 1: the group's prefix, read once per group; the group's G rows are folded into the query length
        qg = q.reshape(P, G, Hkv, rep, S, D).permute(0, 2, 1, 3, 4, 5).reshape(P, Hkv, G * rep * S, D)
        kp = self.prefix.k[layer, :, :, :Lp]  # [P, Hkv, Lp, D]
        vp = self.prefix.v[layer, :, :, :Lp]
        o1, lse1 = attention_with_lse(qg, kp, vp)  # [P, Hkv, G*rep*S, D], [P, Hkv, G*rep*S]
        o1 = o1.reshape(P, Hkv, G, rep, S, D).permute(0, 2, 1, 3, 4, 5).reshape(B, Hq, S, D)
        lse1 = lse1.reshape(P, Hkv, G, rep, S).permute(0, 2, 1, 3, 4).reshape(B, Hq, S)

        # part 2: the row's own suffix, slots <= the query's own slot
        qs = q.reshape(B, Hkv, rep * S, D)
        slot = torch.arange(self.suffix.max_len, device=q.device)  # [Ls]
        mask = slot.view(1, 1, -1) <= slots.unsqueeze(-1)  # [B, S, Ls]
        mask = mask.unsqueeze(1).expand(B, rep, S, -1).reshape(B, 1, rep * S, -1)  # [B, 1, rep*S, Ls]
        o2, lse2 = attention_with_lse(qs, self.suffix.k[layer], self.suffix.v[layer], mask)  # [B, Hkv, rep*S, D]
        o2, lse2 = o2.reshape(B, Hq, S, D), lse2.reshape(B, Hq, S)

        out, _ = merge_attention(o1, lse1, o2, lse2)  # [B, Hq, S, D]
        return out.to(q.dtype)


class TritonSharedPrefixKVCache(SharedPrefixKVCache):
    """``SharedPrefixKVCache`` whose decode step (S == 1) runs the Triton cascade decode kernel.

    Same storage, same results (up to fp32 summation order); ``attend`` with several tokens per row
    falls back to the eager parts. Triton must run on the cache's device (CUDA, or CPU under
    ``TRITON_INTERPRET=1``), else ``allocate`` (before any work) and ``attend`` raise a RuntimeError saying
    why (an explicit choice never falls back).
    """

    @staticmethod
    def _require_triton(device: torch.device) -> None:
        from rlvr_world.ops import _dispatch

        why = _dispatch.missing("triton", torch.device(device))
        if why is not None:
            raise RuntimeError(f"TritonSharedPrefixKVCache (attn_impl='triton') is unavailable: {why}")

    @classmethod
    def allocate(cls, n_layers: int, num_prompts: int, group_size: int, n_kv_heads: int, prompt_len: int,
                 max_new_tokens: int, head_dim: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> TritonSharedPrefixKVCache:
        """As ``SharedPrefixKVCache.allocate``, after checking that Triton runs on ``device`` (before any work)."""
        cls._require_triton(device)
        return super().allocate(n_layers, num_prompts, group_size, n_kv_heads, prompt_len, max_new_tokens,
                                head_dim, dtype=dtype, device=device)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> torch.Tensor:
        """As ``SharedPrefixKVCache.attend``; q [P*G, n_heads, 1, D] uses the kernel."""
        if q.shape[2] != 1:
            return super().attend(layer, q, k, v, positions)
        self._require_triton(q.device)
        from rlvr_world.kernels.cascade_decode import cascade_decode

        Lp = self.prefix_len
        slots = positions - Lp  # [B, 1] suffix slots
        self.suffix.write(layer, k, v, slots)
        suffix_len = slots[:, 0] + 1  # [B]: slots <= the query's own slot
        q1 = q[:, :, 0] if q.stride(-1) == 1 else q[:, :, 0].contiguous()  # [B, n_heads, D]
        out = cascade_decode(q1, self.prefix.k[layer, :, :, :Lp], self.prefix.v[layer, :, :, :Lp],
                             self.suffix.k[layer], self.suffix.v[layer], suffix_len, self.group_size,
                             1.0 / math.sqrt(q.shape[-1]))  # [B, n_heads, D]
        return out.unsqueeze(2)  # [B, n_heads, 1, D]
