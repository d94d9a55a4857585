"""LPIPS model: parity with the ``lpips`` package on the same backbone weights, shared targets, uint8
frames, micro-batches, weight sources and their errors, the bf16 path, input errors. Small frames only."""

import os

import pytest
import torch

from rlvr_world.models import LPIPS
from rlvr_world.models import lpips as lpips_mod
from rlvr_world.ops import _dispatch
from rlvr_world.testing import assert_close, prepare_torchvision

H, W = 32, 48  # >= AlexNet's 31-pixel minimum; VGG stage 5 is 2 x 3


def _frames(n, seed=0, h=H, w=W):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def lpips_pkg():
    prepare_torchvision()
    lpips = pytest.importorskip("lpips")
    return lpips


@pytest.fixture(scope="module")
def pair(lpips_pkg, request):
    """(the lpips package's LPIPS with a random torchvision backbone and its shipped v0.1 heads, ours with
    the same backbone weights)."""
    import warnings

    net = request.param
    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision's "pretrained is deprecated"
        warnings.simplefilter("ignore")
        theirs = lpips_pkg.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False).eval()
    backbone = {f"features.{k.split('.', 3)[2]}.{k.split('.', 3)[3]}": v
                for k, v in theirs.state_dict().items() if k.startswith("net.slice")}  # net.slice{k}.{i}.w
    return theirs, LPIPS(net, backbone_state_dict=backbone)


@pytest.mark.parametrize("pair", ["vgg", "alex"], indirect=True)
def test_matches_lpips_package(pair):
    theirs, ours = pair
    pred, target = _frames(4, seed=1), _frames(2, seed=2)
    pred[0] = target[0]  # a perfect prediction scores 0
    with torch.no_grad():
        want = theirs(2 * pred - 1, 2 * target.repeat_interleave(2, 0) - 1).flatten()  # [4]
    got = ours(pred, target, group_size=2)
    assert got.dtype == torch.float32 and got.shape == (4,)
    assert float(want[1:].min()) > 1e-3  # the check is not vacuous
    assert_close("LPIPS vs lpips package", got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pair", ["alex"], indirect=True)
def test_clamps_float_frames(pair):
    theirs, ours = pair
    pred, target = _frames(2, seed=3) * 1.4 - 0.2, _frames(2, seed=4)
    with torch.no_grad():
        want = theirs(2 * pred.clamp(0, 1) - 1, 2 * target - 1).flatten()
    assert_close("clamped", ours(pred, target), want, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def alex():
    return LPIPS("alex", random_backbone=True)


def test_group_sharing_equals_explicit_repeat(alex):
    pred, target = _frames(6, seed=5), _frames(2, seed=6)
    shared = alex(pred, target, group_size=3)
    assert_close("shared target", shared, alex(pred, target.repeat_interleave(3, 0)), rtol=1e-5, atol=1e-7)


def test_micro_batches_whole_groups(alex):
    pred, target = _frames(6, seed=7), _frames(3, seed=8)
    whole = alex(pred, target, group_size=2)
    small = LPIPS("alex", random_backbone=True, batch_size=3)  # 3 -> one group of 2 per micro-batch
    assert_close("micro-batched", small(pred, target, group_size=2), whole, rtol=1e-5, atol=1e-7)


def test_perceptual_loss_is_the_metric_with_gradients(alex):
    g = torch.Generator().manual_seed(5)
    target = torch.rand(2, 3, 40, 40, generator=g)
    pred = torch.rand(4, 3, 40, 40, generator=g).requires_grad_()
    loss = alex.perceptual_loss(pred, target, group_size=2)  # [4]
    assert_close("perceptual_loss vs forward", loss.detach(), alex(pred.detach(), target, group_size=2), rtol=1e-6)
    loss.sum().backward()
    assert pred.grad is not None and bool(pred.grad.abs().sum() > 0)
    assert not alex(pred, target, group_size=2).requires_grad  # the reward stays out of autograd


def test_uint8_is_float_over_255(alex):
    pred = (torch.rand(2, 3, H, W) * 256).clamp(max=255).to(torch.uint8)
    target = (torch.rand(2, 3, H, W) * 256).clamp(max=255).to(torch.uint8)
    assert torch.equal(alex(pred, target), alex(pred.float() / 255, target.float() / 255))
    assert torch.equal(alex(pred, target.float() / 255), alex(pred.float() / 255, target.float() / 255))


@pytest.mark.skipif(_dispatch.missing("triton", torch.device("cpu")) is not None, reason="Triton cannot run on CPU here")
def test_triton_head_matches_reference_head(alex):
    pred, target = _frames(4, seed=9), _frames(2, seed=10)
    want = alex(pred, target, group_size=2)
    alex.impl = "triton"
    try:
        got = alex(pred, target, group_size=2)
    finally:
        alex.impl = "auto"
    assert_close("triton head", got, want, rtol=1e-5, atol=1e-7)


def test_bf16_path_close_to_fp32():
    ours = LPIPS("vgg", random_backbone=True)
    bf16 = LPIPS("vgg", random_backbone=True, precision="bf16")
    pred, target = _frames(2, seed=11, h=32, w=32), _frames(1, seed=12, h=32, w=32)
    want = ours(pred, target, group_size=2)
    got = bf16(pred, target, group_size=2)
    assert got.dtype == torch.float32
    assert bf16.features[0].weight.dtype == torch.float32  # the module keeps fp32 weights; bf16 is a cast copy
    assert_close("bf16 vs fp32", got, want, rtol=1e-2)


def test_cast_copy_is_cached_and_refreshed():
    """The CUDA path's bf16 channels_last backbone is a cached copy, rebuilt when the weights change."""
    m = LPIPS("alex", random_backbone=True)
    assert m._backbone(torch.float32, False) is m.features
    cast = m._backbone(torch.bfloat16, True)
    assert cast is m._backbone(torch.bfloat16, True)
    assert cast[0].weight.dtype == torch.bfloat16 and cast[0].weight.is_contiguous(memory_format=torch.channels_last)
    m.load_backbone({f"features.{k}": v * 2 for k, v in m.features.state_dict().items()})
    fresh = m._backbone(torch.bfloat16, True)
    assert fresh is not cast and torch.equal(fresh[0].weight, (m.features[0].weight).bfloat16())


def test_fp32_path_turns_tf32_convs_off_and_restores():
    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    with lpips_mod._ieee_fp32_convs(True):
        assert conv.fp32_precision == "ieee"
    assert conv.fp32_precision == before


def test_frozen_metric_and_state_dict_layout(alex):
    assert not alex.training
    assert not any(p.requires_grad for p in alex.parameters())
    keys = set(alex.state_dict())
    assert {"features.0.weight", "features.10.bias", "lin0.model.1.weight", "lin4.model.1.weight"} <= keys
    assert all(k.startswith(("features.", "lin")) for k in keys)
    again = LPIPS("alex", {k: v for k, v in alex.state_dict().items() if k.startswith("features.")})
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), alex.state_dict().values()))


def test_random_backbone_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = LPIPS("alex", random_backbone=True), LPIPS("alex", random_backbone=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- weight sources ---------------------------------------------------------------------------------


def test_missing_backbone_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("RLVR_WORLD_CACHE", str(tmp_path / "cache"))  # no converted weights either
    for net, file in (("vgg", "vgg16-397923af.pth"), ("alex", "alexnet-owt-7be5be79.pth")):
        with pytest.raises(FileNotFoundError) as err:
            LPIPS(net)
        msg = str(err.value)
        assert file in msg and os.path.join(str(tmp_path), "hub", "checkpoints") in msg
        assert "backbone_state_dict=" in msg and "random_backbone=True" in msg and "TORCH_HOME" in msg
        assert f"python -m rlvr_world.models.lpips_weights --net {net}" in msg
        assert os.path.join(str(tmp_path), "cache", "lpips", f"{net}_imagenet.safetensors") in msg


def test_missing_heads_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setattr(lpips_mod, "_lpips_package_file", lambda net: None)
    monkeypatch.setenv("RLVR_WORLD_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pip install lpips.*lpips_weights --net alex.*lin_state_dict="):
        LPIPS("alex", random_backbone=True)


def test_torchvision_checkpoint_in_torch_home_is_used(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(3)
    sd = {f"features.{k}": torch.randn(v, generator=g) * 0.05 for k, v in alex_shapes().items()}
    sd["classifier.1.weight"] = torch.zeros(4, 9216)  # a full torchvision checkpoint: ignored
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(sd, tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = LPIPS("alex")
    for k, v in m.features.state_dict().items():
        assert torch.equal(v, sd[f"features.{k}"]), k


def alex_shapes():
    return {k: v.shape for k, v in lpips_mod.backbone_features("alex").state_dict().items()}


def _alex_sd():
    return {f"features.{k}": torch.zeros(v) for k, v in alex_shapes().items()}


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd.pop("features.3.bias"), "backbone_state_dict is missing key 'features.3.bias'"),
    (lambda sd: sd.update({"features.4.weight": torch.zeros(1)}), "unexpected key 'features.4.weight'"),
    (lambda sd: sd.update({"net.slice1.0.weight": torch.zeros(1)}), "unexpected key 'net.slice1.0.weight'"),
    (lambda sd: sd.update({"features.0.weight": torch.zeros(64, 3, 3, 3)}),
     r"backbone_state_dict\['features.0.weight'\] must have shape \(64, 3, 11, 11\), got \(64, 3, 3, 3\)"),
    (lambda sd: sd.update({"features.0.bias": torch.zeros(64, dtype=torch.long)}),
     r"backbone_state_dict\['features.0.bias'\] must be a float tensor, got torch.int64"),
])
def test_backbone_state_dict_errors(edit, match):
    sd = _alex_sd()
    edit(sd)
    with pytest.raises(ValueError, match=match):
        LPIPS("alex", backbone_state_dict=sd)


def test_lin_state_dict_errors():
    good = {f"lin{k}.model.1.weight": torch.ones(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))}
    LPIPS("alex", random_backbone=True, lin_state_dict=good)
    bad = dict(good, **{"lin2.model.1.weight": torch.ones(1, 383, 1, 1)})
    with pytest.raises(ValueError, match=r"lin_state_dict\['lin2.model.1.weight'\] must have shape \(1, 384, 1, 1\)"):
        LPIPS("alex", random_backbone=True, lin_state_dict=bad)
    with pytest.raises(ValueError, match="lin_state_dict is missing key 'lin4.model.1.weight'"):
        LPIPS("alex", random_backbone=True, lin_state_dict={k: v for k, v in good.items() if "lin4" not in k})
    with pytest.raises(ValueError, match="unexpected key 'lins.0.model.1.weight'"):
        LPIPS("alex", random_backbone=True, lin_state_dict=dict(good, **{"lins.0.model.1.weight": good["lin0.model.1.weight"]}))


def test_constructor_errors():
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPS("squeeze", random_backbone=True)
    with pytest.raises(ValueError, match="precision must be one of"):
        LPIPS("alex", random_backbone=True, precision="fp16")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        LPIPS("alex", random_backbone=True, batch_size=0)
    with pytest.raises(ValueError, match="impl must be one of"):
        LPIPS("alex", random_backbone=True, impl="cpp")
    with pytest.raises(ValueError, match="not both"):
        LPIPS("alex", _alex_sd(), random_backbone=True)


# ---- inputs -----------------------------------------------------------------------------------------


def test_nan_frames_are_named(alex):
    pred, target = _frames(4, seed=13), _frames(2, seed=14)
    pred[2, 1, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=r"1 predicted frame\(s\) scored NaN: indices 2 .*pred frames: 2; in target frames: none"):
        alex(pred, target, group_size=2)
    pred[2, 1, 5, 7] = 0.5
    target[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"indices 2, 3 .*in target frames: 1, each shared by 2 predictions"):
        alex(pred, target, group_size=2)
    assert torch.isnan(alex(pred, target, group_size=2, check_nan=False)[2:]).all()


@pytest.mark.parametrize("pred,target,g,match", [
    (torch.rand(2, 1, H, W), torch.rand(2, 1, H, W), 1, r"pred must be \[N, 3, H, W\] RGB frames, got shape \(2, 1, 32, 48\)"),
    (torch.rand(2, 3, H, W), torch.rand(3, 3, H, W), 1, r"target must have 2 frames .* got 3"),
    (torch.rand(4, 3, H, W), torch.rand(2, 3, H, W), 3, r"target must have 4 frames .* got 2"),
    (torch.rand(4, 3, H, W), torch.rand(2, 3, H, W), 0, "group_size must be a positive int"),
    (torch.rand(2, 3, H, W), torch.rand(2, 3, H, W + 1), 1, r"target frames must have pred's \(H, W\) = \(32, 48\)"),
    (torch.rand(2, 3, 24, 40), torch.rand(2, 3, 24, 40), 1, "needs frames of at least 31x31"),
    (torch.rand(2, 3, H, W).int(), torch.rand(2, 3, H, W), 1, "pred must be uint8 or float frames, got torch.int32"),
])
def test_input_errors(alex, pred, target, g, match):
    with pytest.raises(ValueError, match=match):
        alex(pred, target, group_size=g)


def test_empty_batch(alex):
    assert alex(torch.rand(0, 3, H, W), torch.rand(0, 3, H, W)).shape == (0,)
