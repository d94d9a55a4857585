"""``rlvr-train pretrain``: the single-step or multi-step video world model, trained by next-token cross-entropy on
the future frames' tokens (the paper's pre-training stage, before GRPO).

The recipe is a short lifecycle (torchtune's): ``setup`` (frame tokenizer, token cache, layout, model,
optimizer, LPIPS, resume) -> a loop of named stages (``batch`` -> ``train_step`` -> log -> ``evaluate`` ->
``save_checkpoint``; ``train.loop``) -> ``finish`` (final eval, checkpoint, ``Transformer.save_pretrained(out_dir/"model")``
in the HF layout + the resolved config + ``layout.json``: ``"layout": "single_step"`` or ``"multi_step"`` with
the layout's fields, and ``"tokenizer_kind"``: ``"frame"`` or ``"compressive"``; a missing key means frame).

Choices:

* **Sequences**: ``data.future_frames = 1`` (single-step): ``data.context_frames`` frames with their actions,
  BOS, the next frame, EOS (``data.video_layout.SingleStepLayout``). ``data.future_frames = S > 1``
  (multi-step, ``MultiStepLayout``): the context frames with their actions, BOS, then S steps of (frame codes,
  that frame's action tokens); one frame tokenizer codes context and future frames, the context codes offset
  by K (vocab = 2K + 256 + 2), and the response's action tokens are given (teacher actions: labels -100,
  never predicted), so a clip has n + S frames and n + S actions. ``tokens_per_frame`` and the codebook size
  K come from the frame tokenizer, the action dims from ``meta.json``, actions binned into 256 bins by
  ``ActionTokenizer.from_meta(data.root)``. The model is ``ModelArgs.from_name(model.name,
  vocab_size=layout.vocab_size, **model.overrides)`` (or ``model.init_from``, an HF-layout directory whose
  vocabulary must match); its ``max_seq_len`` must cover prompt + response (a ValueError says so).
* **Compressive tokenizer** (``tokenizer.kind=compressive``, any S >= 1; the paper's multi-step setting):
  ``MultiStepLayout`` with the context branch's grid and codebook for the n context frames (sim-64: 8x8 =
  64 tokens) and the dynamics branch's for the S future frames (4x4 = 16), vocab = K_future + K_context +
  256 + 2 (context codes offset by K_future). Every frame's context tokens are cached once at setup (the
  branch codes each frame alone); the future codes depend on the clip's context, so each training batch
  encodes them (``encode_future(frames, context_from_tokens(context tokens))``, no_grad) from the split's
  frames, which stay in memory (uint8); the val set's once at setup. Eval decodes the generated codes with
  ``decode_future`` given the clip's context tokens; copy = the last context frame decoded by the context
  branch (``decode_context``), repeated S times (no ``copy_token_match``: the codebooks differ); recon =
  ``decode_future`` of the true future codes. A checkpoint of the other kind is a ValueError naming both.
  The clip/cache helpers live in ``train.video_clips``.
* **Clips** come from ``ClipSampler`` with ``data.clip_stride`` as the stride between clip frames, counted
  in stored frames (1, the default: predict the next stored frame). The collector's ``data.frame_skip``,
  env steps per stored frame, is a different quantity and is not read here. With a stride above 1 each
  clip action is the mean of the stored actions over the stride (``stride_mean_actions``), binned after.
* **Frame tokens are cached**: ``tokenizer.checkpoint`` (required; a ``save_pretrained`` directory, or a
  ``rlvr-train tokenizer`` run directory holding one in ``tokenizer/``) is loaded once and every frame of
  the train and val splits is encoded once at setup, under no_grad, in batches (``ENCODE_BATCH``); the codes
  stay in memory (int16, 64 tokens x 2 bytes per 64x64 frame). The tokenizer is deterministic, so this equals
  encoding on the fly, and the training loop never touches pixels.
* **Data order**: clip j of step s is item ``g = s * N + j`` of the sampler's stream (``N = batch_size *
  grad_accum``): epoch ``g // len(sampler)`` (a seeded shuffle of the episodes, a uniform random start each,
  ``clips_per_episode`` = ``CLIPS_PER_EPISODE``), position ``g % len(sampler)``. The batch depends only on
  (train.seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
* **Loss**: the mean cross-entropy over the target positions (labels != -100: the next frame's codes and
  EOS; multi-step: the S future frames' codes). Only those positions go through the LM head (the prompt's
  logits are never formed). AdamW, linear warm-up + cosine/constant LR (``train.schedule``), grad-norm
  clipping, ``grad_accum`` micro-batches, bf16 autocast on a GPU that supports it (``train.precision="auto"``),
  fp32 on the CPU.
* **Token noise** (``train.token_noise``, default 0): each target-frame code fed as *input* (label in
  [0, K): never a prompt, action, BOS or EOS position) is replaced by a uniform random code with that
  probability (``corrupt_targets``; labels stay true; seeded by (seed, step)).
  Greedy generation conditions on its own earlier tokens, and a model that has only seen true prefixes can
  let one wrong token spread over the rest of the frame; the noise teaches it to continue past them.
* **Eval** (every ``train.eval_every`` steps and at the end) on ``train.eval_batches * batch_size`` val
  clips in a fixed order (episodes in name order, evenly spaced starts): teacher-forced ``loss`` and
  ``token_acc`` over the target positions; then the next frame is **generated greedily** (argmax over the
  frame codes only: action/BOS/EOS logits are masked, so every prediction decodes), with a static KV cache
  (``new_cache`` + ``prefill`` + ``decode_step``), decoded by the tokenizer and scored against the true next
  frame with ``rewards.video.frame_metrics`` (``pred_mae/mse/psnr/ssim``), next to the **copy baseline**
  (``copy_*``: the last context frame's tokens decoded, so both go through the tokenizer) and the
  tokenizer's own reconstruction of the true frame (``recon_*``: the ceiling of any token predictor).
  ``pred_token_match`` / ``copy_token_match``: the share of the target's tokens each gets exactly right.
  LPIPS (``*_lpips``) when ImageNet VGG16 LPIPS weights are available; otherwise the metrics carry
  ``lpips: "skipped: ..."``. Multi-step: the S frames are generated in one KV-cached pass (``generate_frames``:
  F greedy codes per step, then the step's true action tokens fed in one forward, as the rollout's forced
  tokens), every frame is scored and the metrics are averaged over all N x S frames, plus the per-step
  ``pred_mae_step{k}`` / ``copy_mae_step{k}`` (k = 1..S); the copy baseline repeats the last context frame for
  every step, the recon ceiling reconstructs each true future frame. Eval runs in fp32 without autocast
  (greedy decoding is then deterministic).
* **Resume** (``train.resume=true``) continues from ``checkpoint.latest(out_dir)`` (model, AdamW, schedule,
  step, RNG): a run of 2 + 2 steps equals 4 steps bit for bit on the CPU. Without ``resume`` an out_dir
  that already has checkpoints is an error. One process, one device.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rlvr_world import config as C
from rlvr_world.data.episodes import ActionTokenizer, ClipSampler, EpisodeDataset, stride_mean_actions
from rlvr_world.data.video_layout import IGNORE_INDEX, MultiStepLayout, SingleStepLayout
from rlvr_world.models.compressive_tokenizer import CompressiveTokenizer
from rlvr_world.models.frame_tokenizer import FrameTokenizer
from rlvr_world.models.transformer import ModelArgs, Transformer
from rlvr_world.rewards.video import frame_metrics

from . import checkpoint, loop
from .logging import MetricLogger
from .schedule import autocast_dtype, lr_factor
from .video_clips import (
    CLIPS_PER_EPISODE,
    ENCODE_BATCH,
    ClipTokens,
    build_sequences,
    decode_future_codes,
    encode_context_frames,
    encode_episodes,
    encode_future_codes,
    load_tokenizer,
    tokenizer_dir,
)

# the clip/token-cache names live in video_clips and are re-exported here (grpo_data imports them from here)
__all__ = ["CLIPS_PER_EPISODE", "ENCODE_BATCH", "ClipTokens", "build_lpips", "build_sequences", "decode_tokens",
           "encode_episodes", "generate_frame", "generate_frames", "run", "tokenizer_dir"]

ACTION_BINS = 256
METRICS = ("mae", "mse", "psnr", "ssim")
TOKEN_NOISE_STREAM = 0x6E6F6973  # "nois": keeps the token-noise draws apart from other (seed, step) streams
RESUME_IGNORE = (*checkpoint.DEFAULT_IGNORE, "data.root", "data.workers")  # may change between run and resume
Layout = SingleStepLayout | MultiStepLayout


# ---------------------------------------------------------------------------------------------------- model
def target_loss(model: Transformer, input_ids: torch.Tensor, labels: torch.Tensor):
    """Mean CE over the positions with labels != -100 (HF shift: logits at t predict token t + 1).

    Only the target positions go through the LM head. Returns (loss, n_correct, n_targets)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX                                                  # [B, S - 1]
    h = model.hidden_states(input_ids[:, :-1])                                      # [B, S - 1, H]
    logits = model.output(h[mask]).float()                                          # [M, V]
    y = targets[mask]
    loss = F.cross_entropy(logits, y)
    return loss, (logits.argmax(-1) == y).sum(), y.numel()


@torch.no_grad()
def generate_frame(model: Transformer, prompt: torch.Tensor, layout: SingleStepLayout) -> torch.Tensor:
    """Greedy next-frame codes [B, F] for prompts [B, prompt_len], with a static KV cache.

    Logits outside the frame codes [0, codebook_size) are masked, so every row decodes."""
    B, P = prompt.shape
    F_ = layout.tokens_per_frame
    cache = model.new_cache(B, P + F_)
    logits = model.prefill(prompt, cache)                                           # [B, V]
    out = []
    for i in range(F_):
        token = logits[:, : layout.codebook_size].argmax(-1)                        # [B]
        out.append(token)
        if i + 1 < F_:
            positions = torch.full((B,), P + i, dtype=torch.long, device=prompt.device)
            logits = model.decode_step(token, positions, cache)
    return torch.stack(out, dim=1)                                                  # [B, F]


@torch.no_grad()
def generate_frames(model: Transformer, prompt: torch.Tensor, layout: MultiStepLayout,
                    forced_tokens: torch.Tensor) -> torch.Tensor:
    """Greedy multi-step codes [B, S, F] for prompts [B, prompt_len], with a static KV cache.

    Each step decodes F codes greedily (logits outside the dynamics codes [0, K) masked), then feeds its last
    code and the step's given action tokens (``forced_tokens`` [B, response_len] from ``layout.forced``) into
    the cache in one forward, whose last logits start the next step."""
    B, P = prompt.shape
    F_, K, L = layout.tokens_per_frame, layout.codebook_size, layout.step_len
    cache = model.new_cache(B, P + layout.response_len)
    logits = model.prefill(prompt, cache)                                           # [B, V]
    forced = forced_tokens.to(prompt.device)
    pos, steps = P, []
    for k in range(layout.future_frames):
        codes = []
        for i in range(F_):
            token = logits[:, :K].argmax(-1)                                        # [B]
            codes.append(token)
            if i + 1 < F_:
                logits = model.decode_step(token, torch.full((B,), pos, dtype=torch.long, device=prompt.device),
                                           cache)
                pos += 1
        steps.append(torch.stack(codes, dim=1))                                     # [B, F]
        if k + 1 < layout.future_frames:  # the last code + this step's actions, as one forward
            chunk = torch.cat([token[:, None], forced[:, k * L + F_:(k + 1) * L]], dim=1)  # [B, 1 + A]
            positions = torch.arange(pos, pos + chunk.shape[1], device=prompt.device).expand(B, -1)
            logits = model.output(model.hidden_states(chunk, positions=positions, cache=cache)[:, -1])
            pos += chunk.shape[1]
    return torch.stack(steps, dim=1)                                                # [B, S, F]


# ---------------------------------------------------------------------------------------------------- state
@dataclass
class EvalSet:
    input_ids: torch.Tensor  # [N, S]
    labels: torch.Tensor  # [N, S]
    target_frames: torch.Tensor  # [N * future_frames, 3, H, W] uint8: the true future frames (clip-major)
    target_tokens: torch.Tensor  # [N * future_frames, F]
    baseline: dict  # copy_* / recon_* metrics (fixed: they do not depend on the model)
    context_tokens: torch.Tensor | None = None  # compressive: [N, n, Fc] context codes (decoding's condition)


@dataclass
class State:
    cfg: C.PretrainRun
    out_dir: Path
    device: torch.device
    autocast: torch.dtype | None
    tokenizer: FrameTokenizer | CompressiveTokenizer
    layout: Layout
    grid: tuple[int, int]
    model: Transformer
    optimizer: torch.optim.Optimizer
    scheduler: Any
    clips: ClipTokens
    val: EvalSet
    lpips: Any  # models.lpips.LPIPS or None
    lpips_note: str | None
    logger: MetricLogger
    step: int = 0
    last_eval: dict = field(default_factory=dict)
    last_train: dict = field(default_factory=dict)
    last_saved: int = -1
    t_start: float = field(default_factory=time.perf_counter)
    kind: str = "frame"  # tokenizer.kind
    context_grid: tuple[int, int] | None = None  # compressive: the context branch's grid (grid: the future one)


def build_lpips(device: torch.device, net: str = "vgg"):
    """(LPIPS of ``net``, None) when its ImageNet weights are present, else (None, the reason it is skipped)."""
    from rlvr_world.models.lpips import LPIPS

    try:
        return LPIPS(net=net).to(device), None
    except FileNotFoundError:
        name = {"vgg": "VGG16", "alex": "AlexNet"}[net]
        return None, f"skipped: no ImageNet {name} LPIPS weights on this machine"


def _scores(s_lpips, pred: torch.Tensor, target: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    m = frame_metrics(pred, target, metrics=METRICS)
    out = {f"{prefix}_{k}": v for k, v in m.items()}
    if s_lpips is not None:
        out[f"{prefix}_lpips"] = s_lpips(pred, target.float() / 255)
    return out


def _mean_scores(lpips, pairs, target_frames: torch.Tensor, batch: int) -> dict[str, float]:
    """pairs: {prefix: decoded frames [N, 3, H, W]} -> mean metrics of each against the targets."""
    sums: dict[str, float] = {}
    for prefix, frames in pairs.items():
        for pred, tgt in zip(frames.split(batch), target_frames.split(batch)):
            for k, v in _scores(lpips, pred, tgt, prefix).items():
                sums[k] = sums.get(k, 0.0) + v.sum().item()
    return {k: v / len(target_frames) for k, v in sums.items()}


@torch.no_grad()
def decode_tokens(tokenizer: FrameTokenizer, tokens: torch.Tensor, grid: tuple[int, int], batch: int) -> torch.Tensor:
    """tokens [N, F] -> frames [N, 3, H, W] fp32 in (0, 1)."""
    return torch.cat([tokenizer.decode(t.view(-1, *grid)) for t in tokens.split(batch)])


def _step_mae(frames: torch.Tensor, target_frames: torch.Tensor, steps: int, prefix: str) -> dict[str, float]:
    """Per-step MAE ``{prefix}_mae_step{k}`` (k = 1..steps) of clip-major frames [N * steps, 3, H, W]."""
    pred, tgt = frames.unflatten(0, (-1, steps)), target_frames.unflatten(0, (-1, steps))
    return {f"{prefix}_mae_step{k + 1}": frame_metrics(pred[:, k], tgt[:, k], metrics=("mae",))["mae"].mean().item()
            for k in range(steps)}


def _eval_set(cfg: C.PretrainRun, val_ds, tokens, actions, layout, tokenizer, grid, lpips, device,
              context_grid=None, images=None) -> EvalSet:
    """The fixed val clips; compressive (``context_grid`` given): ``tokens`` are the context branch's and the
    future codes are encoded here, given each clip's context tokens."""
    tc, d = cfg.train, cfg.data
    n, c, S = tc.eval_batches * tc.batch_size, d.context_frames, d.future_frames
    probe = ClipSampler(val_ds, c, S, d.clip_stride, random_start=False)
    per_episode = math.ceil(n / len(probe.usable))
    clips = ClipTokens(val_ds, tokens, actions, c, d.clip_stride, random_start=False, clips_per_episode=per_episode,
                       future_frames=S, multi_step=isinstance(layout, MultiStepLayout))
    frames, acts, where = clips.fixed(n)
    images = images or {}
    target = []
    for episode, t in where:
        if episode not in images:
            images[episode] = val_ds[episode]["image"]
        target += [images[episode][t + d.clip_stride * k] for k in range(S)]
    target_frames = torch.from_numpy(np.stack(target)).permute(0, 3, 1, 2).contiguous().to(device)
    if context_grid is not None:
        return _compressive_eval_set(tc, layout, tokenizer, grid, context_grid, lpips, device, frames[:, :c], acts,
                                     target_frames)
    lb = build_sequences(layout, frames, acts)
    frames = frames.to(device)
    target_tokens = frames[:, c:].flatten(0, 1)                                     # [N * S, F]
    decoded = {"copy": decode_tokens(tokenizer, frames[:, c - 1], grid, tc.batch_size).repeat_interleave(S, 0),
               "recon": decode_tokens(tokenizer, target_tokens, grid, tc.batch_size)}
    baseline = _mean_scores(lpips, decoded, target_frames, tc.batch_size)
    baseline["copy_token_match"] = (frames[:, c - 1:c] == frames[:, c:]).float().mean().item()
    if S > 1:
        baseline.update(_step_mae(decoded["copy"], target_frames, S, "copy"))
    return EvalSet(lb.input_ids.to(device), lb.labels.to(device), target_frames, target_tokens, baseline)


def _compressive_eval_set(tc, layout, tokenizer, grid, context_grid, lpips, device, context, acts,
                          target_frames) -> EvalSet:
    """Compressive: future codes = encode_future(true frames, context); copy = the last context frame decoded by
    the context branch, repeated S times; recon = decode_future of the true future codes."""
    S = layout.future_frames
    context = context.to(device)                                                    # [N, n, Fc]
    future = encode_future_codes(tokenizer, context, target_frames.unflatten(0, (-1, S)), context_grid, device)
    lb = build_sequences(layout, future, acts, context_tokens=context)
    target_tokens = future.flatten(0, 1)                                            # [N * S, F]
    last = context[:, -1:].unflatten(-1, context_grid)                              # [N, 1, hc, wc]
    copy = torch.cat([tokenizer.decode_context(t)[:, 0] for t in last.split(tc.batch_size)])
    decoded = {"copy": copy.repeat_interleave(S, 0),
               "recon": decode_future_codes(tokenizer, target_tokens, context, grid, context_grid, tc.batch_size)}
    baseline = _mean_scores(lpips, decoded, target_frames, tc.batch_size)
    baseline.update(_step_mae(decoded["copy"], target_frames, S, "copy"))
    return EvalSet(lb.input_ids.to(device), lb.labels.to(device), target_frames, target_tokens, baseline, context)


def setup(cfg: C.PretrainRun) -> State:
    """Tokenizer + token cache, layout, model, optimizer + schedule, LPIPS, logger; restores the latest
    checkpoint when resuming. Every config error is raised before any training work."""
    tc, d = cfg.train, cfg.data
    if not cfg.tokenizer.checkpoint:
        raise ValueError("tokenizer.checkpoint is required: the trained frame tokenizer's save_pretrained directory "
                         "(e.g. runs/tokenizer_sim64/tokenizer from `rlvr-train tokenizer`)")
    kind = cfg.tokenizer.kind
    if kind not in ("frame", "compressive"):
        raise ValueError(f"tokenizer.kind must be 'frame' or 'compressive', got {kind!r}")
    out_dir = Path(tc.out_dir)
    if not tc.resume and checkpoint.latest(out_dir) is not None:
        raise ValueError(f"train.out_dir {out_dir} already has checkpoints: set train.resume=true to continue "
                         f"from {checkpoint.latest(out_dir).name}, or choose another train.out_dir")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = autocast_dtype(tc.precision, device)

    tokenizer = load_tokenizer(kind, cfg.tokenizer.checkpoint, device)  # the other kind: ValueError naming both
    train_ds, val_ds = EpisodeDataset(d.root, "train"), EpisodeDataset(d.root, "val")
    actions_tok = ActionTokenizer.from_meta(d.root, bins=ACTION_BINS)
    size = train_ds.frame_size or tuple(train_ds[0]["image"].shape[1:3])
    context_grid = None
    if kind == "compressive":  # frame size must suit the tokenizer: ValueError naming it
        grid, context_grid = tokenizer.future_grid(*size), tokenizer.context_grid(*size)
        layout = MultiStepLayout(
            tokens_per_frame=grid[0] * grid[1], context_tokens_per_frame=context_grid[0] * context_grid[1],
            context_frames=d.context_frames, future_frames=d.future_frames, action_dims=actions_tok.dim,
            codebook_size=tokenizer.future_codebook_size, context_codebook_size=tokenizer.context_codebook_size,
            action_bins=ACTION_BINS)
    else:
        grid = tokenizer.token_grid(*size)
        layout = _layout(d, grid[0] * grid[1], actions_tok.dim, tokenizer.codebook_size)
    seq_len = layout.prompt_len + layout.response_len
    model_args = _model_args(cfg.model, layout.vocab_size)
    if model_args.max_seq_len < seq_len:
        raise ValueError(f"model max_seq_len={model_args.max_seq_len} is shorter than the sequence "
                         f"({layout.prompt_len} prompt + {layout.response_len} response = {seq_len} tokens); "
                         f"set model.overrides.max_seq_len={seq_len} or fewer data.context_frames")
    # a short clip span fails here (ClipSampler), before the cache is built
    ClipSampler(train_ds, d.context_frames, d.future_frames, d.clip_stride)
    ClipSampler(val_ds, d.context_frames, d.future_frames, d.clip_stride)
    lpips, lpips_note = build_lpips(device)

    def actions_of(ds):
        return [actions_tok.encode(stride_mean_actions(ds[i]["action"], d.clip_stride)) for i in range(len(ds))]

    if kind == "compressive":  # per-frame context tokens cached; the split's frames kept for the future codes
        train_images = [train_ds[i]["image"] for i in range(len(train_ds))]
        val_images = dict(enumerate(val_ds[i]["image"] for i in range(len(val_ds))))
        train_clips = ClipTokens(train_ds, encode_context_frames(train_images, tokenizer, device),
                                 actions_of(train_ds), d.context_frames, d.clip_stride, seed=tc.seed,
                                 future_frames=d.future_frames, multi_step=True, images=train_images)
        val = _eval_set(cfg, val_ds, encode_context_frames(list(val_images.values()), tokenizer, device),
                        actions_of(val_ds), layout, tokenizer, grid, lpips, device, context_grid, val_images)
    else:
        train_clips = ClipTokens(train_ds, encode_episodes(train_ds, tokenizer, device), actions_of(train_ds),
                                 d.context_frames, d.clip_stride, seed=tc.seed, future_frames=d.future_frames)
        val = _eval_set(cfg, val_ds, encode_episodes(val_ds, tokenizer, device), actions_of(val_ds), layout,
                        tokenizer, grid, lpips, device)

    torch.manual_seed(tc.seed)
    if cfg.model.init_from:
        model = Transformer.from_pretrained(cfg.model.init_from, dtype=torch.float32)
        if model.args.vocab_size != layout.vocab_size or model.args.max_seq_len < seq_len:
            raise ValueError(f"model.init_from {cfg.model.init_from} has vocab_size={model.args.vocab_size} and "
                             f"max_seq_len={model.args.max_seq_len}; this data needs vocab_size={layout.vocab_size} "
                             f"and max_seq_len >= {seq_len}")
    else:
        model = Transformer(model_args)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc))

    step = 0
    latest = checkpoint.latest(out_dir) if tc.resume else None
    if latest is not None:
        step = checkpoint.load(latest, model, optimizer, scheduler, config=cfg, ignore=RESUME_IGNORE)["step"]
    C.to_yaml(cfg, out_dir / "config.yaml")
    logger = MetricLogger(out_dir, tc.steps, step, progress=cfg.progress, desc="pretrain")
    n_params = sum(p.numel() for p in model.parameters())
    logger.write(f"world model {cfg.model.name}: {n_params / 1e6:.2f} M parameters, vocab {layout.vocab_size}, "
                 f"{seq_len} tokens per sequence ({layout.prompt_len} prompt + {layout.response_len} response); "
                 f"{len(train_clips.sampler)} train clips per epoch, {len(val.input_ids)} val clips")
    if latest is not None:
        logger.write(f"resumed from {latest} at step {step}")
    return State(cfg, out_dir, device, autocast, tokenizer, layout, grid, model, optimizer, scheduler, train_clips,
                 val, lpips, lpips_note, logger, step=step, last_saved=step if latest is not None else -1, kind=kind,
                 context_grid=context_grid)


def _layout(d: C.DataConfig, tokens_per_frame: int, action_dims: int, codebook_size: int) -> Layout:
    """Single-step for data.future_frames = 1, else multi-step with the frame tokenizer for context and future."""
    if d.future_frames == 1:
        return SingleStepLayout(tokens_per_frame=tokens_per_frame, context_frames=d.context_frames,
                                action_dims=action_dims, codebook_size=codebook_size, action_bins=ACTION_BINS,
                                eos=True)
    return MultiStepLayout(tokens_per_frame=tokens_per_frame, context_tokens_per_frame=tokens_per_frame,
                           context_frames=d.context_frames, future_frames=d.future_frames, action_dims=action_dims,
                           codebook_size=codebook_size, context_codebook_size=codebook_size, action_bins=ACTION_BINS)


def _model_args(mc: C.ModelConfig, vocab_size: int) -> ModelArgs:
    given = mc.overrides.get("vocab_size")
    if given is not None and given != vocab_size:
        raise ValueError(f"model.overrides.vocab_size={given} does not match the layout's vocabulary "
                         f"({vocab_size} = frame codes (x2 for multi-step: context codes are offset) + "
                         f"{ACTION_BINS} action bins + BOS + EOS); leave it unset")
    return ModelArgs.from_name(mc.name, **{**mc.overrides, "vocab_size": vocab_size})


# ---------------------------------------------------------------------------------------------------- stages
def corrupt_targets(input_ids: torch.Tensor, labels: torch.Tensor, codebook_size: int, p: float,
                    seed: Sequence[int]) -> torch.Tensor:
    """A copy of input_ids [B, S] where each target frame code (labels in [0, codebook_size)) is replaced,
    with probability p, by a uniform random code; labels stay true. The draw is seeded by ``seed``."""
    if p == 0:
        return input_ids
    rng = np.random.default_rng(list(seed))
    target = (labels != IGNORE_INDEX) & (labels < codebook_size)                    # [B, S]
    hit = torch.from_numpy(rng.random(input_ids.shape) < p) & target
    noise = torch.from_numpy(rng.integers(0, codebook_size, input_ids.shape))
    return torch.where(hit, noise, input_ids)


def batch(s: State) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's (input_ids, labels) [batch_size * grad_accum, S] on the device."""
    tc = s.cfg.train
    pairs = s.clips.pairs(s.step, tc.batch_size * tc.grad_accum)
    frames, acts = s.clips.gather(pairs)
    if s.kind == "compressive":  # future codes given the clip's context tokens, encoded per batch
        context = frames[:, : s.layout.context_frames]
        future = encode_future_codes(s.tokenizer, context, s.clips.future_images(pairs), s.context_grid, s.device)
        lb = build_sequences(s.layout, future.cpu(), acts, context_tokens=context)
    else:
        lb = build_sequences(s.layout, frames, acts)
    ids = corrupt_targets(lb.input_ids, lb.labels, s.layout.codebook_size, tc.token_noise,
                          (tc.seed, s.step, TOKEN_NOISE_STREAM))
    return ids.to(s.device, non_blocking=True), lb.labels.to(s.device, non_blocking=True)


def train_step(s: State, data: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """One optimizer step over grad_accum micro-batches; returns detached diagnostics."""
    tc = s.cfg.train
    input_ids, labels = data
    t0 = time.perf_counter()
    s.model.train()
    loss_sum, correct, total = 0.0, 0, 0
    for ids, lab in zip(input_ids.chunk(tc.grad_accum), labels.chunk(tc.grad_accum)):
        with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
            loss, n_correct, n = target_loss(s.model, ids, lab)
        (loss / tc.grad_accum).backward()
        loss_sum += loss.item() / tc.grad_accum
        correct, total = correct + n_correct.item(), total + n
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    lr = s.scheduler.get_last_lr()[0]
    s.scheduler.step()
    dt = time.perf_counter() - t0
    return {"loss": loss_sum, "token_acc": correct / total, "grad_norm": grad_norm.item(), "lr": lr,
            "sec_per_step": dt, "tokens_per_sec": input_ids.numel() / dt}


@torch.no_grad()
def evaluate(s: State, force: bool = False) -> dict | None:
    """Val CE / token accuracy and greedy future-frame quality vs the copy baseline (every eval_every steps)."""
    if not loop.due(s.step, s.cfg.train.eval_every, force):
        return None
    s.model.eval()
    bs, v, P = s.cfg.train.batch_size, s.val, s.layout.prompt_len
    multi = isinstance(s.layout, MultiStepLayout)
    loss_sum, correct, total, generated = 0.0, 0, 0, []
    for ids, lab in zip(v.input_ids.split(bs), v.labels.split(bs)):
        loss, n_correct, n = target_loss(s.model, ids, lab)
        loss_sum, correct, total = loss_sum + loss.item() * n, correct + n_correct.item(), total + n
        if multi:  # the response's action tokens are the given (forced) ones
            generated.append(generate_frames(s.model, ids[:, :P], s.layout, ids[:, P:]).flatten(0, 1))
        else:
            generated.append(generate_frame(s.model, ids[:, :P], s.layout))
    s.model.train()
    pred_tokens = torch.cat(generated)                                              # [N * S, F]
    if s.kind == "compressive":
        pred = decode_future_codes(s.tokenizer, pred_tokens, v.context_tokens, s.grid, s.context_grid, bs)
    else:
        pred = decode_tokens(s.tokenizer, pred_tokens, s.grid, bs)
    out = {"loss": loss_sum / total, "token_acc": correct / total,
           **_mean_scores(s.lpips, {"pred": pred}, v.target_frames, bs),
           "pred_token_match": (pred_tokens == v.target_tokens).float().mean().item(), **v.baseline,
           "clips": len(v.input_ids), "future_frames": s.layout.future_frames if multi else 1}
    if multi:
        out.update(_step_mae(pred, v.target_frames, s.layout.future_frames, "pred"))
    if s.lpips_note:
        out["lpips"] = s.lpips_note
    s.last_eval = {"step": s.step, **out}
    s.logger.log(s.step, out, kind="eval")
    lp = {k: f" lpips {out[f'{k}_lpips']:.4f}" if f"{k}_lpips" in out else "" for k in ("pred", "copy")}
    what = f"{s.layout.future_frames} frames" if multi else "next frame"
    s.logger.write(f"step {s.step}: val loss {out['loss']:.4f} acc {out['token_acc']:.3f} | {what} psnr "
                   f"{out['pred_psnr']:.2f} ssim {out['pred_ssim']:.4f} mae {out['pred_mae']:.4f}{lp['pred']} | "
                   f"copy psnr {out['copy_psnr']:.2f} ssim {out['copy_ssim']:.4f} mae {out['copy_mae']:.4f}{lp['copy']}")
    return out


def save_checkpoint(s: State, force: bool = False) -> Path | None:
    return loop.save_checkpoint(s, s.cfg.train.seed, force)


def finish(s: State) -> dict:
    """Final eval, checkpoint, and the trained model (HF layout + the run's config.yaml + layout.json)."""
    if s.last_eval.get("step") != s.step:
        evaluate(s, force=True)
    save_checkpoint(s, force=True)
    model_dir = s.out_dir / "model"
    s.model.save_pretrained(model_dir)
    C.to_yaml(s.cfg, model_dir / "train_config.yaml")
    lay = s.layout
    if isinstance(lay, MultiStepLayout):
        info = {"layout": "multi_step", "tokens_per_frame": lay.tokens_per_frame,
                "context_tokens_per_frame": lay.context_tokens_per_frame, "token_grid": list(s.grid),
                "context_frames": lay.context_frames, "future_frames": lay.future_frames,
                "action_dims": lay.action_dims, "codebook_size": lay.codebook_size,
                "context_codebook_size": lay.context_codebook_size, "action_bins": lay.action_bins,
                "bos_id": lay.bos_id, "eos_id": lay.eos_id, "vocab_size": lay.vocab_size,
                "clip_stride": s.cfg.data.clip_stride, "tokenizer": str(tokenizer_dir(s.cfg.tokenizer.checkpoint))}
        if s.context_grid is not None:
            info["context_token_grid"] = list(s.context_grid)
    else:
        info = {"layout": "single_step", "tokens_per_frame": lay.tokens_per_frame, "token_grid": list(s.grid),
                "context_frames": lay.context_frames, "action_dims": lay.action_dims,
                "codebook_size": lay.codebook_size, "action_bins": lay.action_bins, "eos": lay.eos,
                "bos_id": lay.bos_id, "eos_id": lay.eos_id, "vocab_size": lay.vocab_size,
                "clip_stride": s.cfg.data.clip_stride, "tokenizer": str(tokenizer_dir(s.cfg.tokenizer.checkpoint))}
    info["tokenizer_kind"] = s.kind
    (model_dir / "layout.json").write_text(json.dumps(info, indent=2) + "\n")
    return {"step": s.step, "out_dir": str(s.out_dir), "model_dir": str(model_dir),
            "eval": {k: v for k, v in s.last_eval.items() if k != "step"}, "train": s.last_train,
            "seconds": time.perf_counter() - s.t_start}


# ---------------------------------------------------------------------------------------------------- recipe
def run(cfg: C.PretrainRun) -> dict:
    """Pre-train the world model described by ``cfg``; returns {step, out_dir, model_dir, eval, train, seconds}."""
    return loop.run_steps(setup(cfg), batch, train_step, evaluate, save_checkpoint, finish)
