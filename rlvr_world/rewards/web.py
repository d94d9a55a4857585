"""The web-page state-prediction reward (DESIGN §5): micro-F1 of the predicted page changes.

A prediction and its ground truth are both written as three sections, each headed by its own line::

    New items:
    [12] button 'Submit'
    Deleted items:
    [7] link 'Back'
    Updated items:
    [3] textbox 'Name' value='Ada'

What it decides:

* **Sections**: a header is a line whose text, stripped (and stripped of markdown ``#`` / ``*``), is
  ``New items:``, ``Deleted items:`` or ``Updated items:`` (case-insensitive). Every later line up to the next
  header belongs to that section; text before the first header is ignored (a model's reasoning, say). A
  section's items are the *set* of its stripped non-empty lines (duplicates count once); a header met again
  adds to its section.
* **Score**: micro-F1 of exact line matches pooled over the three sections: a predicted line matches only a
  ground-truth line of the same section. ``F1 = 2 |match| / (|pred| + |gt|)``, summed over sections. When
  both sides list no items at all (nothing changed, and none predicted) the score is 1.0; a response with no
  header predicts nothing.
"""

from __future__ import annotations

import re

__all__ = ["SECTIONS", "parse_changes", "score"]

SECTIONS = ("new", "deleted", "updated")
_HEADER = re.compile(r"^(new|deleted|updated)\s+items\s*:$", re.IGNORECASE)


def parse_changes(text: str) -> dict[str, set[str]]:
    """The three sections of ``text`` as sets of stripped non-empty lines.

    >>> parse_changes("thinking...\\nNew items:\\n[1] a\\n\\nDeleted items:\\nUpdated items:\\n[2] b\\n[2] b")
    {'new': {'[1] a'}, 'deleted': set(), 'updated': {'[2] b'}}
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    sections: dict[str, set[str]] = {name: set() for name in SECTIONS}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        header = _HEADER.match(line.strip("#* \t").rstrip("*").strip())
        if header:
            current = header.group(1).lower()
        elif current is not None and line:
            sections[current].add(line)
    return sections


def score(response: str, ground_truth: str) -> float:
    """Micro-F1 in [0, 1] of ``response``'s predicted changes against ``ground_truth``'s (module docstring).

    >>> truth = "New items:\\n[5] button 'OK'\\nDeleted items:\\n[2] link 'Back'\\nUpdated items:"
    >>> score("New items:\\n[5] button 'OK'\\nDeleted items:\\nUpdated items:", truth)  # 2*1 / (1 + 2)
    0.6666666666666666
    >>> score("no sections at all", "New items:\\nDeleted items:\\nUpdated items:")  # nothing changed, none predicted
    1.0
    """
    if not isinstance(response, str) or not isinstance(ground_truth, str):
        bad = "response" if not isinstance(response, str) else "ground_truth"
        raise TypeError(f"{bad} must be a str, got {type(response if bad == 'response' else ground_truth).__name__}")
    pred, truth = parse_changes(response), parse_changes(ground_truth)
    n_pred = sum(len(v) for v in pred.values())
    n_truth = sum(len(v) for v in truth.values())
    if n_pred + n_truth == 0:
        return 1.0
    match = sum(len(pred[name] & truth[name]) for name in SECTIONS)
    return 2.0 * match / (n_pred + n_truth)
