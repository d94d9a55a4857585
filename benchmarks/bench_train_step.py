"""Benchmark of one full GRPO step (``rlvr-train grpo``) at the paper's RT-1 single-step shape, timed per stage.

What it decides:

* **The step is the recipe's**: the stage functions of ``rlvr_world.train.grpo`` are called as they are
  (``rollout`` -> ``decode`` -> ``score`` (reported as ``reward``) -> ``advantages`` -> ``reference_logprobs``
  (``reference``) -> ``update``) on a ``grpo.State`` built here directly (no data set, checkpoint or
  pre-training run is read): nothing of the math is re-implemented. Not timed: the recipe's ``prompts``
  stage (data loading; here the batch is synthetic and already on the device), the sampler-vs-trainer
  log-prob check (``grpo.logprob_check_every``, one extra forward every 10 steps), the LR scheduler step,
  logging, evaluation and checkpoints.
* **Shapes** (default, the paper's RT-1 single-step setting): policy
  ``Transformer(ModelArgs.from_name("vwm-s", vocab_size=4633))`` (LLaMA 768 x 12, 12 heads, MLP 3,072,
  random init, fp32 parameters, bf16 autocast where ``train.schedule.autocast_dtype("auto", device)``
  gives it); frame tokenizer ``FrameTokenizer.from_name("rt1")`` (random init, fp32 as the recipe runs it;
  256 x 320 frames -> 16 x 20 = 320 tokens, 4,375 FSQ codes); layout ``SingleStepLayout(tokens_per_frame=320,
  context_frames=4, action_dims=13, codebook_size=4375, action_bins=256, eos=True)``: prompt 1,333 tokens,
  320 sampled tokens per rollout (the response's EOS is not sampled, as in the recipe). Reward
  ``neg_mae_lpips`` = -(MAE + LPIPS-VGG) against random uint8 true frames [P, 3, 256, 320]; LPIPS
  ``LPIPS(net="vgg")`` with the ImageNet weights when this machine has them, else ``random_backbone=True``
  (and, when the ``lpips`` v0.1 heads are missing too, seeded random positive heads); the ``lpips`` column
  says which (``imagenet`` / ``random-backbone`` / ``random-backbone+heads``); the cost is the same.
  ``grpo.kl_coef`` 1e-3, so the frozen reference model (``grpo._frozen_copy``: bf16 on a GPU, fp32 on a
  CPU) runs. GRPO config: ``C.load_config("grpo", overrides=...)`` with group size G 16 (``--group-size``),
  P prompts per step (``--prompts``; default 128 on CUDA = 2,048 rollouts, 2 on a CPU), mini-batches of
  gcd(P, 32) prompts (32 when P is a multiple of 32, the paper's; whole groups, one optimizer step each),
  micro-batches of ``--micro-batch`` sequences (default 64, the recipe's), one PPO epoch, AdamW lr 5e-5
  (the recipe's betas / weight decay / grad clip), single process (``distributed.init``), the policy wrapped
  in ``distributed.HiddenStates``.
  ``--tiny`` (CPU regression and the test): ``vwm-tiny`` (128 x 2), tokenizer ``tiny`` on 32 x 32 frames
  (8 x 8 = 64 tokens), same codebook, action dims and vocab: prompt 4 x (64 + 13) + 1 = 309, 64 sampled
  tokens; G 4 and P 2 unless given.
* **Inputs**: random frame codes [P, 5, F] and action bins [P, 4, 13] through ``layout.build_prompt``; the
  last context frame's codes (the recipe's stand-in for invalid sampled tokens); random uint8 target frames.
  Each timed step gets a fresh ``grpo.Batch`` on the same prompts; the update changes the weights, so the
  steps are successive RL steps (same prompts and sampling keys).
* **CUDA out-of-memory**: when a step at P prompts runs out of memory, P is halved and the warm-up and
  timing start over at the new P (never silently: ``P_requested``, ``P`` and ``oom_halvings`` columns, a
  line on stderr and in the summary).
* **Timing**: ``--warmup`` untimed steps (default 1), then ``--reps`` timed steps (default 3 on CUDA, 2 on a
  CPU); each stage is bracketed by ``_harness.sync`` (``torch.cuda.synchronize``) and ``time.perf_counter``.
  Per stage: median and p20 / p80 seconds over the timed steps; ``step`` = the sum of the stages of each
  step (median, p20, p80 of those sums); ``share`` = a stage's median / the step's median.
  ``mem_mib``: CUDA only, the peak of ``torch.cuda.max_memory_allocated`` during the stage (absolute:
  weights, AdamW state, reference model and tokenizer included), the step row the peak over the step.
* **Rates**: rollout ``tok_per_s`` = P * G * F sampled tokens / rollout median. Update model FLOPs (forward
  + backward; ``bench_video_stack.transformer_flops``, PaLM appendix B), per PPO epoch::

      S = Lp + F                    the sequence; the update runs the policy on S - 1 = 1,652 positions
      T = P * G * (S - 1)           positions per update
      flops = 6 * N * T             N = non-embedding parameters (blocks + final norm)
            + 6 * V * H * P * G * F LM head on the F response positions only (the loss never forms the
                                    prompt's logits)
            + 12 * L * (n_heads * head_dim) * (S - 1) * T / 2   causal attention

  ``tflops`` = flops / update median; ``mfu`` = tflops / the harness's working peak for the compute dtype,
  DESIGN §7's ~800 TFLOP/s bf16 dense on an H100 / H200 (not the 989 TFLOP/s datasheet figure); blank
  (printed n/a) on a CPU or another GPU. The ``reference`` row gets the forward third of the same count
  (``tflops`` / ``mfu`` of the frozen model's forward). vwm-s, P 128, G 16: T = 3.38 M positions,
  ~2.6 PFLOP per update (~3.3 s at 800 TFLOP/s).
* **Target** (DESIGN): <= 15 s per 2,048-rollout step on one H100 (reference implementation: ~63 s on
  4 x A100-40G); the step row's ``target_s`` is 15 when P * G = 2,048 and the summary says whether the
  median meets it.

Rows (one per stage and one ``step`` row) are appended to ``benchmarks/results/train_step_<device>.csv``,
tagged with device, torch, triton, git SHA and date. Nothing here touches CUDA unless ``--device cuda``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import _harness
import torch
from bench_video_stack import transformer_flops

from rlvr_world import config as C
from rlvr_world.data.video_layout import SingleStepLayout
from rlvr_world.models.frame_tokenizer import FrameTokenizer
from rlvr_world.models.transformer import ModelArgs, Transformer
from rlvr_world.train import distributed, grpo
from rlvr_world.train.logging import NullLogger
from rlvr_world.train.schedule import autocast_dtype, lr_factor

STAGES = (("rollout", grpo.rollout), ("decode", grpo.decode), ("reward", grpo.score),
          ("advantages", grpo.advantages), ("reference", grpo.reference_logprobs), ("update", grpo.update))
TARGET_S, TARGET_ROLLOUTS = 15.0, 2048
TARGET_LINE = "target <= 15 s per 2,048-rollout step on one H100 (reference: ~63 s on 4xA100-40G)"
FULL = {"model": "vwm-s", "tokenizer": "rt1", "frame": (256, 320), "group": 16, "prompts_cuda": 128, "prompts_cpu": 2}
TINY = {"model": "vwm-tiny", "tokenizer": "tiny", "frame": (32, 32), "group": 4, "prompts_cuda": 2, "prompts_cpu": 2}
CONTEXT_FRAMES, ACTION_DIMS, CODEBOOK, ACTION_BINS = 4, 13, 4375, 256
LR = 5e-5
COLUMNS = ["stage", "P", "G", "median_s", "p20_s", "p80_s", "share", "tok_per_s", "tflops", "mfu", "mem_mib"]
CSV_COLUMNS = ["set", "model", "tokenizer", "frame", "P_requested", "P", "G", "rollouts", "Lp", "F", "micro_batch",
               "mini_batch_prompts", "stage", "median_s", "p20_s", "p80_s", "share", "tok_per_s", "update_tflop",
               "tflops", "mfu", "mem_mib", "params_m", "lpips", "autocast", "ref_dtype", "reward", "oom_halvings",
               "warmup", "reps", "target_s", "status"]


# ---- building ---------------------------------------------------------------------------------------------
def build_lpips(device):
    """(LPIPS-VGG on ``device``, which weights): ImageNet when present, else a seeded random backbone."""
    from rlvr_world.models.lpips import LPIPS

    try:
        return LPIPS(net="vgg").to(device), "imagenet"
    except FileNotFoundError:
        pass
    try:
        return LPIPS(net="vgg", random_backbone=True).to(device), "random-backbone"
    except FileNotFoundError:  # the v0.1 heads are missing too: seeded random positive heads, same cost
        gen = torch.Generator().manual_seed(0)
        heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) / c
                 for k, c in enumerate((64, 128, 256, 512, 512))}
        return LPIPS(net="vgg", random_backbone=True, lin_state_dict=heads).to(device), "random-backbone+heads"


def grpo_config(P: int, G: int, micro_batch: int, seed: int) -> C.GRPORun:
    return C.load_config("grpo", overrides=[
        f"grpo.group_size={G}", f"grpo.prompts_per_step={P}", f"grpo.mini_batch_prompts={math.gcd(P, 32)}",
        f"grpo.micro_batch_size={micro_batch}", "grpo.kl_coef=0.001", "grpo.reward=neg_mae_lpips",
        f"train.lr={LR}", f"train.seed={seed}", "progress=false"])


def build_state(args, device) -> tuple[grpo.State, dict]:
    """A ``grpo.State`` with the fields the stages read (random-init policy, reference, tokenizer, LPIPS)."""
    spec = TINY if args.tiny else FULL
    H, W = spec["frame"]
    dist = distributed.init(device)
    device = dist.device  # cuda -> cuda:<local rank>
    torch.manual_seed(args.seed)
    tokenizer = FrameTokenizer.from_name(args.tokenizer).to(device).float().eval().requires_grad_(False)
    grid = tokenizer.token_grid(H, W)
    layout = SingleStepLayout(tokens_per_frame=grid[0] * grid[1], context_frames=CONTEXT_FRAMES,
                              action_dims=ACTION_DIMS, codebook_size=tokenizer.codebook_size, action_bins=ACTION_BINS,
                              eos=True)
    model_args = ModelArgs.from_name(args.model, vocab_size=layout.vocab_size)
    if model_args.max_seq_len < layout.prompt_len + layout.response_len:
        raise ValueError(f"--model {args.model}: max_seq_len {model_args.max_seq_len} < the layout's "
                         f"{layout.prompt_len + layout.response_len} tokens")
    torch.manual_seed(args.seed)
    model = Transformer(model_args).to(device).float().train()
    cfg = grpo_config(args.prompts, args.group_size, args.micro_batch, args.seed)
    ref = grpo._frozen_copy(model, cfg.grpo.ref_precision, device)
    lpips, lpips_kind = build_lpips(device)
    tc = cfg.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc))
    state = grpo.State(cfg=cfg, out_dir=Path("/nonexistent/bench_train_step"), dist=dist,
                       autocast=autocast_dtype(tc.precision, device), tokenizer=tokenizer, layout=layout, grid=grid,
                       model=model, policy=distributed.HiddenStates(model), ref=ref, optimizer=optimizer,
                       scheduler=scheduler, train_clips=None, val={}, lpips=lpips, logger=NullLogger())
    n_body = sum(p.numel() for p in model.layers.parameters()) + sum(p.numel() for p in model.norm.parameters())
    info = {"frame": (H, W), "lpips": lpips_kind, "n_body": n_body, "model_args": model_args,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "ref_dtype": str(next(ref.parameters()).dtype).removeprefix("torch.")}
    return state, info


def make_inputs(layout: SingleStepLayout, P: int, frame: tuple[int, int], device, seed: int) -> dict:
    """Synthetic prompts (random frame codes and action bins through the layout), last-frame codes, targets."""
    gen = torch.Generator().manual_seed(seed + 1)
    n, F, A = layout.context_frames, layout.tokens_per_frame, layout.action_dims
    frames = torch.randint(0, layout.codebook_size, (P, n + 1, F), generator=gen)        # [P, n + 1, F]
    acts = torch.randint(0, layout.action_bins, (P, n, A), generator=gen)                # [P, n, A]
    prompts = layout.build_prompt(frames[:, :n], acts)                                   # [P, Lp]
    targets = torch.randint(0, 256, (P, 3, *frame), generator=gen, dtype=torch.uint8)   # [P, 3, H, W]
    return {"prompt_ids": torch.arange(P), "prompts": prompts.to(device), "last_frame": frames[:, n - 1].to(device),
            "targets": targets.to(device)}


# ---- running ------------------------------------------------------------------------------------------------
def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err) or "can't allocate memory" in str(err)


def one_step(state: grpo.State, inputs: dict, device) -> tuple[dict[str, float], dict[str, int | None], dict]:
    """One GRPO step through the recipe's stages: ({stage: seconds}, {stage: CUDA peak bytes}, update metrics)."""
    b = grpo.Batch(inputs["prompt_ids"], inputs["prompts"], inputs["last_frame"], inputs["targets"])
    times, mem, out = {}, {}, {}
    cuda = device.type == "cuda"
    for name, fn in STAGES:
        _harness.sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        result = fn(state, b)
        _harness.sync(device)
        times[name] = time.perf_counter() - t0
        mem[name] = torch.cuda.max_memory_allocated(device) if cuda else None
        if name == "update":
            out = result
        else:
            b = result
    return times, mem, out


def run_steps(state: grpo.State, info: dict, args, device) -> tuple[list[dict], list[dict], dict, int, int]:
    """Warm-up and timed steps at P = args.prompts, halving P after a CUDA out-of-memory error.

    Returns (per-step times, per-step peak memory, last update metrics, P used, halvings)."""
    P, halvings = args.prompts, 0
    while True:
        try:
            inputs = make_inputs(state.layout, P, info["frame"], device, args.seed)
            for _ in range(args.warmup):
                one_step(state, inputs, device)
            times, mems, out = [], [], {}
            for _ in range(args.reps):
                t, m, out = one_step(state, inputs, device)
                times.append(t)
                mems.append(m)
                print(f"[P={P} G={args.group_size}] step {sum(t.values()):.3f} s: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in t.items()), file=sys.stderr)
            return times, mems, out, P, halvings
        except Exception as err:  # only out-of-memory is retried
            if not _is_oom(err) or P == 1:
                raise
        # outside the except block, so that the traceback's frames (and their tensors) are released first
        inputs = None
        state.optimizer.zero_grad(set_to_none=True)
        _harness.free_memory(device)
        print(f"out of memory at P={P} ({P * args.group_size} rollouts); halving to P={P // 2}", file=sys.stderr)
        P, halvings = P // 2, halvings + 1
        state.cfg = grpo_config(P, args.group_size, args.micro_batch, args.seed)


def make_rows(times: list[dict], mems: list[dict], info: dict, state: grpo.State, P: int, halvings: int, args,
              device) -> list[dict]:
    layout, G = state.layout, args.group_size
    F, Lp = layout.tokens_per_frame, layout.prompt_len
    step = _harness.summarize([sum(t.values()) for t in times])
    cuda = device.type == "cuda"
    peak = _harness.peak_tflops(device, state.autocast or torch.float32)
    flops = transformer_flops(info["model_args"], info["n_body"], P * G, Lp + F, F) * state.cfg.grpo.ppo_epochs
    ref_flops = transformer_flops(info["model_args"], info["n_body"], P * G, Lp + F, F) / 3
    status = "ok" if not halvings else f"ok: P halved {halvings}x from {args.prompts} after CUDA OOM"
    base = {"set": "tiny" if args.tiny else "full", "model": args.model, "tokenizer": args.tokenizer,
            "frame": "x".join(map(str, info["frame"])), "P_requested": args.prompts, "P": P, "G": G, "rollouts": P * G,
            "Lp": Lp, "F": F, "micro_batch": args.micro_batch, "mini_batch_prompts": state.cfg.grpo.mini_batch_prompts,
            "params_m": info["params_m"], "lpips": info["lpips"],
            "autocast": str(state.autocast).removeprefix("torch.") if state.autocast else "fp32",
            "ref_dtype": info["ref_dtype"], "reward": state.cfg.grpo.reward, "oom_halvings": halvings,
            "warmup": args.warmup, "reps": args.reps, "status": status}
    rows = []
    for name, _ in STAGES:
        t = _harness.summarize([x[name] for x in times])
        row = {**base, "stage": name, "median_s": t.median_ms, "p20_s": t.p20_ms, "p80_s": t.p80_ms,
               "share": t.median_ms / step.median_ms,
               "mem_mib": max(m[name] for m in mems) / 2**20 if cuda else None}
        if name == "rollout":
            row["tok_per_s"] = P * G * F / t.median_ms
        if name in ("update", "reference"):
            f = flops if name == "update" else ref_flops
            p = peak if name == "update" else _harness.peak_tflops(device, next(state.ref.parameters()).dtype)
            if name == "update":
                row["update_tflop"] = f / 1e12
            row["tflops"] = f / t.median_ms / 1e12
            row["mfu"] = row["tflops"] / p if p else None
        rows.append(row)
    rows.append({**base, "stage": "step", "median_s": step.median_ms, "p20_s": step.p20_ms, "p80_s": step.p80_ms,
                 "share": 1.0, "mem_mib": max(max(m.values()) for m in mems) / 2**20 if cuda else None,
                 "target_s": TARGET_S if P * G == TARGET_ROLLOUTS else None})
    return rows


# ---- CLI ------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description="Time one full GRPO step (rlvr_world.train.grpo's stages: rollout, decode, reward, advantages, "
                    "reference log-probs, update) at the paper's RT-1 single-step shape: vwm-s (120 M), rt1 frame "
                    "tokenizer, 256x320 frames, prompt 1,333, 320 sampled tokens, G 16, P 128 (2,048 rollouts), "
                    "reward -(MAE + LPIPS-VGG), KL 1e-3 (bf16 reference on a GPU). Per stage median and p20/p80, "
                    "rollout tokens/s, update MFU, CUDA peak memory; CSV rows tagged with device, versions, git SHA.",
        epilog="Examples: OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --device cpu --tiny | "
               "python benchmarks/bench_train_step.py --device cuda  (P 128 x G 16; P halved on OOM)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu",
                   help="where to run (default: cuda if available, else cpu)")
    p.add_argument("--tiny", action="store_true",
                   help="small stand-in for CPU regression and tests: vwm-tiny, tokenizer 'tiny', 32x32 frames "
                        "(64 tokens), G 4")
    p.add_argument("--model", default=None, help="ModelArgs preset of the policy (default vwm-s; vwm-tiny with --tiny)")
    p.add_argument("--tokenizer", default=None, help="FrameTokenizer preset (default rt1; tiny with --tiny)")
    p.add_argument("--prompts", type=int, default=None,
                   help="prompts per step P (default 128 on cuda = 2,048 rollouts at G 16, 2 on cpu)")
    p.add_argument("--group-size", type=int, default=None, help="G samples per prompt (default 16; 4 with --tiny)")
    p.add_argument("--micro-batch", type=int, default=64,
                   help="sequences per forward/backward of the update and the reference pass (default 64, the recipe's)")
    p.add_argument("--reps", type=int, default=None, help="timed steps (default 3 on cuda, 2 on cpu)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1; 0 allowed)")
    p.add_argument("--seed", type=int, default=0, help="weights, inputs and sampling seed (default 0)")
    p.add_argument("--csv", "--out", dest="csv", type=Path, default=None,
                   help="CSV to append to (default benchmarks/results/train_step_<device>.csv)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    spec = TINY if args.tiny else FULL
    args.model = args.model or spec["model"]
    args.tokenizer = args.tokenizer or spec["tokenizer"]
    args.group_size = args.group_size or spec["group"]
    args.prompts = args.prompts or spec["prompts_cuda" if device.type == "cuda" else "prompts_cpu"]
    args.reps = args.reps if args.reps is not None else (3 if device.type == "cuda" else 2)
    for name in ("prompts", "micro_batch", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.group_size < 2:
        p.error("--group-size must be >= 2 (advantages are relative within a group)")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    args.csv = args.csv or Path(__file__).resolve().parent / "results" / f"train_step_{device.type}.csv"
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    tags = _harness.announce(device)
    state, info = build_state(args, device)
    device = state.device
    times, mems, out, P, halvings = run_steps(state, info, args, device)
    rows = make_rows(times, mems, info, state, P, halvings, args, device)
    _harness.write_rows(args.csv, [{c: r.get(c) for c in CSV_COLUMNS} for r in rows], device=device)
    layout = state.layout
    title = (f"GRPO step on {tags['device']} (torch {tags['torch']}, git {tags['git_sha']}): {args.model} "
             f"({info['params_m']:.1f} M), tokenizer {args.tokenizer}, {'x'.join(map(str, info['frame']))} frames, "
             f"Lp {layout.prompt_len}, F {layout.tokens_per_frame}, P {P} x G {args.group_size} = "
             f"{P * args.group_size} rollouts (P requested {args.prompts}"
             f"{f', halved {halvings}x after OOM' if halvings else ''}), micro-batch {args.micro_batch}, "
             f"mini-batch {state.cfg.grpo.mini_batch_prompts} prompts, LPIPS {info['lpips']}, "
             f"autocast {rows[0]['autocast']}, reference {info['ref_dtype']}; median of {args.reps} step(s) after "
             f"{args.warmup} warm-up; loss {out.get('loss', float('nan')):.4g}")
    shown = [{**r, "mfu": r.get("mfu") if device.type == "cuda" else ("n/a" if r["stage"] == "update" else None)}
             for r in rows]
    _harness.show_results(shown, COLUMNS, device, title, args.csv)
    step = rows[-1]["median_s"]
    if P * args.group_size == TARGET_ROLLOUTS and device.type == "cuda":
        verdict = "meets" if step <= TARGET_S else "misses"
        print(f"{TARGET_LINE}: this step {step:.2f} s {verdict} it")
    else:
        print(f"{TARGET_LINE}: not comparable here ({P * args.group_size} rollouts on {device.type})")
    return rows


if __name__ == "__main__":
    main()
