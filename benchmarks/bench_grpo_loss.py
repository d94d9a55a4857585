"""Benchmark of the fused GRPO loss (forward + backward) against eager PyTorch, torch.compile and Liger.

What it decides:

* The timed call is one training step of the loss head: set ``hidden.grad`` and ``weight.grad`` to None,
  compute the loss, ``loss.backward()``. Every implementation sees the same inputs in the same process.
* Inputs per case (N tokens, H hidden, V vocab): hidden [N, H] ~ N(0, 1), weight [V, H] ~ N(0, 1/H), both
  leaves that require grad; tokens uniform in [0, V); old_logp = the eager log-probs + 0.05 N(0, 1)
  (so ratios sit near 1 and some clip); advantages N(0, 1) per token; mask True except ~10%; no
  reference policy (kl_coef 0), temperature 1, clip 0.2/0.2, dual clip 3.
* Correctness gate (``--check``, on by default): before timing, each implementation's loss and gradients
  are compared with the eager specification ``rlvr_world.ops.reference.grpo_loss`` in the same dtype.
  grad_err = max |g - g_ref| / max |g_ref| over dHidden and dWeight (the worse of the two); loss_err =
  |loss - loss_ref| / max(|loss_ref|, 1). Both must be <= 2e-2 (bf16) or 1e-4 (fp32), else the row is
  'failed' and not timed: a speed number counts only after the gate passes (DESIGN §7).
* Effective TFLOP/s counts the useful work of forward + backward, 6NHV (one GEMM forward, two backward),
  whatever an implementation actually executes (an implementation that recomputes logits is charged
  nothing extra). The fraction of peak uses the harness's working limits (DESIGN §7; blank on a CPU).
* A call slower than 2 s (bf16 eager on a CPU) is timed 3 times, the gate's call serving as warm-up.
* Out-of-memory in a case or an implementation is recorded as 'oom' and the run goes on.

Implementations: ``rlvr_triton`` / ``rlvr_cpp`` / ``rlvr_cuda`` are ``rlvr_world.ops.grpo_loss`` with
impl="triton" / "cpp" / "cuda"; ``eager`` is the loss as a user would write it (below, not the
package's reference); ``compile`` is that function under ``torch.compile``; ``liger`` is Liger-Kernel's
``LigerFusedLinearGRPOLoss`` where installed (semantics differ slightly, see ``liger_forward``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import _harness
import torch

from rlvr_world.ops import cpp_available, grpo_loss, reference

SHAPES = {  # (N tokens, H hidden, V vocab)
    "video": [(20480, 768, 4633), (81920, 768, 4633), (20480, 768, 9008), (81920, 768, 9008)],
    "text": [(8192, 1536, 151936)],
    "cpu": [(4096, 256, 4633)],
}
IMPLS = ("rlvr_triton", "rlvr_cpp", "rlvr_cuda", "eager", "compile", "liger")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-4}
CLIP_LOW, CLIP_HIGH, CLIP_C = 0.2, 0.2, 3.0
SLOW_CALL_S = 2.0  # calls slower than this get reps=3 and no extra warm-up
LIGER_SEQ_LEN = 1024  # Liger takes [B, T, H]: N tokens are viewed as B = N / T sequences
COLUMNS = ["set", "N", "H", "V", "dtype", "impl", "median_ms", "p20_ms", "p80_ms", "x_eager", "x_compile",
           "x_liger", "tflops", "frac_peak", "mem_mib", "loss_err", "grad_err", "status"]
CSV_COLUMNS = COLUMNS[:-1] + ["warmup", "reps", "status"]


@dataclass
class Inputs:
    hidden: torch.Tensor  # [N, H] leaf, requires grad
    weight: torch.Tensor  # [V, H] leaf, requires grad
    tokens: torch.Tensor  # [N] int64
    old_logp: torch.Tensor  # [N] fp32
    advantages: torch.Tensor  # [N] fp32
    mask: torch.Tensor  # [N] bool


def eager_grpo_loss(hidden, weight, tokens, old_logp, advantages, mask):
    """The GRPO loss as plain PyTorch: full logits, fp32 log-softmax, verl's clipped objective."""
    logits = hidden @ weight.T  # [N, V]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None])[:, 0]  # [N]
    ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))  # [N]
    pg = torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - CLIP_LOW, 1 + CLIP_HIGH))
    pg = torch.where(advantages < 0, torch.minimum(pg, -advantages * CLIP_C), pg)  # dual clip
    return (pg * mask).sum() / mask.sum()


@torch.no_grad()
def _eager_logprobs(hidden, weight, tokens, rows=2048):
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for s in range(0, hidden.shape[0], rows):
        logits = (hidden[s:s + rows] @ weight.T).float()  # [rows, V]
        out[s:s + rows] = torch.log_softmax(logits, dim=-1).gather(-1, tokens[s:s + rows, None])[:, 0]
    return out


def make_inputs(n, h, v, dtype, device, seed) -> Inputs:
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g, device=device) / math.sqrt(h)).to(dtype).requires_grad_()
    tokens = torch.randint(0, v, (n,), generator=g, device=device)
    old_logp = _eager_logprobs(hidden, weight, tokens) + 0.05 * torch.randn(n, generator=g, device=device)
    advantages = torch.randn(n, generator=g, device=device)
    mask = torch.rand(n, generator=g, device=device) >= 0.1
    return Inputs(hidden, weight, tokens, old_logp, advantages, mask)


def liger_seq_len(n: int) -> int:
    return math.gcd(n, LIGER_SEQ_LEN)


def liger_forward(inp: Inputs, compiled: bool):
    """Liger-Kernel's fused linear GRPO loss, configured as close to DESIGN §5 as its API allows.

    Same: token-level ratio, clip [1 - 0.2, 1 + 0.2] (epsilon_low/high), beta=0 (no KL, no reference
    model), loss_type="dapo" = masked token sum / mask.sum(), fp32 log-softmax. Different: advantages are
    per sequence ([B]; we pass each sequence's first token's advantage), there is no dual clip and no
    clamp of the log-ratio to [-20, 20]; the gate checks it against the reference run with those
    per-sequence advantages and clip_c = inf. It chunks B into single sequences of T tokens and
    recomputes the logits in backward (work beyond the 6NHV charged).
    """
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    n, h = inp.hidden.shape
    t = liger_seq_len(n)
    b = n // t
    loss_fn = LigerFusedLinearGRPOLoss(beta=0.0, compiled=compiled, use_ref_model=False, epsilon_low=CLIP_LOW,
                                       epsilon_high=CLIP_HIGH, loss_type="dapo", temperature=1.0)
    tokens = inp.tokens.view(b, t)
    mask = inp.mask.view(b, t).to(torch.float32)
    adv = inp.advantages.view(b, t)[:, 0].contiguous()  # [B]
    old = inp.old_logp.view(b, t)

    def forward(i: Inputs):
        loss, _metrics = loss_fn(i.hidden.view(b, t, h), i.weight, tokens, mask, adv, old_per_token_logps=old)
        return loss

    return forward


def liger_spec_forward(inp: Inputs):
    """The reference with Liger's semantics: per-sequence advantages, no dual clip."""
    t = liger_seq_len(inp.hidden.shape[0])
    adv = inp.advantages.view(-1, t)[:, :1].expand(-1, t).reshape(-1)  # [N]

    def forward(i: Inputs):
        return reference.grpo_loss(i.hidden, i.weight, i.tokens, i.old_logp, adv, i.mask, clip_low=CLIP_LOW,
                                   clip_high=CLIP_HIGH, clip_c=math.inf)[0]

    return forward


def spec_forward(i: Inputs):
    return reference.grpo_loss(i.hidden, i.weight, i.tokens, i.old_logp, i.advantages, i.mask, clip_low=CLIP_LOW,
                               clip_high=CLIP_HIGH, clip_c=CLIP_C)[0]


def unavailable(impl: str, device: torch.device) -> str | None:
    """Why ``impl`` cannot run on ``device`` here (None when it can)."""
    if impl == "rlvr_triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        return None if device.type == "cuda" else "Triton kernels run on CUDA (the CPU interpreter is for tests)"
    if impl in ("rlvr_cpp", "rlvr_cuda"):
        if impl == "rlvr_cuda" and device.type != "cuda":
            return "impl='cuda' needs a CUDA device"
        if not cpp_available(device):
            return f"rlvr_world._C has no {device.type.upper()} kernels (build with RLVR_WORLD_BUILD_EXT=1)"
        return None
    if impl == "liger" and importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (benchmarks/README.md says how)"
    return None


def make_forward(impl: str, inp: Inputs, device: torch.device, with_compile: bool):
    """impl -> a function of the inputs returning the scalar loss."""
    if impl.startswith("rlvr_"):
        backend = impl.removeprefix("rlvr_")
        return lambda i: grpo_loss(i.hidden, i.weight, i.tokens, i.old_logp, i.advantages, i.mask,
                                   clip_low=CLIP_LOW, clip_high=CLIP_HIGH, clip_c=CLIP_C, impl=backend)[0]
    if impl == "eager":
        return lambda i: eager_grpo_loss(i.hidden, i.weight, i.tokens, i.old_logp, i.advantages, i.mask)
    if impl == "compile":
        torch._dynamo.reset()  # a fresh graph per case: no recompile limit across shapes and dtypes
        compiled = torch.compile(eager_grpo_loss, dynamic=False)
        return lambda i: compiled(i.hidden, i.weight, i.tokens, i.old_logp, i.advantages, i.mask)
    if impl == "liger":
        return liger_forward(inp, compiled=device.type == "cuda" or with_compile)
    raise ValueError(f"unknown impl {impl!r}")


def make_step(forward, inp: Inputs):
    def step():
        inp.hidden.grad = None
        inp.weight.grad = None
        loss = forward(inp)
        loss.backward()
        return loss

    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(step, inp: Inputs, device) -> tuple[float, torch.Tensor, torch.Tensor, float]:
    """One step: (loss, dHidden, dWeight, seconds)."""
    _sync(device)
    start = time.perf_counter()
    loss = step()
    _sync(device)
    seconds = time.perf_counter() - start
    grads = inp.hidden.grad, inp.weight.grad
    inp.hidden.grad = inp.weight.grad = None
    return float(loss.detach()), *grads, seconds


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = float(expected.detach().float().abs().max())
    return float((actual.detach().float() - expected.detach().float()).abs().max()) / max(scale, 1e-30)


def compare(result, spec) -> tuple[float, float]:
    loss, gh, gw, _ = result
    loss_ref, gh_ref, gw_ref, _ = spec
    loss_err = abs(loss - loss_ref) / max(abs(loss_ref), 1.0)
    grad_err = max(_rel_err(gh, gh_ref), _rel_err(gw, gw_ref))
    return loss_err, grad_err


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


class ReferenceOOMError(Exception):
    """The eager reference needed for the gate ran out of memory."""


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_impl(impl, inp, device, args, specs, row):
    """Gate then time one implementation; fills ``row`` in place."""
    why = unavailable(impl, device)
    if why is not None:
        row["status"] = f"skipped: {why}"
        return
    compiles = impl == "compile" or (impl == "liger" and (device.type == "cuda" or args.with_compile))
    step = make_step(make_forward(impl, inp, device, args.with_compile), inp)
    result = run_once(step, inp, device)  # the gate's call, also the first warm-up
    if args.check:
        row["loss_err"], row["grad_err"] = compare(result, specs("liger" if impl == "liger" else "spec"))
        tol = TOLERANCE[inp.hidden.dtype]
        if not (row["loss_err"] <= tol and row["grad_err"] <= tol):  # NaN fails too
            row["status"] = f"failed: error > {tol:g}"
            return
    calls, call_s = 1, result[-1]
    del result
    if compiles:  # the first call compiled: time a second one to judge the speed
        calls, call_s = 2, run_once(step, inp, device)[-1]
    slow = call_s > SLOW_CALL_S
    warmup = 0 if slow else max(args.warmup - calls, 0)
    reps = min(args.reps, 3) if slow else args.reps
    timing = _harness.time_fn(step, warmup=warmup, reps=reps, device=device)
    inp.hidden.grad = inp.weight.grad = None
    mem = _harness.peak_extra_memory(step, device)
    inp.hidden.grad = inp.weight.grad = None
    tflops = 6 * row["N"] * row["H"] * row["V"] / (timing.median_ms * 1e-3) / 1e12
    peak = _harness.peak_tflops(device, inp.hidden.dtype)
    row.update(median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms, tflops=tflops,
               frac_peak=tflops / peak if peak else None, mem_mib=mem / 2**20 if mem is not None else None,
               warmup=calls + warmup, reps=reps, status="ok")


def add_speedups(rows):
    """x_<base> = base's median / this row's median, for ok rows of one case (blank for the base itself)."""
    medians = {r["impl"]: r["median_ms"] for r in rows if r.get("status") == "ok"}
    for r in rows:
        for base in ("eager", "compile", "liger"):
            if r.get("status") == "ok" and base in medians and r["impl"] != base:
                r[f"x_{base}"] = medians[base] / r["median_ms"]


def run_impls(inp: Inputs, impls, rows, device, args, label) -> None:
    """Gate and time each implementation on one case's inputs (the references computed once, on demand)."""
    cache = {}

    def specs(kind):
        if kind not in cache:
            forward = spec_forward if kind == "spec" else liger_spec_forward(inp)
            try:
                cache[kind] = run_once(make_step(forward, inp), inp, device)
            except RuntimeError as err:
                if _is_oom(err):
                    raise ReferenceOOMError from None
                raise
        return cache[kind]

    for impl, row in zip(impls, rows):
        try:
            bench_impl(impl, inp, device, args, specs, row)
        except Exception as err:  # noqa: BLE001 - one implementation's failure must not end the run
            first_line = (str(err).splitlines() or [""])[0][:120]
            if isinstance(err, ReferenceOOMError):
                row["status"] = "oom (reference)"
            elif _is_oom(err):
                row["status"] = "oom"
            else:
                row["status"] = f"error: {type(err).__name__}: {first_line}"
        finally:
            inp.hidden.grad = inp.weight.grad = None
            _free(device)
        timing = f", {row['median_ms']:.2f} ms" if row.get("median_ms") is not None else ""
        print(f"[{label}] {impl}: {row.get('status')}{timing}", file=sys.stderr)


def bench_case(set_name, n, h, v, dtype_name, impls, device, args) -> list[dict]:
    """All implementations on one case; returns its rows."""
    rows = [{"set": set_name, "N": n, "H": h, "V": v, "dtype": dtype_name, "impl": impl} for impl in impls]
    try:
        inp = make_inputs(n, h, v, DTYPES[dtype_name], device, args.seed)
    except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
        if not _is_oom(err):
            raise
        for r in rows:
            r["status"] = "oom (inputs)"
    else:
        run_impls(inp, impls, rows, device, args, label=f"{set_name} N={n} H={h} V={v} {dtype_name}")
        del inp
    _free(device)
    add_speedups(rows)
    return rows


def default_impls(device: torch.device, with_compile: bool) -> list[str]:
    if device.type == "cpu":
        return ["rlvr_cpp", "eager"] + (["compile"] if with_compile else [])
    impls = ["rlvr_triton"] + (["rlvr_cpp"] if cpp_available("cuda") else []) + ["eager", "compile"]
    return impls + (["liger"] if importlib.util.find_spec("liger_kernel") is not None else [])


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description="Time forward + backward of the fused GRPO loss (rlvr_world.ops.grpo_loss) beside eager "
                    "PyTorch, torch.compile and Liger-Kernel on the same inputs; gate each on the eager "
                    "reference first; print a table and append CSV rows tagged with device, versions, git SHA.",
        epilog="Example (CPU): python benchmarks/bench_grpo_loss.py --device cpu --shapes cpu --dtype both --reps 5",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu",
                   help="where to run (default: cuda if available, else cpu)")
    p.add_argument("--shapes", default=None,
                   help="comma list of shape sets: video (4 cases, H=768, V=4633/9008), text (N=8192, H=1536, "
                        "V=151936), cpu (N=4096, H=256, V=4633), all (every set); default all on cuda, cpu on cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32", "both"], default=None,
                   help="input dtype (default bf16 on cuda, fp32 on cpu); both = fp32 then bf16")
    p.add_argument("--impls", default=None,
                   help=f"comma list among {','.join(IMPLS)} (default: those available on the device: "
                        "cpu: rlvr_cpp,eager (+compile with --with-compile); cuda: rlvr_triton, rlvr_cpp if "
                        "its CUDA kernels are built, eager, compile, liger if installed)")
    p.add_argument("--with-compile", action="store_true",
                   help="on cpu, also run torch.compile (needs a C++ compiler, slow to compile); also "
                        "lets liger compile its loss math on cpu")
    p.add_argument("--reps", type=int, default=10, help="timed calls per implementation (default 10; 3 for "
                                                        "calls slower than 2 s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first, the check's included (default 3)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="gate each implementation's loss and gradients on the eager reference before timing "
                        "(tolerance 2e-2 bf16, 1e-4 fp32; default on)")
    p.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    p.add_argument("--out", type=Path, default=None,
                   help="CSV to append to (default benchmarks/results/grpo_loss_<device>.csv)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not cuda:
        p.error("--device cuda but torch.cuda.is_available() is False")
    shapes = (args.shapes or ("all" if args.device == "cuda" else "cpu")).split(",")
    if "all" in shapes:
        shapes = list(SHAPES)
    if bad := [s for s in shapes if s not in SHAPES]:
        p.error(f"unknown shape set(s) {bad}; choose from {list(SHAPES)} or all")
    args.shapes = shapes
    dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.dtypes = ["fp32", "bf16"] if dtype == "both" else [dtype]
    device = torch.device(args.device)
    args.impls = args.impls.split(",") if args.impls else default_impls(device, args.with_compile)
    if bad := [i for i in args.impls if i not in IMPLS]:
        p.error(f"unknown impl(s) {bad}; choose from {list(IMPLS)}")
    if args.reps < 1:
        p.error("--reps must be >= 1")
    args.out = args.out or Path(__file__).resolve().parent / "results" / f"grpo_loss_{device.type}.csv"
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    tags = _harness.announce(device)
    rows = []
    for set_name in args.shapes:
        for n, h, v in SHAPES[set_name]:
            for dtype_name in args.dtypes:
                case_rows = bench_case(set_name, n, h, v, dtype_name, args.impls, device, args)
                _harness.write_rows(args.out, [{c: r.get(c) for c in CSV_COLUMNS} for r in case_rows], device=device)
                rows += case_rows
    title = (f"GRPO loss forward + backward on {tags['device']} (torch {tags['torch']}, git {tags['git_sha']}); "
             f"tflops = 6NHV / median")
    _harness.show_results(rows, COLUMNS, device, title, args.out)
    return rows


if __name__ == "__main__":
    main()
