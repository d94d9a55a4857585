"""Benchmark of the language world model's hot paths: the SFT step, GRPO's rollouts and the GRPO update, at the
shape of DeepSeek-R1-Distill-Qwen-1.5B (``qwen2-1.5b``) on a GPU, or a tiny stand-in (``lm-tiny``) on a CPU.

What it measures and decides:

* **Model and inputs**: ``Transformer.from_name(--model)`` with random weights (no checkpoint), fp32 master
  weights in train mode for the SFT step and the update (``torch.autocast`` bf16 on CUDA, plain fp32 on a
  CPU, as ``train.sft`` / ``train.text_grpo`` run them); rollouts sample from a copy of the weights in bf16
  on CUDA, fp32 on a CPU. Token ids are uniform in [0, V): text-game lengths, prompt 1,500 and answer 200
  for ``qwen2-1.5b``, prompt 256 and answer 48 otherwise (``--prompt-len``, ``--answer-len``).
* **SFT step** (``sft``), ``--batch`` B sequences of Lp + N tokens, labels on the N answer tokens only; one
  call = forward + backward + ``AdamW.step`` + ``zero_grad``:

  - ``fused``: ``text_data.answer_loss(model.hidden_states, ids, labels, model.lm_head_weight)``, the recipe's
    loss (answer positions only, through ``ops.token_logprobs``: no [tokens, V] logits; its argmax accuracy
    included);
  - ``full_logits`` (baseline): ``F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), labels[:, 1:].flatten(),
    ignore_index=-100)``: logits of every position, upcast to fp32 by autocast.

  ``tok_per_s`` = B (Lp + N) sequence tokens / median (``train.sft``'s ``tokens_per_sec``).
* **Rollout** (``rollout``), GRPO's sampling in EOS mode: ``--prompts`` P prompts, G = 5 samples each, N new
  tokens, temperature 1, no top-k / top-p:

  - ``ours``: ``rollout.generate(model, prompts [P, Lp], group_size=5, max_new_tokens=N, eos_id=eos,
    temperature=1.0, seed)`` (prefill once per prompt, shared-prefix KV cache, CUDA graphs on CUDA);
  - ``hf`` (baseline): the same weights written by ``Transformer.save_pretrained`` to a temporary directory,
    loaded with ``transformers.AutoModelForCausalLM.from_pretrained`` (SDPA attention), ``generate(prompts,
    num_return_sequences=5, do_sample=True, temperature=1, top_k=0, top_p=1, max_new_tokens=N,
    min_new_tokens=N, eos_token_id=eos)``.

  **EOS id**: every row runs to the full N (the workload of the update's shape): the id is one that a
  fixed-length rollout of ours with the same prompts and seed never samples (sampling streams are keyed on
  (sequence, position), so the EOS-mode run samples the same tokens); HF cannot stop before N
  (``min_new_tokens``). ``tok_per_s`` = generated tokens (up to and including a row's first EOS: P G N when
  no row stops) / median.
* **GRPO update** (``grpo_update``): ``ops.grpo_loss`` on the hidden states of the N response positions of P G
  sequences (prompt + our sampled response), forward + backward, ``--micro-batch`` sequences per forward
  (default 5 = one group), the loss normalised by the step's token count; old log-probs = the sampler's,
  advantages = group-normalised N(0, 1) per sequence, reference log-probs = old + 0.01 N(0, 1), KL 1e-3
  (the recipe's). No optimizer step (the SFT row times AdamW). ``tok_per_s`` = P G (Lp + N) / median.
* **Correctness gate** (before any timing; the ``check`` column): the fused SFT loss equals the full-logits
  cross-entropy on the same batch (rtol 1e-4 in fp32, 1e-2 under bf16 autocast); our rollout's log-probs of
  the sampled tokens of the first prompt equal a recompute with ``ops.token_logprobs`` on the rollout model's
  hidden states (atol 1e-3 fp32, 2e-2 bf16); the HF model's last-position logits on that prompt equal ours
  (atol 1e-3 fp32, 0.1 bf16). A failed check marks its row ``failed: ...`` and it is not timed.
* **Timing**: per row one cold call (``cold_s``: first call at these shapes, CUDA-graph capture included),
  ``--warmup`` untimed calls, ``--reps`` timed calls (``_harness.time_fn``: CUDA events, else
  ``perf_counter``): median and p20 / p80. ``x_base`` = the baseline's median / this row's. ``mem_mib`` =
  ``torch.cuda.max_memory_allocated`` over the timed calls (weights, gradients, AdamW state, activations,
  caches; 'n/a' on a CPU); ``mem_before_mib`` (CSV only) = what was allocated before the row's cold call (e.g.
  the fp32 training weights stay resident during the rollout rows). CUDA out-of-memory is caught per row
  (``oom``).

Rows go to ``benchmarks/results/lang_<device>.csv`` (``--out``). Nothing touches CUDA at import; transformers is
imported only for the ``hf`` row.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext

import _harness
import torch
import torch.nn.functional as F

from rlvr_world.models.transformer import PRESETS, Transformer
from rlvr_world.ops import grpo_loss, token_logprobs
from rlvr_world.rollout import generate
from rlvr_world.train.text_data import IGNORE, answer_loss

GROUP = 5  # the paper's G for language world models
LENGTHS = {"qwen2-1.5b": (1500, 200)}  # (prompt, answer) tokens of the text game; other presets: DEFAULT_LENGTHS
DEFAULT_LENGTHS = (256, 48)
KL_COEF, LR = 1e-3, 1e-5
TOLS = {"fp32": {"sft_rtol": 1e-4, "logp_atol": 1e-3, "hf_atol": 1e-3},
        "bf16": {"sft_rtol": 1e-2, "logp_atol": 2e-2, "hf_atol": 1e-1}}
COLUMNS = ["stage", "impl", "B", "Lp", "N", "tokens", "median_ms", "p20_ms", "p80_ms", "tok_per_s", "x_base",
           "mem_mib", "cold_s", "check", "status"]
CSV_COLUMNS = COLUMNS[:-1] + ["mem_before_mib", "model", "params_m", "dtype", "P", "G", "micro_batch", "eos_id",
                              "warmup", "reps", "status"]


# ---- helpers ---------------------------------------------------------------------------------------------------
def _status(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err):
        return "oom"
    return f"error: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def count_generated(tokens: torch.Tensor, eos_id: int) -> int:
    """Tokens of [B, N] outputs up to and including each row's first EOS."""
    B, N = tokens.shape
    hit = tokens == eos_id
    first = torch.where(hit.any(1), hit.int().argmax(1), torch.full((B,), N - 1, device=tokens.device))
    return int((first + 1).sum())


def time_row(fn: Callable[[], object], args, device) -> dict:
    """Cold call, ``args.warmup`` untimed calls, ``args.reps`` timed calls; CUDA peak memory of the timed calls."""
    _harness.sync(device)
    before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    t0 = time.perf_counter()
    fn()
    _harness.sync(device)
    cold = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = _harness.time_fn(fn, warmup=args.warmup, reps=args.reps, device=device)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms, "cold_s": cold, "mem_mib": mem,
            "mem_before_mib": before}


def run_row(base: dict, fn: Callable[[], object], tokens: int, args, device,
            check: str | None = None, failed: bool = False) -> dict:
    row = {**base, "tokens": tokens, "check": check, "status": "ok"}
    if failed:
        row["status"] = f"failed: {check}"
        return row
    try:
        row.update(time_row(fn, args, device))
        row["tok_per_s"] = tokens / row["median_ms"] * 1e3
    except Exception as err:  # noqa: BLE001 - an out-of-memory (or other) error costs this row only
        row["status"] = _status(err)
    _harness.free_memory(device)
    return row


def _verdict(diff: float, tol: float, what: str) -> tuple[str, bool]:
    ok = diff <= tol
    return f"{'pass' if ok else 'FAIL'}: {what} {diff:.2g} {'<=' if ok else '>'} {tol:g}", not ok


# ---- SFT ------------------------------------------------------------------------------------------------------
def sft_batch(V: int, B: int, Lp: int, N: int, device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, Lp + N], labels [B, Lp + N]): labels are the answer ids at the N answer positions, -100 elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, Lp + N), generator=gen)
    labels = torch.full_like(ids, IGNORE)
    labels[:, Lp:] = ids[:, Lp:]
    return ids.to(device), labels.to(device)


def fused_loss(model: Transformer, ids, labels) -> torch.Tensor:
    return answer_loss(model.hidden_states, ids, labels, model.lm_head_weight)[0]


def full_logits_loss(model: Transformer, ids, labels) -> torch.Tensor:
    logits = model(ids[:, :-1])                                                      # [B, S-1, V]
    return F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)


def sft_call(model: Transformer, opt: torch.optim.Optimizer, loss_fn, ids, labels, device):
    def call():
        with _autocast(device):
            loss = loss_fn(model, ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return call


def sft_gate(model: Transformer, ids, labels, device, tol: float) -> tuple[str, bool]:
    with torch.no_grad(), _autocast(device):
        fused, full = fused_loss(model, ids, labels).float(), full_logits_loss(model, ids, labels).float()
    return _verdict(float((fused - full).abs() / full.abs()), tol, "|fused - CE| / CE")


# ---- rollout --------------------------------------------------------------------------------------------------
def pick_eos(model: Transformer, prompts: torch.Tensor, N: int, seed: int) -> int:
    """An id that our seeded fixed-length rollout of these prompts never samples (the highest such id)."""
    tokens = generate(model, prompts, group_size=GROUP, max_new_tokens=N, temperature=1.0, seed=seed).tokens
    seen = torch.zeros(model.args.vocab_size, dtype=torch.bool, device=tokens.device)
    seen[tokens.flatten()] = True
    return int(torch.nonzero(~seen).max())


def rollout_gate(model: Transformer, prompts: torch.Tensor, N: int, eos: int, seed: int, tol: float):
    """Our log-probs of the first prompt's sampled tokens against ``ops.token_logprobs`` on a recompute."""
    with torch.inference_mode():
        r = generate(model, prompts[:1], group_size=GROUP, max_new_tokens=N, eos_id=eos, temperature=1.0, seed=seed)
        Lp = prompts.shape[1]
        seq = torch.cat([prompts[:1].expand(GROUP, Lp), r.tokens[:, :-1]], dim=1)  # [G, Lp + N - 1]
        h = model.hidden_states(seq)[:, Lp - 1:]                                    # [G, N, H]
        ref = token_logprobs(h.reshape(-1, h.shape[-1]), model.lm_head_weight, r.tokens.reshape(-1))
        diff = (ref.view_as(r.logprobs) - r.logprobs).abs()[r.mask]
    return _verdict(float(diff.max()), tol, "max|logp - token_logprobs|")


def build_hf(model: Transformer, device):
    """``transformers.AutoModelForCausalLM`` loaded from our weights written with ``save_pretrained``."""
    from rlvr_world.testing import prepare_torchvision

    prepare_torchvision()  # transformers imports torchvision, whose CUDA wheel fails beside a CPU torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench_lang_hf_") as tmp:
        model.save_pretrained(tmp)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=model.lm_head_weight.dtype,
                                                               attn_implementation="sdpa")
    return hf.to(device).eval().requires_grad_(False)


def hf_gate(hf, model: Transformer, prompts: torch.Tensor, tol: float) -> tuple[str, bool]:
    with torch.inference_mode():
        ours = model(prompts[:1])[:, -1].float()
        theirs = hf(prompts[:1]).logits[:, -1].float()
    return _verdict(float((ours - theirs).abs().max()), tol, "max|logits - HF|")


def ours_rollout_call(model, prompts, N: int, eos: int, seed: int, out: dict):
    def call():
        with torch.inference_mode():
            out["r"] = generate(model, prompts, group_size=GROUP, max_new_tokens=N, eos_id=eos, temperature=1.0,
                                seed=seed)
        return out["r"].tokens

    return call


def hf_rollout_call(hf, prompts, N: int, eos: int, seed: int, out: dict):
    Lp = prompts.shape[1]
    kw = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": N, "min_new_tokens": N,
          "num_return_sequences": GROUP, "eos_token_id": eos, "pad_token_id": eos,
          "attention_mask": torch.ones_like(prompts)}

    def call():
        torch.manual_seed(seed)
        with torch.inference_mode():
            out["tokens"] = hf.generate(prompts, **kw)[:, Lp:]                    # [P*G, N]
        return out["tokens"]

    return call


# ---- GRPO update ------------------------------------------------------------------------------------------
def update_inputs(rollout, prompts: torch.Tensor, seed: int) -> dict:
    """Sequences (prompt + response), and per-token old / reference log-probs, advantages, mask [P*G, N]."""
    # the timed rollout ran under inference_mode: copy its outputs into ordinary tensors that autograd may save
    tokens, old, mask = rollout.tokens.clone(), rollout.logprobs.float().clone(), rollout.mask.clone()
    B, N = tokens.shape
    gen = torch.Generator().manual_seed(seed + 1)
    adv = torch.randn(B // GROUP, GROUP, generator=gen)
    adv = ((adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-6)).reshape(B, 1).expand(B, N)
    ref = old + 0.01 * torch.randn(B, N, generator=gen).to(old.device)
    ids = torch.cat([prompts.repeat_interleave(GROUP, dim=0), tokens[:, :-1]], dim=1)  # [B, Lp + N - 1]
    return {"ids": ids, "tokens": tokens, "old": old, "ref": ref, "adv": adv.to(old.device).contiguous(),
            "mask": mask, "num_tokens": max(float(mask.sum()), 1.0)}


def update_call(model: Transformer, inp: dict, Lp: int, micro_batch: int, device):
    B = inp["ids"].shape[0]

    def call():
        model.zero_grad(set_to_none=True)
        for r0 in range(0, B, micro_batch):
            sl = slice(r0, r0 + micro_batch)
            with _autocast(device):
                h = model.hidden_states(inp["ids"][sl])[:, Lp - 1:]               # [mb, N, H]
                h = h.reshape(-1, h.shape[-1])
                flat = {k: inp[k][sl].reshape(-1) for k in ("tokens", "old", "ref", "adv", "mask")}
                loss, _ = grpo_loss(h, model.lm_head_weight.to(h.dtype), flat["tokens"], flat["old"], flat["adv"],
                                    flat["mask"], flat["ref"], kl_coef=KL_COEF, num_tokens=inp["num_tokens"])
            loss.backward()
        return loss

    return call


# ---- CLI ------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time the language world model's hot paths with random weights: the SFT step (answer-only "
                    "fused loss vs full-logits cross-entropy, + AdamW), GRPO rollouts (rollout.generate vs HF "
                    "generate, G 5, EOS mode at full length) and the GRPO update (ops.grpo_loss, forward + "
                    "backward). tokens/s, p20/p80, CUDA peak memory; CSV rows tagged with device, versions, git SHA.",
        epilog="Examples: python benchmarks/bench_lang.py --device cuda | "
               "OMP_NUM_THREADS=1 python benchmarks/bench_lang.py --device cpu --model lm-tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run (default: cuda if available, else cpu)")
    p.add_argument("--model", default="qwen2-1.5b", choices=sorted(PRESETS),
                   help="ModelArgs preset (default qwen2-1.5b, DeepSeek-R1-Distill-Qwen-1.5B's shape; "
                        "lm-tiny on a CPU)")
    p.add_argument("--prompt-len", type=int, default=None,
                   help=f"prompt tokens Lp (default {LENGTHS['qwen2-1.5b'][0]} for qwen2-1.5b, "
                        f"{DEFAULT_LENGTHS[0]} else)")
    p.add_argument("--answer-len", type=int, default=None,
                   help=f"answer / new tokens N (default {LENGTHS['qwen2-1.5b'][1]} for qwen2-1.5b, "
                        f"{DEFAULT_LENGTHS[1]} else)")
    p.add_argument("--batch", type=int, default=None, help="SFT sequences per step B (default 4 on cuda, 2 on cpu)")
    p.add_argument("--prompts", type=int, default=None,
                   help=f"rollout / update prompts P, {GROUP} samples each (default 8 on cuda, 2 on cpu)")
    p.add_argument("--micro-batch", type=int, default=GROUP,
                   help=f"sequences per forward/backward of the GRPO update (default {GROUP}: one group)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per row (default 5 on cuda, 3 on cpu)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls after the cold call (default 1 on cuda, 0 on cpu)")
    p.add_argument("--seed", type=int, default=0, help="weights, inputs and sampling seed (default 0)")
    p.add_argument("--out", "--csv", dest="out", default=None,
                   help="CSV to append to (default benchmarks/results/lang_<device>.csv)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    cuda = args.device == "cuda"
    lp, n = LENGTHS.get(args.model, DEFAULT_LENGTHS)
    args.prompt_len = args.prompt_len or lp
    args.answer_len = args.answer_len or n
    args.batch = args.batch or (4 if cuda else 2)
    args.prompts = args.prompts or (8 if cuda else 2)
    args.reps = args.reps if args.reps is not None else (5 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if cuda else 0)
    for name in ("prompt_len", "answer_len", "batch", "prompts", "micro_batch", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.prompt_len < 2 or args.answer_len < 2:
        p.error("--prompt-len and --answer-len must be >= 2")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    max_len = PRESETS[args.model].get("max_seq_len", 4096)
    if args.prompt_len + args.answer_len > max_len:
        p.error(f"--prompt-len + --answer-len = {args.prompt_len + args.answer_len} > {args.model}'s max_seq_len "
                f"{max_len}")
    args.out = args.out or _harness.REPO / "benchmarks" / "results" / f"lang_{args.device}.csv"
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    tags = _harness.announce(device)
    cuda = device.type == "cuda"
    prec = "bf16" if cuda else "fp32"
    tol = TOLS[prec]
    Lp, N, B, P = args.prompt_len, args.answer_len, args.batch, args.prompts

    torch.manual_seed(args.seed)
    with torch.device(device):
        model = Transformer.from_name(args.model)
    model = model.float().train()
    V = model.args.vocab_size
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    common = {"model": args.model, "params_m": params_m, "dtype": f"{prec} autocast" if cuda else prec, "Lp": Lp,
              "N": N, "warmup": args.warmup, "reps": args.reps}
    rows = []

    # SFT step
    ids, labels = sft_batch(V, B, Lp, N, device, args.seed)
    check, failed = sft_gate(model, ids, labels, device, tol["sft_rtol"])
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    sft = {**common, "stage": "sft", "B": B}
    rows.append(run_row({**sft, "impl": "fused"}, sft_call(model, opt, fused_loss, ids, labels, device),
                        B * (Lp + N), args, device, check, failed))
    rows.append(run_row({**sft, "impl": "full_logits"},
                        sft_call(model, opt, full_logits_loss, ids, labels, device), B * (Lp + N), args,
                        device))
    del opt, ids, labels
    model.zero_grad(set_to_none=True)
    _harness.free_memory(device)

    # rollout
    roll_model = copy.deepcopy(model).to(torch.bfloat16 if cuda else torch.float32).eval().requires_grad_(False)
    prompts = torch.randint(0, V, (P, Lp), generator=torch.Generator().manual_seed(args.seed + 2)).to(device)
    with torch.inference_mode():
        eos = pick_eos(roll_model, prompts, N, args.seed)
    roll = {**common, "stage": "rollout", "B": P * GROUP, "P": P, "G": GROUP, "eos_id": eos}
    check, failed = rollout_gate(roll_model, prompts, N, eos, args.seed, tol["logp_atol"])
    ours_out: dict = {}
    row = run_row({**roll, "impl": "ours"}, ours_rollout_call(roll_model, prompts, N, eos, args.seed, ours_out),
                  P * GROUP * N, args, device, check, failed)
    if "r" in ours_out:
        row["tokens"] = count_generated(ours_out["r"].tokens, eos)
        if row.get("median_ms"):
            row["tok_per_s"] = row["tokens"] / row["median_ms"] * 1e3
    rows.append(row)
    hf_out: dict = {}
    try:
        hf = build_hf(roll_model, device)
        check, failed = hf_gate(hf, roll_model, prompts, tol["hf_atol"])
        row = run_row({**roll, "impl": "hf"}, hf_rollout_call(hf, prompts, N, eos, args.seed, hf_out),
                      P * GROUP * N, args, device, check, failed)
        if "tokens" in hf_out:
            row["tokens"] = count_generated(hf_out["tokens"], eos)
            if row.get("median_ms"):
                row["tok_per_s"] = row["tokens"] / row["median_ms"] * 1e3
        del hf
    except Exception as err:  # noqa: BLE001 - transformers missing or the weights not loading: the row says why
        row = {**roll, "impl": "hf", "status": _status(err)}
    rows.append(row)
    del roll_model
    _harness.free_memory(device)

    # GRPO update (on our last rollout's samples)
    upd = {**common, "stage": "grpo_update", "B": P * GROUP, "P": P, "G": GROUP, "micro_batch": args.micro_batch}
    if "r" in ours_out:
        inp = update_inputs(ours_out.pop("r"), prompts, args.seed)
        rows.append(run_row({**upd, "impl": "ours"}, update_call(model, inp, Lp, args.micro_batch, device),
                            P * GROUP * (Lp + N), args, device))
    else:
        rows.append({**upd, "impl": "ours", "status": "skipped: no rollout samples"})
    model.zero_grad(set_to_none=True)

    for stage, base in (("sft", "full_logits"), ("rollout", "hf")):
        ref = next((r for r in rows if r["stage"] == stage and r["impl"] == base and r.get("median_ms")), None)
        for r in rows:
            if ref is not None and r["stage"] == stage and r.get("median_ms"):
                r["x_base"] = ref["median_ms"] / r["median_ms"]

    _harness.write_rows(args.out, [{c: r.get(c) for c in CSV_COLUMNS} for r in rows], device=device)
    title = (f"Language world model on {tags['device']} (torch {tags['torch']}, git {tags['git_sha']}): {args.model} "
             f"({params_m:.0f} M, random init), {common['dtype']}, Lp {Lp}, N {N}, SFT B {B}, rollout / update "
             f"P {P} x G {GROUP} (micro-batch {args.micro_batch}), EOS id {eos}; median of {args.reps} after a cold "
             f"call and {args.warmup} warm-up")
    _harness.show_results(rows, COLUMNS, device, title, args.out)
    return rows


if __name__ == "__main__":
    main()
