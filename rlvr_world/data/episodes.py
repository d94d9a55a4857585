"""RT-1-style robot episodes on disk: the layout, its validation, clip sampling, action binning, colour jitter.

Layout (also written by ``rlvr_world.data.sim``)::

    root/
      meta.json            {"version": 1, "frame_size": [H, W], "action_dim": D,
                            "action_ranges": [[min_0, max_0], ..., [min_{D-1}, max_{D-1}]],
                            "num_episodes": {"train": n, ...}}
      train/  val/  test/  one ``<name>.npz`` per episode, read in sorted name order:
                           image  [T, H, W, 3] uint8   (frame t)
                           action [T, D] float32       (the action taken at frame t; it leads to frame t+1)
                           any extra arrays (e.g. success [T] bool) are kept as they are

Decisions:

* ``meta.json`` is optional for reading; when present every episode is checked against its action_dim and
  frame_size. ``compute_action_ranges(root)`` derives the per-dimension min/max over the **training split**
  and (re)writes ``meta.json`` atomically, keeping any other keys in it.
* Episodes load lazily (one ``np.load`` per access); lengths come from the npz headers without reading pixels.
* A clip of ``context_frames + future_frames`` frames takes every ``frame_skip``-th frame from ``start``:
  ``frames[k] = image[start + k * frame_skip]`` and ``actions[k] = action[start + k * frame_skip]`` for every
  k, so ``actions`` has one row per clip frame: ``actions[k]`` is the action taken at frame k and leads to
  frame k+1; the last row's consequence lies outside the clip (layouts that need T - 1 actions drop it).
  With ``frame_skip > 1`` the sampler keeps the first action of each stride; ``stride_mean_actions`` gives
  the mean over the stride instead (the net commanded displacement per step, the collector's own convention),
  for recipes that want every action between two sampled frames to count.
* Evaluation order is deterministic: episodes in name order, ``clips_per_episode`` evenly spaced starts.
  Training order is a seeded shuffle per epoch with a uniform random start per clip.
* Errors: missing files/folders raise FileNotFoundError naming the path; wrong arrays raise ValueError
  naming the file, the array, the expected and the received shape/dtype.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "META_FILE",
    "SPLITS",
    "ActionTokenizer",
    "Clip",
    "ClipSampler",
    "EpisodeDataset",
    "collate_clips",
    "color_jitter",
    "compute_action_ranges",
    "read_meta",
    "stride_mean_actions",
    "write_episode",
    "write_meta",
]

META_FILE = "meta.json"
SPLITS = ("train", "val", "test")
RESERVED = ("image", "action")


# ---------------------------------------------------------------------------------------------------- writing
def _atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder, then os.replace: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_arrays(where: str, image: np.ndarray, action: np.ndarray, action_dim=None, frame_size=None) -> None:
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"{where}: image must be a [T, H, W, 3] uint8 array, got shape {image.shape} {image.dtype}")
    if action.dtype != np.float32 or action.ndim != 2:
        raise ValueError(f"{where}: action must be a [T, D] float32 array, got shape {action.shape} {action.dtype}")
    if image.shape[0] != action.shape[0] or image.shape[0] == 0:
        raise ValueError(f"{where}: image and action must have the same T >= 1 (one action per frame), "
                         f"got image T={image.shape[0]} and action T={action.shape[0]}")
    if action_dim is not None and action.shape[1] != action_dim:
        raise ValueError(f"{where}: action must have {action_dim} dims (meta.json action_dim), got {action.shape[1]}")
    if frame_size is not None and tuple(image.shape[1:3]) != tuple(frame_size):
        raise ValueError(f"{where}: image frames must be {tuple(frame_size)} (meta.json frame_size), "
                         f"got {tuple(image.shape[1:3])}")


def write_episode(path, image, action, *, compressed: bool = True, **extra) -> Path:
    """Write one episode atomically (temp file + os.replace) as ``path`` (".npz" appended if missing).

    image [T, H, W, 3] uint8; action [T, D] float (stored as float32); extra: any arrays (e.g. success [T] bool).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    image = np.asarray(image)
    action = np.asarray(action)
    if action.dtype.kind == "f":
        action = action.astype(np.float32, copy=False)
    _check_arrays(str(path), image, action)
    arrays = {"image": image, "action": action, **{k: np.asarray(v) for k, v in extra.items()}}
    _atomic_write(path, lambda f: (np.savez_compressed if compressed else np.savez)(f, **arrays))
    return path


def read_meta(root) -> dict | None:
    """``root/meta.json`` as a dict, or None when there is none."""
    path = Path(root) / META_FILE
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def write_meta(root, meta: Mapping) -> Path:
    path = Path(root) / META_FILE
    _atomic_write(path, lambda f: f.write(json.dumps(dict(meta), indent=2).encode()))
    return path


def compute_action_ranges(root, split: str = "train", write: bool = True) -> np.ndarray:
    """Per-dimension [min, max] of the actions over ``split``: [D, 2] float64; also writes meta.json.

    The written meta keeps the other keys of an existing meta.json and sets frame_size, action_dim,
    action_ranges and num_episodes (of every split folder present).
    """
    root = Path(root)
    ds = EpisodeDataset(root, split, check_meta=False)
    lo = hi = None
    frame_size = None
    for i in range(len(ds)):
        ep = ds[i]
        if frame_size is None:
            frame_size = list(ep["image"].shape[1:3])
        elif list(ep["image"].shape[1:3]) != frame_size:
            raise ValueError(f"{ds.paths[i]}: image frames must be {tuple(frame_size)} like the first episode, "
                             f"got {ep['image'].shape[1:3]}")
        a = ep["action"].astype(np.float64)
        if lo is not None and a.shape[1] != lo.shape[0]:
            raise ValueError(f"{ds.paths[i]}: action must have {lo.shape[0]} dims like the first episode, "
                             f"got {a.shape[1]}")
        lo = a.min(0) if lo is None else np.minimum(lo, a.min(0))
        hi = a.max(0) if hi is None else np.maximum(hi, a.max(0))
    ranges = np.stack([lo, hi], axis=1)                                    # [D, 2]
    if write:
        meta = dict(read_meta(root) or {})
        meta.update(version=1, frame_size=frame_size, action_dim=int(ranges.shape[0]),
                    action_ranges=ranges.tolist(),
                    num_episodes={s: len(list((root / s).glob("*.npz"))) for s in SPLITS if (root / s).is_dir()})
        write_meta(root, meta)
    return ranges


# ---------------------------------------------------------------------------------------------------- reading
def _npz_shape(path: Path, name: str) -> tuple[int, ...]:
    """Shape of array ``name`` in an npz, from its header only."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(f)
    return tuple(shape)


class EpisodeDataset:
    """The episodes of one split, loaded lazily: ``ds[i]`` -> dict(image [T,H,W,3] uint8, action [T,D] f32, ...)."""

    def __init__(self, root, split: str = "train", *, check_meta: bool = True):
        self.root = Path(root)
        self.split = split
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"split folder not found: {folder} (expected {self.root}/<split>/*.npz)")
        self.paths = sorted(folder.glob("*.npz"))
        if not self.paths:
            raise FileNotFoundError(f"no .npz episodes in {folder}")
        self.meta = read_meta(self.root) if check_meta else None
        self._lengths: list[int | None] = [None] * len(self.paths)

    @property
    def action_dim(self) -> int | None:
        return None if self.meta is None else self.meta.get("action_dim")

    @property
    def frame_size(self) -> tuple[int, int] | None:
        size = None if self.meta is None else self.meta.get("frame_size")
        return None if size is None else tuple(size)

    def __len__(self) -> int:
        return len(self.paths)

    def length(self, i: int) -> int:
        """Number of frames T of episode i (read from the npz header)."""
        if self._lengths[i] is None:
            path = self.paths[i]
            if not path.exists():
                raise FileNotFoundError(f"episode file not found: {path}")
            try:
                self._lengths[i] = _npz_shape(path, "image")[0]
            except KeyError:
                raise ValueError(f"{path}: missing array 'image' (expected image [T, H, W, 3] uint8)") from None
        return self._lengths[i]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"episode index must be in [0, {len(self)}), got {i}")
        path = self.paths[i]
        if not path.exists():
            raise FileNotFoundError(f"episode file not found: {path}")
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in RESERVED if k not in npz.files]
            if missing:
                raise ValueError(f"{path}: missing arrays {missing} (expected image [T, H, W, 3] uint8 and "
                                 f"action [T, D] float32), got {npz.files}")
            episode = {k: npz[k] for k in npz.files}
        _check_arrays(str(path), episode["image"], episode["action"], self.action_dim, self.frame_size)
        self._lengths[i] = episode["image"].shape[0]
        return episode


# ---------------------------------------------------------------------------------------------------- clips
def stride_mean_actions(action: np.ndarray, stride: int) -> np.ndarray:
    """``out[t] = mean(action[t : t + stride])`` (fewer rows at the end of the episode): [T, D] -> [T, D].

    With clips taking every ``stride``-th frame, ``out[start + k * stride]`` is the mean of all the actions
    that lead frame k to frame k + 1 of the clip. ``stride=1`` returns the actions unchanged."""
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    action = np.asarray(action)
    if action.ndim != 2:
        raise ValueError(f"action must be [T, D], got shape {action.shape}")
    if stride == 1:
        return action
    csum = np.concatenate([np.zeros((1, action.shape[1])), np.cumsum(action, axis=0, dtype=np.float64)])
    t = np.arange(action.shape[0])
    end = np.minimum(t + stride, action.shape[0])
    return ((csum[end] - csum[t]) / (end - t)[:, None]).astype(action.dtype)


@dataclass
class Clip:
    """frames [T, H, W, 3] uint8; actions [T, D] float32 (actions[k] taken at frames[k], leads to frames[k+1]);
    frame_indices [T] (positions in the episode); extras: the episode's [T_ep, ...] arrays at frame_indices."""

    frames: np.ndarray
    actions: np.ndarray
    episode: int
    start: int
    frame_indices: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class ClipSampler:
    """Clips of ``context_frames + future_frames`` frames, ``frame_skip`` apart, from an EpisodeDataset.

    ``random_start=True`` (training): each epoch (``set_epoch``) visits every usable episode once in a
    shuffled order, seeded by (seed, epoch), with a uniform random start. ``random_start=False``
    (evaluation): episodes in order with ``clips_per_episode`` evenly spaced starts; the same every time.
    ``sampler[j]`` is clip j of the current epoch (a map-style dataset for a torch DataLoader; call
    ``set_epoch`` before each epoch). Episodes shorter than a clip's span are skipped (``skipped`` lists them). ``extra_keys``: the extra
    arrays sliced into ``Clip.extras`` (default: every extra whose first dim is the episode's T).
    """

    def __init__(self, dataset: EpisodeDataset, context_frames: int, future_frames: int, frame_skip: int = 1,
                 seed: int = 0, random_start: bool = True, clips_per_episode: int = 1,
                 extra_keys: Sequence[str] | None = None):
        for name, value, low in (("context_frames", context_frames, 1), ("future_frames", future_frames, 0),
                                 ("frame_skip", frame_skip, 1), ("clips_per_episode", clips_per_episode, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.dataset = dataset
        self.context_frames, self.future_frames = context_frames, future_frames
        self.frame_skip, self.seed = frame_skip, seed
        self.random_start, self.clips_per_episode = random_start, clips_per_episode
        self.num_frames = context_frames + future_frames
        self.span = (self.num_frames - 1) * frame_skip + 1
        self.usable = [i for i in range(len(dataset)) if dataset.length(i) >= self.span]
        self.skipped = [i for i in range(len(dataset)) if dataset.length(i) < self.span]
        if not self.usable:
            raise ValueError(f"dataset must have an episode of at least {self.span} frames (context_frames + "
                             f"future_frames = {self.num_frames}, frame_skip = {frame_skip}), got max length "
                             f"{max(dataset.length(i) for i in range(len(dataset)))}")
        self.extra_keys = None if extra_keys is None else tuple(extra_keys)
        self.epoch = 0
        self._plan: list[tuple[int, int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._plan = None

    def __len__(self) -> int:
        return len(self.usable) * self.clips_per_episode

    def plan(self) -> list[tuple[int, int]]:
        """The (episode, start) pairs of the current epoch, in order."""
        if self._plan is None:
            self._plan = self._make_plan()
        return list(self._plan)

    def _make_plan(self) -> list[tuple[int, int]]:
        if not self.random_start:
            out = []
            for i in self.usable:
                last = self.dataset.length(i) - self.span                  # largest valid start
                starts = np.linspace(0, last, self.clips_per_episode).round().astype(int)
                out += [(i, int(s)) for s in starts]
            return out
        rng = np.random.default_rng([self.seed, self.epoch])
        episodes = np.repeat(np.array(self.usable), self.clips_per_episode)
        episodes = episodes[rng.permutation(len(episodes))]
        return [(int(i), int(rng.integers(0, self.dataset.length(int(i)) - self.span + 1))) for i in episodes]

    def clip(self, episode: int, start: int) -> Clip:
        ep = self.dataset[episode]
        t = ep["image"].shape[0]
        if not 0 <= start <= t - self.span:
            raise ValueError(f"start must be in [0, {t - self.span}] for episode {episode} of {t} frames, got {start}")
        idx = start + self.frame_skip * np.arange(self.num_frames)                # [T_clip]
        keys = self.extra_keys if self.extra_keys is not None else [k for k in ep if k not in RESERVED]
        missing = [k for k in keys if k not in ep]
        if missing:
            raise ValueError(f"extra_keys must name arrays of episode {self.dataset.paths[episode]}, got {missing}")
        extras = {k: ep[k][idx] for k in keys if ep[k].ndim >= 1 and ep[k].shape[0] == t}
        return Clip(ep["image"][idx], ep["action"][idx], episode, start, idx, extras)

    def __getitem__(self, j: int) -> Clip:
        """Clip j of the current epoch's plan (so the sampler also serves as a map-style torch Dataset)."""
        episode, start = self.plan()[j]
        return self.clip(episode, start)

    def __iter__(self) -> Iterator[Clip]:
        for episode, start in self.plan():
            yield self.clip(episode, start)


def collate_clips(clips: Sequence[Clip]):
    """Stack clips into torch tensors: (frames [B, T, H, W, 3] uint8, actions [B, T, D] float32)."""
    import torch

    return (torch.from_numpy(np.stack([c.frames for c in clips])),
            torch.from_numpy(np.stack([c.actions for c in clips])))


# ---------------------------------------------------------------------------------------------------- actions
class ActionTokenizer:
    """Uniform per-dimension binning of actions into ``bins`` integers (the action tokens before offsetting).

    ranges [D, 2] (min, max per dimension). ``encode`` clips to the range and returns
    ``floor((a - min) / (max - min) * bins)`` clamped to [0, bins - 1]; ``decode`` returns bin centres, so an
    in-range action round-trips within half a bin width. A dimension with min == max encodes to 0.

    >>> tok = ActionTokenizer([[-1.0, 1.0]], bins=4)
    >>> tok.encode(np.array([[-2.0], [0.1], [1.0]])).ravel().tolist(), tok.decode(np.array([[1], [2]])).ravel().tolist()
    ([0, 2, 3], [-0.25, 0.25])
    """

    def __init__(self, ranges, bins: int = 256):
        ranges = np.asarray(ranges, dtype=np.float64)
        if ranges.ndim != 2 or ranges.shape[1] != 2 or ranges.shape[0] == 0:
            raise ValueError(f"ranges must have shape [D, 2] (min, max per action dim), got {ranges.shape}")
        if not np.isfinite(ranges).all() or (ranges[:, 1] < ranges[:, 0]).any():
            raise ValueError(f"ranges must be finite with min <= max per dim, got {ranges.tolist()}")
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be an int >= 1, got {bins!r}")
        self.ranges, self.bins, self.dim = ranges, bins, ranges.shape[0]
        self.low, self.width = ranges[:, 0], (ranges[:, 1] - ranges[:, 0]) / bins        # [D], [D]

    @classmethod
    def from_meta(cls, root, bins: int = 256) -> ActionTokenizer:
        meta = read_meta(root)
        if meta is None or "action_ranges" not in meta:
            raise FileNotFoundError(f"no action_ranges in {Path(root) / META_FILE} (run compute_action_ranges)")
        return cls(meta["action_ranges"], bins)

    def _check(self, name: str, x) -> np.ndarray:
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape [..., {self.dim}] (one value per action dim), got {x.shape}")
        return x

    def encode(self, actions) -> np.ndarray:
        """actions [..., D] (numpy or torch) -> int64 bins [..., D] in [0, bins)."""
        a = self._check("actions", actions).astype(np.float64)
        a = np.clip(a, self.ranges[:, 0], self.ranges[:, 1])
        scaled = np.divide(a - self.low, self.width, out=np.zeros_like(a), where=self.width > 0)
        return np.clip(np.floor(scaled), 0, self.bins - 1).astype(np.int64)

    def decode(self, bins) -> np.ndarray:
        """int bins [..., D] -> bin centres [..., D] float32."""
        b = self._check("bins", bins)
        if b.dtype.kind not in "iu":
            raise ValueError(f"bins must be an integer array, got {b.dtype}")
        if b.size and (b.min() < 0 or b.max() >= self.bins):
            raise ValueError(f"bins must lie in [0, {self.bins}), got values in [{b.min()}, {b.max()}]")
        return (self.low + (b + 0.5) * self.width).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- jitter
def color_jitter(frames, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 generator=None) -> np.ndarray:
    """Random colour jitter of uint8 frames [..., H, W, 3] with one draw per call (the same for every frame of
    a clip, so motion is not confounded with colour changes).

    Factors are drawn as in torchvision: brightness b ~ U[max(0, 1 - brightness), 1 + brightness], likewise
    contrast and saturation; they are applied in this fixed order: x *= b; x = (x - mean gray of the frame)
    * c + mean gray; x = (x - gray) * s + gray (gray = 0.299 R + 0.587 G + 0.114 B); rounded and clipped to
    uint8. ``generator``: np.random.Generator or int seed (None: fresh entropy). Returns a new array.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be a [..., H, W, 3] uint8 array, got shape {frames.shape} {frames.dtype}")
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
    factors = [rng.uniform(max(0.0, 1 - v), 1 + v) for v in (brightness, contrast, saturation)]
    b, c, s = factors
    x = frames.astype(np.float32)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if brightness > 0:
        x = np.clip(x * b, 0, 255)
    if contrast > 0:
        mean = (x @ weights).mean(axis=(-2, -1), keepdims=True)[..., None]            # [..., 1, 1, 1]
        x = np.clip((x - mean) * c + mean, 0, 255)
    if saturation > 0:
        gray = (x @ weights)[..., None]                                              # [..., H, W, 1]
        x = np.clip((x - gray) * s + gray, 0, 255)
    return np.round(x).astype(np.uint8)
