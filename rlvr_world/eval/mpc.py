"""Model-predictive control of a MiniWoB++ web agent with language world models (the ``mpc`` recipe).

The paper's web-agent use of a world model, on MiniWoB++: at every step a proposal policy offers candidate
actions, a world model predicts the page each one leads to, a value function scores the predicted pages
against the objective, and the best candidate runs in the real browser. What it decides:

* **Proposal policy** (``propose``): the valid actions of the page (``WebEnv.valid_actions``), shuffled by a
  ``random.Random`` keyed by (proposal seed, task, episode seed, step), the first ``candidates`` of them. Every
  arm sees the same proposals in the same state at the same step.
* **Arms** (one agent per arm, same tasks, seeds and proposals):

  - ``proposal``: no world model, the proposal policy's first candidate;
  - one arm per named world model: its greedy prediction of the changes (``rlvr_world.data.web.page``
    format) applied to the current page with ``apply_changes``;
  - ``oracle``: the true next page, from replaying the episode's actions and the candidate in the browser
    (the env is replayed back to the current state afterwards); the upper bound of the world models.

* **Choice**: the value function of :mod:`rlvr_world.eval.mpc_value` (the same for every arm) scores each
  candidate's predicted page; the highest score wins, ties go to the proposal order.
* **Metrics** per arm, per task and overall: success rate (MiniWoB raw reward 1 at the episode's end; an
  episode cut at ``max_steps`` fails), mean raw reward (0 for a cut episode), mean steps, and the prediction
  F1 (``rlvr_world.rewards.web.score``) of the arm's prediction for each action it executed against the true
  changes (None for the proposal arm, 1 for the oracle).
* **Files**: ``out_dir/results.json`` (config, every episode, the summary) and ``out_dir/report.md`` (rows =
  arms; columns = success per task, overall success, mean reward, mean steps, prediction F1), both atomic.
  One browser per task, reused across seeds and arms, closed in ``finally``.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..data.web.page import apply_changes, page_changes
from ..rewards.web import score as changes_f1
from .mpc_value import value as page_value

__all__ = ["Arm", "ModelArm", "OracleArm", "Prediction", "ProposalArm", "StepContext", "WorldModel", "choose",
           "propose", "run", "run_episode", "run_mpc", "summarize"]

PROPOSAL, ORACLE = "proposal", "oracle"
SUCCESS_REWARD = 1.0 - 1e-6


# ---------------------------------------------------------------------------------------------- proposals


def propose(valid: Sequence[str], k: int, key: str) -> list[str]:
    """At most ``k`` of the ``valid`` actions, in an order fixed by ``key`` (module docstring)."""
    order = list(valid)
    random.Random(key).shuffle(order)
    return order[:k]


@dataclass
class StepContext:
    """What an arm may use to predict: the env (for the oracle), the episode and the current state."""

    env: Any
    task: str
    seed: int
    objective: str
    url: str
    page: str
    previous_actions: list[str]


@dataclass(frozen=True)
class Prediction:
    """A candidate's predicted next page and the changes text it came from."""

    page: str
    changes: str


class Arm(Protocol):
    name: str

    def predict(self, ctx: StepContext, candidates: list[str]) -> list[Prediction] | None:
        """One prediction per candidate, or None to take the first candidate unscored."""


class ProposalArm:
    """No world model: the proposal policy's first candidate."""

    name = PROPOSAL

    def predict(self, ctx: StepContext, candidates: list[str]) -> list[Prediction] | None:
        return None


class OracleArm:
    """The true next page of each candidate, by replay in the browser; leaves the env in the current state."""

    name = ORACLE

    def predict(self, ctx: StepContext, candidates: list[str]) -> list[Prediction]:
        out = []
        for action in candidates:
            ctx.env.replay(ctx.seed, ctx.previous_actions)
            nxt, _, _ = ctx.env.step(action)
            out.append(Prediction(nxt.page, page_changes(ctx.page, nxt.page)))
        ctx.env.replay(ctx.seed, ctx.previous_actions)
        return out


class ModelArm:
    """A world model: ``predict_changes(records)`` -> one changes text per prompt record."""

    def __init__(self, name: str, predict_changes: Callable[[list[dict[str, Any]]], list[str]]) -> None:
        self.name = name
        self.predict_changes = predict_changes

    def predict(self, ctx: StepContext, candidates: list[str]) -> list[Prediction]:
        records = [{"objective": ctx.objective, "url": ctx.url, "previous_actions": list(ctx.previous_actions),
                    "current_page": ctx.page, "action": action} for action in candidates]
        texts = self.predict_changes(records)
        if len(texts) != len(records):
            raise ValueError(f"world model {self.name!r} gave {len(texts)} predictions for {len(records)} actions")
        return [Prediction(apply_changes(ctx.page, text), text) for text in texts]


class WorldModel:
    """A trained web world model (an HF directory, or an sft / grpo run directory) predicting changes greedily.

    A prompt that leaves no room to answer in the model's context predicts no change.
    """

    def __init__(self, path: str | os.PathLike, max_new_tokens: int = 256) -> None:
        import torch

        from ..data import text_domains, text_tokenizer
        from ..models.transformer import Transformer
        from ..train.text_model import model_dir

        try:
            directory = model_dir(path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"world model {str(path)!r}: {e}") from None
        self.path = directory
        self.model = Transformer.from_pretrained(directory, dtype=torch.float32).eval()
        self.tokenizer = text_tokenizer.load(directory)
        self.end_id = text_tokenizer.end_id(self.tokenizer)
        self.domain = text_domains.get("web")
        self.max_new_tokens = max_new_tokens

    def __call__(self, records: list[dict[str, Any]]) -> list[str]:
        from ..train.text_data import Example, prompt_ids
        from ..train.text_eval import sample

        examples = [Example(prompt_ids(self.domain, self.tokenizer, r), [], r) for r in records]
        room = [len(ex.prompt) < self.model.args.max_seq_len for ex in examples]
        fits = [ex for ex, ok in zip(examples, room) if ok]
        texts = iter(sample(self.model, self.tokenizer, fits, self.end_id, group_size=1,
                            max_new_tokens=self.max_new_tokens, temperature=0.0, seed=0).texts if fits else [])
        return [next(texts)[0] if ok else page_changes("", "") for ok in room]


# ---------------------------------------------------------------------------------------------- the agent


def choose(objective: str, page: str, candidates: list[str],
           predictions: list[Prediction] | None) -> tuple[int, list[float] | None]:
    """Index of the chosen candidate and the candidates' values (None without predictions: the first)."""
    if predictions is None:
        return 0, None
    values = [page_value(objective, page, p.page, a) for a, p in zip(candidates, predictions)]
    return max(range(len(values)), key=lambda i: (values[i], -i)), values


@dataclass
class Episode:
    """One episode of one arm."""

    arm: str
    task: str
    seed: int
    success: bool = False
    reward: float = 0.0
    steps: int = 0
    actions: list[str] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)  # the chosen candidate's value per step
    f1: list[float] = field(default_factory=list)  # prediction F1 of each executed action (world-model arms)


def run_episode(env: Any, task: str, seed: int, arm: Arm, *, max_steps: int, candidates: int,
                proposal_seed: int = 0) -> Episode:
    """Run ``arm``'s agent for one episode of ``task`` / ``seed`` in ``env`` (module docstring)."""
    ep = Episode(arm.name, task, seed)
    state = env.reset(seed)
    for step in range(max_steps):
        valid = env.valid_actions(state)
        if state.done or not valid:
            break
        cands = propose(valid, candidates, f"{proposal_seed}:{task}:{seed}:{step}")
        ctx = StepContext(env, task, seed, state.objective, state.url, state.page, list(ep.actions))
        predictions = arm.predict(ctx, cands)
        best, values = choose(state.objective, state.page, cands, predictions)
        nxt, reward, done = env.step(cands[best])
        if predictions is not None:
            ep.f1.append(changes_f1(predictions[best].changes, page_changes(state.page, nxt.page)))
        ep.actions.append(cands[best])
        ep.values.append(None if values is None else values[best])
        ep.steps += 1
        state = nxt
        if done:
            ep.reward = float(reward)
            ep.success = float(reward) >= SUCCESS_REWARD
            break
    return ep


# ---------------------------------------------------------------------------------------------- runs


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _stats(episodes: list[Episode]) -> dict[str, Any]:
    f1 = [x for ep in episodes for x in ep.f1]
    return {"episodes": len(episodes), "success_rate": _mean([float(ep.success) for ep in episodes]),
            "mean_reward": _mean([ep.reward for ep in episodes]), "mean_steps": _mean([ep.steps for ep in episodes]),
            "prediction_f1": _mean(f1), "predicted_steps": len(f1)}


def summarize(episodes: list[Episode], arms: list[str], tasks: list[str]) -> dict[str, Any]:
    """Per arm: ``overall`` and ``per_task`` statistics (success rate, mean reward, mean steps, prediction F1)."""
    out = {}
    for arm in arms:
        mine = [ep for ep in episodes if ep.arm == arm]
        out[arm] = {"overall": _stats(mine),
                    "per_task": {t: _stats([ep for ep in mine if ep.task == t]) for t in tasks}}
    return out


def _check_tasks(tasks: list[str]) -> None:
    from ..data.web.miniwob import task_names

    names = task_names()
    bad = [t for t in tasks if t not in names]
    if bad:
        raise ValueError(f"unknown MiniWoB task(s) {bad}; valid names include {', '.join(names[:8])}, ...")


def _arms(world_models: dict[str, Any], max_new_tokens: int) -> list[Arm]:
    arms: list[Arm] = [ProposalArm()]
    for name, model in world_models.items():
        if name in (PROPOSAL, ORACLE):
            raise ValueError(f"world model name {name!r} is reserved for a baseline arm; pick another name")
        predict = model if callable(model) else WorldModel(model, max_new_tokens)
        arms.append(ModelArm(name, predict))
    return [*arms, OracleArm()]


def run_mpc(tasks: Sequence[str], seeds: Sequence[int], *, world_models: dict[str, Any] | None = None,
            max_steps: int = 8, candidates: int = 8, max_new_tokens: int = 256, proposal_seed: int = 0,
            oracle: bool = True, progress: bool = False,
            env_factory: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Compare the arms on ``tasks`` x ``seeds``; returns ``{"episodes": [...], "summary": {...}, ...}``.

    ``world_models``: name -> model directory (or a callable ``records -> changes texts``). ``env_factory``:
    task -> env (default :class:`rlvr_world.data.web.miniwob.WebEnv`, whose task names are checked first).
    """
    from tqdm import tqdm

    tasks = list(tasks)
    if env_factory is None:
        from ..data.web.miniwob import WebEnv

        _check_tasks(tasks)
        env_factory = WebEnv
    arms = _arms(dict(world_models or {}), max_new_tokens)
    arms = arms if oracle else arms[:-1]
    t0 = time.time()
    episodes: list[Episode] = []
    bar = tqdm(total=len(tasks) * len(seeds) * len(arms), desc="mpc episodes", unit="ep", disable=not progress)
    try:
        for task in tasks:
            env = env_factory(task)
            try:
                for seed in seeds:
                    for arm in arms:
                        episodes.append(run_episode(env, task, seed, arm, max_steps=max_steps, candidates=candidates,
                                                    proposal_seed=proposal_seed))
                        bar.update(1)
            finally:
                env.close()
    finally:
        bar.close()
    names = [a.name for a in arms]
    return {"tasks": tasks, "seeds": list(seeds), "arms": names, "seconds": round(time.time() - t0, 1),
            "episodes": [asdict(ep) for ep in episodes], "summary": summarize(episodes, names, tasks)}


def report_rows(results: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The report table: one row per arm, success per task, overall success, mean reward / steps, F1."""
    rows = []
    for arm in results["arms"]:
        s = results["summary"][arm]
        row: dict[str, Any] = {"arm": arm}
        row.update({task: s["per_task"][task]["success_rate"] for task in results["tasks"]})
        row.update({"overall": s["overall"]["success_rate"], "mean reward": s["overall"]["mean_reward"],
                    "mean steps": s["overall"]["mean_steps"], "prediction F1": s["overall"]["prediction_f1"]})
        rows.append(row)
    columns = ["arm", *results["tasks"], "overall", "mean reward", "mean steps", "prediction F1"]
    return rows, columns


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_outputs(results: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``results.json`` and ``report.md`` in ``out_dir``."""
    from .report import Report

    out = Path(out_dir)
    _write_json(out / "results.json", results)
    rows, columns = report_rows(results)
    n = len(results["seeds"])
    report = (Report("MPC web agent on MiniWoB++")
              .text(f"{len(results['tasks'])} tasks x {n} seeds ({results['seeds'][0]}..{results['seeds'][-1]}), "
                    f"{results['seconds']:.0f} s. Success rate per task (MiniWoB raw reward 1 at the end), overall "
                    "success, mean raw reward, mean steps, and the world model's prediction F1 on the executed "
                    "actions. `proposal`: no world model; `oracle`: the true next page.")
              .table(rows, columns, floats="{:.3f}"))
    return out / "results.json", report.write(out / "report.md")


def run(cfg: Any) -> dict[str, Any]:
    """The ``mpc`` recipe (an :class:`rlvr_world.config_lang.MPCRun`): run the arms, write the files."""
    from ..data.web.miniwob import DEFAULT_TASKS

    m = cfg.mpc
    tasks = list(m.tasks) or list(DEFAULT_TASKS)
    results = run_mpc(tasks, list(m.seeds), world_models=dict(m.world_models), max_steps=m.max_steps,
                      candidates=m.candidates, max_new_tokens=m.max_new_tokens, proposal_seed=m.proposal_seed,
                      oracle=m.oracle, progress=getattr(cfg, "progress", True))
    results["config"] = asdict(m)
    write_outputs(results, m.out_dir)
    return results
