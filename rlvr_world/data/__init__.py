"""Data: RT-1-style robot episodes on disk and clip sampling (``episodes``), the token layouts of the video
world models (``video_layout``). The simulator collector (``sim``) is imported on use, never here."""

from . import episodes, video_layout
from .episodes import (
    ActionTokenizer,
    Clip,
    ClipSampler,
    EpisodeDataset,
    collate_clips,
    color_jitter,
    compute_action_ranges,
    read_meta,
    stride_mean_actions,
    write_episode,
)
from .video_layout import LayoutBatch, MultiStepLayout, SingleStepLayout

__all__ = ["ActionTokenizer", "Clip", "ClipSampler", "EpisodeDataset", "LayoutBatch", "MultiStepLayout",
           "SingleStepLayout", "collate_clips", "color_jitter", "compute_action_ranges", "episodes", "read_meta",
           "stride_mean_actions", "video_layout", "write_episode"]
