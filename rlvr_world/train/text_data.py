"""Token data of the language world models: prompts and answers as ids, length-bucketed batches, SFT loss.

What it decides:

* **An example** is (prompt ids, answer ids): the prompt is the domain's (system, user) messages through
  the tokenizer's chat template up to the assistant turn; the answer is the gold answer followed by the
  end-of-turn id (``text_tokenizer.end_id``), which is also where rollouts stop.
* **Length limits**: a prompt longer than ``max_prompt_tokens`` or an answer longer than
  ``max_answer_tokens`` is dropped from a dataset (``encode_records`` counts them; a dataset left empty is a
  ValueError naming the limits and the longest lengths seen); ``encode_one`` raises on it instead.
* **Batches** (``length_batches``): each epoch shuffles the examples (seeded by the epoch), cuts the order
  into pools of 32 batches, sorts each pool by length and slices it into batches: sequences of a batch have
  similar lengths (little padding) and the batch order stays random. Deterministic in (seed, epoch).
* **Padding** is on the right (``collate``): the decoder has no attention mask, and causal attention keeps
  real tokens from ever seeing the padding after them; padded positions carry label -100.
* **SFT loss** (``answer_loss``): mean negative log-likelihood of the answer tokens only (the prompt is
  context, never a target), computed by ``ops.token_logprobs`` on the hidden states of the answer
  positions: the [tokens, vocab] logits are never materialised in fp32.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..data import text_tokenizer
from ..data.text_domains import Domain
from ..ops import token_logprobs

__all__ = ["Example", "answer_loss", "collate", "encode_one", "encode_records", "length_batches"]

IGNORE = -100


@dataclass
class Example:
    prompt: list[int]
    answer: list[int]  # ends with the end-of-turn id
    record: Mapping

    def __len__(self) -> int:
        return len(self.prompt) + len(self.answer)


def prompt_ids(domain: Domain, tokenizer, record: Mapping) -> list[int]:
    system, user = domain.messages(record)
    return tokenizer.encode(text_tokenizer.chat_prompt(tokenizer, system, user), add_special_tokens=False)


def _encode(domain: Domain, tokenizer, record: Mapping, end: int) -> Example:
    answer = tokenizer.encode(domain.answer(record), add_special_tokens=False) + [end]
    return Example(prompt_ids(domain, tokenizer, record), answer, record)


def encode_one(domain: Domain, tokenizer, record: Mapping, max_prompt_tokens: int, max_answer_tokens: int) -> Example:
    """One example; a ValueError when its prompt or answer is longer than the limits."""
    ex = _encode(domain, tokenizer, record, text_tokenizer.end_id(tokenizer))
    if len(ex.prompt) > max_prompt_tokens:
        raise ValueError(f"record {record.get('id', '?')!r}: the prompt has {len(ex.prompt)} tokens, more than "
                         f"max_prompt_tokens={max_prompt_tokens}")
    if len(ex.answer) > max_answer_tokens:
        raise ValueError(f"record {record.get('id', '?')!r}: the answer has {len(ex.answer)} tokens, more than "
                         f"max_answer_tokens={max_answer_tokens}")
    return ex


def encode_records(domain: Domain, tokenizer, records: Sequence[Mapping], max_prompt_tokens: int,
                   max_answer_tokens: int, *, what: str = "records") -> tuple[list[Example], int]:
    """(examples within the limits, number dropped as too long)."""
    end = text_tokenizer.end_id(tokenizer)
    kept, longest_p, longest_a = [], 0, 0
    for rec in records:
        ex = _encode(domain, tokenizer, rec, end)
        longest_p, longest_a = max(longest_p, len(ex.prompt)), max(longest_a, len(ex.answer))
        if len(ex.prompt) <= max_prompt_tokens and len(ex.answer) <= max_answer_tokens:
            kept.append(ex)
    if records and not kept:
        raise ValueError(f"every one of the {len(records)} {what} is longer than max_prompt_tokens="
                         f"{max_prompt_tokens} / max_answer_tokens={max_answer_tokens} (longest prompt "
                         f"{longest_p}, longest answer {longest_a} tokens): raise the limits")
    return kept, len(records) - len(kept)


def length_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                   pool_batches: int = 32) -> list[list[int]]:
    """Index batches of one epoch, similar lengths within a batch (module docstring)."""
    order = list(range(len(lengths)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    pool = batch_size * pool_batches
    batches = []
    for p0 in range(0, len(order), pool):
        chunk = sorted(order[p0:p0 + pool], key=lambda i: lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    random.Random(seed * 1_000_003 + epoch + 1).shuffle(batches)
    return batches


def batch_stream(examples: Sequence[Example], batch_size: int, seed: int, start: int = 0) -> Iterator[list[Example]]:
    """Batches forever (epoch after epoch), skipping the first ``start`` (resume)."""
    lengths = [len(e) for e in examples]
    epoch, i = 0, 0
    while True:
        for idx in length_batches(lengths, batch_size, seed, epoch):
            if i >= start:
                yield [examples[j] for j in idx]
            i += 1
        epoch += 1


def collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids [B, S], labels [B, S]): prompt + answer right-padded; labels are the answer ids at the answer
    positions and -100 elsewhere (position t's label is the token at t, predicted from t - 1)."""
    S = max(len(e) for e in examples)
    ids = torch.full((len(examples), S), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), S), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        seq = e.prompt + e.answer
        ids[b, :len(seq)] = torch.tensor(seq)
        labels[b, len(e.prompt):len(seq)] = torch.tensor(e.answer)
    return ids, labels


def answer_loss(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, *,
                accuracy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(mean answer NLL, number of answer tokens predicted right by argmax or None, number of answer tokens).

    ``model`` maps ids [B, S] to the final hidden states [B, S, H] (``Transformer.hidden_states`` or a wrapper);
    ``weight`` is the lm head [V, H]. ``accuracy`` also counts the argmax hits: one more pass of the head over
    the answer positions (chunked), so the trainer asks for it only on the steps it logs.
    """
    h = model(ids[:, :-1])                                                          # [B, S-1, H]
    target = labels[:, 1:]                                                          # [B, S-1]
    sel = target != IGNORE
    hs, ts = h[sel], target[sel]                                                    # [N, H], [N]
    logp = token_logprobs(hs, weight.to(hs.dtype), ts)                              # [N]
    if not accuracy:
        return -logp.mean(), None, int(ts.numel())
    with torch.no_grad():
        correct = sum(((hc @ weight.to(hc.dtype).T).argmax(-1) == tc).sum()
                      for hc, tc in zip(hs.detach().split(4096), ts.split(4096)))
    return -logp.mean(), correct, int(ts.numel())
