"""Where the GRPO recipe's data comes from: the token layout of a pre-training run (``layout.json``) and clips
with their prompt tokens, forced action tokens and true future frames.

``load_layout`` reads the pre-trained model's ``layout.json`` (single-step or multi-step) and checks that the
data config agrees with it; ``VideoClips`` wraps the pre-training recipe's ``ClipTokens`` (the same clip stream:
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
from rlvr_world.models.frame_tokenizer import FrameTokenizer

from .pretrain import ClipTokens, encode_episodes

__all__ = ["Layout", "VideoClips", "future_frames", "load_layout", "model_dir_of"]

Layout = SingleStepLayout | MultiStepLayout


def future_frames(layout: Layout) -> int:
    """Predicted frames per response: S for the multi-step layout, 1 for the single-step one."""
    return layout.future_frames if isinstance(layout, MultiStepLayout) else 1


class VideoClips:
    """Clips of one split: prompt token ids (and, multi-step, the forced action tokens) for the layout plus
    the true future frames' pixels (kept in memory)."""

    def __init__(self, ds: EpisodeDataset, tokenizer: FrameTokenizer, actions: ActionTokenizer, layout: Layout,
                 stride: int, device: torch.device, *, seed: int = 0, random_start: bool = True,
                 clips_per_episode: int | None = None):
        acts = [actions.encode(stride_mean_actions(ds[i]["action"], stride)) for i in range(len(ds))]
        kw = {} if clips_per_episode is None else {"clips_per_episode": clips_per_episode}
        self.clips = ClipTokens(ds, encode_episodes(ds, tokenizer, device), acts, layout.context_frames, stride,
                                seed=seed, random_start=random_start, future_frames=future_frames(layout), **kw)
        self.images = [ds[i]["image"] for i in range(len(ds))]                     # [T, H, W, 3] uint8 each
        self.layout = layout

    def take(self, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(prompts [N, Lp], last context frame codes [N, F], true future frames [N, 3, H, W] uint8 (multi-step
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
        return prompts, frames[:, n - 1], target.contiguous(), forced


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
    for key, mine in (("context_frames", d.context_frames), ("clip_stride", d.clip_stride),
                      ("future_frames", d.future_frames)):
        if info[key] != mine:
            raise ValueError(f"data.{key}={mine} does not match the pre-trained model's {key}={info[key]} "
                             f"({model_dir / 'layout.json'}); set data.{key}={info[key]}")
    common = {k: info[k] for k in ("tokens_per_frame", "context_frames", "action_dims", "codebook_size", "action_bins")}
    if kind == "multi_step":
        layout = MultiStepLayout(**common, context_tokens_per_frame=info["context_tokens_per_frame"],
                                 future_frames=info["future_frames"], context_codebook_size=info["context_codebook_size"])
        if layout.context_tokens_per_frame != layout.tokens_per_frame:
            raise ValueError(f"model.init_from: a multi-step layout with {layout.context_tokens_per_frame} context and "
                             f"{layout.tokens_per_frame} future tokens per frame needs the compressive tokenizer, "
                             f"which this recipe does not drive yet")
    else:
        layout = SingleStepLayout(**common, eos=info["eos"])
    return model_dir, info, layout
