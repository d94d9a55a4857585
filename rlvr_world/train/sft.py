"""``rlvr-train sft``: supervised fine-tuning of a language world model on text-game or web transitions.

A short lifecycle: ``setup`` (data -- collected first by the built-in simulator when missing --, tokenizer,
model, optional LoRA, optimizer, resume) -> per step ``batch`` -> ``train_step`` -> log -> ``evaluate`` ->
checkpoint -> ``finish`` (final evaluation, the model + tokenizer in ``out_dir/model``, ``eval.json``,
``report.md``).

Choices:

* **Answer-only loss** (``text_data.answer_loss``): the prompt (rules, state, action) is context; only the
  answer and its end-of-turn token are targets, averaged over the batch's answer tokens (each of the
  ``train.grad_accum`` micro-batches weighted by its share of them).
* **Batches** of ``train.batch_size`` examples of similar length (``text_data.length_batches``), epoch after
  epoch; the position in the stream is the step, so a resumed run sees the batches an uninterrupted one would.
* **Evaluation** (every ``train.eval_every`` steps and at the end): greedy answers on a fixed subset of the
  ``data.eval_split`` split (``text_eval.evaluate``): exact match overall / on changed / on unchanged
  transitions, the domain's rewards, truncation; plus the answer loss there.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import config as C
from ..data import text_domains, text_tokenizer
from ..data.text_domains import Domain
from . import checkpoint, loop, text_model
from .logging import MetricLogger
from .schedule import autocast_dtype, lr_factor
from .text_data import Example, answer_loss, batch_stream, collate, encode_records
from .text_eval import evaluate as eval_answers

__all__ = ["load_examples", "run"]

RESUME_IGNORE = ("train.steps", "train.resume", "train.eval_every", "train.checkpoint_every", "progress",
                 "data.eval_limit")


@dataclass
class State:
    cfg: Any  # config_lang.SFTRun
    out_dir: Path
    device: torch.device
    autocast: torch.dtype | None
    domain: Domain
    tokenizer: Any
    end_id: int
    model: Any  # models.Transformer (with LoRA adapters when model.lora_rank > 0)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train: list[Example]
    held_out: list[Example]
    batches: Any
    logger: MetricLogger
    step: int = 0
    last_eval: dict = field(default_factory=dict)
    last_train: dict = field(default_factory=dict)
    last_saved: int = -1
    t_start: float = field(default_factory=time.perf_counter)


def load_examples(cfg, domain: Domain, tokenizer, log=print) -> tuple[list[Example], list[Example]]:
    """(training examples, the fixed held-out evaluation examples) of ``cfg.data`` within its length limits."""
    d = cfg.data
    train_records = text_domains.read_records(d.root, "train")
    if d.train_limit:
        train_records = train_records[:d.train_limit]
    held = text_domains.read_records(d.root, d.eval_split)
    random.Random(0).shuffle(held)
    if d.eval_limit:
        held = held[:d.eval_limit]
    train, dropped = encode_records(domain, tokenizer, train_records, d.max_prompt_tokens, d.max_answer_tokens,
                                    what="training transitions")
    held_out, dropped_eval = encode_records(domain, tokenizer, held, d.max_prompt_tokens, d.max_answer_tokens,
                                            what=f"{d.eval_split} transitions")
    if dropped or dropped_eval:
        log(f"dropped {dropped} of {len(train_records)} training and {dropped_eval} of {len(held)} {d.eval_split} "
            f"transitions longer than {d.max_prompt_tokens} prompt / {d.max_answer_tokens} answer tokens")
    return train, held_out


def _texts(domain: Domain, root: str, limit: int):
    """Training text for a BPE: system, user and answer of each training transition."""
    records = text_domains.read_records(root, "train")
    for rec in records[:limit or None]:
        system, user = domain.messages(rec)
        yield f"{system}\n{user}\n{domain.answer(rec)}"


def start_run(cfg) -> tuple[Path, torch.device, Domain]:
    """(out_dir, device, domain) of a text recipe: refuses to overwrite checkpoints without ``train.resume``,
    and collects the data when it is missing (``data.source``)."""
    tc, d = cfg.train, cfg.data
    out_dir = Path(tc.out_dir)
    if not tc.resume and checkpoint.latest(out_dir) is not None:
        raise ValueError(f"train.out_dir {out_dir} already has checkpoints: set train.resume=true to continue "
                         f"from {checkpoint.latest(out_dir).name}, or choose another train.out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    domain = text_domains.get(d.domain)
    text_domains.ensure_data(domain, d.root, d.source, d.collect, progress=cfg.progress)
    return out_dir, torch.device("cuda" if torch.cuda.is_available() else "cpu"), domain


def optimizer_of(model, tc) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters (the LoRA adapters only, with LoRA) and its LR schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc))


def setup(cfg) -> State:
    tc, d = cfg.train, cfg.data
    out_dir, device, domain = start_run(cfg)
    tokenizer = text_model.load_tokenizer(cfg.model, out_dir, _texts(domain, d.root, d.train_limit))
    end_id = text_tokenizer.end_id(tokenizer)
    train, held_out = load_examples(cfg, domain, tokenizer)
    torch.manual_seed(tc.seed)
    model = text_model.build(cfg.model, len(tokenizer), device)
    longest = max(len(e) for e in train + held_out)
    if longest > model.args.max_seq_len:
        raise ValueError(f"the longest example has {longest} tokens, more than the model's max_seq_len="
                         f"{model.args.max_seq_len}: lower data.max_prompt_tokens / max_answer_tokens or set "
                         f"model.overrides.max_seq_len")
    if cfg.model.lora_rank:
        text_model.add_lora(model, cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.lora_dropout)
    model.train()
    optimizer, scheduler = optimizer_of(model, tc)
    step = 0
    latest = checkpoint.latest(out_dir) if tc.resume else None
    if latest is not None:
        step = checkpoint.load(latest, model, optimizer, scheduler, config=cfg, ignore=RESUME_IGNORE)["step"]
    C.to_yaml(cfg, out_dir / "config.yaml")
    logger = MetricLogger(out_dir, tc.steps, step, progress=cfg.progress, desc=f"sft {d.domain}")
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lens = sorted(len(e) for e in train)
    logger.write(f"{d.domain} world model: {n_params / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trained), "
                 f"vocab {len(tokenizer)}; {len(train)} training transitions (median {lens[len(lens) // 2]} tokens, "
                 f"max {lens[-1]}), {len(held_out)} {d.eval_split} transitions for evaluation")
    if latest is not None:
        logger.write(f"resumed from {latest} at step {step}")
    return State(cfg, out_dir, device, autocast_dtype(tc.precision, device), domain, tokenizer, end_id, model,
                 optimizer, scheduler, train, held_out, batch_stream(train, tc.batch_size, tc.seed, start=step),
                 logger, step=step, last_saved=step if latest is not None else -1)


def batch(s: State) -> list[Example]:
    return next(s.batches)


def _pad_id(tokenizer, end_id: int) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id


def train_step(s: State, examples: list[Example]) -> dict:
    tc = s.cfg.train
    t0 = time.perf_counter()
    total = sum(len(e.answer) for e in examples)
    logged = (s.step + 1) % tc.log_every == 0 or s.step + 1 == tc.steps  # token accuracy only where it is logged
    loss_sum, correct, n_tokens = 0.0, 0, 0
    k = max(1, math.ceil(len(examples) / tc.grad_accum))
    for m0 in range(0, len(examples), k):
        ids, labels = collate(examples[m0:m0 + k], _pad_id(s.tokenizer, s.end_id))
        with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
            loss, n_correct, n = answer_loss(s.model.hidden_states, ids.to(s.device), labels.to(s.device),
                                             s.model.lm_head_weight, accuracy=logged)
        (loss * n / total).backward()
        loss_sum += loss.item() * n / total
        correct, n_tokens = correct + int(n_correct or 0), n_tokens + n
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in s.model.parameters() if p.requires_grad],
                                               tc.grad_clip if tc.grad_clip > 0 else math.inf)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    lr = s.scheduler.get_last_lr()[0]
    s.scheduler.step()
    dt = time.perf_counter() - t0
    out = {"loss": loss_sum, "grad_norm": grad_norm.item(), "lr": lr, "sec_per_step": dt,
           "tokens_per_sec": sum(len(e) for e in examples) / dt}
    return {**out, "token_acc": correct / max(n_tokens, 1)} if logged else out


@torch.no_grad()
def held_out_loss(s: State, batch_size: int = 16) -> float:
    s.model.eval()
    num, den = 0.0, 0
    for b0 in range(0, len(s.held_out), batch_size):
        ids, labels = collate(s.held_out[b0:b0 + batch_size], _pad_id(s.tokenizer, s.end_id))
        loss, _, n = answer_loss(s.model.hidden_states, ids.to(s.device), labels.to(s.device), s.model.lm_head_weight)
        num, den = num + loss.item() * n, den + n
    s.model.train()
    return num / max(den, 1)


def evaluate(s: State, force: bool = False) -> dict | None:
    if not loop.due(s.step, s.cfg.train.eval_every, force):
        return None
    out = {"loss": held_out_loss(s), **eval_answers(s.domain, s.model, s.tokenizer, s.held_out, s.end_id,
                                                     max_new_tokens=s.cfg.data.max_answer_tokens)}
    s.last_eval = {"step": s.step, **out}
    s.logger.log(s.step, {k: v for k, v in out.items() if isinstance(v, (int, float))}, kind="eval")
    s.logger.write(summary_line(s.step, out, s.cfg.data.eval_split))
    return out


def summary_line(step: int, ev: dict, split: str) -> str:
    rewards = " ".join(f"{k[7:]} {v:.3f}" for k, v in ev.items() if k.startswith("reward_"))
    return (f"step {step}: {split} exact {ev['exact']:.3f} (changed {ev['exact_changed']:.3f}, unchanged "
            f"{ev['exact_unchanged']:.3f}) | reward {rewards} | truncated {ev['truncated']:.3f} | "
            f"{ev['examples']} transitions")


def save_checkpoint(s: State, force: bool = False) -> Path | None:
    return loop.save_checkpoint(s, s.cfg.train.seed, force)


def write_eval(path: Path, ev: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ev, indent=1) + "\n")
    tmp.replace(path)


def finish(s: State) -> dict:
    if s.last_eval.get("step") != s.step:
        evaluate(s, force=True)
    save_checkpoint(s, force=True)
    model_dir = text_model.save(s.model, s.tokenizer, s.out_dir / "model")
    C.to_yaml(s.cfg, model_dir / "train_config.yaml")
    ev = {k: v for k, v in s.last_eval.items() if k != "step"}
    write_eval(s.out_dir / "eval.json", ev)
    from .text_report import write_sft_report

    report = write_sft_report(s.out_dir / "report.md", s.cfg, ev, s.step)
    return {"step": s.step, "out_dir": str(s.out_dir), "model_dir": str(model_dir), "eval": ev,
            "train": s.last_train, "report": str(report), "seconds": time.perf_counter() - s.t_start}


def run(cfg) -> dict:
    """Fine-tune the language world model of ``cfg``; returns {step, out_dir, model_dir, eval, report, ...}."""
    return loop.run_steps(setup(cfg), batch, train_step, evaluate, save_checkpoint, finish)
