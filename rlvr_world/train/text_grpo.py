"""``rlvr-train grpo`` on text: post-train a language world model (text game / web page) with GRPO.

A short lifecycle: ``setup`` (the SFT model + its tokenizer, the frozen reference, data, optimizer, resume) ->
per step ``prompts`` -> ``rollout`` -> ``score`` -> ``advantages`` -> ``update`` -> log -> ``evaluate`` ->
checkpoint -> ``finish`` (final evaluation, the model in ``out_dir/model``, ``report.md``: SFT vs RLVR).

Choices:

* **Rollouts** come from our engine in EOS mode (``text_eval.sample``): G samples per prompt (5, the paper's),
  the prompt prefilled once per group, sampling stopped at the end-of-turn token or after
  ``data.max_answer_tokens``; an answer cut there is truncated and scores 0. Samples are keyed by the
  prompt's global index (step x P + i) and ``train.seed``, so a resumed run samples what an uninterrupted
  one would. ``grpo.backend=vllm`` (large models, vLLM installed) samples with vLLM instead: the policy's
  weights are loaded into it before every rollout and its log-probs of the sampled distribution are the
  old log-probs (``rollout.vllm_backend``).
* **Prompts**: step s takes positions s*P .. s*P+P-1 of an endless stream of the training transitions,
  reshuffled every epoch (seeded): the batch depends only on (train.seed, step).
* **Reward** (``grpo.reward``): the domain's verifiable reward (``data.text_domains``): ``binary`` exact match
  (the text-game default) or ``task_specific`` for text games, ``f1`` of the page changes for web pages.
* **Update**: the loss is ``ops.grpo_loss`` (DESIGN §5: clip, dual clip, k3 KL to the frozen SFT model)
  on the hidden states of the response positions, normalised by the mini-batch's token count, so
  micro-batching does not change the gradient; old log-probs are the sampler's (the engine returns the
  exact log-probs of the distribution it sampled; temperature ``grpo.temperature``, no truncation).
  Sequences of a micro-batch are right-padded (the decoder has no attention mask; causal attention never
  reads the padding after a token). A non-finite gradient norm skips the optimizer step.
* **Evaluation** at step 0 (the SFT model: "before"), every ``train.eval_every`` steps and at the end: greedy
  answers on the same held-out transitions (``text_eval.evaluate``); the step-0 numbers are kept in the
  checkpoints so a resumed run still reports SFT vs RLVR.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import config as C
from ..data import text_tokenizer
from ..data.text_domains import Domain
from ..ops import grpo_loss, token_logprobs
from ..rl import grpo_advantages
from . import checkpoint, loop, text_model
from .logging import MetricLogger
from .schedule import autocast_dtype
from .sft import load_examples, optimizer_of, start_run, summary_line, write_eval
from .text_data import Example
from .text_eval import Samples, rewards_of, sample
from .text_eval import evaluate as eval_answers

__all__ = ["run"]

RESUME_IGNORE = ("train.steps", "train.resume", "train.eval_every", "train.checkpoint_every", "progress")


@dataclass
class Batch:
    examples: list[Example]  # P prompts
    first_id: int  # global index of the first prompt (keys the sampling streams)
    samples: Samples | None = None
    rewards: torch.Tensor | None = None  # [P*G]
    advantages: torch.Tensor | None = None  # [P*G]


@dataclass
class State:
    cfg: Any  # config_lang.TextGRPORun
    out_dir: Path
    device: torch.device
    autocast: torch.dtype | None
    domain: Domain
    mode: str
    tokenizer: Any
    end_id: int
    model: Any
    ref: Any  # frozen SFT model, or None when kl_coef is 0
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train: list[Example]
    held_out: list[Example]
    logger: MetricLogger
    step: int = 0
    before: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)
    last_train: dict = field(default_factory=dict)
    last_saved: int = -1
    skipped_updates: int = 0
    llm: Any = None  # vllm.LLM when grpo.backend is "vllm"
    t_start: float = field(default_factory=time.perf_counter)


def setup(cfg) -> State:
    tc, d, g = cfg.train, cfg.data, cfg.grpo
    if not cfg.model.init_from:
        raise ValueError("model.init_from is required: the `rlvr-train sft` run (or an HF model directory) to "
                         "post-train")
    out_dir, device, domain = start_run(cfg)
    mode = domain.modes[0] if g.reward == "default" else domain.check_mode(g.reward, "grpo.reward")
    tokenizer = text_model.load_tokenizer(cfg.model, out_dir, None)
    train, held_out = load_examples(cfg, domain, tokenizer)
    torch.manual_seed(tc.seed)
    model = text_model.build(cfg.model, len(tokenizer), device)
    ref = None
    if g.kl_coef > 0:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        if device.type == "cuda":
            ref = ref.to(torch.bfloat16)
    if cfg.model.lora_rank:
        text_model.add_lora(model, cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.lora_dropout)
    model.train()
    optimizer, scheduler = optimizer_of(model, tc)
    step, before, skipped = 0, {}, 0
    latest = checkpoint.latest(out_dir) if tc.resume else None
    if latest is not None:
        info = checkpoint.load(latest, model, optimizer, scheduler, config=cfg, ignore=RESUME_IGNORE)
        step, extra = info["step"], info["extra"]
        before, skipped = json.loads(extra.get("before", "{}")), int(extra.get("skipped_updates", 0))
    llm = None
    if g.backend == "vllm":
        from ..rollout.vllm_backend import make_llm  # an ImportError with install instructions without vLLM

        llm = make_llm(text_model.model_dir(cfg.model.init_from))
    C.to_yaml(cfg, out_dir / "config.yaml")
    logger = MetricLogger(out_dir, tc.steps, step, progress=cfg.progress, desc=f"grpo {d.domain}")
    logger.write(f"GRPO on {d.domain}: reward {mode}, {g.prompts_per_step} prompts x {g.group_size} samples per step, "
                 f"{len(train)} training transitions, {len(held_out)} {d.eval_split} transitions for evaluation")
    if latest is not None:
        logger.write(f"resumed from {latest} at step {step}")
    return State(cfg, out_dir, device, autocast_dtype(tc.precision, device), domain, mode, tokenizer,
                 text_tokenizer.end_id(tokenizer), model, ref, optimizer, scheduler, train, held_out, logger,
                 step=step, before=before, last_saved=step if latest is not None else -1, skipped_updates=skipped,
                 llm=llm)


def prompts(s: State) -> Batch:
    """Step s: positions s*P .. s*P+P-1 of the epoch-reshuffled stream of training transitions."""
    P, n = s.cfg.grpo.prompts_per_step, len(s.train)
    first = s.step * P
    picked, orders = [], {}
    for k in range(first, first + P):
        epoch = k // n
        if epoch not in orders:
            orders[epoch] = list(range(n))
            random.Random(s.cfg.train.seed * 7919 + epoch).shuffle(orders[epoch])
        picked.append(s.train[orders[epoch][k % n]])
    return Batch(picked, first)


def rollout(s: State, b: Batch) -> Batch:
    g = s.cfg.grpo
    if s.llm is not None:  # vLLM samples from the current policy: hand it the weights (LoRA merged)
        from ..rollout.vllm_backend import load_weights

        load_weights(s.llm, text_model.merged_model(s.model))
    b.samples = sample(s.model, s.tokenizer, b.examples, s.end_id, group_size=g.group_size,
                       max_new_tokens=s.cfg.data.max_answer_tokens, temperature=g.temperature,
                       seed=s.cfg.train.seed, first_id=b.first_id, llm=s.llm)
    return b


def score(s: State, b: Batch) -> Batch:
    r = rewards_of(s.domain, b.samples, b.examples, s.mode)
    b.rewards = torch.tensor([x for group in r for x in group], dtype=torch.float32)          # [P*G]
    return b


def advantages(s: State, b: Batch) -> Batch:
    b.advantages = grpo_advantages(b.rewards, s.cfg.grpo.group_size, scale=s.cfg.grpo.advantage_scale)  # [P*G]
    return b


def _rows(b: Batch, G: int) -> list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor, float]]:
    """Per rollout row: (prompt ids, response tokens [N], old log-probs [N], mask [N], advantage)."""
    out = []
    for p, ex in enumerate(b.examples):
        t, lp, m = b.samples.tokens[p], b.samples.logprobs[p], b.samples.mask[p]
        for j in range(G):
            out.append((ex.prompt, t[j], lp[j], m[j], float(b.advantages[p * G + j])))
    return out


def _packed(rows, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids [B, S] right-padded, row index [M], position index [M]) where the M flattened response
    tokens are predicted: row i's token t sits after prompt_len_i - 1 + t input tokens."""
    seqs = [list(prompt) + tokens[:-1].tolist() for prompt, tokens, *_ in rows]
    S = max(len(x) for x in seqs)
    ids = torch.zeros(len(rows), S, dtype=torch.long)
    r_idx, t_idx = [], []
    for i, ((prompt, tokens, *_), seq) in enumerate(zip(rows, seqs)):
        ids[i, :len(seq)] = torch.tensor(seq)
        r_idx += [i] * len(tokens)
        t_idx += range(len(prompt) - 1, len(prompt) - 1 + len(tokens))
    return ids.to(device), torch.tensor(r_idx, device=device), torch.tensor(t_idx, device=device)


def _flat(rows, device):
    cat = lambda i: torch.cat([r[i] for r in rows]).to(device)
    adv = torch.cat([torch.full((len(r[1]),), r[4]) for r in rows]).to(device)
    return cat(1), cat(2), cat(3), adv                                               # tokens, old_logp, mask, adv [M]


def update(s: State, b: Batch) -> dict:
    """ppo_epochs x mini-batches of whole groups, each one optimizer step over micro-batches of rows."""
    g, tc = s.cfg.grpo, s.cfg.train
    rows = _rows(b, g.group_size)
    per_mini = g.mini_batch_prompts * g.group_size
    weight = s.model.lm_head_weight
    stats_sum: dict[str, float] = {}
    n_updates, loss_sum, norms = 0, 0.0, []
    for _ in range(g.ppo_epochs):
        for m0 in range(0, len(rows), per_mini):
            mini = rows[m0:m0 + per_mini]
            num_tokens = float(sum(int(r[3].sum()) for r in mini))
            for r0 in range(0, len(mini), g.micro_batch_size):
                micro = mini[r0:r0 + g.micro_batch_size]
                ids, ri, ti = _packed(micro, s.device)
                tokens, old, mask, adv = _flat(micro, s.device)
                ref_logp = None
                if s.ref is not None:
                    with torch.no_grad():
                        hr = s.ref.hidden_states(ids)[ri, ti]
                        ref_logp = token_logprobs(hr, s.ref.lm_head_weight, tokens, g.temperature).float()
                with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
                    h = s.model.hidden_states(ids)[ri, ti]                            # [M, H]
                    loss, stats = grpo_loss(h, weight.to(h.dtype), tokens, old, adv, mask, ref_logp,
                                            clip_low=g.clip_low, clip_high=g.clip_high, clip_c=g.clip_c,
                                            kl_coef=g.kl_coef, temperature=g.temperature,
                                            num_tokens=max(num_tokens, 1.0))
                loss.backward()
                loss_sum += loss.item()
                share = float(mask.sum()) / max(num_tokens, 1.0)
                for k, v in stats.as_dict().items():
                    if k not in ("ratio_min", "ratio_max"):
                        stats_sum[k] = stats_sum.get(k, 0.0) + v * share
            trainable = [p for p in s.model.parameters() if p.requires_grad]
            norm = torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip if tc.grad_clip > 0 else math.inf)
            if torch.isfinite(norm):
                s.optimizer.step()
                norms.append(norm.item())
            else:
                s.skipped_updates += 1
            s.optimizer.zero_grad(set_to_none=True)
            n_updates += 1
    s.scheduler.step()
    out = {k: v / n_updates for k, v in stats_sum.items()}
    out.update(loss=loss_sum / n_updates, grad_norm=sum(norms) / len(norms) if norms else float("nan"),
               skipped_updates=s.skipped_updates)
    return out


def train_step(s: State, b: Batch) -> dict:
    t0 = time.perf_counter()
    b = rollout(s, b)
    t1 = time.perf_counter()
    b = advantages(s, score(s, b))
    out = update(s, b)
    cut = [c for group in b.samples.truncated for c in group]
    lengths = [int(m.sum()) for ms in b.samples.mask for m in ms]
    return {"reward_mean": b.rewards.mean().item(), "reward_std": b.rewards.std().item(),
            "truncated_frac": sum(cut) / len(cut), "response_len": sum(lengths) / len(lengths), **out,
            "lr": s.scheduler.get_last_lr()[0], "time_rollout": t1 - t0, "time_step": time.perf_counter() - t0}


def evaluate(s: State, force: bool = False) -> dict | None:
    if not (loop.due(s.step, s.cfg.train.eval_every, force) or (s.step == 0 and not s.before)):
        return None
    out = eval_answers(s.domain, s.model, s.tokenizer, s.held_out, s.end_id,
                       max_new_tokens=s.cfg.data.max_answer_tokens)
    if s.step == 0 and not s.before:
        s.before = out
    s.last_eval = {"step": s.step, **out}
    s.logger.log(s.step, {k: v for k, v in out.items() if isinstance(v, (int, float))}, kind="eval")
    s.logger.write(summary_line(s.step, out, s.cfg.data.eval_split))
    return out


def save_checkpoint(s: State, force: bool = False) -> Path | None:
    if s.last_saved == s.step or not loop.due(s.step, s.cfg.train.checkpoint_every, force):
        return None
    path = checkpoint.save(s.out_dir, s.step, s.model, s.optimizer, s.scheduler, config=s.cfg,
                           sampler={"seed": s.cfg.train.seed, "step": s.step}, keep=s.cfg.train.keep_checkpoints,
                           extra={"before": json.dumps(s.before), "skipped_updates": s.skipped_updates})
    s.last_saved = s.step
    return path


def finish(s: State) -> dict:
    if s.last_eval.get("step") != s.step:
        evaluate(s, force=True)
    save_checkpoint(s, force=True)
    model_dir = text_model.save(s.model, s.tokenizer, s.out_dir / "model")
    C.to_yaml(s.cfg, model_dir / "train_config.yaml")
    after = {k: v for k, v in s.last_eval.items() if k != "step"}
    write_eval(s.out_dir / "eval.json", {"before": s.before, "after": after})
    seconds = time.perf_counter() - s.t_start
    from .text_report import write_grpo_report

    report = write_grpo_report(s.out_dir / "report.md", s.cfg, s.before, after, s.step, seconds)
    return {"step": s.step, "out_dir": str(s.out_dir), "model_dir": str(model_dir), "before": s.before,
            "after": after, "train": s.last_train, "report": str(report), "seconds": seconds}


def run(cfg) -> dict:
    """GRPO post-training of the language world model of ``cfg``; returns {step, model_dir, before, after, ...}."""
    s = setup(cfg)
    if s.step == 0:
        evaluate(s)  # the SFT model's numbers ("before")
    return loop.run_steps(s, prompts, train_step, evaluate, save_checkpoint, finish)
