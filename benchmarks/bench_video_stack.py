"""Benchmark of the video world model stack: frame tokenizer encode / decode throughput and the
pre-training step's tokens/s and MFU.

What it decides:

* **Tokenizer** (``--cases tokenizer``): ``encode`` (uint8 frames [B, 3, H, W] -> tokens [B, h, w]) and
  ``decode`` (tokens -> fp32 frames) of two models (``--models``): ``frame`` =
  ``models.frame_tokenizer.FrameTokenizer`` (preset ``rt1``: 256x320 -> 16x20 = 320 tokens; ``sim-64`` in
  the ``cpu`` set: 64x64 -> 8x8), and ``released`` = ``models.released_tokenizer.ReleasedFrameTokenizer``
  (its default config, the released RT-1 ``CNNFSQModel256`` architecture, 256x320 -> 16x20; in the ``cpu``
  set a scaled-down config, ``RELEASED_CPU``, 64x64 -> 8x8). Weights are **random** (seeded; no
  checkpoint is read): throughput does not depend on the weight values. Frames are uniform random uint8.
  Each call runs under ``torch.inference_mode()``; the model and the frames are in ``--precision``
  (auto: bf16 on CUDA, fp32 on a CPU; the model is cast, no autocast; FSQ and the output stay fp32 as the
  models define) and ``channels_last`` (default on CUDA, off on a CPU). The timed calls include the
  models' own argument checks (``FrameTokenizer.decode`` checks the token range: one host sync).
  frames/s = B / median. TFLOP/s counts the FLOPs that ``torch.utils.flop_counter.FlopCounterMode``
  reports for the check's call (convolutions, matmuls and attention; norms and activations are not
  counted), so ``mfu`` is a lower bound of the tensor-core use. Per 256x320 frame: ``frame:rt1`` (54.4 M
  parameters) encode 170 GFLOP, decode 233 GFLOP; ``released:rt1`` (104.4 M) encode 272, decode 101.
* **Pre-training step** (``--cases pretrain``): one optimizer step of ``rlvr-train pretrain`` by calling
  ``train.pretrain.train_step`` itself (grad_accum 1) on a duck-typed state: ``target_loss`` (hidden states
  of ``input_ids[:, :-1]``, the LM head only on the target positions, mean CE), ``backward``,
  ``clip_grad_norm_`` (``train.grad_clip`` of ``PretrainRun``'s defaults), AdamW (its lr / betas /
  weight decay) and the LR scheduler, bf16 autocast where ``train.schedule.autocast_dtype`` gives it
  (``--precision``; auto = bf16 on a GPU with bf16, fp32 on a CPU), and the recipe's ``.item()`` syncs.
  Model: ``Transformer(ModelArgs.from_name(preset, vocab_size=layout.vocab_size))`` in fp32 parameters
  (``vwm-s`` in the ``gpu`` set, ``vwm-tiny`` in the ``cpu`` set), HF init. Sequences: the single-step
  layout (``data.video_layout.SingleStepLayout``) built from random frame codes and action bins; RT-1:
  4 context frames x (320 + 13) + BOS = 1,333 prompt tokens, 320 + EOS = 321 response tokens, S = 1,654;
  ``cpu`` set: 64 tokens per frame and 4 action dims (Meta-World's), S = 273 + 65 = 338.
  ``--compile`` compiles each transformer block (``block.compile()``, as torchtitan does; the embedding,
  final norm, LM head and loss stay eager), so the warm-up calls include the compilation.
  tokens/s = B * S / median (what the recipe logs as ``tokens_per_sec``).
* **Model FLOPs and MFU** (PaLM, appendix B; ``transformer_flops``), per step, forward + backward::

      T = B * (S - 1)                                        positions the model runs (input_ids[:, :-1])
      flops = 6 * N * T                                      dense: N = non-embedding parameters of the
                                                             blocks and the final norm (embedding and LM head
                                                             excluded)
            + 6 * V * H * M                                  LM head on the M = B * response_len target
                                                             positions only (the recipe never forms the
                                                             prompt's logits)
            + 12 * L * (n_heads * head_dim) * (S - 1) * T / 2   attention scores and values, halved for
                                                                the causal mask

  MFU = flops / median / peak, the peak being the harness's working limit for the compute dtype (H100 /
  H200: 800 TFLOP/s bf16, 60 TFLOP/s fp32; DESIGN §7); blank on a CPU or another GPU. Recomputation
  (activation checkpointing) is not credited. vwm-s at S 1,654: N = 113.3 M; per position the dense term is
  0.680 GFLOP, attention 0.091, the LM head 0.004 (averaged over the S - 1 positions): 0.775 GFLOP per
  sequence token, 20.5 TFLOP per step at B 16. Check: ``torch.utils.flop_counter.FlopCounterMode`` on the
  same step (meta tensors) counts exactly this with the attention term not halved (it counts SDPA as
  non-causal): ratio 1.000 for vwm-s and vwm-tiny.
* **Correctness gate** (before timing): tokenizer: encode gives int64 tokens [B, h, w] in
  [0, codebook_size), decode of them gives finite fp32 frames [B, 3, H, W] in [0, 1]; pre-training: the
  first step's loss is finite and within 1 nat of ln(V) (random init, std 0.02) and the grad norm is finite.
  A failing row is ``failed: why`` and is not timed.
* Timing: ``_harness.time_fn`` (CUDA events with ``torch.cuda.synchronize``; ``perf_counter`` on a CPU),
  median and p20 / p80 of ``--reps`` calls after ``--warmup`` untimed ones (the check's call counted among
  them); on a CPU a call slower than 2 s is timed 3 times with no further warm-up. ``mem_mib``: CUDA peak
  memory of one more call beyond what was allocated before it (``_harness.peak_extra_memory``). CUDA
  out-of-memory is caught per row (``oom``). cuDNN autotuning (``cudnn.benchmark``) is left off, as in the
  recipes. Rows are appended to ``benchmarks/results/video_stack_<device>.csv``.

Nothing here touches CUDA at import; CUDA is used only with ``--device cuda``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import _harness
import torch

from rlvr_world import config as C
from rlvr_world.data.video_layout import SingleStepLayout
from rlvr_world.models.frame_tokenizer import FrameTokenizer, FrameTokenizerArgs
from rlvr_world.models.released_tokenizer import ReleasedFrameConfig, ReleasedFrameTokenizer
from rlvr_world.models.transformer import ModelArgs, Transformer
from rlvr_world.train.pretrain import train_step
from rlvr_world.train.schedule import autocast_dtype, lr_factor

CASES = ("tokenizer", "pretrain")
MODELS = ("frame", "released")
PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
SLOW_CALL_S = 2.0
# the released frame tokenizer's architecture scaled down for CPU runs: 4 blocks (stride 8), 64x64 -> 8x8
RELEASED_CPU = {"block_out_channels": (32, 64, 64, 128), "down_block_types": ("DownEncoderBlock2D",) * 4,
                "up_block_types": ("UpDecoderBlock2D",) * 4, "layers_per_block": 1, "latent_channels": 16,
                "norm_num_groups": 8}
COLUMNS = ["set", "case", "model", "op", "B", "shape", "dtype", "cl", "compile", "median_ms", "p20_ms", "p80_ms",
           "frames_per_s", "tokens_per_s", "tflops", "mfu", "mem_mib", "status"]
CSV_COLUMNS = COLUMNS[:-1] + ["params_m", "gflop_per_call", "loss", "warmup", "reps", "status"]


@dataclass(frozen=True)
class ShapeSet:
    h: int  # frame height (pixels)
    w: int  # frame width
    frame_preset: str  # FrameTokenizerArgs preset
    released: dict  # ReleasedFrameConfig overrides ({} = the released RT-1 architecture)
    lm_preset: str  # ModelArgs preset
    action_dims: int
    context_frames: int
    tok_batch: tuple[int, ...]  # default tokenizer batch sizes
    lm_batch: tuple[int, ...]  # default pre-training batch sizes (sequences)


SHAPES = {
    "gpu": ShapeSet(256, 320, "rt1", {}, "vwm-s", 13, 4, (64, 256), (16, 64)),
    "cpu": ShapeSet(64, 64, "sim-64", RELEASED_CPU, "vwm-tiny", 4, 4, (16,), (4,)),
}


# ---- helpers ---------------------------------------------------------------------------------------------
def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def _first_call(fn, device):
    """One call (the gate's, also the first warm-up): (output, seconds)."""
    _harness.sync(device)
    start = time.perf_counter()
    out = fn()
    _harness.sync(device)
    return out, time.perf_counter() - start


def _time(fn, device, args, call_s, row, compiled: bool = False):
    """Time ``fn`` after its first call took ``call_s``; fill the timing and memory columns of ``row``."""
    # keeps CPU runs short; on a GPU (or after compiling) the first call is the slowest, so it does not count
    slow = device.type == "cpu" and not compiled and call_s > SLOW_CALL_S
    warmup = 0 if slow else max(args.warmup - 1, 0)
    reps = min(args.reps, 3) if slow else args.reps
    timing = _harness.time_fn(fn, warmup=warmup, reps=reps, device=device)
    mem = _harness.peak_extra_memory(fn, device)
    row.update(median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms,
               mem_mib=mem / 2**20 if mem is not None else None, warmup=1 + warmup, reps=reps, status="ok")
    return timing.median_ms * 1e-3


def _rates(row, flops: float | None, seconds: float, peak: float | None):
    if flops:
        row["gflop_per_call"] = flops / 1e9
        row["tflops"] = flops / seconds / 1e12
        row["mfu"] = row["tflops"] / peak if peak else None


# ---- tokenizer ----------------------------------------------------------------------------------------------
def build_tokenizer(model: str, s: ShapeSet, dtype: torch.dtype, channels_last: bool, device):
    """A random-init tokenizer (seeded by the caller) on ``device`` in ``dtype``, eval mode."""
    if model == "frame":
        tok = FrameTokenizer(FrameTokenizerArgs.from_name(s.frame_preset))
    else:
        tok = ReleasedFrameTokenizer(ReleasedFrameConfig(**s.released))
    tok = tok.to(device=device, dtype=dtype).eval()
    if channels_last:
        tok = tok.to(memory_format=torch.channels_last)
    return tok


def count_flops(fn) -> tuple[object, int]:
    """(fn(), the FLOPs FlopCounterMode counts for it)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops()


def check_tokenizer(tok, frames, tokens, recon) -> str | None:
    B, C, H, W = frames.shape
    h, w = tok.token_grid(H, W)
    fails = []
    if tokens.dtype != torch.int64 or tuple(tokens.shape) != (B, h, w):
        fails.append(f"tokens {tokens.dtype} {tuple(tokens.shape)} != int64 {(B, h, w)}")
    elif int(tokens.min()) < 0 or int(tokens.max()) >= tok.codebook_size:
        fails.append(f"tokens outside [0, {tok.codebook_size})")
    if recon.dtype != torch.float32 or tuple(recon.shape) != (B, C, H, W):
        fails.append(f"frames {recon.dtype} {tuple(recon.shape)} != float32 {(B, C, H, W)}")
    elif not bool(torch.isfinite(recon).all()) or float(recon.min()) < 0 or float(recon.max()) > 1:
        fails.append("frames not finite or outside [0, 1]")
    return "; ".join(fails) or None


def bench_tokenizer(set_name, s: ShapeSet, model: str, batches, device, args) -> list[dict]:
    """encode and decode rows of one tokenizer at each batch size."""
    config = s.frame_preset if model == "frame" else ("cpu" if s.released else "rt1")
    base = {"set": set_name, "case": "tokenizer", "model": f"{model}:{config}", "shape": f"{s.h}x{s.w}",
            "dtype": args.precision_name, "cl": args.channels_last, "compile": False}
    rows = []
    for B in batches:
        enc_row, dec_row = {**base, "op": "encode", "B": B}, {**base, "op": "decode", "B": B}
        rows += [enc_row, dec_row]
        try:
            tokenizer_case(s, model, B, device, args, enc_row, dec_row)
        except Exception as err:  # noqa: BLE001 - one case's failure must not end the run
            for r in (enc_row, dec_row):
                if r.get("status") in (None, "ok"):
                    r["status"] = _status(err)
        finally:
            _harness.free_memory(device)
        for r in (enc_row, dec_row):
            _progress(r)
    return rows


def tokenizer_case(s: ShapeSet, model: str, B: int, device, args, enc_row: dict, dec_row: dict) -> None:
    """Gate then time encode and decode of one tokenizer at batch B; fills the two rows in place."""
    dtype = PRECISIONS[args.precision_name]
    torch.manual_seed(args.seed)
    tok = build_tokenizer(model, s, dtype, args.channels_last, device)
    enc_row["params_m"] = dec_row["params_m"] = sum(p.numel() for p in tok.parameters()) / 1e6
    gen = torch.Generator(device=device).manual_seed(args.seed)
    frames = torch.randint(0, 256, (B, 3, s.h, s.w), generator=gen, device=device, dtype=torch.uint8)
    if args.channels_last:
        frames = frames.contiguous(memory_format=torch.channels_last)          # [B, 3, H, W] uint8

    def encode():
        with torch.inference_mode():
            return tok.encode(frames)                                          # [B, h, w] int64

    (tokens, enc_flops), enc_s = _first_call(lambda: count_flops(encode), device)

    def decode():
        with torch.inference_mode():
            return tok.decode(tokens)                                          # [B, 3, H, W] fp32

    (recon, dec_flops), dec_s = _first_call(lambda: count_flops(decode), device)
    failed = check_tokenizer(tok, frames, tokens, recon)
    del recon
    if failed:
        enc_row["status"] = dec_row["status"] = f"failed: {failed}"
        return
    peak = _harness.peak_tflops(device, dtype)
    for row, fn, call_s, flops in ((enc_row, encode, enc_s, enc_flops), (dec_row, decode, dec_s, dec_flops)):
        try:
            seconds = _time(fn, device, args, call_s, row)
            row["frames_per_s"] = B / seconds
            _rates(row, flops, seconds, peak)
        except Exception as err:  # noqa: BLE001 - the other op still runs
            row["status"] = _status(err)
        finally:
            _harness.free_memory(device)


# ---- pre-training step ---------------------------------------------------------------------------------------
def transformer_flops(model_args, n_body: int, batch: int, seq_len: int, targets_per_seq: int) -> int:
    """Model FLOPs of one pre-training step (forward + backward; see the module docstring).

    n_body: non-embedding parameters (blocks + final norm); seq_len: S, the layout's sequence length (the
    model runs S - 1 positions); targets_per_seq: positions whose logits are formed (labels != -100 after
    the shift = response_len)."""
    s = seq_len - 1
    t = batch * s
    dense = 6 * n_body * t
    head = 6 * model_args.vocab_size * model_args.dim * batch * targets_per_seq
    attn = 12 * model_args.n_layers * model_args.n_heads * model_args.head_dim * s * t // 2
    return dense + head + attn


def make_sequences(layout, batch: int, device, seed: int):
    """Random frame codes and action bins in the single-step layout: (input_ids [B, S], labels [B, S])."""
    gen = torch.Generator().manual_seed(seed)
    n, f, a = layout.context_frames, layout.tokens_per_frame, layout.action_dims
    frames = torch.randint(0, layout.codebook_size, (batch, n + 1, f), generator=gen)   # [B, n + 1, F]
    actions = torch.randint(0, layout.action_bins, (batch, n, a), generator=gen)        # [B, n, A]
    out = layout.build(frames, actions)
    return out.input_ids.to(device), out.labels.to(device)


def bench_pretrain(set_name, s: ShapeSet, batches, device, args) -> list[dict]:
    """One train_step row per batch size."""
    stride = FrameTokenizerArgs.from_name(s.frame_preset).stride
    layout = SingleStepLayout(tokens_per_frame=(s.h // stride) * (s.w // stride), context_frames=s.context_frames,
                              action_dims=s.action_dims)
    seq_len = layout.prompt_len + layout.response_len
    base = {"set": set_name, "case": "pretrain", "model": s.lm_preset, "op": "train_step",
            "shape": f"S={seq_len}", "cl": None, "compile": args.compile}
    rows = []
    for B in batches:
        row = {**base, "B": B}
        rows.append(row)
        try:
            pretrain_case(s, layout, B, device, args, row)
        except Exception as err:  # noqa: BLE001 - one row's failure must not end the run
            row["status"] = _status(err)
        finally:
            _harness.free_memory(device)
        _progress(row)
    return rows


def pretrain_case(s: ShapeSet, layout: SingleStepLayout, B: int, device, args, row: dict) -> None:
    """Gate then time train.pretrain.train_step at batch B (sequences); fills ``row`` in place."""
    seq_len = layout.prompt_len + layout.response_len
    tc = replace(C.PretrainRun().train, grad_accum=1, precision=args.precision)
    autocast = autocast_dtype(tc.precision, device)
    row["dtype"] = "bf16-autocast" if autocast == torch.bfloat16 else "fp32"
    model_args = ModelArgs.from_name(s.lm_preset, vocab_size=layout.vocab_size)
    if model_args.max_seq_len < seq_len:
        raise ValueError(f"{s.lm_preset} max_seq_len={model_args.max_seq_len} < S={seq_len}")
    torch.manual_seed(args.seed)
    model = Transformer(model_args).to(device).train()
    n_body = sum(p.numel() for p in model.layers.parameters()) + sum(p.numel() for p in model.norm.parameters())
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    if args.compile:
        for block in model.layers:
            block.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, tc))
    state = SimpleNamespace(cfg=SimpleNamespace(train=tc), model=model, device=device, autocast=autocast,
                            optimizer=optimizer, scheduler=scheduler)
    data = make_sequences(layout, B, device, args.seed)                         # ([B, S], [B, S])

    def step():
        return train_step(state, data)

    out, call_s = _first_call(step, device)
    row["loss"] = out["loss"]
    ln_v = math.log(layout.vocab_size)
    if not (math.isfinite(out["loss"]) and abs(out["loss"] - ln_v) < 1.0 and math.isfinite(out["grad_norm"])):
        row["status"] = f"failed: first loss {out['loss']:.4g} (ln V = {ln_v:.4g}), grad norm {out['grad_norm']:.4g}"
        return
    seconds = _time(step, device, args, call_s, row, compiled=args.compile)
    row["tokens_per_s"] = B * seq_len / seconds
    flops = transformer_flops(model_args, n_body, B, seq_len, layout.response_len)
    _rates(row, flops, seconds, _harness.peak_tflops(device, autocast or torch.float32))


# ---- running -------------------------------------------------------------------------------------------------
def _status(err: BaseException) -> str:
    if _is_oom(err):
        return "oom"
    first_line = (str(err).splitlines() or [""])[0][:120]
    return f"error: {type(err).__name__}: {first_line}"


def _progress(row):
    timing = f", {row['median_ms']:.2f} ms" if row.get("median_ms") is not None else ""
    print(f"[{row['set']} {row['case']} {row['model']} {row['op']} B={row['B']} {row['shape']}] "
          f"{row.get('status')}{timing}", file=sys.stderr)


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description="Time the video world model stack: frame tokenizer encode/decode frames/s (FrameTokenizer "
                    "and the released RT-1 CNNFSQModel256 architecture, random init, inference_mode, bf16 + "
                    "channels_last on CUDA) and one pre-training step of rlvr-train pretrain (tokens/s, MFU by "
                    "PaLM-style model FLOPs); gate each on shapes / a sane first loss first; print a table and "
                    "append CSV rows tagged with device, versions, git SHA.",
        epilog="Examples: python benchmarks/bench_video_stack.py --device cpu --shapes cpu --reps 2 | "
               "python benchmarks/bench_video_stack.py  (on a GPU: rt1 256x320 tokenizers at B 64/256, "
               "vwm-s at S 1,654, B 16/64)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu",
                   help="where to run (default: cuda if available, else cpu)")
    p.add_argument("--shapes", default=None,
                   help="comma list of shape sets: gpu (tokenizers at 256x320 -> 16x20: FrameTokenizer 'rt1' and "
                        "the released architecture; vwm-s on the RT-1 single-step layout, S 1,333 + 321), cpu "
                        "(64x64 -> 8x8: 'sim-64' and a scaled-down released architecture; vwm-tiny, S 273 + 65), "
                        "all; default gpu on cuda, cpu on cpu")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list among {','.join(CASES)} (default both)")
    p.add_argument("--models", default=",".join(MODELS),
                   help="tokenizers, comma list among frame (models.frame_tokenizer.FrameTokenizer), released "
                        "(models.released_tokenizer.ReleasedFrameTokenizer) (default both)")
    p.add_argument("--tok-batch", default=None,
                   help="comma list of tokenizer batch sizes in frames (default: the set's: gpu 64,256; cpu 16)")
    p.add_argument("--lm-batch", default=None,
                   help="comma list of pre-training batch sizes in sequences (default: the set's: gpu 16,64; cpu 4)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 on cuda (tokenizer weights and frames in bf16, pre-training under bf16 "
                        "autocast as train.precision=auto), fp32 on cpu; bf16 pre-training needs a GPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="tokenizer modules and frames in channels_last (default: on for cuda, off for cpu)")
    p.add_argument("--compile", action="store_true",
                   help="pre-training: compile each transformer block (torch.compile; warm-up includes compiling)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per row (default 10 on cuda, 5 on cpu; "
                                                           "3 for cpu calls slower than 2 s)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls first, the check's included (default 3 on cuda, 2 on cpu)")
    p.add_argument("--seed", type=int, default=0, help="weight and input seed (default 0)")
    p.add_argument("--csv", "--out", dest="csv", type=Path, default=None,
                   help="CSV to append to (default benchmarks/results/video_stack_<device>.csv)")
    args = p.parse_args(argv)
    device = _harness.resolve_common(args, p, stem="video_stack", reps=(10, 5), warmup=(3, 2), shape_sets=SHAPES)
    args.cases = _harness.parse_choices(args.cases, CASES, "case(s)", p)
    args.models = _harness.parse_choices(args.models, MODELS, "model(s)", p)
    args.tok_batch = _harness.parse_ints(args.tok_batch, "--tok-batch", p) if args.tok_batch else None
    args.lm_batch = _harness.parse_ints(args.lm_batch, "--lm-batch", p) if args.lm_batch else None
    args.precision_name = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if args.channels_last is None:
        args.channels_last = device.type == "cuda"
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    tags = _harness.announce(device)
    rows = []
    for set_name in args.shapes:
        s = SHAPES[set_name]
        set_rows = []
        if "tokenizer" in args.cases:
            for model in args.models:
                set_rows += bench_tokenizer(set_name, s, model, args.tok_batch or s.tok_batch, device, args)
        if "pretrain" in args.cases:
            set_rows += bench_pretrain(set_name, s, args.lm_batch or s.lm_batch, device, args)
        _harness.write_rows(args.csv, [{c: r.get(c) for c in CSV_COLUMNS} for r in set_rows], device=device)
        rows += set_rows
    title = (f"Video world model stack on {tags['device']} (torch {tags['torch']}, git {tags['git_sha']}); "
             f"random init; tokenizer {args.precision_name}{' channels_last' if args.channels_last else ''}, "
             f"inference_mode; pre-training step = train.pretrain.train_step")
    _harness.show_results(rows, COLUMNS, device, title, args.csv)
    return rows


if __name__ == "__main__":
    main()
