"""``sample_tokens``: the fused sampler of the rollout engine -- temperature, top-k, top-p and a draw, in
one pass per row, returning the token and its exact log-prob under the distribution sampled from.

Layers: kernels (``csrc/cpu/sample_tokens.cpp``, ``csrc/cuda/sample_tokens.cu``, ``kernels/sample_tokens.py``)
-> the registered op
``torch.ops.rlvr_world.sample_tokens`` or the Triton launcher -> ``sample_tokens`` here (checks, offsets,
backend choice). The eager spec is ``reference.sample_tokens`` / ``reference.sampling_mask``.

Semantics (DESIGN §5), x = the row's logits, s = x * (1 / T) in fp32 (fp64 for fp64 logits):

* **top-k** keeps x >= the k-th largest x, ties kept (prob >= the k-th largest prob: the same set, but
  compared on x, so every backend decides it exactly). ``top_k=0`` (or V) is off; ``top_k > V`` is an error.
* **top-p** then keeps token v when the top-k-renormalised mass of the tokens *strictly* more probable than
  v is < p: the smallest most-probable set whose mass reaches p, the crossing token and its ties kept.
  ``top_p=1`` is off. Both sets are thresholds on x, so the kept set is {x >= tau}
  (``reference.sampling_mask`` gives it as a [B, V] mask for the trainer's recomputation).
* **draw**: Gumbel-max, token = argmax over kept v of s_v - log(-log(u_v)), the first index on ties.
* **logp** = log of the renormalised probability of the token = s_tok - logsumexp(s over kept).
* **temperature = 0** is greedy: the argmax of the logits (first index on ties), logp = 0 (the point mass
  actually sampled from); top-k/top-p cannot change the argmax and no random number is drawn.

RNG (counter-based, the same bits in every backend): u_v = (2 * (r >> 9) + 1) / 2^24, exact in fp32, with
r = word 0 of **Philox-4x32-10** (Random123 / curand / ``tl.philox`` constants) at

    counter = (v, offset[b] & 0xFFFFFFFF, offset[b] >> 32 & 0xFFFFFFFF, 0x736D706C "smpl"),
    key     = (seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF),            seed in [0, 2^64)

The row index b never enters: a row's draw depends on (seed, offset[b], its logits) only, so it is the
same whatever else is in the batch and in which order. ``offset`` is an int (shared by every row) or an
integer tensor [B] on the logits' device (read there, so a CUDA graph replays with fresh draws once the
engine advances it in place). The engine's convention: ``offset[b] = sequence_id << 32 | position`` with
sequence_id = prompt_index * G + sample_index in the whole run, so the same (prompt, seed) gives the same
tokens whatever the batch, and no two (sequence, position) pairs share a stream.

Exactness: tokens agree across backends exactly except in two measure-zero-in-practice cases: two kept
scores within an ulp (the log differs by an ulp across libms), or a top-p mass landing within ~1e-6
(relative) of p * Z (the masses are summed in different orders: fp64 in C++, fp32 trees in Triton).
"""

from __future__ import annotations

import math

import torch

from . import _dispatch, _library, reference
from ._checks import check_tensor

IMPLS = ("auto", "reference", "cpp", "triton", "cuda")


def check_sampling(logits, temperature, top_k, top_p, seed, offset) -> None:
    """ValueError naming the argument, what was expected and what was received."""
    check_tensor("logits", logits, ndim=2, floating=True)
    V = logits.shape[1]
    if V == 0:
        raise ValueError(f"logits must have at least one vocab entry (shape [B, V] with V >= 1), got {tuple(logits.shape)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if 0 < temperature < 1e-30:  # 1 / T must stay finite in fp32
        raise ValueError(f"temperature must be 0 (greedy) or >= 1e-30, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= V:
        raise ValueError(f"top_k must be an int in [0, V = {V}] (0 = off), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1] (1 = off), got {top_p!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
    if isinstance(offset, torch.Tensor):
        check_tensor("offset", offset, integer=True)
        if offset.shape != (logits.shape[0],):
            raise ValueError(f"offset must be an int or a tensor of shape ({logits.shape[0]},) (one per row of "
                             f"logits), got shape {tuple(offset.shape)}")
        if offset.device != logits.device:
            raise ValueError(f"offset must be on logits's device {logits.device}, got {offset.device}")
    elif isinstance(offset, bool) or not isinstance(offset, int) or not -(2**63) <= offset < 2**63:
        raise ValueError(f"offset must be an int64 or an integer tensor [B], got {offset!r}")


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    offset: int | torch.Tensor = 0,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` and return it with its log-prob (semantics: module docstring).

    Args:
        logits: [B, V] float16/bfloat16/float32/float64 (any strides; rows are made contiguous if needed).
        temperature: >= 0; 0 is greedy.
        top_k: 0 (off) or the number of most probable tokens kept (ties at the k-th kept), <= V.
        top_p: in (0, 1]; the nucleus mass (1 = off), applied after top-k.
        seed: in [0, 2^64), the key of the Philox stream.
        offset: int, or an integer tensor [B] on the logits' device: the counter of row b's stream.
        impl: "auto" | "reference" | "cpp" | "triton" | "cuda" ("auto": Triton on CUDA tensors, else the
            compiled CUDA kernel; the C++ kernel on CPU tensors when built; else the reference).

    Returns:
        (tokens [B] int64, logp [B] fp32 (fp64 for fp64 logits)).

    >>> logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 0.0, 0.0]])
    >>> sample_tokens(logits, temperature=0.0)
    (tensor([1, 0]), tensor([0., 0.]))
    >>> tokens, logp = sample_tokens(logits, top_k=1, seed=7, offset=torch.tensor([3, 4]))
    >>> tokens.tolist(), logp.tolist()
    ([1, 0], [0.0, 0.0])
    """
    check_sampling(logits, temperature, top_k, top_p, seed, offset)
    backend = _dispatch.resolve(impl, logits.device, IMPLS)
    if backend in ("cpp", "cuda") and not _library.has_kernel("sample_tokens", logits.device):
        # an extension built before this op existed: only "auto" may fall back
        if impl != "auto":
            raise RuntimeError(f"impl={impl!r} is unavailable: rlvr_world._C has no {logits.device.type.upper()} "
                               "kernel of sample_tokens (rebuild the extension)")
        backend = "triton" if logits.device.type == "cuda" and _dispatch.missing("triton", logits.device) is None \
            else "reference"
    B = logits.shape[0]
    acc = _library.acc_dtype(logits.dtype)
    if temperature == 0:  # greedy: no draw, the same in every backend
        return logits.argmax(-1), torch.zeros(B, dtype=acc, device=logits.device)
    if backend == "reference":
        return reference.sample_tokens(logits, temperature, top_k, top_p, seed, offset)
    if isinstance(offset, torch.Tensor):
        offset = offset.to(torch.int64).contiguous()
    else:
        offset = torch.full((B,), offset, dtype=torch.int64, device=logits.device)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    inv_t = 1.0 / temperature
    if backend == "triton":
        from rlvr_world.kernels import sample_tokens as kernel

        return kernel.sample_tokens(logits, offset, seed, inv_t, top_k, top_p)
    seed_i64 = seed - 2**64 if seed >= 2**63 else seed  # the schema's int is int64: same 64 bits
    return torch.ops.rlvr_world.sample_tokens(logits, offset, seed_i64, inv_t, top_k, top_p)
