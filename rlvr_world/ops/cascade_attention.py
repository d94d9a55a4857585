"""``cascade_decode_attention``: decode attention (one query token per row) over [the group's shared prefix ‖
the row's own suffix], the attention of the rollout engine's ``SharedPrefixKVCache``.

Layers: kernel ``kernels/cascade_decode.py`` (Triton; reads each group's prefix KV once per step for all G
samples and rep query heads) -> ``cascade_decode_attention`` here (checks, backend choice). The eager
spec is ``cascade_decode_reference``: the two attention parts of ``SharedPrefixKVCache.attend`` (prefix with
the G rows of a group folded into the query length; own suffix, masked to its valid length), each with its
log-sum-exp, merged by ``merge_attention`` -- in fp32, or fp64 for fp64 inputs.

Semantics: B = P * G rows, rows p*G .. p*G+G-1 belong to prompt p; GQA, query head h reads kv head
h // (Hq / Hkv) (HF's ``repeat_kv`` order); row r attends to the Lp prefix keys of prompt r // G and the
first ``suffix_len[r]`` keys of its own suffix (0 is allowed: prefix only); softmax scale
``1 / sqrt(D)`` unless given. Backends: "reference" and "triton" ("auto": Triton on CUDA tensors, the
reference on CPU tensors -- the interpreter is for tests, run it with ``impl="triton"``; fp64 inputs
always use the reference under "auto", and are an error with ``impl="triton"``).
"""

from __future__ import annotations

import math

import torch

from rlvr_world.models.kv_cache import merge_attention

from . import _dispatch
from ._checks import check_tensor

__all__ = ["cascade_decode_attention", "cascade_decode_reference"]

IMPLS = ("auto", "reference", "triton")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _part(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
          acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``kv_cache.attention_with_lse`` in dtype ``acc``: q [..., M, D], k/v [..., N, D], mask [..., M, N]."""
    s = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale  # [..., M, N]
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [..., M]
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - safe.unsqueeze(-1))  # 0 where masked
    return p @ v.to(acc), lse


def cascade_decode_reference(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                             suffix_k: torch.Tensor, suffix_v: torch.Tensor, suffix_len: torch.Tensor,
                             scale: float | None = None) -> torch.Tensor:
    """The eager spec (no checks): shapes as ``cascade_decode_attention``; suffix_len a tensor [B].

    Computes in fp64 for fp64 inputs, else fp32; returns q's dtype.
    """
    B, Hq, D = q.shape
    P, Hkv = prefix_k.shape[:2]
    G, rep, N = B // P, Hq // Hkv, suffix_k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    # part 1: the group's prefix; the G rows of a group and the rep heads of a kv head are the query length
    qg = q.reshape(P, G, Hkv, rep, D).permute(0, 2, 1, 3, 4).reshape(P, Hkv, G * rep, D)
    o1, lse1 = _part(qg, prefix_k, prefix_v, None, scale, acc)  # [P, Hkv, G*rep, D], [P, Hkv, G*rep]
    o1 = o1.reshape(P, Hkv, G, rep, D).permute(0, 2, 1, 3, 4).reshape(B, Hq, D)
    lse1 = lse1.reshape(P, Hkv, G, rep).permute(0, 2, 1, 3).reshape(B, Hq)
    # part 2: the row's own suffix, its first suffix_len[r] slots
    qs = q.reshape(B, Hkv, rep, D)
    mask = torch.arange(N, device=q.device).view(1, 1, 1, N) < suffix_len.view(B, 1, 1, 1)  # [B, 1, 1, N]
    o2, lse2 = _part(qs, suffix_k, suffix_v, mask, scale, acc)  # [B, Hkv, rep, D], [B, Hkv, rep]
    out, _ = merge_attention(o1, lse1, o2.reshape(B, Hq, D), lse2.reshape(B, Hq))  # [B, Hq, D]
    return out.to(q.dtype)


def _capturing() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def check_cascade(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_len, scale) -> torch.Tensor:
    """ValueError naming the argument, what was expected and what was received; returns suffix_len [B]."""
    check_tensor("q", q, ndim=3, floating=True)
    B, Hq, D = q.shape
    for name, x in (("prefix_k", prefix_k), ("prefix_v", prefix_v), ("suffix_k", suffix_k), ("suffix_v", suffix_v)):
        check_tensor(name, x, ndim=4, floating=True)
        if x.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {x.device}")
    P, Hkv, Lp, Dk = prefix_k.shape
    if Dk != D:
        raise ValueError(f"prefix_k must have head_dim {D} (q is [B, Hq, D={D}]), got shape {tuple(prefix_k.shape)}")
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"prefix_k must have a number of kv heads dividing q's {Hq} heads, got {Hkv} "
                         f"(shape {tuple(prefix_k.shape)})")
    if P < 1 or B % P:
        raise ValueError(f"q must have P * G rows for the P = {P} prompts of prefix_k, got {B} rows")
    if Lp < 1:
        raise ValueError(f"prefix_k must hold at least one key (shape [P, Hkv, Lp >= 1, D]), got {tuple(prefix_k.shape)}")
    if prefix_v.shape != prefix_k.shape:
        raise ValueError(f"prefix_v must have prefix_k's shape {tuple(prefix_k.shape)}, got {tuple(prefix_v.shape)}")
    N = suffix_k.shape[2]
    want = (B, Hkv, N, D)
    if tuple(suffix_k.shape) != want:
        raise ValueError(f"suffix_k must have shape [B={B}, Hkv={Hkv}, N, D={D}], got {tuple(suffix_k.shape)}")
    if suffix_v.shape != suffix_k.shape:
        raise ValueError(f"suffix_v must have suffix_k's shape {tuple(suffix_k.shape)}, got {tuple(suffix_v.shape)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale must be None (1 / sqrt(D)) or a finite number > 0, got {scale!r}")
    if isinstance(suffix_len, torch.Tensor):
        check_tensor("suffix_len", suffix_len, ndim=1, integer=True)
        if suffix_len.shape[0] != B:
            raise ValueError(f"suffix_len must have shape ({B},) (one length per row of q), got {tuple(suffix_len.shape)}")
        if suffix_len.device != q.device:
            raise ValueError(f"suffix_len must be on q's device {q.device}, got {suffix_len.device}")
        if not _capturing() and B and bool(((suffix_len < 0) | (suffix_len > N)).any()):
            bad = ((suffix_len < 0) | (suffix_len > N)).nonzero()[0, 0].item()
            raise ValueError(f"suffix_len must lie in [0, N={N}] (suffix_k's slots), got {int(suffix_len[bad])} "
                             f"at row {bad}")
        return suffix_len
    if isinstance(suffix_len, bool) or not isinstance(suffix_len, int) or not 0 <= suffix_len <= N:
        raise ValueError(f"suffix_len must be an int in [0, N={N}] or an integer tensor [B={B}], got {suffix_len!r}")
    return torch.full((B,), suffix_len, dtype=torch.int32, device=q.device)


def cascade_decode_attention(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                             suffix_k: torch.Tensor, suffix_v: torch.Tensor, suffix_len: torch.Tensor | int,
                             scale: float | None = None, impl: str = "auto") -> torch.Tensor:
    """Decode attention over [group prefix ‖ own suffix] (semantics: module docstring).

    Args:
        q: [P*G, Hq, D] float16/bfloat16/float32/float64, one query token per row.
        prefix_k, prefix_v: [P, Hkv, Lp, D] (Lp >= 1), q's dtype and device; Hkv divides Hq.
        suffix_k, suffix_v: [P*G, Hkv, N, D] (N >= 0).
        suffix_len: an int or an integer tensor [P*G] in [0, N]: how many suffix slots each row reads.
        scale: the softmax scale (None: 1 / sqrt(D)).
        impl: "auto" | "reference" | "triton".

    Returns:
        out [P*G, Hq, D] in q's dtype.

    >>> q, pk, sk = torch.ones(2, 2, 4), torch.zeros(1, 1, 3, 4), torch.zeros(2, 1, 2, 4)
    >>> pv = torch.ones(1, 1, 3, 4)
    >>> cascade_decode_attention(q, pk, pv, sk, torch.zeros(2, 1, 2, 4), torch.tensor([0, 2]), impl="reference")[:, 0, 0]
    tensor([1.0000, 0.6000])
    """
    lens = check_cascade(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_len, scale)
    backend = _dispatch.resolve(impl, q.device, IMPLS)
    if backend == "triton" and q.dtype not in KERNEL_DTYPES:
        if impl == "triton":
            raise RuntimeError(f"impl='triton' is unavailable: the kernel takes float16/bfloat16/float32, got {q.dtype}")
        backend = "reference"
    if backend == "reference":
        return cascade_decode_reference(q, prefix_k, prefix_v, suffix_k, suffix_v, lens, scale)
    from rlvr_world.kernels import cascade_decode as kernel

    def last_contiguous(x):
        return x if x.shape[-1] <= 1 or x.stride(-1) == 1 else x.contiguous()

    q, prefix_k, prefix_v, suffix_k, suffix_v = map(last_contiguous, (q, prefix_k, prefix_v, suffix_k, suffix_v))
    G = q.shape[0] // prefix_k.shape[0]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return kernel.cascade_decode(q, prefix_k, prefix_v, suffix_k, suffix_v, lens, G, scale)
