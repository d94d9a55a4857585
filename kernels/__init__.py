"""Triton kernels of rlvr_world, installed as ``rlvr_world.kernels`` (never a top-level ``kernels``).

Layer 1 of every op (DESIGN §3.1): kernels and their launchers, no argument checks, no autograd. The
public ops in ``rlvr_world.ops`` validate inputs and choose a backend. Importing this package does not
import Triton; its modules do, so they are imported only when a Triton path runs.

* ``logprob_rows``: per-row log-sum-exp / token log-prob over the vocab, and the in-place softmax
  gradient of a row (the two passes of the chunked fused linear log-prob).
* ``grpo_terms``: the elementwise GRPO token math and its derivative w.r.t. the log-prob.
* ``frame_metrics``: per-frame squared / absolute error sums and SSIM of predicted frames against true
  frames shared by groups (a streaming pixel kernel, and a fused tiled SSIM kernel).
* ``lpips_head``: one LPIPS stage (channel normalisation, weighted squared difference, spatial mean).
* ``sample_tokens``: the fused sampler (temperature, top-k / top-p thresholds by bisection, Philox
  Gumbel-max draw, log-prob of the draw), one program per row, chunked over the vocab when it is large.
* ``cascade_decode``: decode attention over [group prefix ‖ own suffix]; each prefix KV tile is loaded
  once per group and kv head for all G * rep query rows (split-K), then the suffix and the LSE merge.
"""

import os


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
