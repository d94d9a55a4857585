"""Sampling answers from a language world model and scoring them: what SFT, GRPO and their reports share.

What it decides:

* **Generation** (``sample``) goes through the rollout engine in EOS mode (``rollout.generate``, the
  prompt prefilled once per group of G samples, stopping at the end-of-turn id). Prompts of different
  lengths run one group per call (the engine batches prompts of one length; at the built-in size a call is
  a few ms of overhead); ``sequence_ids`` are the prompts' global indices, so a prompt's samples do not
  depend on the batch it came in (with vLLM, ``backend="vllm"``, one request per prompt as well). A response
  that never reaches the end-of-turn id within
  ``max_new_tokens`` is **truncated**: its reward is 0 (the paper's rule), whatever its text.
* **Evaluation** (``evaluate``) is greedy (temperature 0) on a fixed list of held-out examples: exact-match
  accuracy overall and on the transitions that change the state and those that do not, the mean reward of
  each of the domain's modes (text game: binary and task-specific; web: F1), the truncation rate, and the
  per-example binary outcomes (kept for the paired SFT-vs-RLVR comparison of the report).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.text_domains import Domain
from ..rollout import generate
from .text_data import Example

__all__ = ["Samples", "evaluate", "sample"]


@dataclass
class Samples:
    tokens: list[torch.Tensor]  # per prompt: [G, N_p] int64 (padding after the end id)
    logprobs: list[torch.Tensor]  # per prompt: [G, N_p] fp32
    mask: list[torch.Tensor]  # per prompt: [G, N_p] bool
    texts: list[list[str]]  # per prompt: G decoded answers (without the end id)
    truncated: list[list[bool]]  # per prompt: G flags (no end id within max_new_tokens)


def _trim(tokens: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor):
    """Drop the trailing columns no row sampled."""
    used = mask.any(0).nonzero()
    n = int(used[-1]) + 1 if len(used) else 1
    return tokens[:, :n], logprobs[:, :n], mask[:, :n]


@torch.no_grad()
def sample(model, tokenizer, examples: Sequence[Example], end_id: int, *, group_size: int, max_new_tokens: int,
           temperature: float, seed: int, first_id: int = 0, llm=None) -> Samples:
    """``group_size`` answers per example (rows of a prompt share its prefix KV); ``first_id`` offsets the
    sequence ids that key the random streams (the trainer passes the prompts' global indices). With ``llm``
    (a ``vllm.LLM`` holding ``model``'s weights) vLLM samples instead of our engine (``backend="vllm"``)."""
    dev = model.lm_head_weight.device if llm is None else torch.device("cpu")
    out = Samples([], [], [], [], [])
    for i, ex in enumerate(examples):
        limit = model.args.max_seq_len - len(ex.prompt)
        if limit < 1:
            raise ValueError(f"a prompt of {len(ex.prompt)} tokens leaves no room to answer in the model's "
                             f"max_seq_len={model.args.max_seq_len}")
        prompt = torch.tensor([ex.prompt], dtype=torch.long, device=dev)
        common = {"group_size": group_size, "max_new_tokens": min(max_new_tokens, limit), "temperature": temperature,
                  "seed": seed, "eos_id": end_id, "sequence_ids": torch.tensor([first_id + i])}
        if llm is None:
            r = generate(model, prompt, **common, cuda_graphs=False)
        else:
            r = generate(llm, prompt, **common, backend="vllm")
        tokens, logprobs, mask = _trim(r.tokens.cpu(), r.logprobs.cpu(), r.mask.cpu())
        texts, trunc = [], []
        for row, m in zip(tokens, mask):
            ids = row[m].tolist()
            ended = bool(ids) and ids[-1] == end_id
            texts.append(tokenizer.decode(ids[:-1] if ended else ids, skip_special_tokens=True))
            trunc.append(not ended)
        out.tokens.append(tokens)
        out.logprobs.append(logprobs)
        out.mask.append(mask)
        out.texts.append(texts)
        out.truncated.append(trunc)
    return out


def rewards_of(domain: Domain, samples: Samples, examples: Sequence[Example], mode: str) -> list[list[float]]:
    """Per prompt, the G rewards; truncated answers get 0."""
    return [[0.0 if cut else domain.reward(text, ex.record, mode) for text, cut in zip(texts, cuts)]
            for texts, cuts, ex in zip(samples.texts, samples.truncated, examples)]


def evaluate(domain: Domain, model, tokenizer, examples: Sequence[Example], end_id: int, *,
             max_new_tokens: int) -> dict:
    """Greedy answers on ``examples``: accuracy, rewards, truncation (module docstring)."""
    was_training = model.training
    model.eval()
    try:
        s = sample(model, tokenizer, examples, end_id, group_size=1, max_new_tokens=max_new_tokens,
                   temperature=0.0, seed=0)
    finally:
        model.train(was_training)
    texts = [t[0] for t in s.texts]
    cut = [t[0] for t in s.truncated]
    exact = [not c and domain.exact(t, ex.record) for t, c, ex in zip(texts, cut, examples)]
    changed = [domain.changed(ex.record) for ex in examples]
    out: dict = {"examples": len(examples), "exact": _mean(exact),
                 "exact_changed": _mean([e for e, c in zip(exact, changed) if c]),
                 "exact_unchanged": _mean([e for e, c in zip(exact, changed) if not c]),
                 "changed_share": _mean(changed), "truncated": _mean(cut)}
    rewards = {mode: [r[0] for r in rewards_of(domain, s, examples, mode)] for mode in domain.modes}
    out.update({f"reward_{mode}": _mean(r) for mode, r in rewards.items()})
    out["per_example_exact"] = [int(e) for e in exact]
    out["per_example_reward"] = rewards[domain.modes[-1]]
    out["samples"] = [{"id": ex.record.get("id"), "action": ex.record.get("action"), "response": t,
                       "answer": domain.answer(ex.record), "exact": bool(e)}
                      for t, e, ex in list(zip(texts, exact, examples))[:8]]
    return out


def _mean(values: Sequence) -> float:
    return float(sum(values)) / len(values) if values else float("nan")
