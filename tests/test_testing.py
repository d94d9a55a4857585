"""The closeness helpers fail when they should, and say where."""

import pytest
import torch

from rlvr_world.testing import assert_close, assert_within_eager_error


def test_within_eager_error_passes_and_fails():
    truth = torch.linspace(-1, 1, 50, dtype=torch.float64)
    eager = (truth + 1e-7).float()
    assert_within_eager_error("ok", (truth - 1.5e-7).float(), eager, truth)
    bad = truth.float().clone()
    bad[17] += 1e-3
    with pytest.raises(AssertionError, match=r"at \(17,\): actual .* expected .* eager"):
        assert_within_eager_error("bad", bad, eager, truth)


def test_assert_close_reports_worst_violation_and_nan():
    expected = torch.tensor([1.0, 100.0, 3.0])
    assert_close("ok", expected * (1 + 1e-7), expected, rtol=1e-6)
    with pytest.raises(AssertionError, match=r"at \(2,\)"):
        assert_close("nan", torch.tensor([1.0, 100.0, float("nan")]), expected, atol=1.0)
    with pytest.raises(AssertionError, match="shape"):
        assert_close("shape", expected[:2], expected)
