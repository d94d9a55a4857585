import json

import numpy as np
import pytest
import torch

from rlvr_world.data.episodes import (
    ActionTokenizer,
    ClipSampler,
    EpisodeDataset,
    collate_clips,
    color_jitter,
    compute_action_ranges,
    read_meta,
    stride_mean_actions,
    write_episode,
)

H, W, D = 4, 5, 3


def counting_episode(t: int, d: int = D, offset: float = 0.0):
    """Frame i has every pixel == i; action i == i + offset (per dim scaled by dim index + 1)."""
    image = np.broadcast_to(np.arange(t, dtype=np.uint8)[:, None, None, None], (t, H, W, 3)).copy()
    action = (np.arange(t, dtype=np.float32)[:, None] + offset) * np.arange(1, d + 1, dtype=np.float32)
    return image, action


@pytest.fixture
def root(tmp_path):
    for k, t in enumerate([10, 7, 3]):
        image, action = counting_episode(t, offset=k)
        write_episode(tmp_path / "train" / f"ep{k:03d}", image, action, success=np.arange(t) >= t - 2)
    image, action = counting_episode(8, offset=-5)
    write_episode(tmp_path / "val" / "ep000.npz", image, action)
    return tmp_path


def test_write_and_read(root):
    assert sorted(p.name for p in (root / "train").iterdir()) == ["ep000.npz", "ep001.npz", "ep002.npz"]
    ds = EpisodeDataset(root, "train")
    assert len(ds) == 3 and [ds.length(i) for i in range(3)] == [10, 7, 3]
    ep = ds[1]
    assert ep["image"].dtype == np.uint8 and ep["image"].shape == (7, H, W, 3)
    assert ep["action"].dtype == np.float32 and ep["action"].shape == (7, D)
    assert ep["success"].dtype == bool and ep["success"].tolist() == [False] * 5 + [True] * 2


def test_write_episode_casts_float64_actions_and_leaves_no_temp_files(tmp_path):
    image, action = counting_episode(4)
    path = write_episode(tmp_path / "x", image, action.astype(np.float64))
    assert path.name == "x.npz" and [p.name for p in tmp_path.iterdir()] == ["x.npz"]
    assert np.load(path)["action"].dtype == np.float32


def test_compute_action_ranges_and_meta(root):
    meta_before = {"source": "unit-test"}
    (root / "meta.json").write_text(json.dumps(meta_before))
    ranges = compute_action_ranges(root)
    # train actions: (i + k) * (d + 1) for k = 0,1,2 and i < T_k: min 0, max (9 + 0) or (6 + 1) or (2 + 2) -> 9
    np.testing.assert_array_equal(ranges, [[0, 9], [0, 18], [0, 27]])
    meta = read_meta(root)
    assert meta["source"] == "unit-test"                               # other keys kept
    assert meta["frame_size"] == [H, W] and meta["action_dim"] == D
    assert meta["action_ranges"] == ranges.tolist()
    assert meta["num_episodes"] == {"train": 3, "val": 1}
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    tok = ActionTokenizer.from_meta(root)
    assert tok.dim == D and tok.bins == 256


def test_meta_mismatch_errors(root, tmp_path):
    compute_action_ranges(root)
    image, action = counting_episode(5, d=2)
    write_episode(root / "test" / "bad", image, action)
    with pytest.raises(ValueError, match=r"bad\.npz: action must have 3 dims \(meta.json action_dim\), got 2"):
        EpisodeDataset(root, "test")[0]
    image, action = counting_episode(5)
    write_episode(root / "test" / "bad", image[:, :2], action)
    with pytest.raises(ValueError, match=r"image frames must be \(4, 5\).*got \(2, 5\)"):
        EpisodeDataset(root, "test")[0]


def test_bad_files_and_arrays(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        EpisodeDataset(root, "nope")
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        EpisodeDataset(root, "empty")
    ds = EpisodeDataset(root, "train")
    ds.paths[0].unlink()
    with pytest.raises(FileNotFoundError, match="ep000.npz"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="meta.json"):
        ActionTokenizer.from_meta(root)
    image, action = counting_episode(4)
    with pytest.raises(ValueError, match=r"image must be a \[T, H, W, 3\] uint8 array, got shape .* float32"):
        write_episode(tmp_path / "a", image.astype(np.float32), action)
    with pytest.raises(ValueError, match="same T"):
        write_episode(tmp_path / "a", image, action[:3])
    with pytest.raises(ValueError, match="action must be a"):
        write_episode(tmp_path / "a", image, action.astype(np.int32))
    (tmp_path / "raw").mkdir()
    np.savez(tmp_path / "raw" / "raw.npz", image=image, action=action.astype(np.float64))
    with pytest.raises(ValueError, match=r"raw\.npz: action must be a \[T, D\] float32 array, got .* float64"):
        EpisodeDataset(tmp_path, "raw")[0]
    np.savez(tmp_path / "raw" / "raw.npz", image=image)
    with pytest.raises(ValueError, match=r"raw\.npz: missing arrays \['action'\]"):
        EpisodeDataset(tmp_path, "raw")[0]


def test_clip_alignment_with_frame_skip(root):
    ds = EpisodeDataset(root, "train")
    sampler = ClipSampler(ds, context_frames=2, future_frames=1, frame_skip=2, random_start=False)
    assert sampler.span == 5 and sampler.usable == [0, 1] and sampler.skipped == [2]
    clip = sampler.clip(0, 3)
    assert clip.frames.shape == (3, H, W, 3) and clip.frames.dtype == np.uint8
    assert clip.frames[:, 0, 0, 0].tolist() == [3, 5, 7]               # frame k holds its episode index
    assert clip.frame_indices.tolist() == [3, 5, 7]
    # actions[k] is the action taken at frames[k] (episode 0: action i = i * (d + 1))
    np.testing.assert_array_equal(clip.actions, np.array([[3, 6, 9], [5, 10, 15], [7, 14, 21]], np.float32))
    assert clip.extras["success"].tolist() == [False, False, False]
    assert sampler.clip(0, 5).extras["success"].tolist() == [False, False, True]
    with pytest.raises(ValueError, match=r"start must be in \[0, 5\]"):
        sampler.clip(0, 6)


def test_stride_mean_actions():
    action = np.array([[1, 0], [3, 2], [5, 4], [7, 6], [9, 8]], np.float32)  # [T=5, D=2]
    np.testing.assert_array_equal(stride_mean_actions(action, 1), action)
    out = stride_mean_actions(action, 2)
    assert out.dtype == np.float32 and out.shape == (5, 2)
    # row t: mean of rows t, t+1; the last row has only itself
    np.testing.assert_allclose(out, [[2, 1], [4, 3], [6, 5], [8, 7], [9, 8]])
    np.testing.assert_allclose(stride_mean_actions(action, 3)[[0, 3, 4]], [[3, 2], [8, 7], [9, 8]])
    with pytest.raises(ValueError, match="stride must be a positive int, got 0"):
        stride_mean_actions(action, 0)
    with pytest.raises(ValueError, match=r"action must be \[T, D\], got shape \(5,\)"):
        stride_mean_actions(action[:, 0], 2)


def test_eval_order_is_deterministic_and_evenly_spaced(root):
    ds = EpisodeDataset(root, "train")
    sampler = ClipSampler(ds, 2, 2, random_start=False, clips_per_episode=3)
    # span 4: episode 0 (T=10) starts 0..6, episode 1 (T=7) starts 0..3; episode 2 (T=3) skipped
    assert sampler.plan() == [(0, 0), (0, 3), (0, 6), (1, 0), (1, 2), (1, 3)]
    sampler.set_epoch(5)
    assert sampler.plan() == ClipSampler(ds, 2, 2, seed=9, random_start=False, clips_per_episode=3).plan()
    clips = list(sampler)
    assert len(clips) == len(sampler) == 6 and clips[1].frames[:, 0, 0, 0].tolist() == [3, 4, 5, 6]
    assert np.array_equal(sampler[4].frames, clips[4].frames) and sampler[4].start == 2
    frames, actions = collate_clips(clips[:2])
    assert frames.shape == (2, 4, H, W, 3) and frames.dtype == torch.uint8 and actions.dtype == torch.float32


def test_train_order_is_seeded(root):
    ds = EpisodeDataset(root, "train")
    a = ClipSampler(ds, 1, 1, seed=3, clips_per_episode=4)
    b = ClipSampler(ds, 1, 1, seed=3, clips_per_episode=4)
    assert a.plan() == b.plan()
    plans = set()
    for epoch in range(5):
        a.set_epoch(epoch)
        plan = a.plan()
        assert sorted(e for e, _ in plan) == [0] * 4 + [1] * 4 + [2] * 4
        assert all(0 <= s <= ds.length(e) - 2 for e, s in plan)
        plans.add(tuple(plan))
    assert len(plans) > 1


def test_sampler_errors(root):
    ds = EpisodeDataset(root, "train")
    with pytest.raises(ValueError, match="context_frames must be an int >= 1"):
        ClipSampler(ds, 0, 1)
    with pytest.raises(ValueError, match="at least 21 frames.*got max length 10"):
        ClipSampler(ds, 10, 1, frame_skip=2)
    with pytest.raises(ValueError, match="extra_keys"):
        ClipSampler(ds, 1, 1, extra_keys=["reward"]).clip(0, 0)


def test_action_tokenizer_round_trip():
    ranges = np.array([[-1.0, 1.0], [0.0, 10.0], [2.0, 2.0]])
    tok = ActionTokenizer(ranges, bins=256)
    rng = np.random.default_rng(0)
    actions = rng.uniform(ranges[:, 0], ranges[:, 1], size=(1000, 3))
    bins = tok.encode(actions)
    assert bins.dtype == np.int64 and bins.min() >= 0 and bins.max() <= 255
    err = np.abs(tok.decode(bins) - actions)
    half = (ranges[:, 1] - ranges[:, 0]) / 256 / 2
    assert (err <= half + 1e-6).all()
    assert tok.encode(np.array([-5.0, 20.0, 2.0])).tolist() == [0, 255, 0]   # clipped; degenerate dim -> 0
    assert tok.encode(np.array([1.0, 0.0, 2.0])).tolist() == [255, 0, 0]
    assert tok.encode(torch.tensor([[0.0, 5.0, 2.0]])).tolist() == [[128, 128, 0]]


def test_action_tokenizer_errors():
    with pytest.raises(ValueError, match=r"ranges must have shape \[D, 2\]"):
        ActionTokenizer([1.0, 2.0])
    with pytest.raises(ValueError, match="min <= max"):
        ActionTokenizer([[1.0, 0.0]])
    tok = ActionTokenizer([[0.0, 1.0], [0.0, 1.0]], bins=8)
    with pytest.raises(ValueError, match=r"actions must have shape \[\.\.\., 2\]"):
        tok.encode(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"bins must lie in \[0, 8\)"):
        tok.decode(np.array([[0, 8]]))


def test_color_jitter_seeded_and_dtype():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 6, 7, 3), dtype=np.uint8)
    a = color_jitter(frames, 0.4, 0.4, 0.4, generator=123)
    b = color_jitter(frames, 0.4, 0.4, 0.4, generator=np.random.default_rng(123))
    c = color_jitter(frames, 0.4, 0.4, 0.4, generator=124)
    assert a.dtype == np.uint8 and a.shape == frames.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(color_jitter(frames, generator=1), frames)           # no jitter: identity
    # brightness only: one factor for every frame of the clip
    gray = np.full((2, 4, 4, 3), 100, np.uint8)
    out = color_jitter(gray, brightness=0.5, generator=0)
    assert len(np.unique(out)) == 1 and 50 <= out[0, 0, 0, 0] <= 150
    with pytest.raises(ValueError, match="uint8"):
        color_jitter(frames.astype(np.float32))
    with pytest.raises(ValueError, match="brightness must be >= 0"):
        color_jitter(frames, brightness=-1)
