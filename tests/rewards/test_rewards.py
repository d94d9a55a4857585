"""The REWARDS dict: names, weighted sums, multi-step reductions, LPIPS-based rewards, and the doctests."""

import doctest
import importlib.util

import pytest
import torch

from rlvr_world import rewards
from rlvr_world.ops import reference
from rlvr_world.rewards import REWARDS, video, weighted
from rlvr_world.testing import assert_close


def _multistep(b=4, t=3, groups=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(groups, t, 3, size, size, generator=g)
    pred = (target.repeat_interleave(b // groups, 0) + 0.2 * torch.randn(b, t, 3, size, size, generator=g)).clamp(0, 1)
    return pred, target


@pytest.fixture(scope="module")
def small_lpips():
    if importlib.util.find_spec("lpips") is None:  # the linear heads come from the lpips package
        pytest.skip("the lpips package (dev extra) is not installed")
    from rlvr_world.models.lpips import LPIPS

    return LPIPS(net="alex", random_backbone=True)


def test_the_paper_rewards_are_registered():
    assert {"neg_mae_lpips", "neg_mse", "neg_mae", "psnr", "ssim", "neg_lpips"} <= set(REWARDS)
    assert all(callable(fn) and fn.__doc__ and ">>>" in fn.__doc__ for fn in REWARDS.values())


def test_single_frame_rewards_are_the_metrics():
    pred, target = _multistep(t=1)
    pred, target = pred[:, 0], target[:, 0]
    truth = reference.frame_metrics(pred, target, 2, dtype=torch.float64)
    assert_close("neg_mse", REWARDS["neg_mse"](pred, target, group_size=2), -truth["mse"], rtol=1e-6)
    assert_close("neg_mae", REWARDS["neg_mae"](pred, target, group_size=2), -truth["mae"], rtol=1e-6)
    assert_close("psnr", REWARDS["psnr"](pred, target, group_size=2), truth["psnr"], atol=1e-5)
    assert_close("ssim", REWARDS["ssim"](pred, target, group_size=2), truth["ssim"], atol=1e-5)


@pytest.mark.parametrize("reduce", ["mean", "last", "discount"])
def test_multistep_reductions(reduce):
    pred, target = _multistep()
    per_step = torch.stack([video.mae(pred[:, t], target[:, t], group_size=2) for t in range(3)], 1)  # [B, T]
    weights = {"mean": torch.ones(3) / 3, "last": torch.tensor([0.0, 0.0, 1.0]),
               "discount": torch.tensor([1.0, 0.9, 0.81]) / 2.71}[reduce]
    got = REWARDS["neg_mae"](pred, target, group_size=2, reduce=reduce)
    assert_close(reduce, got, -(per_step * weights).sum(1), atol=1e-7)
    full = REWARDS["neg_mae"](pred, target.repeat_interleave(2, 0), reduce=reduce)
    assert_close("shared target = repeated target", got, full, atol=0)


def test_reward_with_its_metrics_in_one_pass():
    pred, target = _multistep()
    fn = REWARDS["neg_mse"]
    reward, metrics = rewards.video_reward(pred, target, fn.terms, group_size=2, metrics=("mae", "ssim"))
    assert torch.equal(reward, fn(pred, target, group_size=2))
    assert torch.equal(metrics["mae"], -REWARDS["neg_mae"](pred, target, group_size=2))
    assert torch.equal(metrics["ssim"], REWARDS["ssim"](pred, target, group_size=2))
    assert all(getattr(f, "terms", None) for f in REWARDS.values())  # every named reward declares its weights
    with pytest.raises(ValueError, match="metrics must be names in"):
        rewards.video_reward(pred, target, fn.terms, metrics=("psnrr",))


def test_weighted_sums_the_terms():
    pred, target = _multistep(t=2)
    combo = weighted(mse=-2.0, ssim=0.5)
    expected = -2.0 * REWARDS["neg_mse"](pred, target, group_size=2) * -1 + 0.5 * REWARDS["ssim"](pred, target, group_size=2)
    assert_close("weighted", combo(pred, target, group_size=2), expected, atol=1e-6)
    assert combo.terms == {"mse": -2.0, "ssim": 0.5}
    with pytest.raises(ValueError, match="weighted\\(\\) takes metric names"):
        weighted(fid=1.0)
    with pytest.raises(ValueError, match="reduce must be one of"):
        combo(pred, target, group_size=2, reduce="max")
    with pytest.raises(ValueError, match="target must have pred's T = 2"):
        combo(pred, target[:, :1], group_size=2)
    with pytest.raises(ValueError, match="target must have pred's layout"):
        combo(pred, target[:, 0], group_size=2)


def test_lpips_rewards_use_the_given_network(small_lpips):
    pred, target = _multistep(t=2, size=32)
    lp = torch.stack([small_lpips(pred[:, t], target[:, t], group_size=2) for t in range(2)], 1).mean(1)
    mae = torch.stack([video.mae(pred[:, t], target[:, t], group_size=2) for t in range(2)], 1).mean(1)
    assert bool((lp > 0).all())
    assert_close("neg_lpips", REWARDS["neg_lpips"](pred, target, group_size=2, lpips=small_lpips), -lp, rtol=1e-5)
    assert_close("neg_mae_lpips", REWARDS["neg_mae_lpips"](pred, target, group_size=2, lpips=small_lpips),
                 -(mae + lp), rtol=1e-5)


def test_doctests():
    op = importlib.import_module("rlvr_world.ops.frame_metrics")  # the attribute of that name is the function
    modules = [rewards, video, op]
    if importlib.util.find_spec("lpips") is None:  # the LPIPS examples need the package's linear heads
        modules.remove(rewards)
    for module in modules:
        result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, (module.__name__, result)
