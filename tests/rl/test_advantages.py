import statistics

import pytest
import torch

from rlvr_world.rl import grpo_advantages


def test_matches_per_group_formula():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25, 3.0, 3.0, 3.0, 1.0])
    got = grpo_advantages(rewards, group_size=4)
    expected = []
    for g in rewards.view(2, 4).tolist():
        mu, sd = statistics.mean(g), statistics.stdev(g)  # unbiased, as the spec says
        expected += [(r - mu) / (sd + 1e-6) for r in g]
    torch.testing.assert_close(got, torch.tensor(expected))


def test_scale_none_is_centred_only():
    rewards = torch.tensor([1.0, 3.0, -2.0, 2.0])
    torch.testing.assert_close(grpo_advantages(rewards, 2, scale="none"), torch.tensor([-1.0, 1.0, -2.0, 2.0]))


def test_constant_group_and_group_of_one_are_zero_not_nan():
    assert torch.equal(grpo_advantages(torch.full((4,), 0.7), 4), torch.zeros(4))
    assert torch.equal(grpo_advantages(torch.tensor([1.0, 2.0]), 1), torch.zeros(2))


def test_integer_rewards_give_float_advantages():
    assert grpo_advantages(torch.tensor([1, 0, 1, 1]), 2).dtype == torch.float32


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.ones(6), 4), "multiple of group_size=4, got 6"),
        ((torch.ones(2, 3), 3), r"1-D tensor \[N\], got \(2, 3\)"),
        ((torch.ones(4), 0), "group_size must be a positive int, got 0"),
    ],
)
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        grpo_advantages(*args)
    with pytest.raises(ValueError, match="scale must be one of"):
        grpo_advantages(torch.ones(4), 2, scale="mad")
