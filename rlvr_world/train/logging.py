"""Run metrics: one JSON line per logged step (flushed), a tqdm progress bar, TensorBoard when installed.

``MetricLogger(out_dir, total_steps, start_step)`` is generic: every recipe logs dicts of numbers with
``log(step, metrics, kind="train")`` and advances the bar with ``advance()``. Choices:

* ``out_dir/metrics.jsonl``: each line is ``{"step": s, "kind": kind, "time": seconds since the logger
  started, **metrics}``; the file is appended to and flushed per line, so ``tail -f`` and a crashed run
  both see every logged step. On resume (``start_step > 0``) lines from the interrupted run that are
  newer than ``start_step`` are dropped first, so the file reads as one uninterrupted run.
* Tensors and numpy scalars are converted to Python floats; non-finite values are written as ``null``
  (JSON has no NaN) — a NaN loss stays visible as ``null`` rather than breaking the file.
* tqdm shows the latest ``kind="train"`` metrics as postfix; ``progress=False`` disables it.
* TensorBoard (``torch.utils.tensorboard``) is imported lazily: ``tensorboard=None`` uses it when the
  ``tensorboard`` package is installed, ``True`` requires it, ``False`` never uses it. Scalars are written
  as ``kind/name`` under ``out_dir/tensorboard``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["METRICS_FILE", "MetricLogger", "NullLogger", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


def _number(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    v = float(v) if not isinstance(v, int) else v
    return v if not isinstance(v, float) or math.isfinite(v) else None


def read_metrics(path, kind: str | None = None) -> list[dict]:
    """The lines of a metrics.jsonl file (or of ``path/metrics.jsonl``), optionally only one ``kind``."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


class MetricLogger:
    """JSONL + tqdm (+ TensorBoard) logger of one run; use as a context manager or call ``close()``."""

    def __init__(self, out_dir, total_steps: int, start_step: int = 0, *, progress: bool = True,
                 tensorboard: bool | None = None, desc: str = "train"):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / METRICS_FILE
        if start_step > 0 and self.path.exists():  # drop what the interrupted run logged after its checkpoint
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif start_step == 0 and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        self._t0 = time.perf_counter()
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)
        self._tb = None
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard:
                    raise ImportError("tensorboard=True needs the tensorboard package (pip install tensorboard)") from None
            else:
                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))

    def log(self, step: int, metrics: Mapping, kind: str = "train") -> dict:
        """Append one line ``{"step", "kind", "time", **metrics}`` (flushed); returns it."""
        row = {"step": int(step), "kind": kind, "time": round(time.perf_counter() - self._t0, 3),
               **{k: _number(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "kind", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
        if self._bar is not None and kind == "train":
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                                   if k not in ("step", "kind", "time") and isinstance(v, float)}, refresh=False)
        return row

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> MetricLogger:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullLogger:
    """MetricLogger's interface doing nothing: the logger of the ranks other than 0 in a distributed run."""

    def log(self, step: int, metrics: Mapping, kind: str = "train") -> dict:
        return {"step": int(step), "kind": kind, **metrics}

    def write(self, message: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
