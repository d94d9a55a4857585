"""Clips as token ids for ``rlvr-train pretrain``: the tokenizer checkpoint (either kind), the per-frame token
cache, the clip sampler over it, and the layouts' sequences.

* ``tokenizer.kind=frame``: one ``FrameTokenizer`` codes every frame on its own, so every frame of a split is
  encoded once (``encode_episodes``) and clips are gathered from the cache.
* ``tokenizer.kind=compressive``: the ``CompressiveTokenizer``'s context branch codes each frame on its own
  (a per-frame ``FrameTokenizer``), so every frame's *context* tokens are cached once
  (``encode_context_frames``); a future frame's tokens depend on the clip's context frames, so they are
  encoded per batch (``encode_future_codes``: ``encode_future(frames, context_from_tokens(context tokens))``,
  under no_grad). The split's raw frames stay in memory (uint8) for that.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rlvr_world.data.episodes import ClipSampler, EpisodeDataset
from rlvr_world.data.video_layout import LayoutBatch, MultiStepLayout, SingleStepLayout
from rlvr_world.models.compressive_tokenizer import MODEL_TYPE as COMPRESSIVE_TYPE
from rlvr_world.models.compressive_tokenizer import CompressiveTokenizer
from rlvr_world.models.frame_tokenizer import MODEL_TYPE as FRAME_TYPE
from rlvr_world.models.frame_tokenizer import FrameTokenizer

__all__ = ["CLIPS_PER_EPISODE", "ENCODE_BATCH", "ClipTokens", "build_sequences", "checkpoint_kind",
           "decode_future_codes", "encode_context_frames", "encode_episodes", "encode_future_codes",
           "load_tokenizer", "tokenizer_dir"]

ENCODE_BATCH = 64  # frames per tokenizer call while building the token cache
CLIPS_PER_EPISODE = 4  # training clips per episode per sampler epoch (each with its own random start)
KINDS = {FRAME_TYPE: "frame", COMPRESSIVE_TYPE: "compressive"}
Layout = SingleStepLayout | MultiStepLayout


# ---------------------------------------------------------------------------------------------------- tokenizer
def tokenizer_dir(path: str) -> Path:
    """The save_pretrained directory: ``path`` itself, or ``path/tokenizer`` for a tokenizer run directory."""
    p = Path(path)
    if not (p / "config.json").is_file() and (p / "tokenizer" / "config.json").is_file():
        return p / "tokenizer"
    return p


def checkpoint_kind(path: str | Path) -> str | None:
    """"frame" / "compressive" from the ``model_type`` of ``path/config.json``; None when unreadable or other."""
    try:
        model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return KINDS.get(model_type)


def load_tokenizer(kind: str, checkpoint: str, device: torch.device) -> FrameTokenizer | CompressiveTokenizer:
    """The tokenizer of ``kind`` from ``checkpoint`` (fp32, eval, frozen); a checkpoint of the other kind is a
    ValueError naming tokenizer.kind and the checkpoint."""
    path = tokenizer_dir(checkpoint)
    found = checkpoint_kind(path)
    if found is not None and found != kind:
        raise ValueError(f"tokenizer.kind={kind} but tokenizer.checkpoint {checkpoint} holds a {found} tokenizer "
                         f"({path / 'config.json'}); set tokenizer.kind={found} or point tokenizer.checkpoint at "
                         f"a {kind} tokenizer")
    cls = CompressiveTokenizer if kind == "compressive" else FrameTokenizer
    tok = cls.from_pretrained(path, device=device)
    return tok.float().eval().requires_grad_(False)


@torch.no_grad()
def encode_episodes(dataset: EpisodeDataset, tokenizer: FrameTokenizer, device: torch.device,
                    batch: int = ENCODE_BATCH) -> list[np.ndarray]:
    """Every frame of every episode as tokens: one [T, F] int16 array per episode (F = h * w, row-major)."""
    out = []
    for i in range(len(dataset)):
        image = torch.from_numpy(dataset[i]["image"]).permute(0, 3, 1, 2)                   # [T, 3, H, W] uint8
        codes = [tokenizer.encode(chunk.to(device)).flatten(1).cpu() for chunk in image.split(batch)]
        out.append(torch.cat(codes).numpy().astype(np.int16))
    return out


@torch.no_grad()
def encode_context_frames(images: Sequence[np.ndarray], tokenizer: CompressiveTokenizer, device: torch.device,
                          batch: int = ENCODE_BATCH) -> list[np.ndarray]:
    """Every frame's context-branch tokens: one [T, Fc] int16 array per episode image [T, H, W, 3] uint8 (each
    frame coded alone, ``encode_context`` on [B, 1, 3, H, W]; the branch is per frame, so these equal the
    tokens of the frame inside any clip)."""
    out = []
    for image in images:
        x = torch.from_numpy(image).permute(0, 3, 1, 2)                                    # [T, 3, H, W] uint8
        codes = [tokenizer.encode_context(chunk.to(device)[:, None])[0].flatten(1).cpu() for chunk in x.split(batch)]
        out.append(torch.cat(codes).numpy().astype(np.int16))
    return out


@torch.no_grad()
def encode_future_codes(tokenizer: CompressiveTokenizer, context_tokens: torch.Tensor, frames: torch.Tensor,
                        context_grid: tuple[int, int], device: torch.device,
                        batch: int = ENCODE_BATCH) -> torch.Tensor:
    """Future frames [N, S, 3, H, W] uint8 given the clips' context tokens [N, n, Fc] -> dynamics codes
    [N, S, F] int64 (on the device), ``batch`` frames per call."""
    S = frames.shape[1]
    step = max(1, batch // S)
    out = []
    for ctx, fut in zip(context_tokens.split(step), frames.split(step)):
        context = tokenizer.context_from_tokens(ctx.to(device).unflatten(-1, context_grid))
        out.append(tokenizer.encode_future(fut.to(device), context).flatten(2))
    return torch.cat(out)


@torch.no_grad()
def decode_future_codes(tokenizer: CompressiveTokenizer, codes: torch.Tensor, context_tokens: torch.Tensor,
                        grid: tuple[int, int], context_grid: tuple[int, int], batch: int) -> torch.Tensor:
    """Clip-major dynamics codes [N * S, F] + the clips' context tokens [N, n, Fc] -> frames [N * S, 3, H, W]
    fp32 in (0, 1), ``batch`` clips per call."""
    N = context_tokens.shape[0]
    codes = codes.view(N, -1, *grid)
    out = []
    for c, ctx in zip(codes.split(batch), context_tokens.split(batch)):
        context = tokenizer.context_from_tokens(ctx.unflatten(-1, context_grid))
        out.append(tokenizer.decode_future(c, context).flatten(0, 1))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------- clips
class ClipTokens:
    """Clips of one split as token ids: ``(frame_tokens [N, n + S, F] int64, action_bins [N, n (S = 1) or n + S
    (S > 1), A] int64)`` for ``future_frames`` = S (single-step: S = 1 and the n context actions; multi-step:
    each future frame's action too, since each response step ends with it). With a compressive tokenizer
    the cached tokens are the context branch's (F = Fc, every clip frame) and ``multi_step=True`` keeps the
    n + S actions for any S; ``images`` (the split's frames [T, H, W, 3] uint8 per episode) then serve
    ``future_images``.

    Wraps a ``ClipSampler`` over the split and the split's cached frame tokens and binned actions.
    ``batch(step, n)``: training clips (see the pretrain module docstring); ``fixed(n)``: the first n clips of
    the deterministic evaluation order, also returning their (episode, first predicted frame index) pairs.
    """

    def __init__(self, dataset: EpisodeDataset, tokens: list[np.ndarray], actions: list[np.ndarray],
                 context_frames: int, frame_skip: int, seed: int = 0, random_start: bool = True,
                 clips_per_episode: int = CLIPS_PER_EPISODE, future_frames: int = 1, multi_step: bool | None = None,
                 images: list[np.ndarray] | None = None):
        self.sampler = ClipSampler(dataset, context_frames, future_frames, frame_skip, seed=seed,
                                   random_start=random_start, clips_per_episode=clips_per_episode)
        self.tokens, self.actions, self.n, self.future = tokens, actions, context_frames, future_frames
        self.multi = future_frames > 1 if multi_step is None else multi_step
        self.images = images
        self._plans: dict[int, list[tuple[int, int]]] = {}

    def _plan(self, epoch: int) -> list[tuple[int, int]]:
        if epoch not in self._plans:
            self.sampler.set_epoch(epoch)
            self._plans = {epoch: self.sampler.plan(), **{e: p for e, p in self._plans.items() if e == epoch - 1}}
        return self._plans[epoch]

    def _index(self, start: int) -> np.ndarray:
        return start + self.sampler.frame_skip * np.arange(self.n + self.future)

    def _gather(self, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        frames, acts = [], []
        n_acts = self.n + self.future if self.multi else self.n
        for episode, start in pairs:
            idx = self._index(start)
            frames.append(self.tokens[episode][idx].astype(np.int64))
            acts.append(self.actions[episode][idx[:n_acts]])
        return torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(acts))

    def pairs(self, step: int, n: int) -> list[tuple[int, int]]:
        """The (episode, start frame) of the n clips of ``step`` (items step * n .. step * n + n - 1)."""
        size = len(self.sampler)
        return [self._plan(g // size)[g % size] for g in range(step * n, (step + 1) * n)]

    def target_index(self, start: int) -> int:
        """The frame index of the clip's (first) predicted frame, for a clip starting at ``start``."""
        return start + self.sampler.frame_skip * self.n

    def target_indices(self, start: int) -> list[int]:
        """The frame indices of the clip's S predicted frames, for a clip starting at ``start``."""
        return [self.target_index(start) + self.sampler.frame_skip * k for k in range(self.future)]

    def gather(self, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame_tokens [N, n + S, F], action_bins [N, n or n + S, A]) of the given (episode, start) clips."""
        return self._gather(pairs)

    def future_images(self, pairs) -> torch.Tensor:
        """The S future frames of the given clips: [N, S, 3, H, W] uint8 (needs ``images``)."""
        out = [self.images[episode][self._index(start)[self.n:]] for episode, start in pairs]
        return torch.from_numpy(np.stack(out)).permute(0, 1, 4, 2, 3)

    def batch(self, step: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gather(self.pairs(step, n))

    def fixed(self, n: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        pairs = self.sampler.plan()[:n]
        frames, acts = self._gather(pairs)
        targets = [(e, self.target_index(s)) for e, s in pairs]
        return frames, acts, targets


def build_sequences(layout: Layout, frames: torch.Tensor, actions: torch.Tensor,
                    context_tokens: torch.Tensor | None = None) -> LayoutBatch:
    """frames [B, n + S, F] codes, actions [B, n or n + S, A] bins -> the layout's LayoutBatch (multi-step: the
    first n frames are the context, coded by the same frame tokenizer). With ``context_tokens`` [B, n, Fc]
    (compressive tokenizer) ``frames`` are the S future frames' dynamics codes [B, S, F]."""
    if context_tokens is not None:
        return layout.build(frames, actions, context_tokens=context_tokens)
    if isinstance(layout, MultiStepLayout):
        n = layout.context_frames
        return layout.build(frames[:, n:], actions, context_tokens=frames[:, :n])
    return layout.build(frames, actions)
