"""The quick start: from nothing to a GRPO report on built-in simulator data, in one command.

``rlvr-train`` (size ``quickstart``) and ``rlvr-train --smoke`` (size ``smoke``) run four recipes in a row,
each from its preset ``<recipe>-<size>`` (``rlvr_world.config.PRESETS``), everything under ``runs/<size>/``
of the current directory:

1. ``collect``    Meta-World drawer episodes rendered offscreen (``MUJOCO_GL=egl`` unless set) -> ``data/``
2. ``tokenizer``  the sim-64 FSQ frame tokenizer -> ``tokenizer/``
3. ``pretrain``   the single-step world model by next-token likelihood -> ``pretrain/model``
4. ``grpo``       GRPO on -(MAE + LPIPS-AlexNet); its step-0 and final validations on the same held-out clips, with
                  the same random numbers, are the before/after evaluation -> ``grpo/report.md``

Choices: each stage runs as its own command in a child process (``python -m rlvr_world.cli STAGE --preset
STAGE-SIZE``), exactly as a user would type it, so one stage's state (the simulator's offscreen GL context,
memory) never reaches the next. A stage whose output is complete is skipped and an interrupted one resumes
from its checkpoint, so running the command again continues where it stopped (delete ``runs/<size>`` to
start over; Ctrl-C lets the running stage checkpoint, then stops). LPIPS uses
AlexNet features here (VGG16, the paper's, costs ~10x more on a CPU; ``grpo.lpips_net``). Without the
ImageNet LPIPS weights (``python -m rlvr_world.models.lpips_weights``, fetched by ``make quickstart``)
the GRPO reward falls back to -MAE and the run says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rlvr_world import config as C

__all__ = ["SIZES", "STAGES", "configs", "done", "run", "run_command"]

SIZES = ("quickstart", "smoke")
STAGES = ("collect", "tokenizer", "pretrain", "grpo")


def configs(size: str) -> dict[str, C.RunConfig]:
    """The four stage configs of ``size`` (fresh objects; resumable runs)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return {stage: C.PRESETS[f"{stage}-{size}"]() for stage in STAGES}


def done(stage: str, cfg: C.RunConfig) -> bool:
    """Whether ``stage`` has finished: its final output exists (collection is resumable itself: never done)."""
    if stage == "collect":
        return False
    out = Path(cfg.train.out_dir)
    final = {"tokenizer": out / "tokenizer" / "config.json", "pretrain": out / "model" / "layout.json",
             "grpo": out / "report.md"}[stage]
    return final.is_file()


def _lpips_available(net: str) -> bool:
    from rlvr_world.models.lpips import LPIPS

    try:
        LPIPS(net=net)
    except FileNotFoundError:
        return False
    return True


def run_command(stage: str, size: str, overrides: Sequence[str]) -> int:
    """Run one stage as ``python -m rlvr_world.cli STAGE --preset STAGE-SIZE [key=value ...]``; its exit status."""
    cmd = [sys.executable, "-m", "rlvr_world.cli", stage, "--preset", f"{stage}-{size}", *overrides]
    return subprocess.run(cmd, check=False).returncode


def run(size: str, runner: Callable[[str, str, Sequence[str]], int] = run_command, *, print_fn=print) -> int:
    """Run the stages of ``size``, each with ``runner(stage, size, overrides)`` (a child process by default);
    returns the first non-zero exit status, else 0."""
    cfgs = configs(size)
    os.environ.setdefault("MUJOCO_GL", "egl")
    overrides: dict[str, list[str]] = {stage: [] for stage in STAGES}
    g = cfgs["grpo"].grpo
    if g.reward == "neg_mae_lpips" and not _lpips_available(g.lpips_net):
        overrides["grpo"].append("grpo.reward=neg_mae")
        print_fn(f"note: no ImageNet LPIPS ({g.lpips_net}) weights here (python -m rlvr_world.models.lpips_weights "
                 f"fetches them); the GRPO reward is -MAE instead of -(MAE + LPIPS)")
    t0 = time.perf_counter()
    for i, stage in enumerate(STAGES, 1):
        cfg = cfgs[stage]
        if done(stage, cfg):
            print_fn(f"[{i}/{len(STAGES)}] {stage}: already done ({cfg.train.out_dir}); skipped")
            continue
        command = " ".join(["rlvr-train", stage, "--preset", f"{stage}-{size}", *overrides[stage]])
        print_fn(f"[{i}/{len(STAGES)}] {stage}: {command}")
        sys.stdout.flush()  # before the child process writes
        t = time.perf_counter()
        try:
            status = runner(stage, size, overrides[stage])
        except KeyboardInterrupt:
            print_fn(f"{size}: interrupted during {stage}; run the same command again to continue")
            return 130
        if status:
            print_fn(f"{size}: stage {stage} failed (exit status {status}); fix the error and run the same "
                     f"command again to continue")
            return status
        print_fn(f"[{i}/{len(STAGES)}] {stage}: {time.perf_counter() - t:.0f} s")
    report = Path(cfgs["grpo"].train.out_dir) / "report.md"
    print_fn(f"{size} finished in {time.perf_counter() - t0:.0f} s; report: {report}")
    return 0
