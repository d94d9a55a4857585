"""``rlvr-train tokenizer``: train a visual tokenizer on episode frames: the per-frame FSQ tokenizer
(``tokenizer.kind=frame``, ``models.frame_tokenizer``) or iVideoGPT's context-conditioned compressive tokenizer
(``tokenizer.kind=compressive``, ``models.compressive_tokenizer``).

The recipe is a short lifecycle (torchtune's): ``setup`` (data, model, optimizer, LPIPS, discriminator, EMA,
resume) -> a loop of named stages (``batch`` -> ``train_step`` -> log -> ``evaluate`` -> ``save_checkpoint``;
``train.loop``) -> ``finish`` (final eval, checkpoint, ``save_pretrained(out_dir/"tokenizer")`` + the resolved
config).

Choices:

* **Loss** = L1(recon, frame) + ``tokenizer.lpips_weight`` x LPIPS-VGG(recon, frame), both means over the
  batch. LPIPS needs ImageNet VGG16 weights; without them setup fails before training with LPIPS's own
  message, unless ``tokenizer.lpips_random_backbone=true`` (smoke runs only: a random VGG is not a
  perceptual metric) or ``tokenizer.lpips_weight=0`` (no perceptual term). ``models.lpips.LPIPS`` is a
  no-grad metric, so the loss calls its undecorated forward with the eager reference head (the Triton
  head has no backward): the same math, differentiable w.r.t. the reconstruction.
* **Compressive kind**: the model reconstructs both the context frames (context branch, a frame tokenizer)
  and the future frames (dynamics branch, conditioned on the context tokens); the loss is the sum of the
  two reconstruction losses above, each a mean over its own frames (so ``data.context_frames`` does not
  outweigh the future frames). Metrics without a prefix are the future frames', ``context_*`` the context's.
* **Adversarial term** (``tokenizer.gan_weight`` > 0; ``models.discriminator``, VQ-GAN's): a PatchGAN with
  GroupNorm (stateless, so resume stays bit-exact) and the hinge loss. From optimizer step
  ``tokenizer.gan_start_step`` on (0-based: the first GAN step is logged as step gan_start_step + 1) the
  generator loss gets ``+ gan_weight x a x -mean D(recon)``, with ``a`` VQ-GAN's adaptive weight (grad-norm
  ratio at the decoder's last layer: ``decoder.conv_out``, or the future decoder's ``dyn_decoder.proj_out``
  for the compressive kind; ``tokenizer.adaptive_gan_weight=false``: a = 1), and the discriminator takes
  one AdamW step (``disc_lr``, ``disc_betas``, constant LR, clipped at ``train.grad_clip``) on the same
  micro-batches, real frames vs the detached reconstructions. Before the start step there is no
  discriminator forward, update or metric. For the compressive kind D sees every reconstructed frame
  (context and future). Logged: ``g_loss``, ``d_loss``, ``gan_weight`` (gan_weight x a), ``logits_real``,
  ``logits_fake``, ``disc_grad_norm``.
* **EMA** (``tokenizer.ema_decay`` > 0): after each optimizer step ``ema = d_t ema + (1 - d_t) w`` with
  ``d_t = min(ema_decay, (1 + t) / (10 + t))`` at step t (0-based; diffusers' warm-up, so early EMA weights
  are not dominated by the random init); buffers are copied. The EMA weights are what ``evaluate`` measures
  and what ``finish`` saves as ``out_dir/tokenizer``; checkpoints hold both.
* **Data**: kind=frame: each step draws ``batch_size * grad_accum`` frames, each from a uniformly random
  episode of the train split at a uniformly random time. kind=compressive: as many clips of
  ``data.context_frames + data.future_frames`` frames, ``data.clip_stride`` stored frames apart, each from a
  uniformly random episode long enough for it at a uniformly random start. Optional colour jitter (one draw
  per frame, or per clip); the draw is seeded by ``(train.seed, step)``, so the sampler's position is just
  the step and a resumed run sees exactly the batches an uninterrupted one would. Episodes are cached in
  memory (LRU, ``EPISODE_CACHE`` episodes).
* **Eval** (every ``train.eval_every`` steps and at the end): ``train.eval_batches * batch_size`` frames
  (clips) of the val split, evenly spaced in every episode (the same every time): reconstruction MAE, PSNR,
  SSIM (``rewards.video.frame_metrics``), LPIPS when the loss uses it, tokens per frame, and codebook usage
  (distinct tokens / codebook size). kind=compressive: those of the future frames, the same with a
  ``context_`` prefix for the context frames (``tokens_per_frame``: per future frame, ``context_tokens_per_frame``:
  per context frame).
* **Precision**: ``train.precision="auto"`` is bf16 autocast on a GPU that supports it (tokenizer and
  discriminator forwards), fp32 elsewhere; losses, FSQ and the output sigmoid are fp32. One process, one
  device (the distributed wrapper comes with ``train/distributed.py``).
* **Resume** (``train.resume=true``): continue from ``checkpoint.latest(out_dir)`` (model, AdamW, LR
  schedule, step, RNG, and in the checkpoint's ``extra`` the discriminator, its AdamW and the EMA weights);
  a run of 2 + 2 steps equals 4 steps bit for bit on the CPU, with the GAN and the EMA on. With no
  checkpoint it starts at step 0; without ``resume`` an out_dir that already has checkpoints is an error.
  Checkpoints written before the GAN/EMA keys existed do not resume (their config lacks those keys).
"""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr_world import config as C
from rlvr_world.data import episodes as E
from rlvr_world.data.episodes import EpisodeDataset, color_jitter
from rlvr_world.models.compressive_tokenizer import CompressiveTokenizer
from rlvr_world.models.discriminator import NLayerDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from rlvr_world.models.frame_tokenizer import FrameTokenizer
from rlvr_world.rewards.video import frame_metrics

from . import checkpoint, loop
from .logging import MetricLogger
from .schedule import autocast_dtype, lr_factor

__all__ = ["EMA", "ClipBatchSampler", "FrameSampler", "ema_decay_at", "run"]

EPISODE_CACHE = 512  # episodes kept in memory by the samplers
EMA_WARMUP = 10  # d_t = min(ema_decay, (1 + t) / (EMA_WARMUP + t))
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


class ClipBatchSampler(FrameSampler):
    """Random clips of ``context_frames + future_frames`` frames, ``stride`` stored frames apart, from random
    episodes of one split (those long enough: ``data.episodes.ClipSampler.usable``); ``batch(step)`` depends
    only on (seed, step). Returns uint8 clips [N, T, 3, H, W]; the colour jitter is one draw per clip."""

    def __init__(self, dataset: EpisodeDataset, context_frames: int, future_frames: int, stride: int = 1,
                 seed: int = 0, color_jitter: float = 0.0):
        super().__init__(dataset, seed, color_jitter)
        self.clips = E.ClipSampler(dataset, context_frames, future_frames, stride, seed=seed)  # checks the layout
        self.offsets = stride * np.arange(context_frames + future_frames)                   # [T]

    def batch(self, step: int, n: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step])
        usable, span = self.clips.usable, self.clips.span
        clips = []
        for e in rng.integers(0, len(usable), size=n):
            image = self.images(usable[int(e)])
            clip = image[int(rng.integers(0, image.shape[0] - span + 1)) + self.offsets]   # [T, H, W, 3]
            if self.jitter > 0:
                clip = color_jitter(clip, self.jitter, self.jitter, self.jitter, generator=rng)
            clips.append(clip)
        return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).contiguous()  # [N, T, 3, H, W] uint8

    def eval_clips(self, n: int) -> torch.Tensor:
        """n clips with evenly spaced starts in every usable episode (name order): [n', T, 3, H, W] uint8, n' <= n."""
        c = self.clips
        fixed = E.ClipSampler(self.dataset, c.context_frames, c.future_frames, c.frame_skip, random_start=False,
                              clips_per_episode=math.ceil(n / len(c.usable)))
        clips = [fixed.clip(e, start).frames for e, start in fixed.plan()[:n]]
        return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).contiguous()


# ---------------------------------------------------------------------------------------------------- EMA
def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay used at (0-based) optimizer step ``step``: min(decay, (1 + step) / (EMA_WARMUP + step))."""
    return min(decay, (1 + step) / (EMA_WARMUP + step))


class EMA:
    """An exponential moving average of a model's parameters (``module``: a frozen eval-mode copy)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> float:
        """ema = d ema + (1 - d) w for every parameter (d = ``ema_decay_at(decay, step)``), buffers copied; returns d."""
        d = ema_decay_at(self.decay, step)
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.mul_(d).add_(p.detach(), alpha=1 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)
        return d


# ---------------------------------------------------------------------------------------------------- state
@dataclass
class State:
    cfg: C.TokenizerRun
    out_dir: Path
    device: torch.device
    autocast: torch.dtype | None
    model: FrameTokenizer | CompressiveTokenizer
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: FrameSampler  # a ClipBatchSampler for kind=compressive
    val_data: torch.Tensor  # [N, 3, H, W] frames or [N, T, 3, H, W] clips, uint8, on device
    lpips: Any  # models.lpips.LPIPS or None
    logger: MetricLogger
    disc: NLayerDiscriminator | None = None
    disc_optimizer: torch.optim.Optimizer | None = None
    ema: EMA | None = None
    step: int = 0
    last_eval: dict = field(default_factory=dict)
    last_train: dict = field(default_factory=dict)
    last_saved: int = -1
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def compressive(self) -> bool:
        return self.cfg.tokenizer.kind == "compressive"

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights evaluated and saved: the EMA's when it is on."""
        return self.ema.module if self.ema is not None else self.model


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


def _build_model(tok: C.TokenizerConfig):
    cls = CompressiveTokenizer if tok.kind == "compressive" else FrameTokenizer
    return cls.from_pretrained(tok.checkpoint) if tok.checkpoint else cls(tok.args())


def last_layer(model) -> torch.Tensor:
    """The weight the adaptive GAN weight is measured at: the (future) decoder's output conv."""
    if isinstance(model, CompressiveTokenizer):
        return model.dyn_decoder.proj_out.weight
    return model.decoder.conv_out.weight


def setup(cfg: C.TokenizerRun) -> State:
    """Data, model, optimizer + schedule, LPIPS, discriminator, EMA, logger; restores the latest checkpoint."""
    tc, tok, d = cfg.train, cfg.tokenizer, cfg.data
    out_dir = Path(tc.out_dir)
    if tc.token_noise:
        raise ValueError(f"train.token_noise applies to world-model pre-training only; the tokenizer sees pixels "
                         f"(use tokenizer.color_jitter), got train.token_noise={tc.token_noise}")
    if not tc.resume and checkpoint.latest(out_dir) is not None:
        raise ValueError(f"train.out_dir {out_dir} already has checkpoints: set train.resume=true to continue "
                         f"from {checkpoint.latest(out_dir).name}, or choose another train.out_dir")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = autocast_dtype(tc.precision, device)
    lpips = _build_lpips(tok, device)  # before any work: a missing weight file fails here

    train_ds, val_ds = EpisodeDataset(cfg.data.root, "train"), EpisodeDataset(cfg.data.root, "val")
    n_val = tc.eval_batches * tc.batch_size
    if tok.kind == "compressive":
        sampler = ClipBatchSampler(train_ds, d.context_frames, d.future_frames, d.clip_stride, seed=tc.seed,
                                   color_jitter=tok.color_jitter)
        val_data = ClipBatchSampler(val_ds, d.context_frames, d.future_frames, d.clip_stride).eval_clips(n_val)
    else:
        sampler = FrameSampler(train_ds, seed=tc.seed, color_jitter=tok.color_jitter)
        val_data = FrameSampler(val_ds).eval_frames(n_val)
    val_data = val_data.to(device)
    H, W = val_data.shape[-2:]

    torch.manual_seed(tc.seed)
    model = _build_model(tok)
    if tok.kind == "compressive":
        model.future_grid(H, W)  # frame size must suit the model: ValueError naming it
    else:
        model.token_grid(H, W)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc))
    disc = disc_optimizer = ema = None
    if tok.gan_weight > 0:
        disc = NLayerDiscriminator(model.args.in_channels, tok.disc_channels, tok.disc_layers)
        if min(H, W) < disc.min_size():
            raise ValueError(f"tokenizer.disc_layers={tok.disc_layers} needs frames of at least {disc.min_size()} "
                             f"pixels a side (3 * 2**disc_layers), got {H}x{W}: use fewer disc_layers")
        disc.to(device).train()
        disc_optimizer = torch.optim.AdamW(disc.parameters(), lr=tok.disc_lr, betas=tuple(tok.disc_betas),
                                           weight_decay=0.0)
    if tok.ema_decay > 0:
        ema = EMA(model, tok.ema_decay)

    step = 0
    latest = checkpoint.latest(out_dir) if tc.resume else None
    if latest is not None:
        loaded = checkpoint.load(latest, model, optimizer, scheduler, config=cfg, ignore=RESUME_IGNORE)
        step = loaded["step"]
        _load_extra(latest, loaded["extra"], disc, disc_optimizer, ema)
    C.to_yaml(cfg, out_dir / "config.yaml")
    logger = MetricLogger(out_dir, tc.steps, step, progress=cfg.progress, desc="tokenizer")
    if latest is not None:
        logger.write(f"resumed from {latest} at step {step}")
    return State(cfg, out_dir, device, autocast, model, optimizer, scheduler, sampler, val_data, lpips, logger,
                 disc=disc, disc_optimizer=disc_optimizer, ema=ema, step=step,
                 last_saved=step if latest is not None else -1)


def _extra_state(s: State) -> dict:
    extra = {}
    if s.disc is not None:
        extra.update(discriminator=s.disc.state_dict(), disc_optimizer=s.disc_optimizer.state_dict())
    if s.ema is not None:
        extra["ema"] = s.ema.module.state_dict()
    return extra


def _load_extra(path: Path, extra: dict, disc, disc_optimizer, ema) -> None:
    for name, obj in (("discriminator", disc), ("disc_optimizer", disc_optimizer), ("ema", ema and ema.module)):
        if obj is None:
            continue
        if name not in extra:
            raise ValueError(f"checkpoint {path} has no {name} state to restore")
        try:
            obj.load_state_dict(extra[name])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"checkpoint {path} does not match the {name}: {e}") from None


# ---------------------------------------------------------------------------------------------------- stages
def batch(s: State) -> torch.Tensor:
    """The step's frames [batch_size * grad_accum, 3, H, W] (kind=compressive: clips [.., T, 3, H, W]) uint8."""
    tc = s.cfg.train
    return s.sampler.batch(s.step, tc.batch_size * tc.grad_accum).to(s.device, non_blocking=True)


def reconstruct(s: State, model, micro: torch.Tensor) -> tuple[dict, dict]:
    """micro: frames [b, 3, H, W] or clips [b, T, 3, H, W] uint8 -> ({prefix: (recon [n, 3, H, W] fp32, target
    [n, 3, H, W] in [0, 1])}, {prefix: tokens}); prefix "" is the frames (kind=compressive: the future frames),
    "context_" the context frames of kind=compressive."""
    with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
        if not s.compressive:
            recon, tokens = model(micro)                                             # [b, 3, H, W] fp32
            return {"": (recon, micro.float() / 255)}, {"": tokens}
        tc = s.cfg.data.context_frames
        ctx, fut = micro[:, :tc], micro[:, tc:]                                      # [b, Tc | Tf, 3, H, W]
        recon_c, recon_f, tokens_c, tokens_f = model(ctx, fut)
    return ({"": (recon_f.flatten(0, 1), fut.flatten(0, 1).float() / 255),
             "context_": (recon_c.flatten(0, 1), ctx.flatten(0, 1).float() / 255)},
            {"": tokens_f, "context_": tokens_c})


def train_step(s: State, frames: torch.Tensor) -> dict:
    """One optimizer step (and one discriminator step once the GAN is on) over grad_accum micro-batches;
    returns detached diagnostics."""
    tc, tok = s.cfg.train, s.cfg.tokenizer
    gan_on = s.disc is not None and s.step >= tok.gan_start_step
    t0 = time.perf_counter()
    s.model.train()
    totals: dict[str, float] = {"loss": 0.0}

    def add(name, value):
        totals[name] = totals.get(name, 0.0) + float(value) / tc.grad_accum

    for micro in frames.chunk(tc.grad_accum):
        groups, _ = reconstruct(s, s.model, micro)
        rec = 0.0
        for prefix, (recon, target) in groups.items():
            l1 = (recon - target).abs().mean()
            rec = rec + l1
            add(prefix + "l1", l1.item())
            if s.lpips is not None:
                p = perceptual_loss(s.lpips, recon, target).mean()
                rec = rec + tok.lpips_weight * p
                add(prefix + "lpips", p.item())
        loss = rec
        if gan_on:
            fakes = torch.cat([r for r, _ in groups.values()])                          # [n, 3, H, W]
            reals = torch.cat([t for _, t in groups.values()])
            s.disc.requires_grad_(False)  # the generator term's gradient must not reach D
            with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
                logits_fake = s.disc(fakes).float()
            g_loss = hinge_g_loss(logits_fake)
            weight = tok.gan_weight
            if tok.adaptive_gan_weight:
                weight = weight * adaptive_weight(rec, g_loss, last_layer(s.model)).item()
            loss = loss + weight * g_loss
            add("g_loss", g_loss.item())
            add("gan_weight", weight)
        (loss / tc.grad_accum).backward()
        add("loss", loss.item())
        if gan_on:
            s.disc.requires_grad_(True)
            with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
                logits = s.disc(torch.cat([reals, fakes.detach()])).float()              # [2n, 1, h, w]
            logits_real, logits_fake = logits.chunk(2)
            d_loss = hinge_d_loss(logits_real, logits_fake)
            (d_loss / tc.grad_accum).backward()
            add("d_loss", d_loss.item())
            add("logits_real", logits_real.mean().item())
            add("logits_fake", logits_fake.mean().item())
    max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), max_norm)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    lr = s.scheduler.get_last_lr()[0]
    s.scheduler.step()
    if gan_on:
        totals["disc_grad_norm"] = torch.nn.utils.clip_grad_norm_(s.disc.parameters(), max_norm).item()
        s.disc_optimizer.step()
        s.disc_optimizer.zero_grad(set_to_none=True)
    if s.ema is not None:
        s.ema.update(s.model, s.step)
    dt = time.perf_counter() - t0
    n_frames = frames.shape[0] * (frames.shape[1] if s.compressive else 1)
    return {**totals, "grad_norm": grad_norm.item(), "lr": lr, "sec_per_step": dt, "frames_per_sec": n_frames / dt}


@torch.no_grad()
def evaluate(s: State, force: bool = False) -> dict | None:
    """Reconstruction metrics on the held-out frames (every eval_every steps, or when forced), of the EMA
    weights when the EMA is on."""
    if not loop.due(s.step, s.cfg.train.eval_every, force):
        return None
    model = s.eval_model
    model.eval()
    H, W = s.val_data.shape[-2:]
    if s.compressive:
        sizes = {"": model.future_codebook_size, "context_": model.context_codebook_size}
    else:
        sizes = {"": model.codebook_size}
    used = {p: torch.zeros(n, dtype=torch.bool, device=s.device) for p, n in sizes.items()}
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for micro in s.val_data.split(s.cfg.train.batch_size):
        groups, tokens = reconstruct(s, model, micro)
        for prefix, (recon, target) in groups.items():
            recon = recon.float().clamp(0, 1)
            m = frame_metrics(recon, target, metrics=("mae", "psnr", "ssim"))
            if s.lpips is not None:
                m["lpips"] = s.lpips(recon, target)
            for k, v in m.items():
                sums[prefix + k] = sums.get(prefix + k, 0.0) + v.sum().item()
            counts[prefix] = counts.get(prefix, 0) + len(recon)
            used[prefix][tokens[prefix].flatten()] = True
    if s.ema is None:
        s.model.train()
    out = {k: v / counts["context_" if k.startswith("context_") else ""] for k, v in sums.items()}
    for prefix, u in used.items():
        out[prefix + "codebook_usage"] = u.float().mean().item()
    if s.compressive:
        (hc, wc), (hf, wf) = model.context_grid(H, W), model.future_grid(H, W)
        out.update(tokens_per_frame=hf * wf, context_tokens_per_frame=hc * wc, clips=len(s.val_data),
                   frames=counts[""])
    else:
        h, w = model.token_grid(H, W)
        out.update(tokens_per_frame=h * w, frames=counts[""])
    s.last_eval = {"step": s.step, **out}
    s.logger.log(s.step, out, kind="eval")
    what = "future " if s.compressive else ""
    s.logger.write(f"step {s.step}: val {what}psnr {out['psnr']:.2f} ssim {out['ssim']:.4f} mae {out['mae']:.4f} "
                   f"codebook usage {out['codebook_usage']:.3f}"
                   + (f"; context psnr {out['context_psnr']:.2f}" if s.compressive else ""))
    return out


def save_checkpoint(s: State, force: bool = False) -> Path | None:
    """As ``loop.save_checkpoint``, plus the discriminator, its AdamW and the EMA weights in ``extra``."""
    tc = s.cfg.train
    if s.last_saved == s.step or not loop.due(s.step, tc.checkpoint_every, force):
        return None
    path = checkpoint.save(s.out_dir, s.step, s.model, s.optimizer, s.scheduler, config=s.cfg,
                           sampler={"seed": s.sampler.seed, "step": s.step}, extra=_extra_state(s),
                           keep=tc.keep_checkpoints)
    s.last_saved = s.step
    return path


def finish(s: State) -> dict:
    """Final eval, checkpoint and the trained tokenizer (save_pretrained layout of the EMA weights when the EMA
    is on, else of the live weights, + the run's config.yaml)."""
    if s.last_eval.get("step") != s.step:
        evaluate(s, force=True)
    save_checkpoint(s, force=True)
    tokenizer_dir = s.out_dir / "tokenizer"
    s.eval_model.save_pretrained(tokenizer_dir)
    C.to_yaml(s.cfg, tokenizer_dir / "train_config.yaml")
    return {"step": s.step, "out_dir": str(s.out_dir), "tokenizer_dir": str(tokenizer_dir),
            "eval": {k: v for k, v in s.last_eval.items() if k != "step"}, "train": s.last_train,
            "seconds": time.perf_counter() - s.t_start}


# ---------------------------------------------------------------------------------------------------- recipe
def run(cfg: C.TokenizerRun) -> dict:
    """Train the tokenizer described by ``cfg``; returns {step, out_dir, tokenizer_dir, eval, train, seconds}."""
    return loop.run_steps(setup(cfg), batch, train_step, evaluate, save_checkpoint, finish)
