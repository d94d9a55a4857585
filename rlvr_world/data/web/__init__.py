"""Web world-model data: MiniWoB++ pages rendered as text, their changes, and a transition collector.

``page`` (pure Python: rendering, ``page_changes`` / ``apply_changes``, the action grammar) and ``miniwob``
(the browser environment :class:`WebEnv`, ``expert_actions``, ``collect``) are imported on first use of one of
their names, so importing this package never imports selenium, miniwob or gymnasium.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Action": "page", "IdMap": "page", "apply_changes": "page", "format_action": "page", "page_changes": "page",
    "page_lines": "page", "parse_action": "page", "render_ax_tree": "page",
    "DEFAULT_TASKS": "miniwob", "WebEnv": "miniwob", "WebState": "miniwob", "collect": "miniwob",
    "expert_actions": "miniwob",
}

__all__ = [
    "DEFAULT_TASKS",
    "Action",
    "IdMap",
    "WebEnv",
    "WebState",
    "apply_changes",
    "collect",
    "expert_actions",
    "format_action",
    "page_changes",
    "page_lines",
    "parse_action",
    "render_ax_tree",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in ("page", "miniwob"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
