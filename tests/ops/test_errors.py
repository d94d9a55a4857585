"""Bad input raises a ValueError naming the argument, the expected and the received; impl rules hold."""

import logging

import pytest
import torch

from rlvr_world import ops
from rlvr_world.ops import _dispatch, _library


def _args(n=4, h=8, v=11):
    return dict(
        hidden=torch.randn(n, h), weight=torch.randn(v, h), tokens=torch.randint(0, v, (n,)),
        old_logp=torch.randn(n), advantages=torch.randn(n), mask=torch.ones(n, dtype=torch.bool),
    )


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(hidden=torch.randn(4, 2, 8)), r"hidden must be 2-D, got shape \(4, 2, 8\)"),
        (dict(weight=torch.randn(11, 7)), r"weight must have shape \(V, 8\).*got \(11, 7\)"),
        (dict(weight=torch.randn(11, 8, dtype=torch.float64)), "weight must have hidden's dtype torch.float32, got torch.float64"),
        (dict(hidden=torch.randint(0, 3, (4, 8))), "hidden must be a float tensor"),
        (dict(tokens=torch.tensor([0, 1, 11, 2])), r"tokens must lie in \[0, 11\).*e.g. 11"),
        (dict(tokens=torch.tensor([0, -1, 1, 2])), r"tokens must lie in \[0, 11\)"),
        (dict(tokens=torch.tensor([0.0, 1, 2, 3])), "tokens must be an integer tensor"),
        (dict(tokens=torch.tensor([0, 1, 2])), r"tokens must have shape \(4,\).*got \(3,\)"),
        (dict(old_logp=torch.randn(5)), r"old_logp must have shape \(4,\).*got \(5,\)"),
        (dict(advantages=torch.randn(4, 1)), r"advantages must be 1-D, got shape \(4, 1\)"),
        (dict(mask=torch.ones(3, dtype=torch.bool)), r"mask must have shape \(4,\)"),
        (dict(old_logp=torch.randn(4, device="meta")), "old_logp must be on hidden/logits's device cpu, got meta"),
        (dict(weight=torch.randn(11, 8, device="meta")), "weight must be on hidden's device cpu, got meta"),
    ],
)
def test_grpo_loss_bad_input(change, match):
    args = _args() | change
    with pytest.raises(ValueError, match=match):
        ops.grpo_loss(**args)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(temperature=0.0), "temperature must be > 0, got 0.0"),
        (dict(clip_low=1.0), r"clip_low must be in \[0, 1\), got 1.0"),
        (dict(clip_c=0.5), "clip_c .* must be > 1, got 0.5"),
        (dict(num_tokens=0), "num_tokens must be > 0, got 0"),
        (dict(impl="fast"), "impl must be one of"),
    ],
)
def test_grpo_loss_bad_scalars(kw, match):
    with pytest.raises(ValueError, match=match):
        ops.grpo_loss(**_args(), **kw)


def test_token_logprobs_bad_input():
    a = _args()
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 11\)"):
        ops.token_logprobs(a["hidden"], a["weight"], torch.full((4,), 11))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ops.token_logprobs(a["hidden"], a["weight"], a["tokens"], temperature=-1.0)


def test_from_logits_rejects_non_contiguous_vocab():
    logits = torch.randn(11, 4).t()  # [4, 11] with vocab stride 4
    a = _args()
    with pytest.raises(ValueError, match=r"logits must be contiguous in the vocab dim \(stride 1\), got strides \(1, 4\)"):
        ops.grpo_loss_from_logits(logits, a["tokens"], a["old_logp"], a["advantages"], a["mask"])


def test_non_contiguous_hidden_and_weight_are_supported():
    a = _args()
    h, w = torch.randn(8, 4).t(), torch.randn(8, 11).t()  # transposed views
    for impl in ("reference",) + (("cpp",) if _library.cpp_available() else ()):
        logp = ops.token_logprobs(h, w, a["tokens"], impl=impl)
        torch.testing.assert_close(logp, ops.token_logprobs(h.contiguous(), w.contiguous(), a["tokens"], impl="reference"))


def test_explicit_unavailable_impl_raises(monkeypatch):
    monkeypatch.setattr(_library, "EXTENSION_PATH", None)
    with pytest.raises(RuntimeError, match="impl='cpp' is unavailable: the C\\+\\+ extension rlvr_world._C is not built"):
        ops.grpo_loss(**_args(), impl="cpp")
    with pytest.raises(RuntimeError, match="impl='cuda' is unavailable: impl='cuda' needs CUDA tensors"):
        ops.token_logprobs(_args()["hidden"], _args()["weight"], _args()["tokens"], impl="cuda")


def test_auto_falls_back_to_reference_with_one_line(monkeypatch, caplog):
    monkeypatch.setattr(_library, "EXTENSION_PATH", None)
    _dispatch._note_fallback.cache_clear()
    a = _args()
    with caplog.at_level(logging.WARNING, logger="rlvr_world"):
        loss_auto, _ = ops.grpo_loss(**a)
        ops.grpo_loss(**a)
    loss_ref, _ = ops.grpo_loss(**a, impl="reference")
    assert torch.equal(loss_auto, loss_ref)
    lines = [r.getMessage() for r in caplog.records if "impl='auto' uses reference" in r.getMessage()]
    assert len(lines) == 1 and "not built" in lines[0]
    _dispatch._note_fallback.cache_clear()


def test_auto_uses_cpp_on_cpu_when_built():
    if _library.cpp_available():
        assert _dispatch.resolve("auto", torch.device("cpu")) == "cpp"
    else:
        assert _dispatch.resolve("auto", torch.device("cpu")) == "reference"
