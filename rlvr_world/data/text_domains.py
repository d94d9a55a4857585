"""The two language world-model domains behind one small interface: records, prompts, answers, rewards.

What it decides:

* A **domain** (``DOMAINS``: ``textgame``, ``web``) says how a transition record becomes a chat prompt and
  a gold answer, how a response is rewarded (``reward(response, record, mode)``, the verifiable reward of
  DESIGN §5), whether it is an exact prediction, and which group a record belongs to in the evaluation
  tables (``changed`` / ``unchanged``).
* **Records** are the JSONL lines the collectors write (``root/{train,val,test}.jsonl``), read as dicts; a
  missing split file is a FileNotFoundError naming the collector that makes it, a malformed line a
  ValueError naming the file and line.
* Reward modes: ``binary`` (exact match) and ``task_specific`` for text games, ``f1`` for web pages.
  ScienceWorld records (``source == "scienceworld"``) compare temperatures within ±1 °C (its replays are
  only near-deterministic), in the reward and in the exact-match metric alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DOMAINS", "SPLITS", "Domain", "ensure_data", "get", "read_records"]

SPLITS = ("train", "val", "test")
SCIENCEWORLD_TEMPERATURE_TOLERANCE = 1.0  # degrees: its replays are only near-deterministic


def read_records(root: str | os.PathLike, split: str) -> list[dict]:
    """The transition dicts of ``root/<split>.jsonl``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(root) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no {split} split at {path}: collect the data first (data.source / the "
                                f"collectors in rlvr_world.data.textgame and rlvr_world.data.web)")
    records = []
    with path.open() as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")  # noqa: TRY004 - bad data
            records.append(rec)
    return records


@dataclass(frozen=True)
class Domain:
    name: str
    modes: tuple[str, ...]  # reward modes; the first is the default
    messages: Callable[[Mapping], tuple[str, str]]  # record -> (system, user)
    answer: Callable[[Mapping], str]  # record -> gold answer text
    reward: Callable[[str, Mapping, str], float]  # (response, record, mode) -> reward
    exact: Callable[[str, Mapping], bool]  # response is an exact prediction
    changed: Callable[[Mapping], bool]  # the transition changes the state
    collect: Callable[..., dict]  # (root, **kwargs, progress=...) -> summary: the built-in simulator's collector

    def check_mode(self, mode: str, where: str = "reward mode") -> str:
        if mode not in self.modes:
            raise ValueError(f"{where} of domain {self.name!r} must be one of {self.modes}, got {mode!r}")
        return mode


def _textgame() -> Domain:
    from ..rewards import text_game
    from .textgame import prompts

    def reward(response: str, record: Mapping, mode: str) -> float:
        tolerance = SCIENCEWORLD_TEMPERATURE_TOLERANCE if record.get("source") == "scienceworld" else 0.0
        return text_game.score(response, record["current_state"], record["next_state"], mode=mode,
                               temperature_tolerance=tolerance)

    def exact(response: str, record: Mapping) -> bool:
        return reward(response, record, "binary") == 1.0

    def collect(root, **kwargs) -> dict:
        from .textgame.scienceworld import collect as sw_collect  # needs Java + scienceworld

        return sw_collect(root, **kwargs)

    return Domain("textgame", ("binary", "task_specific"), prompts.messages, prompts.answer, reward, exact,
                  lambda r: bool(r["changed"]), collect)


def _web() -> Domain:
    from ..rewards import web
    from .web import prompts

    def reward(response: str, record: Mapping, mode: str) -> float:
        return web.score(response, record["changes"])

    def exact(response: str, record: Mapping) -> bool:
        return web.parse_changes(response) == web.parse_changes(record["changes"])

    def changed(record: Mapping) -> bool:
        return any(web.parse_changes(record["changes"]).values())

    def collect(root, **kwargs) -> dict:
        from .web.miniwob import collect as web_collect  # needs chromium + miniwob

        return web_collect(root, **kwargs)

    return Domain("web", ("f1",), prompts.messages, prompts.answer, reward, exact, changed, collect)


DOMAINS: dict[str, Callable[[], Domain]] = {"textgame": _textgame, "web": _web}


def ensure_data(domain: Domain, root: str | os.PathLike, source: str, collect_kwargs: Mapping, *,
                progress: bool = True, log: Callable[[str], None] = print) -> None:
    """Collect ``root`` with the domain's built-in simulator when its split files are missing (``source``
    "builtin"); with ``source`` "none" a missing split is a FileNotFoundError."""
    missing = [s for s in SPLITS if not (Path(root) / f"{s}.jsonl").is_file()]
    if not missing:
        return
    if source != "builtin":
        raise FileNotFoundError(f"data.root {root} has no {', '.join(missing)} split(s) and data.source is "
                                f"{source!r}: write root/{{train,val,test}}.jsonl or set data.source=builtin")
    log(f"collecting {domain.name} transitions into {root} (built-in simulator; {dict(collect_kwargs) or 'defaults'})")
    summary = domain.collect(root, **dict(collect_kwargs), progress=progress)
    log(f"collected: { {k: v for k, v in summary.items() if isinstance(v, (int, float, str))} }")


def get(name: str) -> Domain:
    """The domain called ``name``."""
    if name not in DOMAINS:
        raise ValueError(f"domain must be one of {sorted(DOMAINS)}, got {name!r}")
    return DOMAINS[name]()
