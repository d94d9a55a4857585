"""MiniWoB++ as a text environment (:class:`WebEnv`), a scripted expert, and the transition collector.

What it decides:

* **Browser**: MiniWoB's own headless Chromium (``--headless --no-sandbox --disable-gpu``, set by miniwob when
  no render mode is asked for), with ``MINIWOB_CHROME_BINARY`` / ``MINIWOB_CHROMEDRIVER`` defaulting to
  Debian's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``. The episode time limit (MiniWoB's
  ``core.EPISODE_MAX_TIME``, 10 s) is raised to ``episode_max_time`` before every reset, so a slow model-driven
  agent is not cut off by the wall clock.
* **Page**: rendered from Chrome's accessibility tree (``Accessibility.getFullAXTree``), which keeps a node's id
  while the node lives and knows option / selected / value states that MiniWoB's element list lacks; only the
  task area (``#area``) is rendered (rules in :mod:`rlvr_world.data.web.page`). Ids restart at 1 on each reset,
  so ``reset(seed)`` and ``replay(seed, actions)`` are deterministic.
* **Actions** run through the DevTools protocol on the node behind the page id, like MiniWoB's own element
  actions: ``click`` calls ``element.click()`` then ``focus()`` (the parent element of a text node);
  ``type`` focuses the field, clears it and sends the keys one by one (so it *replaces* the value);
  ``select`` picks the ``<option>`` whose text matches and fires ``input`` / ``change``. An id that is not on
  the current page raises ValueError.
* **Terminal step**: MiniWoB's observation of a finished episode is empty, but the browser still shows the task
  area as the last action left it; the terminal ``next_page`` is that page (rendered the same way), and the
  episode's end travels in ``done`` / ``reward``. Reward is MiniWoB's raw reward (not time-scaled) at the end,
  0.0 before.
* **Collector**: each episode draws a policy — ``expert`` (the scripted plan), ``random`` (uniform over
  :meth:`WebEnv.valid_actions`), or, under ``mixed``, the expert with each step replaced by a random valid
  action with probability 0.3 — so successes and failures both occur; episodes stop when done or after
  ``max_steps``. Splits are by seed ranges: for ``seeds=(a, b)`` the first 80 % of seeds of each task go to
  train, then 10 % val, 10 % test, so val/test seeds never appear in train. Files are written atomically
  (tmp + ``os.replace``); workers run in their own process groups, killed on an abnormal exit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .page import IdMap, page_changes, page_lines, parse_action, render_ax_tree

__all__ = ["DEFAULT_TASKS", "WebEnv", "WebState", "collect", "expert_actions", "main"]

DEFAULT_TASKS = ("login-user", "enter-text", "click-checkboxes", "click-tab", "choose-list", "click-collapsible")
CHROME_BINARY = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = "apt-get install -y chromium chromium-driver"
MAX_STEPS = 8
RANDOM_STEP_PROB = 0.3
SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
_CLICK_ROLES_SKIPPED = frozenset({"RootWebArea", "MenuListPopup", "option"})
_QUOTED = re.compile(r'"([^"]*)"')

_CLICK_JS = """function() {
  var e = this.nodeType === 3 ? this.parentElement : this;
  if (e instanceof SVGElement) {
    ['mousedown', 'mouseup', 'click'].forEach(function(t) { e.dispatchEvent(new Event(t)); });
  } else { e.click(); if (e.focus) { e.focus(); } }
  return true;
}"""
_FOCUS_CLEAR_JS = """function() {
  var e = this.nodeType === 3 ? this.parentElement : this;
  e.click(); e.focus();
  if ('value' in e) { e.value = ''; }
  return true;
}"""
_SELECT_JS = """function(text) {
  var e = this.nodeType === 3 ? this.parentElement : this;
  var opts = e.options || [];
  for (var i = 0; i < opts.length; i++) {
    if (opts[i].text.trim() === text.trim()) {
      e.focus(); e.selectedIndex = i;
      e.dispatchEvent(new Event('input', {bubbles: true}));
      e.dispatchEvent(new Event('change', {bubbles: true}));
      return true;
    }
  }
  return false;
}"""


@dataclass
class WebState:
    """What the agent sees: the task's instruction, the page address, the rendered page, and whether it ended."""

    objective: str
    url: str
    page: str
    done: bool = False


def _check_browser() -> None:
    os.environ.setdefault("MINIWOB_CHROME_BINARY", CHROME_BINARY)
    os.environ.setdefault("MINIWOB_CHROMEDRIVER", CHROMEDRIVER)
    for var in ("MINIWOB_CHROME_BINARY", "MINIWOB_CHROMEDRIVER"):
        path = os.environ[var]
        if not (os.path.isfile(path) or shutil.which(path)):
            raise RuntimeError(f"{var}={path} not found; install Chromium and its driver: {INSTALL_HINT}")


def task_names() -> list[str]:
    """All MiniWoB task names (``miniwob/<name>-v1`` ids registered by ``import miniwob``)."""
    import gymnasium
    import miniwob  # noqa: F401  (registers the environments)

    return sorted(k[len("miniwob/"):-len("-v1")] for k in gymnasium.registry if k.startswith("miniwob/"))


class WebEnv:
    """One MiniWoB task in a headless browser, seen as text (module docstring). Use as a context manager."""

    def __init__(self, task: str, *, episode_max_time: float = 3600.0, headless: bool = True) -> None:
        names = task_names()
        if task not in names:
            raise ValueError(f"unknown MiniWoB task {task!r}; valid names include {', '.join(names[:8])}, ... "
                             f"({len(names)} in all)")
        _check_browser()
        import gymnasium

        self.task = task
        self.url = f"miniwob://{task}"
        self.episode_max_time = float(episode_max_time)
        self._env = gymnasium.make(f"miniwob/{task}-v1", render_mode=None if headless else "human")
        self._ids = IdMap()
        self._backend: dict[int, int] = {}
        self._area: int | None = None
        self._objective = ""
        self._done = True
        self._state: WebState | None = None

    # ------------------------------------------------------------------------------------------ browser

    @property
    def _instance(self) -> Any:
        return self._env.unwrapped.instance

    @property
    def _driver(self) -> Any:
        return self._instance.driver

    def _cdp(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._driver.execute_cdp_cmd(cmd, args or {})

    def _area_backend_id(self) -> int | None:
        obj = self._cdp("Runtime.evaluate", {"expression": "document.getElementById('area')"})["result"]
        if "objectId" not in obj:
            return None
        return self._cdp("DOM.describeNode", {"objectId": obj["objectId"]})["node"]["backendNodeId"]

    def _render(self) -> str:
        nodes = self._cdp("Accessibility.getFullAXTree")["nodes"]
        page = render_ax_tree(nodes, self._ids, area_backend_id=self._area)
        by_node = {n["nodeId"]: n.get("backendDOMNodeId") for n in nodes}
        self._backend = {i: by_node[self._ids.node(i)] for i in page_lines(page)
                         if by_node.get(self._ids.node(i)) is not None}
        return page

    def _call_on(self, page_id: int, function: str, *args: Any) -> Any:
        backend = self._backend.get(page_id)
        if backend is None:
            raise ValueError(f"no element [{page_id}] on the current page")
        obj = self._cdp("DOM.resolveNode", {"backendNodeId": backend})["object"]
        try:
            res = self._cdp("Runtime.callFunctionOn", {"objectId": obj["objectId"], "functionDeclaration": function,
                                                        "arguments": [{"value": a} for a in args],
                                                        "returnByValue": True})
        finally:
            self._cdp("Runtime.releaseObject", {"objectId": obj["objectId"]})
        return res.get("result", {}).get("value")

    def _type_keys(self, text: str) -> None:
        from miniwob.selenium_actions import execute_type_text

        execute_type_text(text, self._driver)

    # ------------------------------------------------------------------------------------------ api

    def reset(self, seed: int) -> WebState:
        """Start the episode of ``seed`` (deterministic: the same seed gives the same page)."""
        inst = self._instance
        self._driver.execute_script(f"core.EPISODE_MAX_TIME = {int(self.episode_max_time * 1000)};")
        inst.force_stop()
        inst.begin_task(seed=seed)
        response = self._driver.execute_script("return core.getUtterance();")
        self._objective = response["utterance"] if isinstance(response, dict) else str(response)
        if self._area is None:
            self._area = self._area_backend_id()
        self._ids = IdMap()
        self._done = False
        self._state = WebState(self._objective, self.url, self._render(), False)
        return self._state

    def step(self, action: str) -> tuple[WebState, float, bool]:
        """Run ``action`` (``click [id]`` / ``type [id] [text]`` / ``select [id] [option]``): (state, reward, done)."""
        if self._state is None or self._done:
            raise RuntimeError("step() called before reset() or after the episode ended")
        act = parse_action(action)
        if act.kind == "click":
            self._call_on(act.id, _CLICK_JS)
        elif act.kind == "type":
            self._call_on(act.id, _FOCUS_CLEAR_JS)
            self._type_keys(act.text or "")
        elif not self._call_on(act.id, _SELECT_JS, act.text):
            raise ValueError(f"no option {act.text!r} in element [{act.id}] (action {action!r})")
        meta = self._instance.get_metadata()
        self._done = bool(meta["done"])
        reward = float(meta["raw_reward"]) if self._done else 0.0
        self._state = WebState(self._objective, self.url, self._render(), self._done)
        return self._state, reward, self._done

    def valid_actions(self, state: WebState | None = None) -> list[str]:
        """Clicks on every rendered element but the document and list options, ``type`` of each string quoted in
        the instruction (else its last word) into each textbox, ``select`` of each option of each list box."""
        state = state or self._state
        if state is None or state.done:
            return []
        texts = _QUOTED.findall(state.objective) or [w for w in state.objective.split() if w[:1].isalpha()][-1:]
        actions: list[str] = []
        combobox: int | None = None
        for raw in state.page.splitlines():
            depth = len(raw) - len(raw.lstrip())
            page_id, role = _id_role(raw)
            if role == "combobox":
                combobox = page_id
            elif role == "option" and combobox is not None and depth > 2:
                actions.append(f"select [{combobox}] [{_name(raw)}]")
            if role not in _CLICK_ROLES_SKIPPED:
                actions.append(f"click [{page_id}]")
            if role in ("textbox", "searchbox"):
                actions.extend(f"type [{page_id}] [{t}]" for t in texts)
        return actions

    def replay(self, seed: int, actions: list[str]) -> WebState:
        """The state reached by ``reset(seed)`` then ``actions`` (stops early if the episode ends)."""
        state = self.reset(seed)
        for action in actions:
            if state.done:
                break
            state, _, _ = self.step(action)
        return state

    def close(self) -> None:
        """Quit the browser (idempotent)."""
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()

    def __enter__(self) -> WebEnv:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- expert


def _id_role(line: str) -> tuple[int, str]:
    head, _, rest = line.strip().partition("] ")
    return int(head.lstrip("[")), rest.split(" ", 1)[0]


def _name(line: str) -> str:
    match = re.search(r"'((?:[^'\\]|\\.)*)'", line)
    return match.group(1).replace("\\'", "'") if match else ""


def _find(page: str, role: str, name: str | None = None) -> list[int]:
    out = []
    for raw in page.splitlines()[1:]:
        page_id, r = _id_role(raw)
        if r == role and (name is None or _name(raw) == name):
            out.append(page_id)
    return out


def expert_actions(task: str, state: WebState) -> list[str] | None:
    """The scripted plan that solves ``task`` from its first ``state``, or None for a task without one."""
    page, objective = state.page, state.objective
    quoted = _QUOTED.findall(objective)
    submit = (_find(page, "button", "Submit") or [None])[0]
    if task == "login-user" and len(quoted) >= 2:
        boxes, login = _find(page, "textbox"), _find(page, "button", "Login")
        return [f"type [{boxes[0]}] [{quoted[0]}]", f"type [{boxes[1]}] [{quoted[1]}]", f"click [{login[0]}]"]
    if task == "enter-text" and quoted:
        return [f"type [{_find(page, 'textbox')[0]}] [{quoted[0]}]", f"click [{submit}]"]
    if task == "click-checkboxes":
        match = re.match(r"Select (.*) and click Submit\.?$", objective.strip())
        wanted = set() if match is None or match.group(1) == "nothing" else set(match.group(1).split(", "))
        clicks = [f"click [{i}]" for name in sorted(wanted) for i in _find(page, "checkbox", name)]
        return clicks + [f"click [{submit}]"]
    if task == "click-tab":
        match = re.search(r"Tab #\d+", objective)
        links = _find(page, "link", match.group(0)) if match else []
        return [f"click [{links[0]}]"] if links else None
    if task == "choose-list":
        match = re.match(r"Select (.*) from the list and click Submit\.?$", objective.strip())
        box = _find(page, "combobox")
        return [f"select [{box[0]}] [{match.group(1)}]", f"click [{submit}]"] if match and box else None
    if task == "click-collapsible":
        tabs = [int(line.split("]")[0].strip()[1:]) for line in page.splitlines()
                if " tab 'Section #" in line]
        return [f"click [{tabs[0]}]", "click [SUBMIT]"] if tabs else None
    return None


def _resolve_expert_step(action: str, state: WebState) -> str:
    """Placeholders of a plan step resolved on the current page (the Submit button of an accordion appears late)."""
    if "[SUBMIT]" in action:
        ids = _find(state.page, "button", "Submit")
        return action.replace("[SUBMIT]", f"[{ids[0]}]") if ids else action
    return action


# ---------------------------------------------------------------------------------------------- collector


def split_of(index: int, n: int) -> str:
    """Split of the ``index``-th of ``n`` seeds of a task (first 80 % train, next 10 % val, last 10 % test)."""
    bound = 0.0
    for name, frac in SPLIT_FRACTIONS:
        bound += frac
        if index < round(bound * n):
            return name
    return SPLIT_FRACTIONS[-1][0]


def _episode_policy(policy: str, rng: random.Random) -> str:
    if policy != "mixed":
        return policy
    return rng.choices(["expert", "mixed", "random"], weights=[0.4, 0.4, 0.2])[0]


def run_episode(env: WebEnv, task: str, seed: int, policy: str, rng: random.Random,
                max_steps: int = MAX_STEPS) -> list[dict[str, Any]]:
    """The transitions of one episode (records without ``id``); ``policy`` in expert / mixed / random."""
    state = env.reset(seed)
    plan = list(expert_actions(task, state) or []) if policy != "random" else []
    records: list[dict[str, Any]] = []
    previous: list[str] = []
    for step in range(max_steps):
        valid = env.valid_actions(state)
        if not valid:
            break
        if plan and (policy == "expert" or rng.random() >= RANDOM_STEP_PROB):
            action = _resolve_expert_step(plan.pop(0), state)
        else:
            action = rng.choice(valid)
        nxt, reward, done = env.step(action)
        records.append({"task": task, "seed": seed, "step": step, "objective": state.objective, "url": state.url,
                        "previous_actions": list(previous), "current_page": state.page, "action": action,
                        "next_page": nxt.page, "changes": page_changes(state.page, nxt.page), "reward": reward,
                        "done": done, "policy": policy})
        previous.append(action)
        state = nxt
        if done:
            break
    return records


Job = tuple  # (task, seeds, base_seed, policy, max_steps)


def _episodes(job: Job) -> Iterator[list[dict[str, Any]]]:
    """The transitions of each episode of one job, one browser for the whole job."""
    task, seeds, base_seed, policy, max_steps = job
    with WebEnv(task) as env:
        for seed in seeds:
            rng = random.Random(f"{base_seed}:{task}:{seed}")
            yield run_episode(env, task, seed, _episode_policy(policy, rng), rng, max_steps)


def _work(job: Job) -> list[dict[str, Any]]:
    """Every transition of one job (runs in a worker)."""
    return [rec for episode in _episodes(job) for rec in episode]


def _worker_init() -> None:
    os.setsid()  # own process group: the parent can kill the browsers it leaves on an abnormal exit


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run_jobs(jobs: list[Job], workers: int, progress: bool,
              on_done: Callable[[list[dict[str, Any]]], None]) -> None:
    from tqdm import tqdm

    bar = tqdm(total=sum(len(j[1]) for j in jobs), desc="miniwob episodes", unit="ep", disable=not progress)
    try:
        if workers <= 1:
            for job in jobs:
                for records in _episodes(job):
                    on_done(records)
                    bar.update(1)
            return
        import multiprocessing as mp

        chunks = [(j[0], part, *j[2:]) for j in jobs for part in _chunks(j[1], 25)]
        pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init)
        pids = [p.pid for p in pool._pool]
        ok = False
        try:
            for records, chunk in zip(pool.imap(_work, chunks), chunks):
                on_done(records)
                bar.update(len(chunk[1]))
            ok = True
        finally:
            if ok:
                pool.close()
            else:
                pool.terminate()
            pool.join()
            if not ok:
                for pid in pids:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
    finally:
        bar.close()


def _chunks(seq: list[int], size: int) -> list[list[int]]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def collect(root: str | os.PathLike, *, tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS,
            episodes_per_task: int = 100, seeds: tuple[int, int] | None = None, policy: str = "mixed",
            workers: int = 1, seed: int = 0, progress: bool = True, max_steps: int = MAX_STEPS) -> dict[str, Any]:
    """Collect transitions into ``root/{train,val,test}.jsonl`` and ``root/meta.json``; returns the meta.

    ``seeds=(a, b)``: the episode seeds ``a..b-1`` of every task (default ``(0, episodes_per_task)``), split
    by range (module docstring). ``policy``: ``mixed`` (default), ``expert`` or ``random``.
    """
    if policy not in ("mixed", "expert", "random"):
        raise ValueError(f"policy must be mixed, expert or random, got {policy!r}")
    lo, hi = seeds if seeds is not None else (0, episodes_per_task)
    if hi <= lo:
        raise ValueError(f"empty seed range {seeds!r}")
    tasks = list(tasks)
    names = task_names()
    bad = [t for t in tasks if t not in names]
    if bad:
        raise ValueError(f"unknown MiniWoB tasks {bad}; valid names include {', '.join(names[:8])}, ...")
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(lo, hi))
    split = {s: split_of(i, len(seed_list)) for i, s in enumerate(seed_list)}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in SPLIT_FRACTIONS}
    stats = _Stats()
    t0 = time.time()

    def on_done(records: list[dict[str, Any]]) -> None:
        for rec in records:
            name = split[rec["seed"]]
            rec = {"id": f"{rec['task']}-{rec['seed']}-{rec['step']}", **rec}
            rows[name].append(rec)
            stats.add(rec)

    jobs = [(task, seed_list, seed, policy, max_steps) for task in tasks]
    _run_jobs(jobs, workers, progress, on_done)
    for name, recs in rows.items():
        recs.sort(key=lambda r: (r["task"], r["seed"], r["step"]))
        _atomic_write(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in recs))
    meta = {"tasks": tasks, "seeds": [lo, hi], "policy": policy, "seed": seed, "max_steps": max_steps,
            "split_seeds": {name: _ranges([s for s in seed_list if split[s] == name]) for name in rows},
            "counts": {name: len(recs) for name, recs in rows.items()}, "seconds": round(time.time() - t0, 1),
            **stats.summary()}
    _atomic_write(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    return meta


def _ranges(seeds: list[int]) -> list[int]:
    return [min(seeds), max(seeds) + 1] if seeds else []


class _Stats:
    """Counts for meta.json: changed share, page sizes, and the success rate (raw reward 1.0 at the end; an
    episode cut at ``max_steps`` fails) per task and episode policy."""

    def __init__(self) -> None:
        self.n = 0
        self.changed = 0
        self.page_chars: list[int] = []
        self.episodes: dict[tuple[str, int], tuple[str, bool]] = {}

    def add(self, rec: dict[str, Any]) -> None:
        self.n += 1
        self.changed += rec["current_page"] != rec["next_page"]
        self.page_chars.append(len(rec["current_page"]))
        success = bool(rec["done"]) and rec["reward"] >= 1.0 - 1e-6
        key = (rec["task"], rec["seed"])
        self.episodes[key] = (rec["policy"], self.episodes.get(key, ("", False))[1] or success)

    def summary(self) -> dict[str, Any]:
        chars = sorted(self.page_chars) or [0]
        rates: dict[str, dict[str, list[bool]]] = {}
        for (task, _), (policy, success) in sorted(self.episodes.items()):
            rates.setdefault(task, {}).setdefault(policy, []).append(success)
        return {"transitions": self.n, "episodes": len(self.episodes),
                "changed_share": round(self.changed / max(self.n, 1), 3),
                "page_chars": {"mean": round(sum(chars) / len(chars), 1), "p50": chars[len(chars) // 2],
                               "p95": chars[int(0.95 * (len(chars) - 1))], "max": chars[-1]},
                "success_rate": {task: {p: round(sum(v) / len(v), 3) for p, v in sorted(per.items())}
                                 for task, per in rates.items()}}


# ---------------------------------------------------------------------------------------------- cli


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m rlvr_world.data.web.miniwob ROOT [--tasks ...] [--seeds A B] ...``: collect transitions."""
    p = argparse.ArgumentParser(prog="python -m rlvr_world.data.web.miniwob", description=__doc__.split("\n")[0])
    p.add_argument("root", help="output folder for {train,val,test}.jsonl and meta.json")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="MiniWoB task names")
    p.add_argument("--episodes-per-task", type=int, default=100, help="seeds 0..N-1 (when --seeds is not given)")
    p.add_argument("--seeds", type=int, nargs=2, metavar=("START", "STOP"), help="episode seed range [START, STOP)")
    p.add_argument("--policy", choices=("mixed", "expert", "random"), default="mixed")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy")
    p.add_argument("--max-steps", type=int, default=MAX_STEPS)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    meta = collect(args.root, tasks=args.tasks, episodes_per_task=args.episodes_per_task,
                   seeds=tuple(args.seeds) if args.seeds else None, policy=args.policy, workers=args.workers,
                   seed=args.seed, progress=not args.no_progress, max_steps=args.max_steps)
    print(json.dumps(meta, indent=1))
    return meta


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks (browsers closed) on SIGTERM


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    main(sys.argv[1:])
