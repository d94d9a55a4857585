"""``report.md`` of the language world-model runs: the held-out table of an SFT run, SFT vs RLVR after GRPO.

The rows are the evaluation of ``text_eval.evaluate`` (greedy answers on the same held-out transitions):
exact-match accuracy overall, on transitions that change the state and on those that do not, the mean
reward of each mode, and the truncation rate. The GRPO report adds the change and a paired comparison
over the transitions (the same transitions before and after, so the change is the model's).
"""

from __future__ import annotations

from pathlib import Path

from rlvr_world.eval.report import Report, plot_curves

from .grpo_report import paired_change
from .logging import read_metrics

__all__ = ["ROWS", "comparison_rows", "write_grpo_report", "write_sft_report"]

ROWS = [("exact", "exact match"), ("exact_changed", "exact match, state changed"),
        ("exact_unchanged", "exact match, state unchanged"), ("reward_binary", "reward: binary"),
        ("reward_task_specific", "reward: task-specific (max 1.3)"), ("reward_f1", "reward: F1 of page changes"),
        ("truncated", "truncated answers (lower is better)")]


def _rows(ev: dict) -> list[dict]:
    return [{"metric": label, "value": ev[key]} for key, label in ROWS if key in ev]


def write_sft_report(path: Path, cfg, ev: dict, step: int) -> Path:
    d = cfg.data
    rep = Report(f"SFT report: {d.domain} world model")
    rep.text(f"`{cfg.model.init_from or cfg.model.name}` fine-tuned for {step} steps of {cfg.train.batch_size} "
             f"transitions from `{d.root}` (answer-only loss"
             + (f", LoRA rank {cfg.model.lora_rank}" if cfg.model.lora_rank else "") + ").")
    rep.text(f"Greedy answers on {ev.get('examples')} `{d.eval_split}` transitions "
             f"({100 * ev.get('changed_share', float('nan')):.0f}% of them change the state); held-out answer loss "
             f"{ev.get('loss', float('nan')):.4f}.")
    rep.table(_rows(ev), ["metric", "value"])
    rows = read_metrics(path.parent)
    if rows:
        rep.image(plot_curves(rows, ["loss", "token_acc"], path.parent / "curves_train.png", title="training",
                              kinds={"loss": "train", "token_acc": "train"}), "training curves")
    return rep.write(path)


def comparison_rows(before: dict, after: dict) -> list[dict]:
    out = []
    for key, label in ROWS:
        if key in after and key in before:
            out.append({"metric": label, "SFT": before[key], "RLVR (GRPO)": after[key],
                        "change": after[key] - before[key]})
    return out


def write_grpo_report(path: Path, cfg, before: dict, after: dict, step: int, seconds: float) -> Path:
    d, g = cfg.data, cfg.grpo
    rep = Report(f"GRPO report: {d.domain} world model, SFT vs RLVR")
    rep.text(f"`{cfg.model.init_from}` post-trained for {step} steps of {g.prompts_per_step} prompts x "
             f"{g.group_size} samples, reward `{g.reward}`, lr {cfg.train.lr:g}, kl_coef {g.kl_coef:g}; "
             f"{seconds:.0f} s.")
    if before and after:
        rep.text(f"Greedy answers on the same {after.get('examples')} `{d.eval_split}` transitions before (SFT) and "
                 f"after GRPO:")
        rep.table(comparison_rows(before, after), ["metric", "SFT", "RLVR (GRPO)", "change"])
        for key, what in (("per_example_exact", "exact match"), ("per_example_reward", "reward")):
            p = paired_change(before.get(key), after.get(key))
            if p:
                rep.text(f"Paired over the transitions, {what}: {p['mean']:+.4f} ± {p['sem']:.4f} (mean ± s.e.); "
                         f"better on {p['improved']} of {p['clips']}.")
    else:
        rep.text("No step-0 (SFT) evaluation is on record (the run was resumed from a checkpoint written before it).")
    rows = read_metrics(path.parent)
    keys = [k for k in ("reward_mean", "truncated_frac", "kl_mean", "clip_frac_low", "clip_frac_high")
            if any(k in r for r in rows)]
    if keys:
        rep.image(plot_curves(rows, keys, path.parent / "curves_train.png", title="training (per RL step)",
                              kinds={k: "train" for k in keys}), "training curves")
    return rep.write(path)
