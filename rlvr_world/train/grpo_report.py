"""``report.md`` of a GRPO run: the held-out numbers before and after RLVR, learning curves, sample grids.

Written by rank 0 at the end of ``rlvr-train grpo`` into ``train.out_dir``: ``report.md``, ``curves_train.png``,
``curves_eval.png`` and ``samples.png`` (one val clip per row: last context frame | ground truth | the
pre-trained model's sample | the post-trained model's sample | |post-trained - ground truth|, from the
validation's first sample of each clip, top-k sampling with the same random numbers before and after).
The verdict line compares the *rewarded* quantity (the validation reward, higher is better); a change
smaller than the two evaluations' noise is not told apart from one (the report states the sample count).
"""

from __future__ import annotations

from pathlib import Path

from rlvr_world.eval.report import Report, frame_grid, markdown_table, plot_curves

from .grpo import last_context_frame
from .logging import read_metrics

__all__ = ["HIGHER_IS_BETTER", "comparison_table", "paired_change", "write_report"]

HIGHER_IS_BETTER = {"reward": True, "mae": False, "mse": False, "psnr": True, "ssim": True, "lpips": False,
                    "repetition_rate": False}
TRAIN_CURVES = ["reward_mean", "mae", "lpips", "repetition_rate", "kl_mean", "clip_frac_low", "clip_frac_high",
                "grad_norm", "invalid_token_frac", "time_step"]  # those the run logged
EVAL_CURVES = ["reward", "mae", "lpips", "psnr", "ssim", "repetition_rate"]


def _comparison(before: dict, after: dict) -> list[dict]:
    rows = []
    for key, higher in HIGHER_IS_BETTER.items():
        if key not in after:
            continue
        b, a = before.get(key), after[key]
        change = None if b is None else a - b
        better = None if change is None else (change > 0) == higher and change != 0
        rows.append({"metric": key + (" (higher is better)" if higher else " (lower is better)"), "pre-trained": b,
                     "after GRPO": a, "change": change, "better": {None: "—", True: "yes", False: "no"}[better],
                     "copy last frame": after.get(f"copy_{key}")})
    return rows


def paired_change(before: list[float] | None, after: list[float] | None) -> dict | None:
    """Mean, standard error, z and count of improved clips of the per-clip change after - before (None when
    either side is missing or the clip counts differ, e.g. a resumed run with another eval size)."""
    if not before or not after or len(before) != len(after) or len(before) < 2:
        return None
    diffs = [a - b for a, b in zip(after, before)]
    n = len(diffs)
    mean = sum(diffs) / n
    sem = (sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) ** 0.5
    return {"mean": mean, "sem": sem, "z": mean / sem if sem > 0 else 0.0, "clips": n,
            "improved": sum(d > 0 for d in diffs)}


def write_report(s, result: dict) -> Path:
    """Write the report of the finished run ``s`` (a ``train.grpo.State``); returns the report's path."""
    out, cfg = s.out_dir.resolve(), s.cfg  # absolute: the report links its images relative to itself
    g = cfg.grpo
    before, after = result["before"], result["after"]
    rows = read_metrics(out)
    present = {k for r in rows for k, v in r.items() if v is not None}
    train_keys = [k for k in TRAIN_CURVES if k in present] or TRAIN_CURVES[:1]
    eval_keys = [k for k in EVAL_CURVES if k in present] or EVAL_CURVES[:1]
    rep = Report("GRPO post-training report")
    rep.text(f"World model `{cfg.model.init_from}` post-trained for {result['step']} steps of {g.prompts_per_step} "
             f"prompts x {g.group_size} samples ({s.dist.world_size} rank(s), {s.device.type}) on reward "
             f"`{g.reward}`, lr {cfg.train.lr:g}, kl_coef {g.kl_coef:g}; {result['seconds']:.0f} s in all, "
             f"{result['skipped_updates']} update(s) skipped for a non-finite gradient.")
    if before and after:
        gain = after["reward"] - before["reward"]
        verdict = "improved" if gain > 0 else "did not improve"
        rep.text(f"**On {after['clips']} held-out clips x {after['samples']} samples (top-k {g.eval_top_k}), the "
                 f"rewarded metric {verdict}: validation reward {before['reward']:.4f} -> {after['reward']:.4f} "
                 f"({gain:+.4f}).**")
        paired = paired_change(before.get("clip_rewards"), after.get("clip_rewards"))
        if paired:
            rep.text(f"Paired over the clips (the same clips and random numbers before and after): reward change "
                     f"{paired['mean']:+.4f} ± {paired['sem']:.4f} (mean ± standard error, {paired['z']:+.1f} standard "
                     f"errors); higher on {paired['improved']} of {paired['clips']} clips.")
        rep.table(_comparison(before, after), ["metric", "pre-trained", "after GRPO", "change", "better",
                                               "copy last frame"])
    else:
        rep.text("No step-0 evaluation is on record (the run was resumed from a checkpoint written before it).")
    rep.image(plot_curves(rows, train_keys, out / "curves_train.png", title="training (per RL step)",
                          kinds={k: "train" for k in train_keys}), "training curves")
    rep.image(plot_curves(rows, eval_keys, out / "curves_eval.png", title="validation (held-out clips)",
                          kinds={k: "eval" for k in eval_keys}), "validation curves")
    if "after" in s.samples:
        v = s.val
        n = min(8, len(v["targets"]))
        truth = v["targets"][:n]
        multi = truth.dim() == 5  # multi-step: the last of the S predicted frames
        size = tuple(truth.shape[-2:])
        cols = {"last context frame": last_context_frame(s.tokenizer, v["context"][:n].to(s.device), size).cpu(),
                "ground truth": (truth[:, -1] if multi else truth).cpu()}
        if "before" in s.samples:
            cols["pre-trained"] = s.samples["before"][:n]
        cols["after GRPO"] = s.samples["after"][:n]
        rep.image(frame_grid(cols, out / "samples.png", max_rows=n, diff=("ground truth", "after GRPO")),
                  "held-out samples" + (f" (the last of {truth.shape[1]} predicted frames)" if multi else ""))
    rep.text("Metrics of every step: `metrics.jsonl` (kind `train`: per RL step; kind `eval`: validation).")
    return rep.write(out / "report.md")


def comparison_table(before: dict, after: dict) -> str:
    """The before/after table as markdown (also printed by the CLI)."""
    return markdown_table(_comparison(before, after), ["metric", "pre-trained", "after GRPO", "change", "better",
                                                      "copy last frame"])
