"""The step loop every training recipe shares (DESIGN §3.12), and the stages that do not depend on the
recipe: logging the train metrics, deciding when an interval is due, writing a checkpoint.

A recipe's state object carries ``cfg`` (with ``cfg.train``), ``step``, ``last_saved``, ``last_train``,
``out_dir``, ``model``, ``optimizer``, ``scheduler`` and ``logger`` (``train.logging.MetricLogger``); the
recipe supplies its own ``batch``, ``train_step``, ``evaluate``, ``save_checkpoint`` and ``finish``.

Ctrl-C (SIGINT) does not tear a step in half: the first one lets the current step finish, writes a
checkpoint and raises ``Interrupted`` (a ``KeyboardInterrupt``) naming it; a second Ctrl-C stops at once.
A state with an ``agree(flag) -> bool`` method (distributed runs) makes every rank take the same decision.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

from . import checkpoint

__all__ = ["Interrupted", "due", "log_train", "run_steps", "save_checkpoint"]


def due(step: int, every: int, force: bool = False) -> bool:
    """True when ``force``, or when ``every`` > 0 divides ``step`` (0 means never)."""
    return force or bool(every and step % every == 0)


def log_train(s, metrics: dict) -> None:
    """Keep the last train metrics; log them every ``train.log_every`` steps and at the last step."""
    s.last_train = metrics
    if s.step % s.cfg.train.log_every == 0 or s.step == s.cfg.train.steps:
        s.logger.log(s.step, metrics, kind="train")


def save_checkpoint(s, sampler_seed: int, force: bool = False) -> Path | None:
    """A checkpoint every ``train.checkpoint_every`` steps (or when forced), never twice for one step; the data
    position is (sampler_seed, step), from which the recipes rebuild their batches."""
    if s.last_saved == s.step or not due(s.step, s.cfg.train.checkpoint_every, force):
        return None
    path = checkpoint.save(s.out_dir, s.step, s.model, s.optimizer, s.scheduler, config=s.cfg,
                           sampler={"seed": sampler_seed, "step": s.step}, keep=s.cfg.train.keep_checkpoints)
    s.last_saved = s.step
    return path


class Interrupted(KeyboardInterrupt):
    """Raised by ``run_steps`` after a Ctrl-C, once the step in flight has finished and been checkpointed."""

    def __init__(self, step: int, path: Path | None):
        super().__init__(f"interrupted after step {step}; checkpoint {path}")
        self.step, self.path = step, path


class _DeferredInterrupt:
    """While active (main thread only), the first SIGINT sets ``requested``; a second raises KeyboardInterrupt."""

    def __init__(self, write: Callable[[str], None]):
        self.requested, self._write, self._previous = False, write, None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._write("interrupt: finishing the current step, then writing a checkpoint (Ctrl-C again to stop now)")

    def __enter__(self) -> _DeferredInterrupt:  # noqa: PYI034 - typing.Self needs Python 3.11
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run_steps(s, batch: Callable, train_step: Callable, evaluate: Callable, save: Callable, finish: Callable):
    """batch -> train_step -> log -> evaluate -> checkpoint until ``train.steps``; then ``finish(s)``. The logger
    is closed however the loop ends; a Ctrl-C checkpoints the last finished step and raises ``Interrupted``."""
    agree = getattr(s, "agree", lambda flag: flag)
    try:
        with _DeferredInterrupt(s.logger.write) as interrupt:
            while s.step < s.cfg.train.steps:
                metrics = train_step(s, batch(s))
                s.step += 1
                s.logger.advance()
                log_train(s, metrics)
                evaluate(s)
                save(s)
                if agree(interrupt.requested):
                    path = save(s, force=True)
                    s.logger.write(f"interrupted after step {s.step}; resume with train.resume=true")
                    raise Interrupted(s.step, path)
        return finish(s)
    finally:
        s.logger.close()
