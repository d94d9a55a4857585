"""Benchmark of the video rewards of one RL step (MSE/MAE/PSNR, SSIM, LPIPS, advantages) against the
paper's reward path and the usual libraries.

What it decides:

* The timed call scores B predicted frames [B, 3, H, W] against B / G true frames (G = 16 consecutive
  predictions share one; ``--group-size``), as a reward stage does. Metrics (``--metrics``):
  ``pixel`` = MSE + MAE + PSNR in one call; ``ssim``; ``lpips`` (VGG); ``default`` = the paper's reward
  -(MAE + LPIPS) (``REWARDS["neg_mae_lpips"]``); ``step`` = every reward (MSE, MAE, PSNR, SSIM, LPIPS)
  plus the GRPO advantages of the default reward (``rl.grpo_advantages``), i.e. the whole reward stage.
  Every implementation runs under ``torch.no_grad()`` on the same inputs in one process.
* Inputs per case (seeded): smooth random true frames (bicubic upsampling of 1/16-resolution noise plus
  fine noise), each prediction = its true frame + Gaussian noise whose level differs per prediction
  (sigma in [0.01, 0.1]) plus a small brightness shift, clamped and quantised to uint8: PSNR ~20-37 dB,
  SSIM ~0.4-0.98, so rewards and advantages are not degenerate. ``--dtype bf16`` (fp32) frames are
  the same uint8 frames / 255 in that dtype.
* Implementations: ``rlvr_triton`` / ``rlvr_cuda`` / ``rlvr_cpp`` / ``rlvr_reference`` are ours
  (``rewards.video.frame_metrics(..., impl=...)``, ``models.lpips.LPIPS(impl=...)`` with precision bf16
  on a GPU and fp32 on a CPU, ``--lpips-precision``). LPIPS's head has the backends reference / triton
  only: the rlvr_cpp and rlvr_cuda rows of ``default`` and ``step`` use its ``auto`` head (triton on a
  GPU, the eager reference on a CPU), and their ``lpips`` rows are skipped as duplicates. Baselines,
  each converting uint8 / bf16 frames to fp32 [0, 1] inside the timed call:
  ``reference_path`` (what the paper's code does: the true frame repeated per prediction, piqa fp32
  ``SSIM`` / ``PSNR``, eager MSE / MAE, ``lpips.LPIPS(net='vgg')`` fp32 in micro-batches of 8, results
  copied to the CPU, advantages computed there), ``torchmetrics`` (functional SSIM with a Gaussian
  kernel 11 / sigma 1.5 / data_range 1 and PSNR; in ``step`` with the lpips package on the whole
  batch), ``pytorch_msssim`` (``ssim(..., win_size=11, win_sigma=1.5, size_average=False)``) and
  ``lpips_full`` (the lpips package on the whole batch at once, true frames repeated). Combinations a
  library does not offer (e.g. pytorch_msssim x lpips) are not listed.
* LPIPS weights: nothing is downloaded. One ``LPIPS(random_backbone=True)`` (seeded Kaiming VGG16, the
  v0.1 heads the lpips wheel ships) gives the weights; each of our modules is built from its state dict
  (``backbone_state_dict`` / ``lin_state_dict``), and the lpips package, built with ``pnet_rand=True``,
  gets the same backbone (``features.{i}`` -> ``net.slice{k}.{i}``) and heads copied in, so every LPIPS
  computes the same function. Timing does not depend on the weight values.
* Correctness gate (``--check``, on by default; DESIGN §7): before timing, each implementation's
  per-frame values from its first call are compared with the fp64 specification:
  ``ops.reference.frame_metrics`` in fp64 on the same frames (whole batch, in chunks) for MSE, MAE, PSNR
  and SSIM; the lpips package in fp64 on the first and the last group of predictions for LPIPS.
  pix_err / ssim_err = max |x - x_ref| (uint8 / fp32 frames, tolerance 1e-4) or max |x - x_ref| /
  max |x_ref| (bf16 frames, tolerance 1e-3); pix_err is the worst of MSE, MAE, PSNR. lpips_err = max
  |x - x_ref| / max |x_ref| (tolerance 1e-3 for fp32 LPIPS on a CPU, 2e-2 for bf16 LPIPS or fp32 on a GPU,
  where cuDNN convolves in TF32 by default); for ``default`` it is that error of the reward. adv_err
  (``step``) = max |A - A_ref| of the advantages from this row's rewards vs from the fp64 rewards
  (tolerance 1e-3 where LPIPS is gated at 1e-3, else 5e-2: a reward error e moves an advantage by about
  e / the group's reward std). torchmetrics' SSIM is a different function (reflect padding, mean over
  the full H x W map): it is gated against that definition in fp64. A failing row is not timed.
* roofline fraction ``frac_roof`` = the floor time of the metric on the device / median (blank on a CPU):
  pixel: bytes / HBM, bytes = (B + B / G) x 3HW x element size; ssim: max(bytes / HBM, flops / fp32
  peak), flops = B x 3 x (H - 10)(W - 10) x 240 (5 blurred maps x 2 separable passes x 2K FLOPs with
  K = 11, + 20 for the SSIM formula, per valid output pixel and channel); lpips: (B + B / G) x VGG16 conv
  FLOPs (sum of 2 Cin Cout 9 Hout Wout over the 13 convs up to relu5_3) / bf16 peak; default: lpips +
  pixel floors; step: lpips + ssim floors. Peaks are the harness's (DESIGN §7: H100 3.0 TB/s, 60 TFLOP/s
  fp32, 800 TFLOP/s bf16).
* A call slower than 2 s (the reference path's LPIPS on a CPU) is timed 3 times, the gate's call
  serving as warm-up. CUDA out-of-memory is recorded as 'oom' and the run goes on.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import importlib.util
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import _harness
import torch
import torch.nn.functional as F

from rlvr_world.ops import _dispatch, reference
from rlvr_world.rl.advantages import grpo_advantages
from rlvr_world.testing import prepare_torchvision


@dataclass(frozen=True)
class Case:
    b: int
    c: int
    h: int
    w: int
    metrics: tuple[str, ...] | None = None  # None: every metric


SHAPES = {
    "gpu": [Case(b, 3, h, w) for h, w in ((256, 320), (64, 64)) for b in (256, 1024, 2048)],
    "cpu": [Case(64, 3, 64, 64, ("pixel", "ssim")), Case(32, 3, 256, 320, ("pixel", "ssim")),
            Case(32, 3, 64, 64, ("lpips", "default", "step"))],
}
METRICS = ("pixel", "ssim", "lpips", "default", "step")
OURS = ("rlvr_triton", "rlvr_cuda", "rlvr_cpp", "rlvr_reference")
BASELINES = ("reference_path", "torchmetrics", "pytorch_msssim", "lpips_full")
IMPLS = OURS + BASELINES
APPLIES = {  # baseline -> the metrics it has an implementation for
    "reference_path": METRICS,
    "torchmetrics": ("pixel", "ssim", "step"),
    "pytorch_msssim": ("ssim",),
    "lpips_full": ("lpips", "default"),
}
DTYPES = {"uint8": torch.uint8, "bf16": torch.bfloat16, "fp32": torch.float32}
ELEM_BYTES = {"uint8": 1, "bf16": 2, "fp32": 4}
WINDOW, SIGMA = 11, 1.5
PIX_TOL_ABS, PIX_TOL_REL = 1e-4, 1e-3  # uint8 / fp32 frames: absolute; bf16 frames: relative
LPIPS_TOL = {"exact": 1e-3, "half": 2e-2}  # fp32 LPIPS on a CPU / bf16 LPIPS, or fp32 (TF32) on a GPU
ADV_TOL = {"exact": 1e-3, "half": 5e-2}
REF_MICRO_BATCH = 8  # the paper's LPIPS micro-batch
SPEC_CHUNK = 64  # predictions per chunk of the fp64 pixel / SSIM specification
SLOW_CALL_S = 2.0
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # lpips' net.slice1..5 = features[a:b]
COLUMNS = ["set", "B", "H", "W", "G", "dtype", "metric", "impl", "median_ms", "p20_ms", "p80_ms", "frames_per_s",
           "x_ref", "x_best", "frac_roof", "mem_mib", "pix_err", "ssim_err", "lpips_err", "adv_err", "status"]
CSV_COLUMNS = COLUMNS[:-1] + ["best_base", "lpips_precision", "warmup", "reps", "status"]


# ---- inputs ---------------------------------------------------------------------------------------------
@dataclass
class Frames:
    pred: torch.Tensor  # [B, 3, H, W] uint8 / bf16 / fp32
    target: torch.Tensor  # [B / G, 3, H, W], same dtype
    g: int


def make_frames(case: Case, g: int, dtype_name: str, device, seed: int) -> Frames:
    """Smooth true frames, predictions = truth + per-prediction noise; quantised to uint8 then cast."""
    gen = torch.Generator(device=device).manual_seed(seed)
    n_true = case.b // g
    low = torch.rand(n_true, case.c, max(case.h // 16, 2), max(case.w // 16, 2), generator=gen, device=device)
    true = F.interpolate(low, size=(case.h, case.w), mode="bicubic", align_corners=False)
    true = (true + 0.03 * torch.randn(true.shape, generator=gen, device=device)).clamp_(0, 1)
    true_u8 = (true * 255).round_().to(torch.uint8)  # [B/G, C, H, W]
    del low, true
    pred_u8 = torch.empty(case.b, case.c, case.h, case.w, dtype=torch.uint8, device=device)
    sigma = 0.01 + 0.09 * torch.rand(case.b, generator=gen, device=device)  # [B] noise level per prediction
    shift = 0.02 * torch.randn(case.b, generator=gen, device=device)  # [B] brightness shift per prediction
    chunk = max(g, 256 // g * g)  # whole groups, fp32 temporaries of ~256 frames at most
    for s in range(0, case.b, chunk):
        e = min(case.b, s + chunk)
        base = (true_u8[s // g:e // g].float() / 255).repeat_interleave(g, dim=0)  # [e - s, C, H, W]
        noise = torch.randn(base.shape, generator=gen, device=device)
        x = base + sigma[s:e, None, None, None] * noise + shift[s:e, None, None, None]
        pred_u8[s:e] = (x.clamp_(0, 1) * 255).round_().to(torch.uint8)
        del base, noise, x
    if dtype_name == "uint8":
        return Frames(pred_u8, true_u8, g)
    dtype = DTYPES[dtype_name]
    return Frames((pred_u8.float() / 255).to(dtype), (true_u8.float() / 255).to(dtype), g)


def to_unit_fp32(x: torch.Tensor) -> torch.Tensor:
    """What a baseline does with our frames first: fp32 in [0, 1] (uint8 / 255)."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


# ---- LPIPS networks -------------------------------------------------------------------------------------
def lpips_precision(args, device) -> str:
    if args.lpips_precision != "auto":
        return args.lpips_precision
    return "bf16" if device.type == "cuda" else "fp32"


def lpips_exactness(precision: str, device) -> str:
    """'exact' when LPIPS runs true fp32 (a CPU), 'half' for bf16, or fp32 convs on a GPU (TF32 default)."""
    return "exact" if precision == "fp32" and device.type == "cpu" else "half"


@functools.cache
def _lpips_weights() -> tuple[dict, dict]:
    """(backbone, heads) state dicts of our seeded random-backbone VGG LPIPS, in its public layouts."""
    from rlvr_world.models.lpips import LPIPS

    sd = LPIPS(net="vgg", random_backbone=True, precision="fp32", impl="reference").state_dict()
    return ({k: v for k, v in sd.items() if k.startswith("features.")},
            {k: v for k, v in sd.items() if k.startswith("lin")})


@functools.cache
def our_lpips(head_impl: str, precision: str, device_key: str):
    """Our LPIPS (VGG) with the random backbone of ``_lpips_weights``, one per head backend and precision."""
    from rlvr_world.models.lpips import LPIPS

    backbone, heads = _lpips_weights()
    return LPIPS(net="vgg", backbone_state_dict=backbone, lin_state_dict=heads, precision=precision,
                 impl=head_impl).to(device_key)


@functools.cache
def package_lpips(device_key: str, fp64: bool = False):
    """lpips.LPIPS(net='vgg') with our random backbone and the same v0.1 heads copied in."""
    if fp64:
        return copy.deepcopy(package_lpips(device_key)).double()
    prepare_torchvision()
    import warnings

    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's 'pretrained' deprecation notes
        pkg = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    backbone, heads = _lpips_weights()
    ours = {**backbone, **heads}
    mapped = {}
    for k, (a, b) in enumerate(VGG16_SLICES, start=1):
        for i in range(a, b):
            for p in ("weight", "bias"):
                if f"features.{i}.{p}" in ours:
                    mapped[f"net.slice{k}.{i}.{p}"] = ours[f"features.{i}.{p}"]
    mapped.update({k: v for k, v in ours.items() if k.startswith("lin")})
    # the package lists each head twice (lin{k} and lins.{k}, one module): lin{k} keys stand for both
    missing = [k for k in pkg.state_dict() if k.startswith(("net.", "lin")) and not k.startswith("lins.")
               and k not in mapped]
    if missing:
        raise RuntimeError(f"cannot map our LPIPS weights onto the lpips package: {missing[:3]} missing")
    pkg.load_state_dict(mapped, strict=False)
    return pkg.to(device_key).eval().requires_grad_(False)


def package_lpips_values(pkg, x: torch.Tensor, y_rep: torch.Tensor, micro_batch: int | None) -> torch.Tensor:
    """The lpips package on [0, 1] frames (normalize=True maps to [-1, 1]), whole batch or micro-batches."""
    if micro_batch is None:
        return pkg(x, y_rep, normalize=True).flatten()
    outs = [pkg(x[s:s + micro_batch], y_rep[s:s + micro_batch], normalize=True).flatten()
            for s in range(0, x.shape[0], micro_batch)]
    return torch.cat(outs)


# ---- the specification (fp64) ----------------------------------------------------------------------------
class Spec:
    """fp64 truth of one case, computed on demand and cached."""

    def __init__(self, frames: Frames, device):
        self.f, self.device, self._cache = frames, device, {}
        b, g = frames.pred.shape[0], frames.g
        groups = sorted({0, b // g - 1})
        self.groups = groups  # the groups of predictions LPIPS is checked on (first and last)
        self.idx = torch.cat([torch.arange(q * g, (q + 1) * g) for q in groups]).to(device)  # [n_check]

    def _get(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def pixel(self) -> dict[str, torch.Tensor]:
        """mse, mae, psnr, ssim [B] fp64, by ops.reference.frame_metrics in chunks of whole groups."""
        def compute():
            f, g = self.f, self.f.g
            chunk = max(g, SPEC_CHUNK // g * g)
            parts = []
            for s in range(0, f.pred.shape[0], chunk):
                e = min(f.pred.shape[0], s + chunk)
                parts.append(reference.frame_metrics(f.pred[s:e], f.target[s // g:e // g], g, window=WINDOW,
                                                     sigma=SIGMA, dtype=torch.float64))
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return self._get("pixel", compute)

    def ssim_torchmetrics(self) -> torch.Tensor:
        """torchmetrics' SSIM definition in fp64: reflect-pad by (K - 1) / 2, same-size map, mean over H x W."""
        def compute():
            f, g, pad = self.f, self.f.g, (WINDOW - 1) // 2
            win = reference.gaussian_window(WINDOW, SIGMA, torch.float64).to(self.device)
            chunk = max(g, SPEC_CHUNK // g * g)
            parts = []
            for s in range(0, f.pred.shape[0], chunk):
                e = min(f.pred.shape[0], s + chunk)
                x = reference.frames_to_unit(f.pred[s:e])
                y = reference.frames_to_unit(f.target[s // g:e // g]).repeat_interleave(g, dim=0)
                x, y = (F.pad(t, (pad,) * 4, mode="reflect") for t in (x, y))
                parts.append(reference.ssim_map(x, y, win).flatten(1).mean(1))
            return torch.cat(parts)
        return self._get("ssim_tm", compute)

    def lpips(self) -> torch.Tensor:
        """LPIPS [n_check] fp64 of the checked predictions, by the lpips package in fp64."""
        def compute():
            pkg = package_lpips(str(self.device), fp64=True)
            x = reference.frames_to_unit(self.f.pred[self.idx])
            y = reference.frames_to_unit(self.f.target[torch.tensor(self.groups, device=self.device)])
            with torch.no_grad():
                return package_lpips_values(pkg, x, y.repeat_interleave(self.f.g, dim=0), REF_MICRO_BATCH)
        return self._get("lpips", compute)

    def advantages(self) -> torch.Tensor:
        """GRPO advantages [n_check] of the default reward -(MAE + LPIPS), fp64."""
        def compute():
            reward = -(self.pixel()["mae"][self.idx] + self.lpips())
            return grpo_advantages(reward, self.f.g)
        return self._get("adv", compute)


# ---- the timed calls ---------------------------------------------------------------------------------------
def frame_kernel_missing(backend: str, device) -> str | None:
    """Why ours cannot run frame_metrics with ``backend`` on ``device`` (None when it can)."""
    if backend == "reference":
        return None
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device.type != "cuda":
            return "Triton kernels run on CUDA (the CPU interpreter is for tests)"
        if importlib.util.find_spec("rlvr_world.kernels.frame_metrics") is None:
            return "rlvr_world.kernels.frame_metrics does not exist yet"
        return None
    if backend == "cuda" and device.type != "cuda":
        return "impl='cuda' needs a CUDA device"
    why = _dispatch.missing(backend, device)
    if why is not None:
        return why
    key = "CUDA" if device.type == "cuda" else "CPU"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("rlvr_world::frame_metrics", key):
        return f"rlvr_world._C has no {key} frame_metrics kernel (rebuild: make ext)"
    return None


def unavailable(impl: str, metric: str, device) -> str | None:
    """Why ``impl`` cannot run ``metric`` on ``device`` here (None when it can)."""
    if impl.startswith("rlvr_"):
        backend = impl.removeprefix("rlvr_")
        if metric in ("lpips", "default", "step") and importlib.util.find_spec("rlvr_world.models.lpips") is None:
            return "rlvr_world.models.lpips does not exist yet"
        if backend == "cuda" and device.type != "cuda":
            return "impl='cuda' needs a CUDA device"
        if metric == "lpips":
            if backend in ("cpp", "cuda"):
                head = "triton" if device.type == "cuda" else "reference"
                return f"LPIPS has no {backend} head (auto = {head}: see rlvr_{head})"
            if backend == "triton":
                return _dispatch.missing("triton", device) if device.type == "cuda" else \
                    "Triton kernels run on CUDA (the CPU interpreter is for tests)"
            return None
        return frame_kernel_missing(backend, device)
    needs = {"reference_path": ["piqa"] + (["lpips"] if metric in ("lpips", "default", "step") else []),
             "torchmetrics": ["torchmetrics"] + (["lpips"] if metric == "step" else []),
             "pytorch_msssim": ["pytorch_msssim"], "lpips_full": ["lpips"]}[impl]
    absent = [m for m in needs if importlib.util.find_spec(m) is None]
    if absent:
        return f"{', '.join(absent)} not installed (benchmarks/README.md says how)"
    return None


def lpips_head_impl(backend: str) -> str:
    """Our LPIPS head for a row: its own backend where it has one, else auto (triton on CUDA, reference on CPU)."""
    return backend if backend in ("reference", "triton") else "auto"


def ours_fn(backend: str, metric: str, f: Frames, device, precision: str):
    """impl='rlvr_<backend>' -> a no-argument function returning this metric's outputs."""
    from rlvr_world.rewards import REWARDS
    from rlvr_world.rewards.video import frame_metrics

    pred, target, g = f.pred, f.target, f.g
    net = our_lpips(lpips_head_impl(backend), precision, str(device)) if metric in ("lpips", "default", "step") else None
    if metric == "pixel":
        return lambda: frame_metrics(pred, target, g, ("mse", "mae", "psnr"), impl=backend)
    if metric == "ssim":
        return lambda: {"ssim": frame_metrics(pred, target, g, ("ssim",), impl=backend)["ssim"]}
    if metric == "lpips":
        return lambda: {"lpips": net(pred, target, group_size=g)}
    if metric == "default":
        reward = REWARDS["neg_mae_lpips"]
        return lambda: {"reward": reward(pred, target, group_size=g, lpips=net, impl=backend)}

    def step():
        out = frame_metrics(pred, target, g, ("mse", "mae", "psnr", "ssim"), impl=backend)
        out["lpips"] = net(pred, target, group_size=g)
        out["adv"] = grpo_advantages(-(out["mae"] + out["lpips"]), g)  # the paper's default reward
        return out

    return step


def baseline_fn(impl: str, metric: str, f: Frames, device):
    """A baseline as its users write it: fp32 [0, 1] frames, the true frame repeated per prediction."""
    prepare_torchvision()
    pred, target, g = f.pred, f.target, f.g
    want = {"pixel": ("mse", "mae", "psnr"), "ssim": ("ssim",), "lpips": ("lpips",), "default": ("mae", "lpips"),
            "step": ("mse", "mae", "psnr", "ssim", "lpips")}[metric]
    pkg = package_lpips(str(device)) if "lpips" in want else None
    micro = REF_MICRO_BATCH if impl == "reference_path" else None  # lpips_full / torchmetrics: whole batch
    if impl == "reference_path":
        import piqa

        ssim_fn = piqa.SSIM(window_size=WINDOW, sigma=SIGMA, n_channels=pred.shape[1], reduction="none").to(device)
        psnr_fn = piqa.PSNR(reduction="none")
    elif impl == "torchmetrics":
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

        def ssim_fn(x, y):
            return structural_similarity_index_measure(x, y, gaussian_kernel=True, sigma=SIGMA, kernel_size=WINDOW,
                                                       data_range=1.0, reduction="none")

        def psnr_fn(x, y):
            return peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    elif impl == "pytorch_msssim":
        import pytorch_msssim

        def ssim_fn(x, y):
            return pytorch_msssim.ssim(x, y, data_range=1, win_size=WINDOW, win_sigma=SIGMA, size_average=False)

    def call():
        x = to_unit_fp32(pred)  # [B, C, H, W]
        y = to_unit_fp32(target).repeat_interleave(g, dim=0)  # [B, C, H, W]
        out = {}
        if "mse" in want:
            out["mse"] = (x - y).square().mean(dim=(1, 2, 3))
        if "mae" in want:
            out["mae"] = (x - y).abs().mean(dim=(1, 2, 3))
        if "psnr" in want:
            out["psnr"] = psnr_fn(x, y)
        if "ssim" in want:
            out["ssim"] = ssim_fn(x, y)
        if "lpips" in want:
            out["lpips"] = package_lpips_values(pkg, x, y, micro)
        if metric == "default":
            out = {"reward": -(out["mae"] + out["lpips"])}
        if impl == "reference_path":  # the paper's code copies rewards to the CPU and computes advantages there
            out = {k: v.cpu() for k, v in out.items()}
        if metric == "step":
            out["adv"] = grpo_advantages(-(out["mae"] + out["lpips"]), g)
        return out

    return call


# ---- gate ----------------------------------------------------------------------------------------------------
def _err(actual: torch.Tensor, expected: torch.Tensor, relative: bool) -> float:
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.shape != e.shape:
        return math.nan
    d = float((a - e).abs().max())
    return d / max(float(e.abs().max()), 1e-30) if relative else d


def check(out: dict, metric: str, impl: str, spec: Spec, dtype_name: str, exactness: str, row: dict) -> str | None:
    """Fill the error columns of ``row``; return why the row fails the gate (None when it passes)."""
    relative = dtype_name == "bf16"
    pix_tol = PIX_TOL_REL if relative else PIX_TOL_ABS
    fails = []
    idx_cpu = spec.idx.cpu()
    if any(k in out for k in ("mse", "mae", "psnr")):
        ref = dict(spec.pixel())
        if impl == "torchmetrics":  # its PSNR has no eps: 10 log10(1 / MSE)
            ref["psnr"] = 10 * torch.log10(1.0 / ref["mse"])
        row["pix_err"] = max(_err(out[k], ref[k], relative) for k in ("mse", "mae", "psnr") if k in out)
        if not row["pix_err"] <= pix_tol:
            fails.append(f"pix_err > {pix_tol:g}")
    if "ssim" in out:
        ref = spec.ssim_torchmetrics() if impl == "torchmetrics" else spec.pixel()["ssim"]
        row["ssim_err"] = _err(out["ssim"], ref, relative)
        if not row["ssim_err"] <= pix_tol:
            fails.append(f"ssim_err > {pix_tol:g}")
    lp_tol = LPIPS_TOL[exactness]
    if "lpips" in out:
        row["lpips_err"] = _err(out["lpips"].cpu()[idx_cpu], spec.lpips(), relative=True)
    if "reward" in out:
        ref = -(spec.pixel()["mae"][spec.idx] + spec.lpips())
        row["lpips_err"] = _err(out["reward"].cpu()[idx_cpu], ref, relative=True)
    if row.get("lpips_err") is not None and not row["lpips_err"] <= lp_tol:
        fails.append(f"lpips_err > {lp_tol:g}")
    if "adv" in out:
        row["adv_err"] = _err(out["adv"].cpu()[idx_cpu], spec.advantages(), relative=False)
        if not row["adv_err"] <= ADV_TOL[exactness]:
            fails.append(f"adv_err > {ADV_TOL[exactness]:g}")
    return ", ".join(fails) or None


# ---- running -------------------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def vgg16_flops(h: int, w: int) -> int:
    """Conv FLOPs of VGG16 features[:30] (up to relu5_3) on one h x w image: sum of 2 Cin Cout 9 H W."""
    flops, c_in = 0, 3
    for v in VGG16_CFG:
        if v == "M":
            h, w = h // 2, w // 2
        else:
            flops += 2 * c_in * v * 9 * h * w
            c_in = v
    return flops


def floor_seconds(metric: str, case: Case, g: int, dtype_name: str, device) -> float | None:
    """The metric's roofline time on this device (None without known limits)."""
    tbps, fp32, half = (_harness.peak_tbps(device), _harness.peak_tflops(device, torch.float32),
                        _harness.peak_tflops(device, torch.bfloat16))
    if tbps is None or fp32 is None or half is None:
        return None
    n = case.c * case.h * case.w
    bytes_ = (case.b + case.b // g) * n * ELEM_BYTES[dtype_name]
    pixel = bytes_ / (tbps * 1e12)
    ssim_flops = case.b * case.c * (case.h - WINDOW + 1) * (case.w - WINDOW + 1) * (2 * 5 * 2 * WINDOW + 20)
    ssim = max(pixel, ssim_flops / (fp32 * 1e12))
    lpips = (case.b + case.b // g) * vgg16_flops(case.h, case.w) / (half * 1e12)
    return {"pixel": pixel, "ssim": ssim, "lpips": lpips, "default": lpips + pixel, "step": lpips + ssim}[metric]


def run_once(fn, device):
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def bench_impl(impl, metric, case, f: Frames, spec: Spec, device, args, row):
    """Gate then time one implementation of one metric; fills ``row`` in place."""
    why = unavailable(impl, metric, device)
    if why is not None:
        row["status"] = f"skipped: {why}"
        return
    precision = lpips_precision(args, device)
    uses_lpips = metric in ("lpips", "default", "step")
    if impl.startswith("rlvr_"):
        fn = ours_fn(impl.removeprefix("rlvr_"), metric, f, device, precision)
        exactness = lpips_exactness(precision, device)
        row["lpips_precision"] = precision if uses_lpips else None
    else:
        fn = baseline_fn(impl, metric, f, device)
        exactness = lpips_exactness("fp32", device)
        row["lpips_precision"] = "fp32" if uses_lpips else None
    out, call_s = run_once(fn, device)  # the gate's call, also the first warm-up
    if args.check:
        failed = check(out, metric, impl, spec, row["dtype"], exactness, row)
        if failed:
            row["status"] = f"failed: {failed}"
            return
    del out
    slow = call_s > SLOW_CALL_S
    warmup = 0 if slow else max(args.warmup - 1, 0)
    reps = min(args.reps, 3) if slow else args.reps

    def timed():
        with torch.no_grad():
            return fn()

    timing = _harness.time_fn(timed, warmup=warmup, reps=reps, device=device)
    mem = _harness.peak_extra_memory(timed, device)
    floor = floor_seconds(metric, case, f.g, row["dtype"], device)
    row.update(median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms,
               frames_per_s=case.b / (timing.median_ms * 1e-3),
               frac_roof=floor / (timing.median_ms * 1e-3) if floor is not None else None,
               mem_mib=mem / 2**20 if mem is not None else None, warmup=1 + warmup, reps=reps, status="ok")


def add_speedups(rows):
    """x_ref = reference_path's median / this median; x_best = the fastest other baseline's / this median."""
    ok = {r["impl"]: r["median_ms"] for r in rows if r.get("status") == "ok"}
    others = {i: m for i, m in ok.items() if i in BASELINES and i != "reference_path"}
    best = min(others, key=others.get) if others else None
    for r in rows:
        if r.get("status") != "ok":
            continue
        if "reference_path" in ok and r["impl"] != "reference_path":
            r["x_ref"] = ok["reference_path"] / r["median_ms"]
        if best is not None and r["impl"] != best:
            r["x_best"] = ok[best] / r["median_ms"]
            r["best_base"] = best


def bench_case(set_name, case: Case, dtype_name, metrics, impls, device, args) -> list[dict]:
    """All metrics and implementations on one case and dtype; returns its rows."""
    g = args.group_size
    base = {"set": set_name, "B": case.b, "H": case.h, "W": case.w, "G": g, "dtype": dtype_name}
    plan = [(m, i) for m in metrics for i in impls if i in OURS or m in APPLIES[i]]
    rows = [{**base, "metric": m, "impl": i} for m, i in plan]
    if case.b % g:
        for r in rows:
            r["status"] = f"skipped: B={case.b} is not a multiple of G={g}"
        return rows
    try:
        f = make_frames(case, g, dtype_name, device, args.seed)
    except RuntimeError as err:
        if not _is_oom(err):
            raise
        for r in rows:
            r["status"] = "oom (inputs)"
        return rows
    spec = Spec(f, device)
    label = f"{set_name} B={case.b} {case.h}x{case.w} G={g} {dtype_name}"
    for (metric, impl), row in zip(plan, rows):
        try:
            bench_impl(impl, metric, case, f, spec, device, args, row)
        except Exception as err:  # noqa: BLE001 - one implementation's failure must not end the run
            first_line = (str(err).splitlines() or [""])[0][:120]
            row["status"] = "oom" if _is_oom(err) else f"error: {type(err).__name__}: {first_line}"
        finally:
            _free(device)
        timing = f", {row['median_ms']:.2f} ms" if row.get("median_ms") is not None else ""
        print(f"[{label}] {metric} {impl}: {row.get('status')}{timing}", file=sys.stderr)
    del f, spec
    _free(device)
    for metric in metrics:
        add_speedups([r for r in rows if r["metric"] == metric])
    return rows


def default_impls(device) -> list[str]:
    if device.type == "cpu":
        return ["rlvr_cpp", "rlvr_reference", *BASELINES]
    return ["rlvr_triton", "rlvr_cuda", "rlvr_reference", *BASELINES]


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description="Time the video rewards of one RL step (rlvr_world.rewards: MSE/MAE/PSNR, SSIM, LPIPS, the "
                    "default reward -(MAE+LPIPS), and the whole step with GRPO advantages) beside the paper's "
                    "reward path (piqa + lpips in micro-batches of 8), torchmetrics, pytorch-msssim and the lpips "
                    "package, on the same frames; gate each on the fp64 reference first; print a table and append "
                    "CSV rows tagged with device, versions, git SHA.",
        epilog="Example (CPU): python benchmarks/bench_rewards.py --device cpu --shapes cpu",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu",
                   help="where to run (default: cuda if available, else cpu)")
    p.add_argument("--shapes", default=None,
                   help="comma list of shape sets: gpu (B 256/1024/2048 x 3x256x320 and 3x64x64, every metric), "
                        "cpu (B 64 x 64x64 and B 32 x 256x320 for pixel/ssim, B 32 x 64x64 for lpips/default/step), "
                        "all; default gpu on cuda, cpu on cpu")
    p.add_argument("--dtype", default="uint8,bf16",
                   help="comma list of frame dtypes among uint8, bf16, fp32 (default uint8,bf16)")
    p.add_argument("--metrics", default=",".join(METRICS),
                   help=f"comma list among {','.join(METRICS)} (default all): pixel = MSE+MAE+PSNR in one call, "
                        "default = -(MAE+LPIPS), step = all rewards + GRPO advantages")
    p.add_argument("--impls", default=None,
                   help=f"comma list among {','.join(IMPLS)} (default: cpu: rlvr_cpp,rlvr_reference + baselines; "
                        "cuda: rlvr_triton,rlvr_cuda,rlvr_reference + baselines); unavailable ones get a "
                        "'skipped: why' row")
    p.add_argument("--group-size", type=int, default=16, help="G, predictions per true frame (default 16)")
    p.add_argument("--lpips-precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="precision of our LPIPS (default auto: bf16 on cuda, fp32 on cpu); baselines are fp32")
    p.add_argument("--reps", type=int, default=None,
                   help="timed calls per row (default 10 on cuda, 5 on cpu; 3 for calls slower than 2 s)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls first, the check's included (default 3 on cuda, 2 on cpu)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="gate each row on the fp64 reference before timing (default on; see the module docstring)")
    p.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    p.add_argument("--csv", "--out", dest="csv", type=Path, default=None,
                   help="CSV to append to (default benchmarks/results/rewards_<device>.csv)")
    args = p.parse_args(argv)
    device = _harness.resolve_common(args, p, stem="rewards", reps=(10, 5), warmup=(3, 2), shape_sets=SHAPES)
    args.dtypes = _harness.parse_choices(args.dtype, DTYPES, "dtype(s)", p)
    args.metrics = _harness.parse_choices(args.metrics, METRICS, "metric(s)", p)
    args.impls = _harness.parse_choices(args.impls, IMPLS, "impl(s)", p) if args.impls else default_impls(device)
    if args.group_size < 1:
        p.error("--group-size must be >= 1")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    tags = _harness.announce(device)
    rows = []
    for set_name in args.shapes:
        for case in SHAPES[set_name]:
            metrics = [m for m in args.metrics if case.metrics is None or m in case.metrics]
            if not metrics:
                continue
            for dtype_name in args.dtypes:
                case_rows = bench_case(set_name, case, dtype_name, metrics, args.impls, device, args)
                _harness.write_rows(args.csv, [{c: r.get(c) for c in CSV_COLUMNS} for r in case_rows], device=device)
                rows += case_rows
    title = (f"Video rewards of one RL step on {tags['device']} (torch {tags['torch']}, git {tags['git_sha']}); "
             f"G = {args.group_size}, our LPIPS {lpips_precision(args, device)}")
    _harness.show_results(rows, COLUMNS, device, title, args.csv)
    return rows


if __name__ == "__main__":
    main()
