"""token_logprobs: every optimized impl vs the eager reference (fp64 truth, 2x-eager rule)."""

import pytest
import torch

from rlvr_world import ops
from rlvr_world.ops import reference
from rlvr_world.testing import assert_close, assert_within_eager_error
from tests.conftest import cpu_impls
from tests.ops._cases import make_problem

DTYPES = [torch.float64, torch.float32]


def _run(impl, p, dtype, temperature, chunk_size=None, grad_seed=1):
    h, w = p.leaves(dtype)
    if impl == "reference":
        logp = reference.token_logprobs(h, w, p.tokens, temperature)
    else:
        logp = ops.token_logprobs(h, w, p.tokens, temperature, impl=impl, chunk_size=chunk_size)
    g = torch.randn(logp.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    (logp * g.to(logp.dtype)).sum().backward()
    return logp.detach(), h.grad, w.grad


@pytest.mark.parametrize("impl", cpu_impls())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab,n,temperature,chunk", [(4633, 37, 1.0, None), (9008, 21, 0.7, 8), (4633, 1, 1.3, None)])
def test_matches_reference(impl, dtype, vocab, n, temperature, chunk):
    p = make_problem(n, vocab)
    truth = _run("reference", p, torch.float64, temperature)
    eager = _run("reference", p, dtype, temperature)
    got = _run(impl, p, dtype, temperature, chunk)
    assert got[0].dtype == dtype
    if dtype == torch.float32 and chunk is None:
        # one chunk = the reference's own GEMM, so the logits are bit-identical and this bounds the
        # log-softmax alone (smaller chunks change the GEMM's blocking, hence the logits' last bits)
        assert_close("logp vs fp32 reference", got[0], eager[0], atol=2e-6)
    for name, a, e, t in zip(("logp", "d_hidden", "d_weight"), got, eager, truth):
        assert_within_eager_error(name, a, e, t)


@pytest.mark.parametrize("impl", cpu_impls())
def test_bf16_inputs(impl):
    p = make_problem(16, 4633)
    truth = _run("reference", p, torch.float64, 1.0)
    eager = _run("reference", p, torch.bfloat16, 1.0)
    got = _run(impl, p, torch.bfloat16, 1.0)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16 and got[2].dtype == torch.bfloat16
    for name, a, e, t in zip(("logp", "d_hidden", "d_weight"), got, eager, truth):
        assert_within_eager_error(name, a, e, t)


@pytest.mark.parametrize("impl", cpu_impls())
def test_extreme_logits_stay_finite(impl):
    p = make_problem(12, 4633, logit_offset=1e4)
    truth = _run("reference", p, torch.float64, 1.0)
    got = _run(impl, p, torch.float32, 1.0)
    for x in got:
        assert torch.isfinite(x).all()
    # a uniform shift of a row leaves its log-probs unchanged; fp32 logits of size 1e4 keep ~1e-3 absolute
    assert_close("logp at +-1e4 offsets", got[0], truth[0], atol=5e-3)


@pytest.mark.parametrize("impl", cpu_impls())
def test_no_grad_forward_only(impl):
    p = make_problem(9, 4633)
    with torch.no_grad():
        logp = ops.token_logprobs(p.hidden, p.weight, p.tokens, impl=impl)
    assert not logp.requires_grad
    assert_close("logp", logp, reference.token_logprobs(p.hidden, p.weight, p.tokens), atol=1e-12)
