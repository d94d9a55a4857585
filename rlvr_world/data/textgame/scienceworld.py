"""Collect ScienceWorld transitions into ``root/{train,val,test}.jsonl`` + ``root/meta.json``.

Run ``python -m rlvr_world.data.textgame.scienceworld --help``. Conversion of the world to states is in
``sw_convert`` (re-exported here: :func:`convert_tree`, :func:`convert_pair`).

Decisions:

* **Tasks** (:data:`DEFAULT_TASKS`): gold paths of 10-30 actions, focus states under 1,500 characters and
  mostly changing transitions (55-85% with 70% gold actions), each a different kind of change:
  ``find-living-thing`` (doors, walking between rooms, picking up and moving animals), ``chemistry-mix``
  (containers, mixing substances into new objects), ``test-conductivity`` (wires and a circuit that lights or
  not), ``use-thermometer`` (measuring, temperatures), ``measure-melting-point-known-substance`` (heating on a
  stove, changes of state). Left out: ``identify-life-stages-*`` and ``grow-*`` (gold paths of 40-60+ actions,
  most of them waiting: 25-40% changed), ``lifespan-*`` (5-action episodes), boil/melt/freeze (long).
  Unknown names raise ValueError listing the valid ones (:data:`TASK_NAMES`).
* **Splits**: train / val / test episodes come from ScienceWorld's own train / dev / test variations of each
  task (``variations_per_task`` = (train, val, test) per task, an int meaning (n, max(1, n // 8)) twice);
  variations are a seeded sample of the split's list.
* **Episodes**: ``load(task, variation, "noElectricalAction", generateGoldPath=True)`` (no simplification
  for the :data:`ELECTRICAL_TASKS`, which the engine refuses to load without electrical actions); at each step the next
  gold action is taken with probability ``gold_fraction`` (until the gold path runs out), else a random valid
  action, excluding "focus on ..." (a wrong focus ends the episode as failed) and "reset task". An episode
  ends when done (completed or failed) or after ``max_steps_per_episode`` actions.
* **Transitions**: ``current_state`` before the action, ``next_state`` after it (the engine's tick included);
  the score dict is ``{"score": info score (0..100, negative on failure), "gameOver": done, "gameWon": score
  >= 100}``. ``max_uuid`` is the largest uuid in the whole tree before the action. Ids are
  ``"scienceworld/<task>/<variation>/<step>"``.
* **unchanged_ratio**: per split, at most ``ratio * (number of changed)`` unchanged transitions are kept (a
  seeded subsample, original order kept); None keeps all.
* **Determinism**: each episode has its own RNG seeded by ``(seed, task, split, variation)`` and output is
  ordered by (task, split, variation, step); episodes go to workers round-robin. The engine's gold path depends
  on how many tasks its JVM loaded before (its random generator is never reset), so a collection is
  reproducible for the same (arguments, ``workers``) -- measured identical over two runs each with 1 and with
  2 workers -- while 1 and 2 workers give different gold paths for some episodes.
* **Processes**: ``workers > 1`` starts spawn-context processes, each its own session/process group with one
  environment (its JVM) closed in ``finally``; on any error or interrupt the main process kills the groups of
  the workers still alive. Output files are written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_module
import random
import shutil
import signal
import statistics
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from .sw_convert import SCOPES, convert_pair, convert_tree, score_dict, tree_max_uuid
from .transitions import SPLITS, Transition, state_chars, write_jsonl

__all__ = ["DEFAULT_TASKS", "TASK_NAMES", "collect", "convert_pair", "convert_tree", "main", "make_env"]

TASK_NAMES = (
    "boil", "change-the-state-of-matter-of", "chemistry-mix", "chemistry-mix-paint-secondary-color",
    "chemistry-mix-paint-tertiary-color", "find-animal", "find-living-thing", "find-non-living-thing", "find-plant",
    "freeze", "grow-fruit", "grow-plant", "identify-life-stages-1", "identify-life-stages-2",
    "inclined-plane-determine-angle", "inclined-plane-friction-named-surfaces",
    "inclined-plane-friction-unnamed-surfaces", "lifespan-longest-lived", "lifespan-longest-lived-then-shortest-lived",
    "lifespan-shortest-lived", "measure-melting-point-known-substance", "measure-melting-point-unknown-substance",
    "melt", "mendelian-genetics-known-plant", "mendelian-genetics-unknown-plant", "power-component",
    "power-component-renewable-vs-nonrenewable-energy", "test-conductivity", "test-conductivity-of-unknown-substances",
    "use-thermometer")
DEFAULT_TASKS = ("find-living-thing", "chemistry-mix", "test-conductivity", "use-thermometer",
                 "measure-melting-point-known-substance")
SIMPLIFICATION = "noElectricalAction"
ELECTRICAL_TASKS = frozenset({"power-component", "power-component-renewable-vs-nonrenewable-energy", "test-conductivity",
                              "test-conductivity-of-unknown-substances"})


def simplification(task: str) -> str:
    """``"noElectricalAction"``, or no simplification for the tasks that need electrical actions."""
    return "" if task in ELECTRICAL_TASKS else SIMPLIFICATION
_EXCLUDED_PREFIXES = ("focus on", "reset task")


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    bad = [t for t in tasks if t not in TASK_NAMES]
    if bad or not tasks:
        raise ValueError(f"unknown ScienceWorld task(s) {bad or '(none given)'}; valid names: {', '.join(TASK_NAMES)}")
    return tuple(tasks)


def make_env(step_limit: int = 10_000):
    """A ScienceWorld environment (a JVM of at most 512 MB unless JAVA_TOOL_OPTIONS says otherwise)."""
    if shutil.which("java") is None:
        raise RuntimeError("ScienceWorld needs a Java runtime and none is on PATH: install one, e.g. "
                           "`apt-get install -y default-jre-headless`")
    try:
        from scienceworld import ScienceWorldEnv
    except ImportError as err:
        raise RuntimeError("the scienceworld package is missing: `pip install scienceworld`") from err
    os.environ.setdefault("JAVA_TOOL_OPTIONS", "-Xmx512m")
    return ScienceWorldEnv("", envStepLimit=step_limit)


def _counts(variations_per_task) -> tuple[int, int, int]:
    if isinstance(variations_per_task, int):
        small = max(1, variations_per_task // 8)
        return variations_per_task, small, small
    counts = tuple(int(v) for v in variations_per_task)
    if len(counts) != 3 or min(counts) < 0:
        raise ValueError(f"variations_per_task must be an int or (train, val, test) counts >= 0, "
                         f"got {variations_per_task!r}")
    return counts  # type: ignore[return-value]


def _plan(env, tasks: Sequence[str], counts: Sequence[int], seed: int) -> list[tuple[str, str, int]]:
    """Episodes ``(task, split, variation)`` in output order."""
    jobs = []
    for task in tasks:
        env.load(task, 0, simplification(task))
        pools = {"train": env.get_variations_train(), "val": env.get_variations_dev(),
                 "test": env.get_variations_test()}
        for split, count in zip(SPLITS, counts):
            pool = sorted(int(v) for v in pools[split])
            chosen = random.Random(f"{seed}/{task}/{split}/plan").sample(pool, min(count, len(pool)))
            jobs += [(task, split, v) for v in sorted(chosen)]
    return jobs


def _choose(rng: random.Random, gold: list[str], position: int, valid: Sequence[str], gold_fraction: float):
    if position < len(gold) and rng.random() < gold_fraction:
        return gold[position], position + 1
    choices = sorted(a for a in valid if not a.startswith(_EXCLUDED_PREFIXES))
    if not choices:
        return (gold[position], position + 1) if position < len(gold) else ("look around", position)
    return rng.choice(choices), position


def run_episode(env, task: str, split: str, variation: int, *, max_steps: int, gold_fraction: float,
                scope: str, focus_limit: int, seed: int) -> list[dict]:
    """The transitions (as dicts) of one episode."""
    rng = random.Random(f"{seed}/{task}/{split}/{variation}")
    env.load(task, variation, simplification(task), generateGoldPath=True)
    gold = list(env.get_gold_action_sequence())
    description = env.get_task_description()
    side = {"tree": env.getObjectTree(), "look": env.look()}
    points, valid, position, out = score_dict(0, False), env.get_valid_action_object_combinations(), 0, []
    for step in range(max_steps):
        action, position = _choose(rng, gold, position, valid, gold_fraction)
        _, _, done, info = env.step(action)
        after = {"tree": env.getObjectTree(), "look": info["look"]}
        after_points = score_dict(info["score"], done)
        current, following = convert_pair(side, after, action, scope=scope, focus_limit=focus_limit,
                                          score_before=points, score_after=after_points)
        out.append({"id": f"scienceworld/{task}/{variation}/{step}", "source": "scienceworld", "task": task,
                    "variation": int(variation), "step": step, "task_description": description, "action": action,
                    "current_state": current, "next_state": following, "max_uuid": tree_max_uuid(side["tree"]),
                    "changed": current != following})
        side, points, valid = after, after_points, info["valid"]
        if done:
            break
    return out


def _worker(jobs: list[tuple[int, tuple]], config: dict, queue) -> None:
    os.setsid()  # own process group: the parent can kill this worker and its JVM together
    env = None
    try:
        env = make_env()
        for index, (task, split, variation) in jobs:
            queue.put(("ok", index, run_episode(env, task, split, variation, **config)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        queue.put(("error", -1, traceback.format_exc()))
    finally:
        try:
            if env is not None:
                env.close()
        finally:
            queue.put(("done", -1, None))


def _raise_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _kill_group(proc) -> None:
    """Kill what is left of a worker's process group (the worker, or a JVM that outlived it)."""
    if proc.pid is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if proc.is_alive():
            proc.kill()


def _run_parallel(jobs: list[tuple], config: dict, workers: int, bar) -> dict[int, list[dict]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    shares = [[(i, job) for i, job in enumerate(jobs) if i % workers == w] for w in range(workers)]
    procs = [ctx.Process(target=_worker, args=(share, config, queue), daemon=True) for share in shares if share]
    results: dict[int, list[dict]] = {}
    previous = signal.signal(signal.SIGTERM, _raise_exit)  # so that a SIGTERM still runs the cleanup below
    try:
        for proc in procs:
            proc.start()
        running = len(procs)
        while running:
            try:
                kind, index, payload = queue.get(timeout=5)
            except queue_module.Empty:
                dead = [p for p in procs if not p.is_alive()]
                if len(dead) == len(procs):
                    codes = [p.exitcode for p in procs]
                    raise RuntimeError(f"ScienceWorld workers exited without reporting (exit codes {codes}); "
                                       "run from an importable script or module, not stdin") from None
                continue
            if kind == "error":
                raise RuntimeError(f"a ScienceWorld worker failed:\n{payload}")
            if kind == "done":
                running -= 1
                continue
            results[index] = payload
            bar.update(1)
        for proc in procs:
            proc.join(timeout=30)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in procs:
            _kill_group(proc)
    return results


def _subsample(records: list[dict], ratio: float | None, rng: random.Random) -> list[dict]:
    if ratio is None:
        return records
    changed = sum(r["changed"] for r in records)
    unchanged = [i for i, r in enumerate(records) if not r["changed"]]
    keep = set(rng.sample(unchanged, min(len(unchanged), int(ratio * changed))))
    return [r for i, r in enumerate(records) if r["changed"] or i in keep]


def _size_stats(records: list[dict]) -> dict:
    sizes = [state_chars(r["current_state"]) for r in records] + [state_chars(r["next_state"]) for r in records]
    if not sizes:
        return {"median": 0, "max": 0, "mean": 0}
    return {"median": statistics.median(sizes), "max": max(sizes), "mean": round(statistics.fmean(sizes), 1)}


def collect(root: str | os.PathLike, *, tasks: Sequence[str] = DEFAULT_TASKS, variations_per_task=(16, 2, 2),
            max_steps_per_episode: int = 30, gold_fraction: float = 0.7, unchanged_ratio: float | None = None,
            scope: str = "room", focus_limit: int = 8, workers: int = 1, seed: int = 0,
            progress: bool = True) -> dict:
    """Collect episodes and write ``root/{train,val,test}.jsonl`` and ``root/meta.json``; returns the meta dict."""
    tasks = _check_tasks(tuple(tasks))
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not 0.0 <= gold_fraction <= 1.0:
        raise ValueError(f"gold_fraction must be in [0, 1], got {gold_fraction}")
    if unchanged_ratio is not None and unchanged_ratio < 0:
        raise ValueError(f"unchanged_ratio must be None or >= 0, got {unchanged_ratio}")
    counts = _counts(variations_per_task)
    config = {"max_steps": int(max_steps_per_episode), "gold_fraction": float(gold_fraction), "scope": scope,
              "focus_limit": int(focus_limit), "seed": int(seed)}
    from tqdm.auto import tqdm

    start = time.perf_counter()
    env = make_env()
    try:
        jobs = _plan(env, tasks, counts, seed)
        bar = tqdm(total=len(jobs), desc="scienceworld episodes", unit="ep", disable=not progress)
        if workers <= 1:
            results = {}
            for i, (task, split, variation) in enumerate(jobs):
                results[i] = run_episode(env, task, split, variation, **config)
                bar.update(1)
    finally:
        env.close()
    if workers > 1:
        results = _run_parallel(jobs, config, int(workers), bar)
    bar.close()

    root = Path(root)
    meta = {"version": 1, "source": "scienceworld", "config": {
        "tasks": list(tasks), "variations_per_task": list(counts), "max_steps_per_episode": max_steps_per_episode,
        "gold_fraction": gold_fraction, "unchanged_ratio": unchanged_ratio, "scope": scope, "focus_limit": focus_limit,
        "workers": workers, "seed": seed, "simplification": {t: simplification(t) for t in tasks}}, "counts": {}, "changed_fraction": {},
        "state_chars": {}, "episodes": {}}
    for split in SPLITS:
        records = [r for i, job in enumerate(jobs) if job[1] == split for r in results[i]]
        records = _subsample(records, unchanged_ratio, random.Random(f"{seed}/{split}/unchanged"))
        write_jsonl(root / f"{split}.jsonl", (Transition.from_dict(r) for r in records))
        meta["counts"][split] = len(records)
        meta["episodes"][split] = sum(job[1] == split for job in jobs)
        meta["changed_fraction"][split] = round(sum(r["changed"] for r in records) / max(len(records), 1), 4)
        meta["state_chars"][split] = _size_stats(records)
    meta["seconds"] = round(time.perf_counter() - start, 1)
    tmp = root / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, root / "meta.json")
    return meta


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m rlvr_world.data.textgame.scienceworld",
                                     description="Collect ScienceWorld state-prediction transitions.")
    parser.add_argument("root", help="output folder (train/val/test.jsonl + meta.json)")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help=f"task names ({len(TASK_NAMES)} valid)")
    parser.add_argument("--variations", type=int, nargs="+", default=[16, 2, 2],
                        help="variations per task: N, or TRAIN VAL TEST")
    parser.add_argument("--max-steps", type=int, default=30, help="actions per episode at most")
    parser.add_argument("--gold-fraction", type=float, default=0.7)
    parser.add_argument("--unchanged-ratio", type=float, default=None)
    parser.add_argument("--scope", choices=SCOPES, default="room")
    parser.add_argument("--focus-limit", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    variations = args.variations[0] if len(args.variations) == 1 else tuple(args.variations)
    meta = collect(args.root, tasks=args.tasks, variations_per_task=variations, max_steps_per_episode=args.max_steps,
                   gold_fraction=args.gold_fraction, unchanged_ratio=args.unchanged_ratio, scope=args.scope,
                   focus_limit=args.focus_limit, workers=args.workers, seed=args.seed, progress=not args.quiet)
    print(json.dumps({k: meta[k] for k in ("counts", "changed_fraction", "state_chars", "seconds")}))
    return meta


if __name__ == "__main__":
    main()
