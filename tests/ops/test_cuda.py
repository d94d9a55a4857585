"""GPU checks of the fused paths (skipped without a CUDA GPU): Triton and, when built, the CUDA C++ ops
against the eager reference, at the benchmark's dtypes."""

import pytest
import torch

from rlvr_world import ops
from rlvr_world.ops import _dispatch, reference
from rlvr_world.testing import assert_within_eager_error
from tests.ops._cases import make_problem

pytestmark = pytest.mark.cuda


def _impls():
    if not torch.cuda.is_available():
        return ["triton"]
    return [i for i in ("triton", "cuda") if _dispatch.missing(i, torch.device("cuda")) is None]


@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab,n", [(4633, 3000), (9008, 777), (151936, 300)])
def test_grpo_loss_on_gpu(impl, dtype, vocab, n):
    p = make_problem(n, vocab, hidden=256)

    def run(which, dt, device):
        h = p.hidden.to(device, dt).requires_grad_()
        w = p.weight.to(device, dt).requires_grad_()
        args = [x.to(device) for x in (p.tokens, p.old_logp, p.advantages, p.mask, p.ref_logp)]
        if which == "reference":
            loss, _ = reference.grpo_loss(h, w, *args, kl_coef=0.1)
        else:
            loss, _ = ops.grpo_loss(h, w, *args, kl_coef=0.1, impl=which, chunk_size=256)
        loss.backward()
        return [x.detach().cpu() for x in (loss, h.grad, w.grad)]

    truth = run("reference", torch.float64, "cpu")
    eager = run("reference", dtype, "cuda")
    got = run(impl, dtype, "cuda")
    for name, a, e, t in zip(("loss", "d_hidden", "d_weight"), got, eager, truth):
        assert_within_eager_error(name, a, e, t)
