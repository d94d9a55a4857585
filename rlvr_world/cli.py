"""``rlvr-train``: parse the command line → load and check the config → run the recipe. Nothing else.

Every recipe is a subcommand taking the same config options (``rlvr_world.config``)::

    rlvr-train collect --config rlvr_world/configs/collect_sim64.yaml data.workers=2
    rlvr-train collect --preset collect-smoke --print-config
    rlvr-train tokenizer --config rlvr_world/configs/tokenizer_sim64.yaml
    rlvr-train pretrain --config rlvr_world/configs/pretrain_sim64.yaml tokenizer.checkpoint=runs/tokenizer_sim64/tokenizer

Without a subcommand, ``rlvr-train`` runs the quick start (collect -> tokenizer -> pretrain -> grpo on built-in
simulator data, under ``runs/quickstart/``; ``rlvr_world.train.quickstart``) and ``rlvr-train --smoke`` the
same at tiny size under ``runs/smoke/``. Running it again continues where it stopped.

``--preset NAME`` starts from a named preset instead of the recipe's defaults (a recipe's own preset may be
named without its prefix: ``rlvr-train grpo --preset smoke`` is ``grpo-smoke``), ``--config PATH`` sets
values from a YAML file, positional ``key=value`` overrides come last, and ``--print-config`` prints the
resolved YAML and exits. A config error is reported on stderr with exit status 2 before any work starts.
Recipes that are designed but not built yet are listed and exit with status 2 (they do not pretend).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import config as C

__all__ = ["AVAILABLE", "main"]

NOT_AVAILABLE = "not available yet in this version"


def _run_collect(cfg: C.CollectRun) -> int:
    """Collect Meta-World episodes into ``data.root`` (with its meta.json of action ranges)."""
    from .data import sim

    d = cfg.data
    result = sim.collect(
        d.root,
        tasks=list(d.tasks),
        episodes_per_task=d.episodes_per_task,
        image_size=d.image_size,
        max_steps=d.max_steps,
        frame_skip=d.frame_skip,
        split_fractions=list(d.split_fractions),
        seed=d.seed,
        workers=d.workers,
        camera=d.camera,
        grades=d.grades,
        progress=cfg.progress,
    )
    root = Path(d.root)  # sim.collect has written meta.json (the train split's action ranges)
    C.to_yaml(cfg, root / "collect_config.yaml")
    print(f"collected {result.get('collected', 0)} episodes (skipped {result.get('skipped', 0)} present) "
          f"into {root}")
    for task, grades in sorted((result.get("success_by_grade") or {}).items()):
        cells = ", ".join(f"{g} {s}/{n}" for g, (s, n) in grades.items())
        print(f"  {task}: success by grade: {cells}")
    return 0


def _run_tokenizer(cfg: C.TokenizerRun) -> int:
    """Train the FSQ frame or compressive tokenizer; the trained model lands in ``train.out_dir``/tokenizer."""
    from .train import tokenizer

    try:
        result = tokenizer.run(cfg)
    except (FileNotFoundError, ValueError) as e:  # missing data / LPIPS weights, mismatched checkpoint
        print(f"rlvr-train tokenizer: error: {e}", file=sys.stderr)
        return 1
    ev = result["eval"]
    if "context_tokens_per_frame" in ev:  # compressive: unprefixed metrics are the future frames'
        tokens = f"{ev['context_tokens_per_frame']} tokens per context frame, {ev['tokens_per_frame']} per future frame"
        what = "val (future frames)"
    else:
        tokens, what = f"{ev['tokens_per_frame']} tokens/frame", "val"
    print(f"trained {result['step']} steps in {result['seconds']:.0f} s; {what} psnr {ev['psnr']:.2f} ssim "
          f"{ev['ssim']:.4f} mae {ev['mae']:.4f}, codebook usage {ev['codebook_usage']:.3f}, "
          f"{tokens}; tokenizer saved to {result['tokenizer_dir']}")
    return 0


def _run_pretrain(cfg: C.PretrainRun) -> int:
    """Pre-train the single-step world model; the trained model lands in ``train.out_dir``/model (HF layout)."""
    from .train import pretrain

    try:
        result = pretrain.run(cfg)
    except (FileNotFoundError, ValueError) as e:  # missing data / tokenizer, mismatched checkpoint or sizes
        print(f"rlvr-train pretrain: error: {e}", file=sys.stderr)
        return 1
    ev = result["eval"]
    lp = {k: f" lpips {ev[f'{k}_lpips']:.4f}" if f"{k}_lpips" in ev else "" for k in ("pred", "copy")}
    what = f"{ev['future_frames']} predicted frames" if ev.get("future_frames", 1) > 1 else "next frame"
    print(f"trained {result['step']} steps in {result['seconds']:.0f} s; val loss {ev['loss']:.4f} token acc "
          f"{ev['token_acc']:.3f}; {what} psnr {ev['pred_psnr']:.2f} ssim {ev['pred_ssim']:.4f} mae "
          f"{ev['pred_mae']:.4f}{lp['pred']} (copy baseline psnr {ev['copy_psnr']:.2f} ssim {ev['copy_ssim']:.4f} "
          f"mae {ev['copy_mae']:.4f}{lp['copy']}); model saved to {result['model_dir']}")
    return 0


def _run_sft(cfg) -> int:
    """Supervised fine-tuning of a language world model; the model + tokenizer land in ``train.out_dir``/model."""
    from .train import sft

    try:
        result = sft.run(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # missing data / Java / browser, bad lengths
        print(f"rlvr-train sft: error: {e}", file=sys.stderr)
        return 1
    print(f"trained {result['step']} steps in {result['seconds']:.0f} s; "
          f"{sft.summary_line(result['step'], result['eval'], cfg.data.eval_split)}; model saved to "
          f"{result['model_dir']}; report: {result['report']}")
    return 0


def _run_text_grpo(cfg) -> int:
    from .eval.report import markdown_table
    from .train import text_grpo
    from .train.text_report import comparison_rows

    try:
        result = text_grpo.run(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"rlvr-train grpo: error: {e}", file=sys.stderr)
        return 1
    print(f"trained {result['step']} GRPO steps in {result['seconds']:.0f} s; model saved to {result['model_dir']}; "
          f"report: {result['report']}")
    if result["before"] and result["after"]:
        print(markdown_table(comparison_rows(result["before"], result["after"]), ["metric", "SFT", "RLVR (GRPO)",
                                                                                 "change"]))
    return 0


def _run_mpc(cfg) -> int:
    """The MPC web agent with each world model (and none, and the true next page); report in ``mpc.out_dir``."""
    from .eval import mpc
    from .eval.report import markdown_table

    try:
        results = mpc.run(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # missing model / browser, unknown task
        print(f"rlvr-train mpc: error: {e}", file=sys.stderr)
        return 1
    rows, columns = mpc.report_rows(results)
    print(markdown_table(rows, columns, floats="{:.3f}"))
    print(f"{len(results['tasks'])} tasks x {len(results['seeds'])} seeds in {results['seconds']:.0f} s; report: "
          f"{cfg.mpc.out_dir}/report.md")
    return 0


def _run_grpo(cfg: C.GRPORun) -> int:
    """GRPO post-training of a pre-trained world model; the model lands in ``train.out_dir``/model, with report.md."""
    if getattr(cfg, "kind", "video") == "text":
        return _run_text_grpo(cfg)
    from .train import grpo
    from .train.grpo_report import comparison_table, paired_change

    try:
        result = grpo.run(cfg)
    except (FileNotFoundError, ValueError) as e:  # missing data / model / tokenizer, mismatched checkpoint or layout
        print(f"rlvr-train grpo: error: {e}", file=sys.stderr)
        return 1
    if "report" not in result:  # a rank other than 0 of a distributed run
        return 0
    print(f"trained {result['step']} GRPO steps in {result['seconds']:.0f} s; model saved to {result['model_dir']}; "
          f"report: {result['report']}")
    before, after = result["before"], result["after"]
    if before and after:
        print(comparison_table(before, after))
        paired = paired_change(before.get("clip_rewards"), after.get("clip_rewards"))
        if paired:
            print(f"validation reward change, paired over {paired['clips']} held-out clips: {paired['mean']:+.4f} ± "
                  f"{paired['sem']:.4f} (mean ± s.e., {paired['z']:+.1f} s.e.), higher on {paired['improved']} clips")
    return 0


# recipe name -> runner; recipes in config.RECIPES but not here are listed as not available yet
AVAILABLE: dict[str, Callable[[C.RunConfig], int]] = {"collect": _run_collect, "tokenizer": _run_tokenizer,
                                                      "pretrain": _run_pretrain, "grpo": _run_grpo,
                                                      "sft": _run_sft, "mpc": _run_mpc}


def _build_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<10} {cls.summary}" + ("" if name in AVAILABLE else f" ({NOT_AVAILABLE})")
             for name, cls in C.RECIPES.items()]
    parser = argparse.ArgumentParser(
        prog="rlvr-train",
        description="Train world models by reinforcement learning from verifiable rewards (RLVR-World).\n\n"
                    "Without a recipe: the quick start (collect -> tokenizer -> pretrain -> grpo on built-in "
                    "Meta-World data,\nunder runs/quickstart/, ~15 min on 2 CPU cores; --smoke: the same at tiny "
                    "size under runs/smoke/).\nRunning it again continues where it stopped.",
        epilog="recipes:\n" + "\n".join(lines) + "\n\npresets: " + ", ".join(sorted(C.PRESETS))
        + "\nRun `rlvr-train RECIPE --help` for a recipe's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true",
                        help="without a recipe: run the quick start at tiny size (a few minutes), under runs/smoke/")
    # no help= per sub-parser: the epilog lists the recipes, one line each
    sub = parser.add_subparsers(dest="recipe", metavar="RECIPE", help="one of: " + ", ".join(C.RECIPES))
    for name, cls in C.RECIPES.items():
        presets = C.presets_for(name)
        p = sub.add_parser(
            name,
            description=cls.summary + ("" if name in AVAILABLE else f" ({NOT_AVAILABLE})"),
            epilog="overrides are dotted key=value pairs, e.g. data.image_size=64 data.tasks=[drawer-open]"
                   + ("\npresets: " + ", ".join(presets) if presets else ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", metavar="PATH", help="YAML file setting config values")
        p.add_argument("--preset", metavar="NAME", help="start from a named preset (listed below)" if presets
                       else "start from a named preset (this recipe has none)")
        p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rlvr-train``; returns the exit status (0 ok, 2 usage or config error)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.recipe is None:
        from .train import quickstart

        return quickstart.run("smoke" if args.smoke else "quickstart")
    if args.smoke:
        print(f"rlvr-train: --smoke goes without a recipe (it runs the quick start), got recipe {args.recipe!r}; "
              f"use `rlvr-train {args.recipe} --preset smoke` for the recipe's smoke preset", file=sys.stderr)
        return 2
    if args.recipe not in AVAILABLE:
        print(f"rlvr-train: recipe {args.recipe!r} is {NOT_AVAILABLE}; available: {', '.join(AVAILABLE)}",
              file=sys.stderr)
        return 2
    try:
        cfg = C.load_config(args.recipe, args.config, args.overrides, preset=args.preset)
    except ValueError as e:
        print(f"rlvr-train {args.recipe}: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(C.to_yaml(cfg))
        return 0
    try:
        return AVAILABLE[args.recipe](cfg)
    except KeyboardInterrupt as e:  # train.loop.Interrupted: the last finished step is checkpointed
        where = f" after step {e.step}" if hasattr(e, "step") else ""
        print(f"rlvr-train {args.recipe}: interrupted{where}; continue with train.resume=true", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
