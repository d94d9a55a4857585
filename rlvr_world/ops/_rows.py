"""Row backends: the three row ops (``row_logprobs``, ``row_logprobs_backward_``,
``grpo_token_terms``; semantics in _library.py) behind one interface, so the chunked drivers
(_chunked.py) and the autograd Functions are written once for every compiled backend.

``cpp``/``cuda`` call the registered ``torch.ops.rlvr_world.*`` (the dispatcher picks the CPU or CUDA
kernel from the tensors); ``triton`` calls the launchers in ``rlvr_world.kernels``.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace


@functools.cache
def row_backend(impl: str) -> SimpleNamespace:
    if impl in ("cpp", "cuda"):
        import torch

        ops = torch.ops.rlvr_world
        return SimpleNamespace(
            name=impl,
            row_logprobs=ops.row_logprobs,
            row_logprobs_backward_=ops.row_logprobs_backward_,
            grpo_token_terms=ops.grpo_token_terms,
        )
    if impl == "triton":
        from rlvr_world.kernels import grpo_terms, logprob_rows

        return SimpleNamespace(
            name=impl,
            row_logprobs=logprob_rows.row_logprobs,
            row_logprobs_backward_=logprob_rows.row_logprobs_backward_,
            grpo_token_terms=grpo_terms.grpo_token_terms,
        )
    raise ValueError(f"no row backend for impl {impl!r}")
