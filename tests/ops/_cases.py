"""Shared inputs of the op tests: an lm-head problem with realistic logit scale (std ~2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlvr_world.ops import reference


@dataclass
class Problem:
    hidden: torch.Tensor  # [N, H] fp64
    weight: torch.Tensor  # [V, H] fp64
    tokens: torch.Tensor  # [N]
    old_logp: torch.Tensor  # [N] fp64
    advantages: torch.Tensor  # [N]
    mask: torch.Tensor  # [N] bool
    ref_logp: torch.Tensor  # [N]

    def leaves(self, dtype):
        h = self.hidden.to(dtype).clone().requires_grad_()
        w = self.weight.to(dtype).clone().requires_grad_()
        return h, w


def make_problem(n: int, vocab: int, hidden: int = 32, *, seed: int = 0, mask_frac: float = 0.2,
                 temperature: float = 1.0, logit_offset: float = 0.0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * (2.0 / hidden**0.5)
    if logit_offset:
        # a bias-like hidden unit that shifts every logit of a row by +-logit_offset
        h[:, 0] = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) * logit_offset
        w[:, 0] = 1.0
    tokens = torch.randint(0, vocab, (n,), generator=g)
    logp = reference.token_logprobs(h, w, tokens, temperature)
    # off-policy noise large enough to exercise both clips, the dual clip and both KL clamps
    old = logp + 0.4 * torch.randn(n, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    adv = torch.randn(n, generator=g, dtype=torch.float64) * 2
    mask = torch.rand(n, generator=g) >= mask_frac
    return Problem(h, w, tokens, old, adv, mask, ref)
