"""``rlvr-train tokenizer``: train the per-frame FSQ visual tokenizer on episode frames.

The recipe is a short lifecycle (torchtune's): ``setup`` (data, model, optimizer, LPIPS, resume) -> a loop of
named stages (``batch`` -> ``train_step`` -> log -> ``evaluate`` -> ``save_checkpoint``; ``train.loop``) ->
``finish`` (final eval, checkpoint, ``FrameTokenizer.save_pretrained(out_dir/"tokenizer")`` + the resolved config).

Choices:

* **Loss** = L1(recon, frame) + ``tokenizer.lpips_weight`` x LPIPS-VGG(recon, frame), both means over the
  batch. LPIPS needs ImageNet VGG16 weights; without them setup fails before training with LPIPS's own
  message, unless ``tokenizer.lpips_random_backbone=true`` (smoke runs only: a random VGG is not a
  perceptual metric) or ``tokenizer.lpips_weight=0`` (no perceptual term). ``models.lpips.LPIPS`` is a
  no-grad metric, so the loss calls its undecorated forward with the eager reference head (the Triton
  head has no backward): the same math, differentiable w.r.t. the reconstruction.
* **Not in this version** (iVideoGPT / VQ-GAN have them): the adversarial (PatchGAN) loss after a start
  step and an EMA of the weights.
* **Data**: each step draws ``batch_size * grad_accum`` frames, each from a uniformly random episode of
  the train split at a uniformly random time, with optional colour jitter; the draw is seeded by
  ``(train.seed, step)``, so the sampler's position is just the step and a resumed run sees exactly the
  batches an uninterrupted one would. Episodes are cached in memory (LRU, ``EPISODE_CACHE`` episodes).
* **Eval** (every ``train.eval_every`` steps and at the end): ``train.eval_batches * batch_size`` frames of
  the val split, evenly spaced in every episode (the same frames every time): reconstruction MAE, PSNR,
  SSIM (``rewards.video.frame_metrics``), LPIPS when the loss uses it, tokens per frame, and codebook usage
  (distinct tokens / codebook size) over those frames.
* **Precision**: ``train.precision="auto"`` is bf16 autocast on a GPU that supports it, fp32 elsewhere.
  One process, one device (the distributed wrapper comes with ``train/distributed.py``).
* **Resume** (``train.resume=true``): continue from ``checkpoint.latest(out_dir)`` (model, AdamW, LR
  schedule, step, RNG); a run of 2 + 2 steps equals 4 steps bit for bit on the CPU. With no checkpoint
  it starts at step 0; without ``resume`` an out_dir that already has checkpoints is an error.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr_world import config as C
from rlvr_world.data.episodes import EpisodeDataset, color_jitter
from rlvr_world.models.frame_tokenizer import FrameTokenizer
from rlvr_world.rewards.video import frame_metrics

from . import checkpoint, loop
from .logging import MetricLogger
from .schedule import autocast_dtype, lr_factor

__all__ = ["FrameSampler", "run"]

EPISODE_CACHE = 512  # episodes kept in memory by the frame sampler
RESUME_IGNORE = (*checkpoint.DEFAULT_IGNORE, "data.root", "data.workers")  # may change between run and resume


# ---------------------------------------------------------------------------------------------------- data
class FrameSampler:
    """Random frames of random episodes of one split; ``batch(step)`` depends only on (seed, step).

    Returns uint8 frames [N, 3, H, W]; ``color_jitter`` > 0 jitters each frame's brightness, contrast and
    saturation by up to that fraction (``data.episodes.color_jitter``).
    """

    def __init__(self, dataset: EpisodeDataset, seed: int = 0, color_jitter: float = 0.0):
        self.dataset, self.seed, self.jitter = dataset, seed, color_jitter
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def images(self, i: int) -> np.ndarray:
        """Episode i's frames [T, H, W, 3] uint8 (LRU-cached)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        image = self.dataset[i]["image"]
        self._cache[i] = image
        if len(self._cache) > EPISODE_CACHE:
            self._cache.popitem(last=False)
        return image

    def batch(self, step: int, n: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step])
        episodes = rng.integers(0, len(self.dataset), size=n)
        frames = []
        for e in episodes:
            image = self.images(int(e))
            frame = image[int(rng.integers(0, image.shape[0]))]                       # [H, W, 3]
            if self.jitter > 0:
                frame = color_jitter(frame, self.jitter, self.jitter, self.jitter, generator=rng)
            frames.append(frame)
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()  # [N, 3, H, W] uint8

    def eval_frames(self, n: int) -> torch.Tensor:
        """n frames evenly spaced in time in every episode (episodes in name order): [n', 3, H, W] uint8, n' <= n."""
        per_episode = math.ceil(n / len(self.dataset))
        frames = []
        for i in range(len(self.dataset)):
            image = self.dataset[i]["image"]
            idx = np.unique(np.linspace(0, image.shape[0] - 1, per_episode).round().astype(int))
            frames.extend(image[idx])
        return torch.from_numpy(np.stack(frames[:n])).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------------- state
@dataclass
class State:
    cfg: C.TokenizerRun
    out_dir: Path
    device: torch.device
    autocast: torch.dtype | None
    model: FrameTokenizer
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: FrameSampler
    val_frames: torch.Tensor  # [N, 3, H, W] uint8, on device
    lpips: Any  # models.lpips.LPIPS or None
    logger: MetricLogger
    step: int = 0
    last_eval: dict = field(default_factory=dict)
    last_train: dict = field(default_factory=dict)
    last_saved: int = -1
    t_start: float = field(default_factory=time.perf_counter)


def _build_lpips(tok: C.TokenizerConfig, device: torch.device):
    if tok.lpips_weight == 0:
        return None
    from rlvr_world.models.lpips import LPIPS

    try:  # the loss goes through LPIPS.perceptual_loss (autograd, eager head); evaluation through forward
        lpips = LPIPS(net="vgg", random_backbone=tok.lpips_random_backbone)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}\n(rlvr-train tokenizer: or set tokenizer.lpips_weight=0 to train without the "
                                f"perceptual loss, or tokenizer.lpips_random_backbone=true for a smoke run)") from None
    return lpips.to(device)


def perceptual_loss(lpips, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LPIPS [B] of recon [B, 3, H, W] vs target, differentiable w.r.t. recon."""
    return lpips.perceptual_loss(recon, target)


def setup(cfg: C.TokenizerRun) -> State:
    """Data, model, optimizer + schedule, LPIPS, logger; restores the latest checkpoint when resuming."""
    tc, tok = cfg.train, cfg.tokenizer
    if tok.kind != "frame":
        raise ValueError(f"tokenizer.kind={tok.kind!r} is not trained by this recipe yet; use tokenizer.kind=frame")
    out_dir = Path(tc.out_dir)
    if not tc.resume and checkpoint.latest(out_dir) is not None:
        raise ValueError(f"train.out_dir {out_dir} already has checkpoints: set train.resume=true to continue "
                         f"from {checkpoint.latest(out_dir).name}, or choose another train.out_dir")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = autocast_dtype(tc.precision, device)
    lpips = _build_lpips(tok, device)  # before any work: a missing weight file fails here

    train_ds, val_ds = EpisodeDataset(cfg.data.root, "train"), EpisodeDataset(cfg.data.root, "val")
    sampler = FrameSampler(train_ds, seed=tc.seed, color_jitter=tok.color_jitter)
    val_frames = FrameSampler(val_ds).eval_frames(tc.eval_batches * tc.batch_size).to(device)

    torch.manual_seed(tc.seed)
    model = FrameTokenizer.from_pretrained(tok.checkpoint) if tok.checkpoint else FrameTokenizer(tok.args())
    model.token_grid(*val_frames.shape[-2:])  # frame size must suit the model: ValueError naming it
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc))

    step = 0
    latest = checkpoint.latest(out_dir) if tc.resume else None
    if latest is not None:
        step = checkpoint.load(latest, model, optimizer, scheduler, config=cfg, ignore=RESUME_IGNORE)["step"]
    C.to_yaml(cfg, out_dir / "config.yaml")
    logger = MetricLogger(out_dir, tc.steps, step, progress=cfg.progress, desc="tokenizer")
    if latest is not None:
        logger.write(f"resumed from {latest} at step {step}")
    return State(cfg, out_dir, device, autocast, model, optimizer, scheduler, sampler, val_frames, lpips, logger,
                 step=step, last_saved=step if latest is not None else -1)


# ---------------------------------------------------------------------------------------------------- stages
def batch(s: State) -> torch.Tensor:
    """The step's frames [batch_size * grad_accum, 3, H, W] uint8 on the device."""
    tc = s.cfg.train
    return s.sampler.batch(s.step, tc.batch_size * tc.grad_accum).to(s.device, non_blocking=True)


def train_step(s: State, frames: torch.Tensor) -> dict:
    """One optimizer step over grad_accum micro-batches; returns detached diagnostics."""
    tc, w = s.cfg.train, s.cfg.tokenizer.lpips_weight
    t0 = time.perf_counter()
    s.model.train()
    totals = {"loss": 0.0, "l1": 0.0, "lpips": 0.0}
    for micro in frames.chunk(tc.grad_accum):
        target = micro.float() / 255                                                 # [b, 3, H, W] in [0, 1]
        with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
            recon, _ = s.model(micro)                                                # [b, 3, H, W] fp32
        l1 = (recon - target).abs().mean()
        loss = l1
        if s.lpips is not None:
            p = perceptual_loss(s.lpips, recon, target).mean()
            loss = loss + w * p
            totals["lpips"] += p.item() / tc.grad_accum
        (loss / tc.grad_accum).backward()
        totals["loss"] += loss.item() / tc.grad_accum
        totals["l1"] += l1.item() / tc.grad_accum
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    lr = s.scheduler.get_last_lr()[0]
    s.scheduler.step()
    if s.lpips is None:
        totals.pop("lpips")
    dt = time.perf_counter() - t0
    return {**totals, "grad_norm": grad_norm.item(), "lr": lr, "sec_per_step": dt, "frames_per_sec": len(frames) / dt}


@torch.no_grad()
def evaluate(s: State, force: bool = False) -> dict | None:
    """Reconstruction metrics on the held-out frames (every eval_every steps, or when forced)."""
    if not loop.due(s.step, s.cfg.train.eval_every, force):
        return None
    s.model.eval()
    sums: dict[str, float] = {}
    used = torch.zeros(s.model.codebook_size, dtype=torch.bool, device=s.device)
    n = len(s.val_frames)
    for micro in s.val_frames.split(s.cfg.train.batch_size):
        target = micro.float() / 255
        with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
            recon, tokens = s.model(micro)
        recon = recon.float().clamp(0, 1)
        m = frame_metrics(recon, target, metrics=("mae", "psnr", "ssim"))
        if s.lpips is not None:
            m["lpips"] = s.lpips(recon, target)
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v.sum().item()
        used[tokens.flatten()] = True
    s.model.train()
    h, w = s.model.token_grid(*s.val_frames.shape[-2:])
    out = {k: v / n for k, v in sums.items()}
    out.update(tokens_per_frame=h * w, codebook_usage=used.float().mean().item(), frames=n)
    s.last_eval = {"step": s.step, **out}
    s.logger.log(s.step, out, kind="eval")
    s.logger.write(f"step {s.step}: val psnr {out['psnr']:.2f} ssim {out['ssim']:.4f} mae {out['mae']:.4f} "
                   f"codebook usage {out['codebook_usage']:.3f}")
    return out


def save_checkpoint(s: State, force: bool = False) -> Path | None:
    return loop.save_checkpoint(s, s.sampler.seed, force)


def finish(s: State) -> dict:
    """Final eval, checkpoint and the trained tokenizer (save_pretrained layout + the run's config.yaml)."""
    if s.last_eval.get("step") != s.step:
        evaluate(s, force=True)
    save_checkpoint(s, force=True)
    tokenizer_dir = s.out_dir / "tokenizer"
    s.model.save_pretrained(tokenizer_dir)
    C.to_yaml(s.cfg, tokenizer_dir / "train_config.yaml")
    return {"step": s.step, "out_dir": str(s.out_dir), "tokenizer_dir": str(tokenizer_dir),
            "eval": {k: v for k, v in s.last_eval.items() if k != "step"}, "train": s.last_train,
            "seconds": time.perf_counter() - s.t_start}


# ---------------------------------------------------------------------------------------------------- recipe
def run(cfg: C.TokenizerRun) -> dict:
    """Train the tokenizer described by ``cfg``; returns {step, out_dir, tokenizer_dir, eval, train, seconds}."""
    return loop.run_steps(setup(cfg), batch, train_step, evaluate, save_checkpoint, finish)
