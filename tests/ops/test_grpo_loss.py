"""grpo_loss and grpo_loss_from_logits: every optimized impl vs the eager reference."""

import pytest
import torch

from rlvr_world import ops
from rlvr_world.ops import reference
from rlvr_world.testing import assert_close, assert_within_eager_error
from tests.conftest import cpu_impls
from tests.ops._cases import make_problem

KW = dict(clip_low=0.2, clip_high=0.28, clip_c=3.0)


def _run(impl, p, dtype, *, kl_coef=0.0, temperature=1.0, num_tokens=None, chunk_size=None, mask=None):
    h, w = p.leaves(dtype)
    mask = p.mask if mask is None else mask
    args = (h, w, p.tokens, p.old_logp, p.advantages, mask, p.ref_logp)
    kw = dict(KW, kl_coef=kl_coef, temperature=temperature, num_tokens=num_tokens)
    if impl == "reference":
        loss, stats = reference.grpo_loss(*args, **kw)
        stats = ops.GRPOStats(**{k: v.float() for k, v in stats.items()})
    else:
        loss, stats = ops.grpo_loss(*args, **kw, impl=impl, chunk_size=chunk_size)
    (loss * 1.7).backward()  # an upstream gradient != 1 must scale the fused gradients
    return loss.detach(), h.grad, w.grad, stats


def _check(impl, p, dtype, **kw):
    truth = _run("reference", p, torch.float64, **kw)
    eager = _run("reference", p, dtype, **kw)
    got = _run(impl, p, dtype, **kw)
    if dtype == torch.float32:
        assert_close("loss", got[0], truth[0], rtol=1e-5, atol=1e-7)
    for name, a, e, t in zip(("loss", "d_hidden", "d_weight"), got[:3], eager[:3], truth[:3]):
        assert_within_eager_error(name, a, e, t)
    return got, truth


@pytest.mark.parametrize("impl", cpu_impls())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "vocab,n,kw",
    [
        (4633, 40, dict()),
        (4633, 40, dict(kl_coef=0.1, temperature=0.7, chunk_size=16)),
        (9008, 24, dict(num_tokens=50, chunk_size=7)),
        (9008, 1, dict(kl_coef=0.05)),
    ],
)
def test_matches_reference(impl, dtype, vocab, n, kw):
    p = make_problem(n, vocab)
    got, truth = _check(impl, p, dtype, **kw)
    for name in ("clip_frac_low", "clip_frac_high", "clip_frac_dual", "kl_mean", "ratio_mean", "ratio_min",
                 "ratio_max"):
        assert_close(f"stats.{name}", getattr(got[3], name), getattr(truth[3], name), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", cpu_impls())
def test_cases_exercise_every_branch(impl):
    """The shared problem really hits clips, dual clip and KL clamp (else the tests above prove little)."""
    p = make_problem(400, 512)
    _, stats = ops.grpo_loss(*p.leaves(torch.float64), p.tokens, p.old_logp, p.advantages, p.mask, p.ref_logp,
                             kl_coef=0.1, impl=impl)
    s = stats.as_dict()
    assert s["clip_frac_low"] > 0 and s["clip_frac_high"] > 0 and s["clip_frac_dual"] > 0
    assert s["kl_mean"] > 0 and s["ratio_min"] < 0.8 and s["ratio_max"] > 1.28


@pytest.mark.parametrize("impl", cpu_impls())
def test_all_masked_gives_zero_loss_and_grads(impl):
    p = make_problem(10, 4633)
    none = torch.zeros(10, dtype=torch.bool)
    loss, dh, dw, stats = _run(impl, p, torch.float32, kl_coef=0.1, mask=none)
    assert float(loss) == 0.0
    assert torch.equal(dh, torch.zeros_like(dh)) and torch.equal(dw, torch.zeros_like(dw))
    assert all(v == 0.0 for v in stats.as_dict().values())


@pytest.mark.parametrize("impl", cpu_impls())
def test_extreme_logits_stay_finite(impl):
    p = make_problem(12, 4633, logit_offset=1e4)
    loss, dh, dw, _ = _run(impl, p, torch.float32, kl_coef=0.1)
    assert torch.isfinite(loss) and torch.isfinite(dh).all() and torch.isfinite(dw).all()


@pytest.mark.parametrize("impl", cpu_impls())
def test_no_grad_path_matches(impl):
    p = make_problem(20, 4633)
    with torch.no_grad():
        loss, _ = ops.grpo_loss(p.hidden, p.weight, p.tokens, p.old_logp, p.advantages, p.mask, impl=impl)
    ref, _ = reference.grpo_loss(p.hidden, p.weight, p.tokens, p.old_logp, p.advantages, p.mask)
    assert_close("loss", loss, ref, rtol=1e-12)


@pytest.mark.parametrize("impl", cpu_impls())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_from_logits_matches_reference(impl, dtype):
    p = make_problem(30, 4633)

    def run(which, dt):
        logits = (p.hidden @ p.weight.T).to(dt).requires_grad_()
        args = (logits, p.tokens, p.old_logp, p.advantages, p.mask, p.ref_logp)
        if which == "reference":
            loss, _ = reference.grpo_loss_from_logits(*args, **KW, kl_coef=0.1, temperature=0.9)
        else:
            loss, _ = ops.grpo_loss_from_logits(*args, **KW, kl_coef=0.1, temperature=0.9, impl=which)
        (loss * 0.5).backward()
        return loss.detach(), logits.grad

    truth, eager, got = run("reference", torch.float64), run("reference", dtype), run(impl, dtype)
    assert got[1].dtype == dtype
    for name, a, e, t in zip(("loss", "d_logits"), got, eager, truth):
        assert_within_eager_error(name, a, e, t)


@pytest.mark.parametrize("impl", cpu_impls())
def test_grad_accumulation_matches_one_batch(impl):
    """num_tokens = global count: two half-batches accumulate to the full batch's gradient."""
    p = make_problem(32, 4633, mask_frac=0.3)
    full = _run(impl, p, torch.float64)
    h, w = p.leaves(torch.float64)
    total = int(p.mask.sum())
    for part in (slice(0, 13), slice(13, 32)):
        loss, _ = ops.grpo_loss(h[part], w, p.tokens[part], p.old_logp[part], p.advantages[part], p.mask[part],
                                **KW, num_tokens=total, impl=impl)
        (loss * 1.7).backward()
    assert_close("d_hidden", h.grad, full[1], atol=1e-12)
    assert_close("d_weight", w.grad, full[2], atol=1e-12)
