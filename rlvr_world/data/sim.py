"""Built-in simulator data: Meta-World robot-manipulation episodes in the RT-1-style npz layout.

``collect(root, ...)`` runs Meta-World's scripted experts (``metaworld.policies.Sawyer<Task>V3Policy``)
with a per-episode *quality grade* and writes one compressed ``.npz`` per episode under
``root/{train,val,test}/<task>_<k:05d>.npz``.

Episode file (T = ``max_steps // frame_skip`` frames, D = 4):

==================  ====================  =====================================================
key                 shape / dtype         meaning
==================  ====================  =====================================================
``image``           [T, H, W, 3] uint8    frame t = the state after ``t * frame_skip`` env steps
``action``          [T, 4] float32        mean of the ``frame_skip`` (clipped) env actions taken
                                          after frame t, i.e. the action leading frame t → t+1.
                                          The last row is the action actually taken after the
                                          last frame (the env is stepped, the result not rendered).
``env_action``      [T, frame_skip, 4]    the individual clipped env actions behind ``action``
``success``         [T] bool              ``info["success"]`` of the step that produced frame t
                                          (frame 0 comes from ``reset`` and is marked False)
``state``           [T, 39] float32       the 39-D Meta-World observation at frame t
``rand_vec``        [R] float64           the layout vector (object/goal positions) of the episode
metadata            0-d arrays            ``task`` (str), ``grade`` (str), ``noise_std`` (float32),
                                          ``episode_seed``, ``episode_index``, ``frame_skip`` (int64),
                                          ``camera`` (str), ``episode_success`` (bool: ``success.any()``)
==================  ====================  =====================================================

Actions are Meta-World's: xyz hand-displacement commands and a gripper effort, all in [-1, 1]. Because
an xyz action moves the mocap by ``action * action_scale``, the mean over ``frame_skip`` steps is the net
commanded displacement divided by ``frame_skip`` (exact unless the hand hits its workspace bounds).

Quality grades (the paper notes that a dataset without failures teaches a model to hallucinate
success; noise alone does not grade the drawer tasks, a short horizon does — see ENVIRONMENTS.md):

- ``expert``: the scripted policy as is.
- ``noisy``: Gaussian action noise, std drawn from ``NOISE_LEVELS`` (stored as ``noise_std``).
- ``random_segments``: 1-3 segments (10-25% of the episode each) of uniform random actions.
- ``perturbed_target``: the policy sees object and goal positions shifted by 5-12 cm in a random
  horizontal direction, so it reaches for the wrong place.
- ``truncated``: a short time limit — the expert acts for the first 20-70% of the steps, then holds
  still (zero motion, last gripper command).

Measured with the defaults (100 steps, 20 episodes per grade): drawer-open succeeds 100% expert, 50% noisy
(90% / 20% / 0% at std 0.3 / 0.5 / 1.0), 10% random_segments, 0% perturbed_target, 0% truncated;
drawer-close 100%, 100%, 40%, 70%, 10% (noise does not grade it). Default mix: about 44% / 73% success.

Departure from the paper: it trains on real RT-1 robot video; these simulated episodes stand in for it
(same layout) so the whole stack runs offline, and the simulator doubles as a true environment for
real2sim checks (``rand_vec`` and the actions replay an episode).

Choices: every episode has a fixed length (``max_steps`` env steps) and continues after success, so
clips batch without padding; episode k of task t uses the seed ``SeedSequence([seed, crc32(t), k])``
for its layout (``env.seed``, ``seeded_rand_vec``) and for its grade and noise, so results do not
depend on worker count or order and a resumed run reproduces the missing files bit for bit. Episodes
are written atomically (temp file + ``os.replace``), so an existing ``.npz`` is complete and is
skipped on resume. Frames are flipped right side up (``img[::-1, ::-1]``), shadows and offscreen
multisampling are off (about 8x faster), and the green goal marker is hidden.
Rendering uses ``MUJOCO_GL=egl`` unless ``MUJOCO_GL`` is already set.

Files are written by ``episodes.write_episode``; after collection ``episodes.compute_action_ranges(root)``
(re)writes ``root/meta.json`` (frame size, action dim, per-dimension action ranges of the train split).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .episodes import compute_action_ranges, write_episode

__all__ = ["DEFAULT_GRADE_WEIGHTS", "GRADES", "NOISE_LEVELS", "SPLITS", "collect", "episode_seed"]

SPLITS = ("train", "val", "test")
GRADES = ("expert", "noisy", "random_segments", "perturbed_target", "truncated")
DEFAULT_GRADE_WEIGHTS = {
    "expert": 0.3,
    "noisy": 0.25,
    "random_segments": 0.15,
    "perturbed_target": 0.15,
    "truncated": 0.15,
}
NOISE_LEVELS = (0.3, 0.5, 1.0)
_CONFIG_NAME = "sim_config.json"
# settings that change an episode's content: a resumed run must use the same ones
_CONTENT_KEYS = ("image_size", "max_steps", "frame_skip", "camera", "seed", "grades")


def _import_metaworld():
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import metaworld
        import metaworld.policies
    except ImportError as e:  # includes a missing `packaging`, which metaworld needs but does not declare
        raise ImportError(
            f'Meta-World data collection needs metaworld ({e}); install it with: pip install "rlvr_world[sim]"'
        ) from e
    return metaworld


def _task_names(metaworld) -> list[str]:
    return sorted(n[:-3] for n in metaworld.ALL_V3_ENVIRONMENTS if n.endswith("-v3"))


def _canonical_task(name: str, valid: Sequence[str]) -> str:
    short = name.removesuffix("-v3")
    if short not in valid:
        raise ValueError(f"unknown Meta-World task {name!r}; valid tasks: {', '.join(valid)}")
    return short


def _policy_class_name(task: str) -> str:
    if task == "peg-insert-side":  # the one policy not named after its task
        return "SawyerPegInsertionSideV3Policy"
    return "Sawyer" + "".join(w.capitalize() for w in task.split("-")) + "V3Policy"


def episode_seed(seed: int, task: str, k: int) -> int:
    """The seed of episode ``k`` of ``task`` (short name, e.g. ``"drawer-open"``) under run seed ``seed``."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(task.encode()), int(k)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


# ---------------------------------------------------------------------------------------------------------
# one episode


@dataclass(frozen=True)
class _Job:
    task: str
    index: int
    seed: int
    path: str
    image_size: int
    max_steps: int
    frame_skip: int
    camera: str
    grade_names: tuple[str, ...]
    grade_weights: tuple[float, ...]


_ENVS: dict[tuple, Any] = {}  # per process: (task, size, camera) -> (env, policy)


def _close_envs() -> None:
    while _ENVS:
        env, _ = _ENVS.popitem()[1]
        with contextlib.suppress(Exception):  # best effort at exit
            env.close()


def _get_env(task: str, image_size: int, camera: str):
    key = (task, image_size, camera)
    if key not in _ENVS:
        metaworld = _import_metaworld()
        name = task + "-v3"
        mt = metaworld.MT1(name, seed=0)
        env = mt.train_classes[name](render_mode="rgb_array", camera_name=camera, width=image_size, height=image_size)
        env.set_task(mt.train_tasks[0])  # goal-observable task; layouts are drawn per episode below
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.model.vis.quality.shadowsize = 0  # before the first render creates the GL context
        env.model.vis.quality.offsamples = 0
        env.model.site_rgba[:, 3] = 0  # hide the goal marker (and the other debug sites)
        policy = getattr(metaworld.policies, _policy_class_name(task))()
        env.reset()
        env.render()  # creates the GL context, and with it mujoco's atexit hook that terminates EGL ...
        if not _ENVS:  # ... so this hook, registered later, runs first (LIFO): no EGL traceback at exit
            atexit.register(_close_envs)
        _ENVS[key] = (env, policy)
    return _ENVS[key]


def _perturb(obs: np.ndarray, offset: np.ndarray) -> np.ndarray:
    obs = obs.copy()
    for sl in (slice(4, 7), slice(11, 14), slice(22, 25), slice(29, 32), slice(36, 39)):  # objects, goal
        obs[sl] += offset
    return obs


def _run_episode(job: _Job) -> dict:
    t0 = time.perf_counter()
    env, policy = _get_env(job.task, job.image_size, job.camera)
    rng = np.random.default_rng(job.seed)
    grade = str(rng.choice(job.grade_names, p=np.asarray(job.grade_weights) / sum(job.grade_weights)))
    n_frames, k = job.max_steps // job.frame_skip, job.frame_skip
    n_steps = n_frames * k
    # grade parameters, all drawn from the episode's rng
    noise_std, random_mask, offset, cutoff = 0.0, np.zeros(n_steps, bool), None, n_steps
    if grade == "noisy":
        noise_std = float(rng.choice(NOISE_LEVELS))
    elif grade == "random_segments":
        for _ in range(int(rng.integers(1, 4))):
            length = max(1, int(n_steps * rng.uniform(0.10, 0.25)))
            start = int(rng.integers(0, max(1, n_steps - length + 1)))
            random_mask[start : start + length] = True
    elif grade == "perturbed_target":
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.12)
        offset = np.array([radius * np.cos(angle), radius * np.sin(angle), 0.0])
    elif grade == "truncated":
        cutoff = int(n_steps * rng.uniform(0.2, 0.7))

    env.seed(job.seed)
    env.max_path_length = max(env.max_path_length, n_steps + 1)
    env.reset()  # draws the layout; its state is stale (objects move in `model` after the last forward) ...
    env._freeze_rand_vec = True  # ... so reset again with that layout frozen: frame 0 and the first obs
    try:  # show the objects where they are, and this is exactly the replay path (frozen rand_vec + reset)
        obs, _ = env.reset()
    finally:
        env._freeze_rand_vec = False
    images = np.empty((n_frames, job.image_size, job.image_size, 3), np.uint8)
    states = np.empty((n_frames, obs.shape[0]), np.float32)
    env_action = np.empty((n_frames, k, 4), np.float32)
    success = np.zeros(n_frames, bool)
    last_gripper = -1.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant")  # the scripted policies' gain warning
        for t in range(n_frames):
            images[t] = env.render()[::-1, ::-1]
            states[t] = obs
            for j in range(k):
                step = t * k + j
                if random_mask[step]:
                    a = rng.uniform(-1.0, 1.0, 4)
                elif step >= cutoff:
                    a = np.array([0.0, 0.0, 0.0, last_gripper])
                else:
                    a = np.asarray(policy.get_action(obs if offset is None else _perturb(obs, offset)), np.float64)
                    if noise_std > 0:
                        a = a + rng.normal(0.0, noise_std, 4)
                a = np.clip(a, -1.0, 1.0)
                last_gripper = float(a[3])
                env_action[t, j] = a
                obs, _, _, _, info = env.step(a.astype(np.float32))
            if t + 1 < n_frames:
                success[t + 1] = bool(info["success"])
    ep_success = bool(success.any())
    write_episode(
        job.path,
        image=images,
        action=env_action.mean(axis=1),
        env_action=env_action,
        success=success,
        state=states,
        rand_vec=np.asarray(env._last_rand_vec, np.float64),
        task=np.asarray(job.task),
        grade=np.asarray(grade),
        noise_std=np.asarray(noise_std, np.float32),
        episode_seed=np.asarray(job.seed, np.int64),
        episode_index=np.asarray(job.index, np.int64),
        frame_skip=np.asarray(k, np.int64),
        camera=np.asarray(job.camera),
        episode_success=np.asarray(ep_success),
    )
    return {
        "task": job.task,
        "index": job.index,
        "grade": grade,
        "success": ep_success,
        "seconds": time.perf_counter() - t0,
    }


def _init_worker() -> None:
    _import_metaworld()


# ---------------------------------------------------------------------------------------------------------
# collection


def _split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split_fractions must be 3 non-negative numbers (train, val, test), got {fractions!r}")
    total = float(sum(fractions))
    n_val, n_test = round(n * fractions[1] / total), round(n * fractions[2] / total)
    return n - n_val - n_test, n_val, n_test


def _grade_weights(grades) -> dict[str, float]:
    if grades is None:
        grades = DEFAULT_GRADE_WEIGHTS
    if isinstance(grades, str):
        grades = [grades]
    weights = dict(grades) if isinstance(grades, Mapping) else {g: 1.0 for g in grades}
    unknown = sorted(set(weights) - set(GRADES))
    if unknown or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"grades must name some of {GRADES} with non-negative weights, got {grades!r}")
    return {g: float(weights[g]) for g in GRADES if weights.get(g, 0) > 0}


def _check_config(root: Path, config: dict) -> None:
    path = root / _CONFIG_NAME
    if path.exists():
        old = json.loads(path.read_text())
        diff = {key: (old.get(key), config[key]) for key in _CONTENT_KEYS if old.get(key) != config[key]}
        if diff:
            raise ValueError(
                f"{root} holds episodes collected with other settings (old, new): {diff}; "
                "use another root or the same settings"
            )
        config = {**config, "tasks": sorted(set(old.get("tasks", [])) | set(config["tasks"]))}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)


def collect(
    root: str | os.PathLike,
    tasks: Iterable[str] = ("drawer-open", "drawer-close"),
    episodes_per_task: int = 100,
    image_size: int = 64,
    max_steps: int = 100,
    frame_skip: int = 2,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    workers: int = 1,
    camera: str = "corner3",
    grades: Mapping[str, float] | Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """Collect graded Meta-World episodes into ``root/{train,val,test}/<task>_<k:05d>.npz``.

    Args:
        root: dataset directory (created). ``root/sim_config.json`` records the settings and
            ``root/meta.json`` (``episodes.compute_action_ranges``) the action ranges; resuming into a
            root collected with other content settings (image_size, max_steps, frame_skip, camera, seed,
            grades) raises ``ValueError``.
        tasks: Meta-World task names, with or without the ``-v3`` suffix (``"drawer-open"``,
            ``"button-press-topdown-v3"``, ...). Unknown names raise ``ValueError`` listing the valid ones.
        episodes_per_task: episodes per task, indexed k = 0..n-1.
        image_size: frames are ``image_size`` x ``image_size`` RGB.
        max_steps: env steps per episode (fixed length; the episode goes on after success). Scripted experts
            need 55-90 steps on the drawer tasks, so the default 100 makes success depend on the grade.
        frame_skip: env steps per stored frame; an episode has ``T = max_steps // frame_skip`` frames and
            ``action[t]`` is the mean of the ``frame_skip`` env actions between frame t and t+1.
        split_fractions: (train, val, test) proportions; per task the first ``round``-ed share of indices
            goes to train, the next to val, the last to test.
        seed: run seed; episode k of task t is seeded by ``episode_seed(seed, t, k)`` (layout, grade, noise),
            so the output is identical for any ``workers`` and on resume.
        workers: processes (spawned), each with its own envs; 1 runs in this process. With ``workers > 1``
            a script must call ``collect`` under ``if __name__ == "__main__":`` (spawn re-imports it).
        camera: Meta-World camera (``corner3`` shows the whole arm and the drawer).
        grades: which quality grades to draw from (see the module docstring): a ``{grade: weight}`` mapping,
            a sequence of grade names (equal weights) or ``None`` for ``DEFAULT_GRADE_WEIGHTS``.
        progress: show a tqdm progress bar.

    Returns:
        ``{"root", "collected", "skipped", "seconds_per_episode", "success_by_grade", "episodes"}`` where
        ``episodes`` lists ``{task, index, grade, success, seconds}`` of the episodes collected by this call
        (existing files are skipped, so an interrupted run continues where it stopped) and
        ``success_by_grade`` maps ``task -> grade -> (successes, episodes)`` over them.

    Raises:
        ImportError: metaworld is not installed (``pip install "rlvr_world[sim]"``).
        ValueError: unknown task, bad grades or split fractions, too few steps, mismatching existing root.
    """
    metaworld = _import_metaworld()
    valid = _task_names(metaworld)
    tasks = list(dict.fromkeys(_canonical_task(t, valid) for t in ([tasks] if isinstance(tasks, str) else tasks)))
    if not tasks:
        raise ValueError("tasks is empty")
    if frame_skip < 1 or max_steps < frame_skip:
        raise ValueError(f"need frame_skip >= 1 and max_steps >= frame_skip, got {max_steps=} {frame_skip=}")
    if image_size < 1 or episodes_per_task < 0 or workers < 1:
        raise ValueError(f"bad sizes: {image_size=} {episodes_per_task=} {workers=}")
    weights = _grade_weights(grades)
    counts = _split_counts(episodes_per_task, split_fractions)

    root = Path(root)
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
    _check_config(
        root,
        {
            "source": "metaworld",
            "metaworld_version": getattr(metaworld, "__version__", None),
            "tasks": tasks,
            "image_size": image_size,
            "max_steps": max_steps,
            "frame_skip": frame_skip,
            "camera": camera,
            "seed": seed,
            "grades": weights,
            "split_fractions": list(split_fractions),
        },
    )

    jobs, skipped = [], 0
    for task in tasks:
        for k in range(episodes_per_task):
            name = f"{task}_{k:05d}.npz"
            if any((root / s / name).exists() for s in SPLITS):  # complete: files appear atomically
                skipped += 1
                continue
            split = SPLITS[0] if k < counts[0] else SPLITS[1] if k < counts[0] + counts[1] else SPLITS[2]
            jobs.append(
                _Job(
                    task,
                    k,
                    episode_seed(seed, task, k),
                    str(root / split / name),
                    image_size,
                    max_steps,
                    frame_skip,
                    camera,
                    tuple(weights),
                    tuple(weights.values()),
                )
            )

    from tqdm.auto import tqdm

    records: list[dict] = []
    with tqdm(total=len(jobs), desc="collect metaworld", unit="ep", disable=not progress) as bar:
        if workers == 1 or len(jobs) <= 1:
            try:
                for job in jobs:
                    records.append(_run_episode(job))
                    bar.update(1)
            finally:
                _close_envs()
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(
                min(workers, len(jobs)), mp_context=mp.get_context("spawn"), initializer=_init_worker
            ) as pool:
                futures = [pool.submit(_run_episode, job) for job in jobs]
                try:
                    for fut in as_completed(futures):
                        records.append(fut.result())
                        bar.update(1)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    records.sort(key=lambda r: (tasks.index(r["task"]), r["index"]))
    if (records or not (root / "meta.json").exists()) and any((root / SPLITS[0]).glob("*.npz")):
        compute_action_ranges(root)  # meta.json: frame_size, action_dim, action ranges of the train split
    by_grade: dict[str, dict[str, list[int]]] = {}
    for r in records:
        cell = by_grade.setdefault(r["task"], {}).setdefault(r["grade"], [0, 0])
        cell[0] += int(r["success"])
        cell[1] += 1
    return {
        "root": str(root),
        "collected": len(records),
        "skipped": skipped,
        "seconds_per_episode": float(np.mean([r["seconds"] for r in records])) if records else 0.0,
        "success_by_grade": {t: {g: tuple(c) for g, c in gs.items()} for t, gs in by_grade.items()},
        "episodes": records,
    }
