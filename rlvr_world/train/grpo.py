"""``rlvr-train grpo``: post-train a pre-trained video world model with GRPO on a verifiable reward (the paper's
RLVR stage), single-step (context frames -> the next frame) or multi-step (context frames -> S frames, each
followed by its given action).

A short lifecycle (torchtune's): ``setup`` (world model + layout from a pre-training run, its tokenizer,
frozen reference model, data, LPIPS, optimizer, resume) -> per step ``prompts`` -> ``rollout`` -> ``decode``
-> ``score`` -> ``advantages`` -> ``reference_logprobs`` -> ``update`` -> log -> ``evaluate`` -> checkpoint
-> ``finish`` (final evaluation, checkpoint, the post-trained model in the HF layout, ``report.md``).

Choices:

* **One process holds one copy of the weights**: the sampler (``rlvr_world.rollout.generate``, prefill once
  per group, shared-prefix KV) reads the very parameters the optimizer updates; nothing is synchronised.
* **Where things come from**: ``model.init_from`` is the pre-training run (or its ``model/`` directory); its
  ``layout.json`` fixes the token layout and the tokenizer kind, and ``data.context_frames`` /
  ``data.future_frames`` / ``data.clip_stride`` must agree with it. ``tokenizer.checkpoint`` defaults to the tokenizer that layout names. The reference policy is the
  initial model, frozen (bf16 on a GPU, ``grpo.ref_precision``); it is not built when ``grpo.kl_coef`` is 0.
* **Prompts**: step s uses training clips s*P .. s*P+P-1 of the pre-training sampler's stream (P =
  ``grpo.prompts_per_step``); the batch depends only on (train.seed, step). Single-step responses are the
  target frame's tokens (fixed length, no EOS). Sampling is keyed by the global prompt index, so a prompt gets the
  same samples on any number of ranks. A sampled token that is not a frame code (an action bin, BOS or
  EOS: rare after pre-training) is decoded as the last context frame's token at that position (code 0 with
  the compressive tokenizer) and counted (``invalid_token_frac``); the policy keeps the token it sampled.
* **Multi-step** (a model pre-trained with ``data.future_frames = S > 1``, ``MultiStepLayout``): each response
  is S x (F sampled frame tokens + A action tokens); the actions are the clip's true ones, injected by the
  rollout engine as forced tokens (appended to the KV cache, never a re-prefill; log-prob 0, loss mask
  False). The reward is the mean of the per-frame rewards over the S frames, minus
  ``grpo.repetition_penalty`` x the share of predicted frames identical to the frame before (0 by default;
  ``repetition_rate`` is logged either way). With the compressive tokenizer (the paper's multi-step
  setting: fewer tokens per future frame than per context frame) the prompt holds context codes and the
  sampled future codes are decoded against the context of their prompt (computed once per prompt).
* **Reward**: ``grpo.reward`` from ``rlvr_world.rewards.REWARDS`` on the decoded frames against the *true*
  next frames (the episode's pixels, not the tokenizer's reconstruction), the true frame read once per
  group (``group_size=G``). LPIPS uses ``grpo.lpips_net``: VGG16 (the paper's) or AlexNet (about 10x
  cheaper on a CPU: the quick start's choice).
* **Update** (one PPO epoch by default): old log-probs are the sampler's (the log-prob contract makes them
  equal to a recompute; every ``grpo.logprob_check_every`` steps the first micro-batch is recomputed before
  the update and the mismatch logged: ``logprob_max_abs_diff``, ``logprob_frac_off`` = share of tokens with
  |exp(delta) - 1| > 1e-3). Mini-batches of ``grpo.mini_batch_prompts`` prompts (whole groups), each one
  optimizer step; micro-batches of ``grpo.micro_batch_size`` sequences; the loss (``ops.grpo_loss``) is
  normalised by the mini-batch's token count summed over micro-batches *and ranks*, so accumulation and
  data parallelism give the gradient of one big batch. A non-finite gradient norm skips the optimizer step
  (counted in ``skipped_updates``). The LR schedule advances once per RL step.
* **Distributed** (``torchrun``; ``train.distributed``): each rank samples, scores and trains on its
  block of every mini-batch of the step's prompts (groups never split; mini-batch k is the same prompts on
  any number of ranks, so the optimizer steps match one process), DDP averages gradients (the loss is
  scaled by the world size because it is normalised globally), rank 0 evaluates, logs and checkpoints.
* **Validation** at step 0, every ``train.eval_every`` steps and at the end, on ``grpo.eval_prompts`` fixed
  val clips with ``grpo.eval_samples`` samples each, top-k ``grpo.eval_top_k`` (100, the paper's), the same
  random numbers every time (so a change is the model's): reward, MAE, MSE, PSNR, SSIM, LPIPS, next to the
  copy-last-frame baseline. The step-0 numbers are the pre-trained model's ("before"), kept in checkpoints.
* **Checkpoints and resume** (``train.resume=true``): model, AdamW, schedule, RNG, step, the step-0
  evaluation and counters; a resumed run samples exactly what an uninterrupted one would (bit-exact on the
  CPU). Ctrl-C finishes the current step and writes a checkpoint (``train.loop``).
"""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr_world import config as C
from rlvr_world.data.episodes import ActionTokenizer, ClipSampler, EpisodeDataset
from rlvr_world.data.video_layout import MultiStepLayout
from rlvr_world.models.compressive_tokenizer import CompressiveTokenizer
from rlvr_world.models.transformer import Transformer
from rlvr_world.ops import grpo_loss, token_logprobs
from rlvr_world.rewards import REWARDS, repetition_rate, video_reward
from rlvr_world.rl import Rollout, grpo_advantages
from rlvr_world.rollout import generate

from . import checkpoint, distributed, loop
from .grpo_data import Layout, Tokenizer, VideoClips, future_frames, load_layout, load_tokenizer, model_dir_of
from .logging import MetricLogger, NullLogger
from .pretrain import ACTION_BINS, build_lpips, decode_tokens
from .schedule import autocast_dtype, lr_factor

__all__ = ["Batch", "State", "run", "setup"]

PIXEL_METRICS = ("mae", "mse", "psnr", "ssim")
EVAL_SEED_OFFSET = 0x65766131  # validation sampling uses its own Philox key: seed + this
RESUME_IGNORE = (*checkpoint.DEFAULT_IGNORE, "data.root", "data.workers", "grpo.logprob_check_every",
                 "grpo.eval_prompts", "grpo.eval_samples", "progress")


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class Batch:
    """One step's rollouts on this rank (P local prompts, G samples each, F frame tokens)."""

    prompt_ids: torch.Tensor  # [P] global prompt indices keying the sampler (``sequence_ids``)
    prompts: torch.Tensor  # [P, Lp] int64
    context: torch.Tensor  # [P, n, Fc] the context frames' codes
    targets: torch.Tensor  # [P, 3, H, W] uint8 true next frames; multi-step [P, S, 3, H, W]
    forced: torch.Tensor | None = None  # multi-step: [P, R] the response's given action tokens (0 elsewhere)
    rollout: Rollout | None = None  # tokens / logprobs / mask [P*G, R] (R = F single-step, S (F + A) multi-step)
    frames: torch.Tensor | None = None  # [P*G, 3, H, W] decoded predictions in [0, 1]; multi-step [P*G, S, 3, H, W]
    codes: torch.Tensor | None = None  # [P*G, S, F] the frame codes decoded
    rewards: torch.Tensor | None = None  # [P*G]
    advantages: torch.Tensor | None = None  # [P*G]
    ref_logp: torch.Tensor | None = None  # [P*G, R]
    metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- state
@dataclass
class State:
    cfg: C.GRPORun
    out_dir: Path
    dist: distributed.DistInfo
    autocast: torch.dtype | None
    tokenizer: Tokenizer
    layout: Layout
    grid: tuple[int, int]  # the token grid of a predicted frame (compressive: the future grid)
    model: Transformer  # the policy (also the sampler)
    policy: torch.nn.Module  # HiddenStates(model), DDP-wrapped when distributed
    ref: Transformer | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_clips: VideoClips
    val: dict  # prompts / last_frame / targets of the fixed validation clips, copy baseline
    lpips: Any
    logger: MetricLogger | NullLogger | None
    step: int = 0
    skipped_updates: int = 0
    before: dict = field(default_factory=dict)  # the step-0 evaluation
    last_eval: dict = field(default_factory=dict)
    last_train: dict = field(default_factory=dict)
    last_saved: int = -1
    samples: dict = field(default_factory=dict)  # {"before"|"after": predicted val frames} for the report
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank has ``flag`` (one rank's Ctrl-C stops all ranks at the same step)."""
        if not self.dist.distributed:
            return flag
        return distributed.all_reduce_sum(torch.tensor([float(flag)], device=self.device), self.dist).item() > 0


def _frozen_copy(model: Transformer, precision: str, device: torch.device) -> Transformer:
    dtype = torch.float32 if precision == "fp32" or (precision == "auto" and device.type != "cuda") else torch.bfloat16
    return copy.deepcopy(model).to(dtype).eval().requires_grad_(False)


def setup(cfg: C.GRPORun) -> State:
    """Everything a run needs, checked before any work; restores the latest checkpoint when resuming."""
    tc, g = cfg.train, cfg.grpo
    model_dir, info, layout = load_layout(cfg)
    if g.reward not in REWARDS:
        raise ValueError(f"grpo.reward must be one of {sorted(REWARDS)}, got {g.reward!r}")
    dist = distributed.init()
    distributed.shard(g.prompts_per_step, dist)  # errors early when the prompts do not split over the ranks
    distributed.shard(g.mini_batch_prompts, dist, name="grpo.mini_batch_prompts")
    out_dir = Path(tc.out_dir)
    if not tc.resume and checkpoint.latest(out_dir) is not None:
        raise ValueError(f"train.out_dir {out_dir} already has checkpoints: set train.resume=true to continue "
                         f"from {checkpoint.latest(out_dir).name}, or choose another train.out_dir")
    device = dist.device
    tokenizer, _ = load_tokenizer(cfg, info, layout, device)
    train_ds, val_ds = EpisodeDataset(cfg.data.root, "train"), EpisodeDataset(cfg.data.root, "val")
    actions = ActionTokenizer.from_meta(cfg.data.root, bins=ACTION_BINS)
    if actions.dim != layout.action_dims:
        raise ValueError(f"data.root {cfg.data.root} has {actions.dim}-D actions; the model expects {layout.action_dims}")
    size = train_ds.frame_size or tuple(train_ds[0]["image"].shape[1:3])
    grid = tokenizer.future_grid(*size) if isinstance(tokenizer, CompressiveTokenizer) else tokenizer.token_grid(*size)
    lpips, lpips_note = build_lpips(device, g.lpips_net)
    if g.repetition_penalty and not isinstance(layout, MultiStepLayout):
        raise ValueError(f"grpo.repetition_penalty={g.repetition_penalty} applies to multi-step models only; this "
                         f"model's layout is single-step")
    if lpips is None and "lpips" in getattr(REWARDS[g.reward], "terms", {"lpips": 1}):
        raise ValueError(f"grpo.reward={g.reward!r} needs LPIPS, but {lpips_note.removeprefix('skipped: ')}; run "
                         f"`python -m rlvr_world.models.lpips_weights` or choose a reward without LPIPS (neg_mae)")

    torch.manual_seed(tc.seed)
    model = Transformer.from_pretrained(model_dir, dtype=torch.float32).to(device)
    if model.args.vocab_size != layout.vocab_size:
        raise ValueError(f"model {model_dir} has vocab_size={model.args.vocab_size}; its layout.json says {layout.vocab_size}")
    ref = _frozen_copy(model, g.ref_precision, device) if g.kl_coef > 0 else None
    stride = cfg.data.clip_stride
    train_clips = VideoClips(train_ds, tokenizer, actions, layout, stride, device, seed=tc.seed)
    probe = ClipSampler(val_ds, layout.context_frames, future_frames(layout), stride, random_start=False)
    per_episode = -(-g.eval_prompts // len(probe.usable))
    val_clips = VideoClips(val_ds, tokenizer, actions, layout, stride, device, random_start=False,
                           clips_per_episode=per_episode)
    pairs = val_clips.clips.sampler.plan()[: g.eval_prompts]
    prompts, context, targets, forced = val_clips.take(pairs)
    copy_frames = last_context_frame(tokenizer, context.to(device), size)          # [N, 3, H, W]
    if targets.dim() == 5:  # multi-step: the last context frame for every future step
        copy_frames = copy_frames[:, None].expand(-1, targets.shape[1], -1, -1, -1)
    val = {"prompts": prompts, "context": context, "targets": targets.to(device), "forced": forced,
           "copy": _metrics(copy_frames, targets.to(device), 1, lpips)}

    model.train()
    policy = distributed.wrap_ddp(distributed.HiddenStates(model), dist)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc))
    s = State(cfg, out_dir, dist, autocast_dtype(tc.precision, device), tokenizer, layout, grid, model, policy, ref,
              optimizer, scheduler, train_clips, val, lpips, None)
    latest = checkpoint.latest(out_dir) if tc.resume else None
    if latest is not None:
        state = checkpoint.load(latest, model, optimizer, scheduler, config=cfg, ignore=RESUME_IGNORE)
        s.step = s.last_saved = state["step"]
        s.skipped_updates = int(state["extra"].get("skipped_updates", 0))
        s.before = dict(state["extra"].get("before", {}))
    if dist.is_main:
        C.to_yaml(cfg, out_dir / "config.yaml")
        s.logger = MetricLogger(out_dir, tc.steps, s.step, progress=cfg.progress, desc="grpo")
    else:
        s.logger = NullLogger()
        n_params = sum(p.numel() for p in model.parameters())
        s.logger.write(f"GRPO on {model_dir}: {n_params / 1e6:.2f} M parameters, {layout.prompt_len}-token prompts, "
                       f"{layout.response_len} tokens per response ({future_frames(layout)} frame(s) of "
                       f"{layout.tokens_per_frame}); {g.prompts_per_step} prompts x "
                       f"{g.group_size} samples per step on {dist.world_size} rank(s); reward {g.reward}; "
                       f"{len(prompts)} val clips x {g.eval_samples} samples")
        if latest is not None:
            s.logger.write(f"resumed from {latest} at step {s.step}")
    return s


# ---------------------------------------------------------------------------------------------------- stages
def local_prompts(P: int, M: int, dist: distributed.DistInfo) -> list[int]:
    """The step's prompt indices this rank holds: its block of every mini-batch of M prompts, so that
    mini-batch k is prompts k*M .. k*M+M-1 on any number of ranks (whole groups; one rank: range(P))."""
    mine = distributed.shard(M, dist, name="grpo.mini_batch_prompts")
    return [k + i for k in range(0, P, M) for i in range(mine.start, mine.stop)]


def prompts(s: State) -> Batch:
    """This rank's share of the step's prompts (whole groups, mini-batch by mini-batch)."""
    g = s.cfg.grpo
    P = g.prompts_per_step
    mine = local_prompts(P, g.mini_batch_prompts, s.dist)
    step_pairs = s.train_clips.clips.pairs(s.step, P)
    ids, context, targets, forced = s.train_clips.take([step_pairs[i] for i in mine])
    global_ids = s.step * P + torch.tensor(mine, dtype=torch.int64)
    return Batch(global_ids, ids.to(s.device), context.to(s.device), targets.to(s.device),
                 None if forced is None else forced.to(s.device))


def _generate(s: State, prompts: torch.Tensor, forced: torch.Tensor | None, **kw) -> Rollout:
    """``rollout.generate`` over the layout's response (multi-step: the action tokens forced, never sampled)."""
    if forced is None:
        return generate(s.model, prompts, max_new_tokens=s.layout.response_len - int(s.layout.eos), **kw)
    mask = s.layout.forced(torch.zeros(1, s.layout.num_actions, s.layout.action_dims, dtype=torch.long))[1]
    return generate(s.model, prompts, max_new_tokens=s.layout.response_len, forced_tokens=forced,
                    forced_mask=mask, **kw)


def rollout(s: State, b: Batch) -> Batch:
    g = s.cfg.grpo
    s.model.eval()
    b.rollout = _generate(s, b.prompts, b.forced, group_size=g.group_size, temperature=g.temperature,
                          seed=s.cfg.train.seed, sequence_ids=b.prompt_ids)
    s.model.train()
    return b


def _codes(s: State, tokens: torch.Tensor) -> torch.Tensor:
    """Response tokens [B, R] -> the sampled frame tokens [B, S, F] (S = 1 single-step)."""
    F_, S = s.layout.tokens_per_frame, future_frames(s.layout)
    if S == 1:
        return tokens[:, None, :F_]
    return tokens.view(len(tokens), S, -1)[:, :, :F_]


def last_context_frame(tokenizer: Tokenizer, context: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The last context frame of each prompt decoded: context codes [N, n, Fc] -> [N, 3, H, W] in (0, 1)."""
    if isinstance(tokenizer, CompressiveTokenizer):
        grid = tokenizer.context_grid(*size)
        return tokenizer.decode_context(context[:, -1:].reshape(len(context), 1, *grid))[:, 0]
    return decode_tokens(tokenizer, context[:, -1], tokenizer.token_grid(*size), 64)


@torch.no_grad()
def _decode_codes(s: State, codes: torch.Tensor, context: torch.Tensor, group: int, chunk: int = 256) -> torch.Tensor:
    """Frame codes [P*G, S, F] -> frames [P*G, S, 3, H, W]; compressive: each sample against its prompt's context."""
    if not isinstance(s.tokenizer, CompressiveTokenizer):
        return decode_tokens(s.tokenizer, codes.flatten(0, 1), s.grid, chunk).unflatten(0, codes.shape[:2])
    size = s.val["targets"].shape[-2:]
    per_prompt = s.tokenizer.context_from_tokens(context.view(*context.shape[:2], *s.tokenizer.context_grid(*size)))
    out = []
    for r0 in range(0, len(codes), chunk):
        rows = torch.arange(r0, min(len(codes), r0 + chunk), device=codes.device)
        ctx = [c[rows // group] for c in per_prompt]                                # the prompt's context, per sample
        out.append(s.tokenizer.decode_future(codes[rows].view(len(rows), codes.shape[1], *s.grid), ctx))
    return torch.cat(out)


def _frames(s: State, tokens: torch.Tensor, context: torch.Tensor, group: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Response tokens [P*G, R] -> (decoded frames [P*G, 3, H, W] or, multi-step, [P*G, S, 3, H, W]; the codes
    decoded [P*G, S, F]; invalid-token share [P*G]). An invalid token decodes as the last context frame's code
    at that position (compressive: code 0, the context being of another codebook)."""
    codes = _codes(s, tokens)                                                       # [P*G, S, F]
    invalid = codes >= s.layout.codebook_size
    if isinstance(s.tokenizer, CompressiveTokenizer):
        stand_in = torch.zeros_like(codes[:, 0])
    else:
        stand_in = context[:, -1].repeat_interleave(group, dim=0)
    codes = torch.where(invalid, stand_in[:, None], codes)
    with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
        frames = _decode_codes(s, codes, context, group)                            # bf16 on a GPU
    frames = frames.float().clamp(0, 1)                                             # [P*G, S, 3, H, W]
    multi = isinstance(s.layout, MultiStepLayout)  # multi-step targets are [P, S, 3, H, W], also for S = 1
    return (frames if multi else frames[:, 0]), codes, invalid.float().flatten(1).mean(dim=1)


def decode(s: State, b: Batch) -> Batch:
    b.frames, b.codes, invalid = _frames(s, b.rollout.tokens, b.context, s.cfg.grpo.group_size)
    b.metrics["invalid_token_frac"] = invalid.mean().item()
    return b


def _metrics(pred: torch.Tensor, target: torch.Tensor, group: int, lpips) -> dict[str, torch.Tensor]:
    """Per-sample MAE/MSE/PSNR/SSIM (and LPIPS) of pred [B, (S,) 3, H, W] against target [B / group, (S,) 3, H, W],
    averaged over the S frames."""
    names = PIXEL_METRICS + (("lpips",) if lpips is not None else ())
    return video_reward(pred, target, {"mae": 0.0}, group_size=group, lpips=lpips, metrics=names)[1]


@torch.no_grad()
def _reward(s: State, frames: torch.Tensor, codes: torch.Tensor, targets: torch.Tensor, context: torch.Tensor,
            group: int) -> tuple[torch.Tensor, dict]:
    """(rewards [B], {metric: [B]}) of frames [B, (S,) 3, H, W] against targets [B / group, (S,) 3, H, W], in one
    pass when the reward declares its metric weights (``terms``, as the built-in ones do); multi-step (S > 1):
    minus ``grpo.repetition_penalty`` x the repetition rate of the decoded codes [B, S, F], also returned."""
    fn = REWARDS[s.cfg.grpo.reward]
    terms = getattr(fn, "terms", None)
    if terms is None:
        reward, scores = fn(frames, targets, group_size=group, lpips=s.lpips), _metrics(frames, targets, group, s.lpips)
    else:
        names = PIXEL_METRICS + (("lpips",) if s.lpips is not None else ())
        reward, scores = video_reward(frames, targets, terms, group_size=group, lpips=s.lpips, metrics=names)
    reward = reward.float()
    if future_frames(s.layout) > 1:
        scores["repetition_rate"] = _repetition(s, codes, context, group)
        reward = reward - s.cfg.grpo.repetition_penalty * scores["repetition_rate"]
    return reward, scores


def _repetition(s: State, codes: torch.Tensor, context: torch.Tensor, group: int) -> torch.Tensor:
    """Multi-step: per-sample share of predicted frames identical to the frame before (the first one compared
    with the last context frame; not with the compressive tokenizer, whose context codes are of another
    codebook), ``rewards.repetition_rate``: [B]."""
    if isinstance(s.tokenizer, CompressiveTokenizer):
        return repetition_rate(codes)
    return repetition_rate(codes, previous=context[:, -1].repeat_interleave(group, dim=0))


def score(s: State, b: Batch) -> Batch:
    """Rewards [P*G] against the true next frames (read once per group) and the per-metric means."""
    b.rewards, scores = _reward(s, b.frames, b.codes, b.targets, b.context, s.cfg.grpo.group_size)
    b.metrics.update({k: v.mean().item() for k, v in scores.items()})
    return b


def advantages(s: State, b: Batch) -> Batch:
    b.advantages = grpo_advantages(b.rewards, s.cfg.grpo.group_size, scale=s.cfg.grpo.advantage_scale)
    return b


def _sequences(s: State, b: Batch, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids [B, Lp + F - 1] fed to the model, the response tokens [B, F]) of the given rollout rows."""
    G = s.cfg.grpo.group_size
    tokens = b.rollout.tokens[rows]
    prompts = b.prompts.repeat_interleave(G, dim=0)[rows]
    return torch.cat([prompts, tokens[:, :-1]], dim=1), tokens


def _response_hidden(module, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Hidden states at the positions that predict the response tokens: [B * F, H]."""
    h = module(ids)                                                                 # [B, Lp + F - 1, H]
    return h[:, prompt_len - 1:].reshape(-1, h.shape[-1])


@torch.no_grad()
def reference_logprobs(s: State, b: Batch) -> Batch:
    if s.ref is None:
        return b
    out = []
    mb = s.cfg.grpo.micro_batch_size
    for r0 in range(0, len(b.rollout.tokens), mb):
        ids, tokens = _sequences(s, b, slice(r0, r0 + mb))
        h = _response_hidden(s.ref.hidden_states, ids, s.layout.prompt_len)
        out.append(token_logprobs(h, s.ref.lm_head_weight, tokens.reshape(-1), s.cfg.grpo.temperature)
                   .view(tokens.shape))
    b.ref_logp = torch.cat(out).float()
    return b


@torch.no_grad()
def _logprob_check(s: State, b: Batch) -> dict:
    """The sampler's log-probs vs the trainer's recompute on the first micro-batch, before any update."""
    ids, tokens = _sequences(s, b, slice(0, s.cfg.grpo.micro_batch_size))
    with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
        h = _response_hidden(s.model.hidden_states, ids, s.layout.prompt_len)
    new = token_logprobs(h, s.model.lm_head_weight.to(h.dtype), tokens.reshape(-1), s.cfg.grpo.temperature).view(tokens.shape)
    mask = b.rollout.mask[: len(tokens)]
    delta = (new - b.rollout.logprobs[: len(tokens)])[mask]
    return {"logprob_max_abs_diff": delta.abs().max().item(),
            "logprob_frac_off": ((delta.exp() - 1).abs() > 1e-3).float().mean().item()}


def update(s: State, b: Batch) -> dict:
    """ppo_epochs x mini-batches of whole groups, each one optimizer step over micro-batches."""
    g, tc = s.cfg.grpo, s.cfg.train
    G, world = g.group_size, s.dist.world_size
    mine = distributed.shard(g.mini_batch_prompts, s.dist, name="grpo.mini_batch_prompts")
    rows_per_mini = (mine.stop - mine.start) * G
    n_rows = len(b.rollout.tokens)
    weight = s.model.lm_head_weight
    stats_sum: dict[str, float] = {}
    extremes: dict[str, float] = {}
    n_updates, loss_sum, norms = 0, 0.0, []
    for _ in range(g.ppo_epochs):
        for m0 in range(0, n_rows, rows_per_mini):
            mini = slice(m0, min(n_rows, m0 + rows_per_mini))
            num_tokens = distributed.all_reduce_sum(b.rollout.mask[mini].sum().double(), s.dist).item()
            starts = list(range(mini.start, mini.stop, g.micro_batch_size))
            for i, r0 in enumerate(starts):
                rows = slice(r0, min(mini.stop, r0 + g.micro_batch_size))
                ids, tokens = _sequences(s, b, rows)
                with distributed.no_sync(s.policy, i < len(starts) - 1), \
                        torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
                    h = _response_hidden(s.policy, ids, s.layout.prompt_len)
                    w = weight.to(h.dtype)  # bf16 under autocast; the cast passes the gradient to the fp32 weight
                    adv = b.advantages[rows, None].expand_as(tokens)
                    loss, stats = grpo_loss(
                        h, w, tokens.reshape(-1), b.rollout.logprobs[rows].reshape(-1), adv.reshape(-1),
                        b.rollout.mask[rows].reshape(-1),
                        None if b.ref_logp is None else b.ref_logp[rows].reshape(-1),
                        clip_low=g.clip_low, clip_high=g.clip_high, clip_c=g.clip_c, kl_coef=g.kl_coef,
                        temperature=g.temperature, num_tokens=max(num_tokens, 1.0))
                    (loss * world).backward()
                loss_sum += loss.item()
                share = b.rollout.mask[rows].sum().item() / max(num_tokens / world, 1.0)
                for k, v in stats.as_dict().items():  # token-weighted means (min / max of the ratio: extremes)
                    if k in ("ratio_min", "ratio_max"):
                        pick = min if k == "ratio_min" else max
                        extremes[k] = pick(extremes.get(k, v), v)
                    else:
                        stats_sum[k] = stats_sum.get(k, 0.0) + v * share
            norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
            if torch.isfinite(norm):
                s.optimizer.step()
                norms.append(norm.item())
            else:
                s.skipped_updates += 1
            s.optimizer.zero_grad(set_to_none=True)
            n_updates += 1
    out = {**{k: v / n_updates for k, v in stats_sum.items()}, **extremes}
    # the loss of the whole mini-batch is the sum of the ranks' parts: x world, then averaged over ranks in the log
    out.update(loss=loss_sum * world / n_updates, grad_norm=float(np.mean(norms)) if norms else float("nan"),
               skipped_updates=s.skipped_updates, updates=n_updates)
    return out


def train_step(s: State, _: None = None) -> dict:
    """One RL step; returns the metrics of this rank's data (averaged over ranks for the log)."""
    times, b = {}, None
    t = time.perf_counter()
    stages = (("prompts", None), ("rollout", rollout), ("decode", decode), ("reward", score),
              ("advantages", advantages), ("reference", reference_logprobs))
    for name, fn in stages:
        b = prompts(s) if fn is None else fn(s, b)
        now = time.perf_counter()
        times[f"time_{name}"], t = now - t, now
    check = {}
    every = s.cfg.grpo.logprob_check_every
    if every and s.step % every == 0:
        check = _logprob_check(s, b)
    upd = update(s, b)
    times["time_update"] = time.perf_counter() - t
    lr = s.scheduler.get_last_lr()[0]
    s.scheduler.step()
    n_new = b.rollout.mask.sum().item()
    metrics = {"reward_mean": b.rewards.mean().item(), "reward_std": b.rewards.std().item(), **b.metrics, **check,
               **upd, "lr": lr, **times, "time_step": sum(times.values()),
               "tokens_per_sec": n_new * s.dist.world_size / max(times["time_rollout"], 1e-9)}
    return distributed.all_reduce_mean(metrics, s.dist)


@torch.no_grad()
def evaluate(s: State, force: bool = False) -> dict | None:
    """Validation on the fixed held-out clips (rank 0); the step-0 result is kept as ``before``."""
    if not loop.due(s.step, s.cfg.train.eval_every, force):
        return None
    out = None
    if s.dist.is_main:
        g, v = s.cfg.grpo, s.val
        S = g.eval_samples
        s.model.eval()
        forced = None if v["forced"] is None else v["forced"].to(s.device)
        r = _generate(s, v["prompts"].to(s.device), forced, group_size=S, temperature=g.eval_temperature,
                      top_k=g.eval_top_k, seed=s.cfg.train.seed + EVAL_SEED_OFFSET)
        s.model.train()
        context = v["context"].to(s.device)
        frames, codes, invalid = _frames(s, r.tokens, context, S)
        reward, scores = _reward(s, frames, codes, v["targets"], context, S)
        out = {"reward": reward.mean().item(), **{k: x.mean().item() for k, x in scores.items()},
               "invalid_token_frac": invalid.mean().item(), "clips": len(v["prompts"]), "samples": S,
               **{f"copy_{k}": x.mean().item() for k, x in v["copy"].items()}}
        first = frames[::S]                                                         # [clips, (S,) 3, H, W]
        s.samples["before" if s.step == 0 else "after"] = (first[:, -1] if first.dim() == 5 else first).cpu()
        s.logger.log(s.step, out, kind="eval")
        out["clip_rewards"] = reward.view(-1, S).mean(dim=1).tolist()  # [clips]: for paired before/after statistics
        if s.step == 0 and not s.before:
            s.before = dict(out)
        s.last_eval = {"step": s.step, **out}
        lp = f" lpips {out['lpips']:.4f}" if "lpips" in out else ""
        s.logger.write(f"step {s.step}: val reward {out['reward']:.4f} | mae {out['mae']:.4f} psnr {out['psnr']:.2f} "
                       f"ssim {out['ssim']:.4f}{lp} (copy baseline mae {out['copy_mae']:.4f})")
    distributed.barrier(s.dist)
    return out


def save_checkpoint(s: State, force: bool = False) -> Path | None:
    if s.last_saved == s.step or not loop.due(s.step, s.cfg.train.checkpoint_every, force):
        return None
    path = None
    if s.dist.is_main:
        path = checkpoint.save(s.out_dir, s.step, s.model, s.optimizer, s.scheduler, config=s.cfg,
                               sampler={"seed": s.cfg.train.seed, "step": s.step},
                               extra={"skipped_updates": s.skipped_updates, "before": s.before},
                               keep=s.cfg.train.keep_checkpoints)
    s.last_saved = s.step
    distributed.barrier(s.dist)
    return path


def finish(s: State) -> dict:
    """Final evaluation and checkpoint; rank 0 writes the model (HF layout + layout.json) and report.md."""
    if s.last_eval.get("step") != s.step:
        evaluate(s, force=True)
    save_checkpoint(s, force=True)
    model_dir = s.out_dir / "model"
    result = {"step": s.step, "out_dir": str(s.out_dir), "model_dir": str(model_dir), "before": s.before,
              "after": {k: v for k, v in s.last_eval.items() if k != "step"}, "train": s.last_train,
              "skipped_updates": s.skipped_updates, "seconds": time.perf_counter() - s.t_start}
    if s.dist.is_main:
        s.model.save_pretrained(model_dir)
        C.to_yaml(s.cfg, model_dir / "train_config.yaml")
        src = model_dir_of(s.cfg.model.init_from)
        (model_dir / "layout.json").write_text((src / "layout.json").read_text())
        from .grpo_report import write_report

        result["report"] = str(write_report(s, result))
    distributed.barrier(s.dist)
    return result


# ---------------------------------------------------------------------------------------------------- recipe
def run(cfg: C.GRPORun) -> dict:
    """Post-train the world model of ``cfg.model.init_from``; returns {step, out_dir, model_dir, before, after, ...}."""
    s = setup(cfg)
    try:
        if s.step == 0:
            evaluate(s, force=True)
        return loop.run_steps(s, lambda _s: None, lambda st, _b: train_step(st), evaluate, save_checkpoint, finish)
    finally:
        s.policy = None  # DDP's reducer must go before its process group
        gc.collect()
        distributed.shutdown()
