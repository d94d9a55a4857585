"""Meta-World episode collection (rlvr_world.data.sim): layout, determinism, resumability, errors.

Small on purpose (2 tasks x 2 episodes x 20 steps at 32x32): the whole file runs in well under a minute
on 2 CPU cores. Skipped only when metaworld cannot be imported (CI installs the [sim] extra).
"""

import importlib.util
import os
import sys

import numpy as np
import pytest

from rlvr_world.data import EpisodeDataset, read_meta, sim

HAS_METAWORLD = importlib.util.find_spec("metaworld") is not None and importlib.util.find_spec("packaging") is not None
needs_metaworld = pytest.mark.skipif(not HAS_METAWORLD, reason='metaworld not installed: pip install "rlvr_world[sim]"')

TASKS = ("drawer-open", "drawer-close")
SMALL = {
    "tasks": TASKS,
    "episodes_per_task": 2,
    "image_size": 32,
    "max_steps": 20,
    "frame_skip": 2,
    "split_fractions": (0.5, 0.5, 0.0),
    "seed": 7,
    "progress": False,
}
T = SMALL["max_steps"] // SMALL["frame_skip"]


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*.npz"))


def _load(path):
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    summary = sim.collect(root, **SMALL)
    return root, summary


@needs_metaworld
def test_layout_and_dtypes(dataset):
    root, summary = dataset
    assert summary["collected"] == 4 and summary["skipped"] == 0
    assert all((root / s).is_dir() for s in sim.SPLITS)
    assert (root / "sim_config.json").is_file()
    meta = read_meta(root)
    assert meta["action_dim"] == 4 and list(meta["frame_size"]) == [32, 32]
    assert len(EpisodeDataset(root, "val")) == 2  # readable by the project's loader, meta checks included
    assert _files(root) == [
        "train/drawer-close_00000.npz",
        "train/drawer-open_00000.npz",
        "val/drawer-close_00001.npz",
        "val/drawer-open_00001.npz",
    ]
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]  # no temp files left behind
    for name in _files(root):
        ep = _load(root / name)
        assert ep["image"].shape == (T, 32, 32, 3) and ep["image"].dtype == np.uint8
        assert ep["action"].shape == (T, 4) and ep["action"].dtype == np.float32
        assert np.all(np.abs(ep["action"]) <= 1.0)
        assert ep["env_action"].shape == (T, 2, 4)
        np.testing.assert_array_equal(ep["action"], ep["env_action"].mean(axis=1))
        assert ep["success"].shape == (T,) and ep["success"].dtype == np.bool_
        assert not ep["success"][0]  # frame 0 comes from reset
        assert ep["state"].shape == (T, 39) and ep["state"].dtype == np.float32
        assert str(ep["task"]) == name.split("/")[1].rsplit("_", 1)[0]
        assert str(ep["grade"]) in sim.GRADES
        assert ep["noise_std"].dtype == np.float32 and ep["noise_std"] >= 0
        assert int(ep["episode_seed"]) == sim.episode_seed(7, str(ep["task"]), int(ep["episode_index"]))
        assert bool(ep["episode_success"]) == bool(ep["success"].any())
        assert str(ep["camera"]) == "corner3" and int(ep["frame_skip"]) == 2


@needs_metaworld
def test_frames_change_over_time(dataset):
    root, _ = dataset
    for name in _files(root):
        img = _load(root / name)["image"].astype(np.int16)
        assert np.abs(img[-1] - img[0]).max() > 30, f"{name}: the arm did not move"
        assert (img[1:] != img[:-1]).any(axis=(1, 2, 3)).sum() >= T // 2


@needs_metaworld
def test_layouts_differ_between_episodes(dataset):
    root, _ = dataset
    a = _load(root / "train/drawer-open_00000.npz")["rand_vec"]
    b = _load(root / "val/drawer-open_00001.npz")["rand_vec"]
    assert not np.array_equal(a, b)


@needs_metaworld
def test_rand_vec_and_actions_replay_the_episode(dataset):
    root, _ = dataset
    ep = _load(root / "val/drawer-open_00001.npz")
    env, _ = sim._get_env("drawer-open", 32, "corner3")
    try:
        env._freeze_rand_vec, env._last_rand_vec = True, ep["rand_vec"]
        env.reset()
        for t in range(T):  # frame 0 included: the layout is in place before the first render
            np.testing.assert_array_equal(env.render()[::-1, ::-1], ep["image"][t], err_msg=f"frame {t}")
            for a in ep["env_action"][t]:
                env.step(a)
    finally:
        sim._close_envs()


@needs_metaworld
def test_deterministic_in_fresh_call(dataset, tmp_path):
    root, _ = dataset
    sim.collect(tmp_path, **SMALL)
    assert _files(tmp_path) == _files(root)
    for name in _files(root):
        a, b = _load(root / name), _load(tmp_path / name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")


@needs_metaworld
def test_workers_give_the_same_files(dataset, tmp_path):
    root, _ = dataset
    summary = sim.collect(tmp_path, **{**SMALL, "workers": 2})
    assert summary["collected"] == 4
    assert _files(tmp_path) == _files(root)
    for name in _files(root):
        a, b = _load(root / name), _load(tmp_path / name)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")


@needs_metaworld
def test_resume_recollects_only_missing(dataset, tmp_path):
    src, _ = dataset
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(src, root)
    missing = root / "train/drawer-close_00000.npz"
    original = _load(missing)
    missing.unlink()
    before = {n: os.stat(root / n).st_mtime_ns for n in _files(root)}
    summary = sim.collect(root, **SMALL)
    assert summary["collected"] == 1 and summary["skipped"] == 3
    assert [(e["task"], e["index"]) for e in summary["episodes"]] == [("drawer-close", 0)]
    assert {n: os.stat(root / n).st_mtime_ns for n in before} == before  # others untouched
    again = _load(missing)
    for key in original:
        np.testing.assert_array_equal(original[key], again[key], err_msg=key)


@needs_metaworld
def test_resume_with_other_settings_refused(dataset):
    root, _ = dataset
    with pytest.raises(ValueError, match="image_size"):
        sim.collect(root, **{**SMALL, "image_size": 16})


@needs_metaworld
def test_expert_succeeds_and_failing_grade_fails(tmp_path):
    kw = {
        "tasks": ["drawer-close-v3"],
        "episodes_per_task": 1,
        "image_size": 16,
        "max_steps": 100,
        "frame_skip": 5,
        "split_fractions": (1, 0, 0),
        "seed": 0,
        "progress": False,
    }
    expert = sim.collect(tmp_path / "expert", grades=["expert"], **kw)
    assert expert["episodes"][0]["grade"] == "expert" and expert["episodes"][0]["success"]
    ep = _load(tmp_path / "expert/train/drawer-close_00000.npz")
    assert ep["success"].any() and ep["success"][-1]
    truncated = sim.collect(tmp_path / "short", grades={"truncated": 1.0}, **kw)
    assert not truncated["episodes"][0]["success"]


@needs_metaworld
def test_unknown_task_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="drawer-open") as info:
        sim.collect(tmp_path, tasks=["drawer-opne"], episodes_per_task=1, progress=False)
    assert "drawer-opne" in str(info.value)
    with pytest.raises(ValueError, match="grades"):
        sim.collect(tmp_path, grades={"perfect": 1.0}, episodes_per_task=1, progress=False)
    with pytest.raises(ValueError, match="split_fractions"):
        sim.collect(tmp_path, split_fractions=(1, 0), episodes_per_task=1, progress=False)
    with pytest.raises(ValueError, match="frame_skip"):
        sim.collect(tmp_path, max_steps=1, frame_skip=2, episodes_per_task=1, progress=False)


def test_missing_metaworld_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes `import metaworld` raise ImportError
    with pytest.raises(ImportError, match=r"rlvr_world\[sim\]"):
        sim.collect(tmp_path, episodes_per_task=1, progress=False)


def test_import_does_not_need_metaworld():
    import subprocess

    code = (
        "import sys; sys.modules['metaworld'] = None; import rlvr_world.data.sim as s; "
        "assert 'mujoco' not in sys.modules; print(s.GRADES)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
