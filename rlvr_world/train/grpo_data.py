"""Where the GRPO recipe's data comes from: the token layout of a pre-training run (``layout.json``) and clips
with their prompt tokens, forced action tokens and true future frames.

``load_layout`` reads the pre-trained model's ``layout.json`` (single-step or multi-step, with a frame tokenizer
or, multi-step, the compressive one: ``tokenizer_kind``) and checks that the data config agrees with it;
``load_tokenizer`` loads the tokenizer of that kind and checks its codebooks against the layout. With the
compressive tokenizer the prompt holds *context* codes, cached per frame (its context branch codes each frame
on its own) and the sampled future codes are decoded against the context they were conditioned on.
``VideoClips`` wraps the pre-training recipe's ``ClipTokens`` (the same clip stream:
step s takes items s*P .. s*P+P-1) and keeps the split's frames in memory, so the reward compares the decoded
predictions with the episode's true pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from rlvr_world import config as C
from rlvr_world.data.episodes import ActionTokenizer, EpisodeDataset, stride_mean_actions
from rlvr_world.data.video_layout import MultiStepLayout, SingleStepLayout
from rlvr_world.models.compressive_tokenizer import CompressiveTokenizer
from rlvr_world.models.frame_tokenizer import FrameTokenizer

from . import video_clips
from .video_clips import ClipTokens, encode_context_frames, encode_episodes

__all__ = ["Layout", "Tokenizer", "VideoClips", "future_frames", "load_layout", "load_tokenizer", "model_dir_of"]

Layout = SingleStepLayout | MultiStepLayout
Tokenizer = FrameTokenizer | CompressiveTokenizer


def future_frames(layout: Layout) -> int:
    """Predicted frames per response: S for the multi-step layout, 1 for the single-step one."""
    return layout.future_frames if isinstance(layout, MultiStepLayout) else 1


class VideoClips:
    """Clips of one split: prompt token ids (and, multi-step, the forced action tokens) for the layout plus
    the true future frames' pixels (kept in memory)."""

    def __init__(self, ds: EpisodeDataset, tokenizer: Tokenizer, actions: ActionTokenizer, layout: Layout,
                 stride: int, device: torch.device, *, seed: int = 0, random_start: bool = True,
                 clips_per_episode: int | None = None):
        acts = [actions.encode(stride_mean_actions(ds[i]["action"], stride)) for i in range(len(ds))]
        kw = {} if clips_per_episode is None else {"clips_per_episode": clips_per_episode}
        self.images = [ds[i]["image"] for i in range(len(ds))]                     # [T, H, W, 3] uint8 each
        if isinstance(tokenizer, CompressiveTokenizer):  # the prompt's codes: the context branch's, per frame
            tokens = encode_context_frames(self.images, tokenizer, device)
        else:
            tokens = encode_episodes(ds, tokenizer, device)
        self.clips = ClipTokens(ds, tokens, acts, layout.context_frames, stride, seed=seed, random_start=random_start,
                                future_frames=future_frames(layout), multi_step=isinstance(layout, MultiStepLayout),
                                **kw)
        self.layout = layout

    def take(self, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(prompts [N, Lp], the context frames' codes [N, n, Fc], true future frames [N, 3, H, W] uint8 (multi-step
        [N, S, 3, H, W]), forced action tokens [N, R] or None)."""
        frames, acts = self.clips.gather(pairs)                                     # [N, n + S, F], [N, n (+ S), A]
        n = self.layout.context_frames
        prompts = self.layout.build_prompt(frames[:, :n], acts)
        if isinstance(self.layout, MultiStepLayout):
            forced = self.layout.forced(acts)[0]
            target = np.stack([self.images[e][self.clips.target_indices(s)] for e, s in pairs])  # [N, S, H, W, 3]
            target = torch.from_numpy(target).permute(0, 1, 4, 2, 3)
        else:
            forced = None
            target = np.stack([self.images[e][self.clips.target_index(s)] for e, s in pairs])
            target = torch.from_numpy(target).permute(0, 3, 1, 2)
        return prompts, frames[:, :n], target.contiguous(), forced


def model_dir_of(path: str) -> Path:
    p = Path(path)
    return p / "model" if not (p / "layout.json").is_file() and (p / "model" / "layout.json").is_file() else p


def load_layout(cfg: C.GRPORun) -> tuple[Path, dict, Layout]:
    if not cfg.model.init_from:
        raise ValueError("model.init_from is required: the pre-trained world model (a `rlvr-train pretrain` run "
                         "directory or its model/ directory, which holds layout.json)")
    model_dir = model_dir_of(cfg.model.init_from)
    if not (model_dir / "layout.json").is_file():
        raise FileNotFoundError(f"model.init_from={cfg.model.init_from}: no layout.json in {model_dir} (expected "
                                f"the output of `rlvr-train pretrain`)")
    info = json.loads((model_dir / "layout.json").read_text())
    kind = info.get("layout")
    if kind not in ("single_step", "multi_step"):
        raise ValueError(f"model.init_from: layout {kind!r} is not supported by this recipe; "
                         f"allowed: 'single_step', 'multi_step'")
    d = cfg.data
    info.setdefault("future_frames", 1)
    info.setdefault("tokenizer_kind", "frame")  # layout.json files written before the compressive kind existed
    for key, mine in (("context_frames", d.context_frames), ("clip_stride", d.clip_stride),
                      ("future_frames", d.future_frames)):
        if info[key] != mine:
            raise ValueError(f"data.{key}={mine} does not match the pre-trained model's {key}={info[key]} "
                             f"({model_dir / 'layout.json'}); set data.{key}={info[key]}")
    common = {k: info[k] for k in ("tokens_per_frame", "context_frames", "action_dims", "codebook_size", "action_bins")}
    if kind == "multi_step":
        layout = MultiStepLayout(**common, context_tokens_per_frame=info["context_tokens_per_frame"],
                                 future_frames=info["future_frames"], context_codebook_size=info["context_codebook_size"])
        if info["tokenizer_kind"] == "frame" and layout.context_tokens_per_frame != layout.tokens_per_frame:
            raise ValueError(f"model.init_from: {model_dir / 'layout.json'} has {layout.context_tokens_per_frame} "
                             f"context and {layout.tokens_per_frame} future tokens per frame with tokenizer_kind "
                             f"'frame'; different rates need tokenizer_kind 'compressive'")
    else:
        if info["tokenizer_kind"] != "frame":
            raise ValueError(f"model.init_from: a single-step layout needs tokenizer_kind 'frame', got "
                             f"{info['tokenizer_kind']!r}")
        layout = SingleStepLayout(**common, eos=info["eos"])
    return model_dir, info, layout


def load_tokenizer(cfg: C.GRPORun, info: dict, layout: Layout, device: torch.device) -> tuple[Tokenizer, Path]:
    """The tokenizer the layout names (or ``tokenizer.checkpoint``), of the layout's ``tokenizer_kind``, frozen
    fp32, its codebooks checked against the layout."""
    kind = info["tokenizer_kind"]  # set by load_layout
    checkpoint = cfg.tokenizer.checkpoint or info["tokenizer"]
    tokenizer = video_clips.load_tokenizer(kind, checkpoint, device)
    compressive = isinstance(tokenizer, CompressiveTokenizer)
    sizes = ((tokenizer.future_codebook_size, tokenizer.context_codebook_size) if compressive
             else (tokenizer.codebook_size, tokenizer.codebook_size))
    want = (layout.codebook_size, getattr(layout, "context_codebook_size", layout.codebook_size))
    if sizes != want:
        raise ValueError(f"tokenizer {checkpoint} has codebooks {sizes} (future, context); the model's layout "
                         f"expects {want}")
    return tokenizer, video_clips.tokenizer_dir(checkpoint)
