"""The fused paths never materialise an [N, V] tensor: every tensor that any op creates during forward
and backward is recorded (a TorchDispatchMode sees the aten and rlvr_world ops below autograd)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from rlvr_world import ops
from tests.conftest import cpu_impls
from tests.ops._cases import make_problem


class LogitRows(TorchDispatchMode):
    """Largest number of token rows of any [rows, V] (or [V, rows]) tensor an op returns; the lm-head
    weight and its gradient ([V, H]) are the only other tensors with a vocab dim, and are left out."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.vocab, self.hidden = vocab, hidden
        self.rows, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() == 2 and self.vocab in t.shape:
                rows = t.numel() // self.vocab
                if rows != self.hidden and rows > self.rows:
                    self.rows, self.op = rows, func
        return out


@pytest.mark.parametrize("impl", cpu_impls())
@pytest.mark.parametrize("loss_fn", ["grpo_loss", "token_logprobs"])
def test_peak_tensor_is_one_chunk_of_logits(impl, loss_fn):
    n, vocab, chunk = 96, 4633, 16
    p = make_problem(n, vocab)
    h, w = p.leaves(torch.float32)
    with LogitRows(vocab, h.shape[1]) as seen:
        if loss_fn == "grpo_loss":
            loss, _ = ops.grpo_loss(h, w, p.tokens, p.old_logp, p.advantages, p.mask, impl=impl, chunk_size=chunk)
        else:
            loss = ops.token_logprobs(h, w, p.tokens, impl=impl, chunk_size=chunk).sum()
        loss.backward()
    assert seen.rows <= chunk, f"{seen.op} made a [{seen.rows}, V] tensor (chunk is {chunk} rows)"
    assert seen.rows >= chunk // 2  # the mode does see the chunks' logits (the check can fail)


def test_eager_reference_is_seen_materialising_logits():
    p = make_problem(96, 4633)
    h, w = p.leaves(torch.float32)
    with LogitRows(4633, h.shape[1]) as seen:
        ops.token_logprobs(h, w, p.tokens, impl="reference").sum().backward()
    assert seen.rows == 96
