"""Text-game world-model data: transitions of ScienceWorld and ByteSized32 in the ByteSized32 state layout.

``transitions`` holds the record type, state checks, the gold answer diff, JSONL I/O and the ByteSized32 loader;
``sw_convert`` turns ScienceWorld object trees into states; ``scienceworld`` runs the collector. Names are
re-exported lazily (PEP 562): importing this package never imports scienceworld or starts Java.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Transition": "transitions", "check_state": "transitions", "gold_diff": "transitions",
    "load_bytesized32": "transitions", "load_split": "transitions", "read_jsonl": "transitions",
    "split_files": "transitions", "state_chars": "transitions", "write_jsonl": "transitions",
    "convert_tree": "sw_convert", "convert_pair": "sw_convert", "parse_doors": "sw_convert",
    "door_uuid": "sw_convert", "collect": "scienceworld", "DEFAULT_TASKS": "scienceworld",
    "TASK_NAMES": "scienceworld",
}
__all__ = ["DEFAULT_TASKS", "TASK_NAMES", "Transition", "check_state", "collect", "convert_pair", "convert_tree",
           "door_uuid", "gold_diff", "load_bytesized32", "load_split", "parse_doors", "read_jsonl", "split_files",
           "state_chars", "write_jsonl"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
