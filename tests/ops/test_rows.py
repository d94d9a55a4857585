"""The row ops under the fused paths: each backend vs the reference, and opcheck of the registered ops."""

import pytest
import torch

from rlvr_world.ops import _library, reference
from rlvr_world.ops._rows import row_backend
from rlvr_world.testing import assert_close
from tests.conftest import cpu_impls

needs_cpp = pytest.mark.skipif(not _library.cpp_available(), reason="C++ extension not built")
PARAMS = dict(clip_low=0.2, clip_high=0.28, clip_c=3.0, kl_coef=0.1)


def _terms_inputs(n=2000, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(n, generator=g, dtype=dtype) * 3 - 5
    old = logp + torch.randn(n, generator=g, dtype=dtype) * torch.tensor([0.05, 0.5, 30.0], dtype=dtype)[
        torch.randint(0, 3, (n,), generator=g)]  # near on-policy, clipped, beyond the +-20 log-ratio clamp
    adv = torch.randn(n, generator=g, dtype=dtype) * 2
    ref = logp + torch.randn(n, generator=g, dtype=dtype) * 3  # some k3 values above the 10 clamp
    mask = torch.rand(n, generator=g) > 0.1
    return logp, old, adv, mask, ref


@pytest.mark.parametrize("impl", cpu_impls())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_ref", [True, False])
def test_grpo_token_terms_match_reference_autograd(impl, dtype, with_ref):
    logp, old, adv, mask, ref = _terms_inputs(dtype=dtype)
    ref = ref if with_ref else None
    scale = 1 / 37
    coef, loss, ratio, kl, flags = row_backend(impl).grpo_token_terms(logp, old, adv, mask, ref, *PARAMS.values(), scale)
    x = logp.clone().requires_grad_()
    t = reference.grpo_token_terms(x, old, adv, ref, **PARAMS)
    (torch.where(mask, t.loss, 0.0).sum() * scale).backward()
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else dict(rtol=2e-6, atol=5e-7)  # k3 = e^k - k - 1 cancels near k = 0
    assert_close("coef = dloss/dlogp", coef, x.grad, **tol)
    assert_close("loss", loss, t.loss.detach(), **tol)
    assert_close("ratio", ratio, t.ratio.detach(), **tol)
    assert_close("kl", kl, t.kl.detach(), **tol)
    expected_flags = t.clipped_low.to(torch.uint8) | (t.clipped_high.to(torch.uint8) << 1) | (t.clipped_dual.to(torch.uint8) << 2)
    assert torch.equal(flags, expected_flags)
    assert t.clipped_low.any() and t.clipped_high.any() and t.clipped_dual.any()


@pytest.mark.parametrize("impl", cpu_impls())
@pytest.mark.parametrize("dtype,vocab", [(torch.float64, 4633), (torch.float32, 4633), (torch.float32, 151936),
                                         (torch.bfloat16, 4633)])
def test_row_logprobs_and_backward(impl, dtype, vocab):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(19, vocab, generator=g, dtype=torch.float64) * 3).to(dtype)
    tokens = torch.randint(0, vocab, (19,), generator=g)
    rows = row_backend(impl)
    logp, lse = rows.row_logprobs(logits, tokens, 1 / 0.8)
    x = logits.double().requires_grad_()
    ref = reference.logprobs_from_logits(x, tokens, 0.8)
    coef = torch.randn(19, generator=g, dtype=torch.float64)
    (ref * coef).sum().backward()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert_close("logp", logp, ref.detach(), atol=tol)
    assert_close("lse", lse, torch.logsumexp(x.detach() / 0.8, -1), atol=tol)
    grad = logits.clone()
    rows.row_logprobs_backward_(grad, tokens, lse, coef.to(lse.dtype), 1 / 0.8, True)
    atol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    assert_close("dlogits", grad, x.grad, atol=atol * float(x.grad.abs().max()))


@needs_cpp
def test_opcheck_registered_ops():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (6,), generator=g)
    ops = torch.ops.rlvr_world
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        logits = torch.randn(6, 50, generator=g).to(dtype)
        torch.library.opcheck(ops.row_logprobs.default, (logits, tokens, 1.25))
        logp, lse = ops.row_logprobs(logits, tokens, 1.25)
        coef = torch.randn(6, generator=g).to(lse.dtype)
        for with_target in (True, False):
            torch.library.opcheck(ops.row_logprobs_backward_.default, (logits.clone(), tokens, lse, coef, 1.25, with_target))
    logp, old, adv, mask, ref = _terms_inputs(64, torch.float32)
    for r in (ref, None):
        torch.library.opcheck(ops.grpo_token_terms.default, (logp, old, adv, mask, r, 0.2, 0.2, 3.0, 0.1, 0.5))


@needs_cpp
def test_registered_ops_check_their_inputs():
    ops = torch.ops.rlvr_world
    logits, tokens = torch.randn(4, 10), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="tokens must have shape"):
        ops.row_logprobs(logits, tokens[:3], 1.0)
    with pytest.raises(ValueError, match="tokens must be Long"):
        ops.row_logprobs(logits, tokens.int(), 1.0)
    with pytest.raises(ValueError, match="logits must be contiguous in its last dim"):
        ops.row_logprobs(torch.randn(10, 4).t(), tokens, 1.0)
    with pytest.raises(ValueError, match="lse must be Float"):
        ops.row_logprobs_backward_(logits, tokens, torch.zeros(4, dtype=torch.float64), torch.zeros(4), 1.0, True)
