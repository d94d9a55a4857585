"""The quick start: from nothing to a GRPO report on built-in simulator data, in one command.

``rlvr-train`` (size ``quickstart``) and ``rlvr-train --smoke`` (size ``smoke``) run four recipes in a row,
each from its preset ``<recipe>-<size>`` (``rlvr_world.config.PRESETS``), everything under ``runs/<size>/``
of the current directory:

1. ``collect``    Meta-World drawer episodes rendered offscreen (``MUJOCO_GL=egl`` unless set) -> ``data/``
2. ``tokenizer``  the sim-64 FSQ frame tokenizer -> ``tokenizer/``
3. ``pretrain``   the single-step world model by next-token likelihood -> ``pretrain/model``
4. ``grpo``       GRPO on -(MAE + LPIPS-AlexNet); its step-0 and final validations on the same held-out clips, with
                  the same random numbers, are the before/after evaluation -> ``grpo/report.md``

Choices: a stage whose output is complete is skipped and an interrupted one resumes from its checkpoint,
so running the command again continues where it stopped (delete ``runs/<size>`` to start over). LPIPS uses
AlexNet features here (VGG16, the paper's, costs ~10x more on a CPU; ``grpo.lpips_net``). Without the
ImageNet LPIPS weights (``python -m rlvr_world.models.lpips_weights``, fetched by ``make quickstart``)
the GRPO reward falls back to -MAE and the run says so. The recipes are passed in by the caller (the CLI's
runners), so each stage prints exactly what its own command prints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from rlvr_world import config as C

__all__ = ["SIZES", "STAGES", "configs", "done", "run"]

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


def run(size: str, runners: Mapping[str, Callable[[C.RunConfig], int]], *, print_fn=print) -> int:
    """Run the stages of ``size`` with ``runners`` (recipe -> runner returning an exit status); returns the
    first non-zero status, else 0."""
    cfgs = configs(size)
    os.environ.setdefault("MUJOCO_GL", "egl")
    g = cfgs["grpo"].grpo
    if g.reward == "neg_mae_lpips" and not _lpips_available(g.lpips_net):
        g.reward = "neg_mae"
        print_fn(f"note: no ImageNet LPIPS ({g.lpips_net}) weights here (python -m rlvr_world.models.lpips_weights "
                 f"fetches them); the GRPO reward is -MAE instead of -(MAE + LPIPS)")
    t0 = time.perf_counter()
    for i, stage in enumerate(STAGES, 1):
        cfg = cfgs[stage]
        cfg.check()
        if done(stage, cfg):
            print_fn(f"[{i}/{len(STAGES)}] {stage}: already done ({cfg.train.out_dir}); skipped")
            continue
        print_fn(f"[{i}/{len(STAGES)}] {stage} (rlvr-train {stage} --preset {stage}-{size})")
        t = time.perf_counter()
        status = runners[stage](cfg)
        if status:
            print_fn(f"{size}: stage {stage} failed (exit status {status}); fix the error and run the same "
                     f"command again to continue")
            return status
        print_fn(f"[{i}/{len(STAGES)}] {stage}: {time.perf_counter() - t:.0f} s")
    report = Path(cfgs["grpo"].train.out_dir) / "report.md"
    print_fn(f"{size} finished in {time.perf_counter() - t0:.0f} s; report: {report}")
    return 0
