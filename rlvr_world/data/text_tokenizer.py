"""Tokenizers of the language world models: a local HF tokenizer, or a byte-level BPE trained on the data.

What it decides:

* **Any local HF tokenizer** (``load``: a directory with ``tokenizer.json`` / ``tokenizer_config.json``, e.g.
  DeepSeek-R1-Distill-Qwen-1.5B's) is read with ``transformers.AutoTokenizer``; its chat template formats
  the prompts when it has one. A tokenizer saved without a model-specific class (ours) is read with
  ``PreTrainedTokenizerFast``: beside a Qwen2 ``config.json``, AutoTokenizer would swap in Qwen2's class and
  its pre-tokenizer, and the ids would no longer be the ones the model was trained on.
* **The built-in tokenizer** (``train_bpe``) is a byte-level BPE trained by ``tokenizers`` on the training
  split's prompts and answers (so JSON keys and page roles become single tokens), wrapped in
  ``PreTrainedTokenizerFast`` with Qwen2's ChatML special tokens (``<|im_start|>``, ``<|im_end|>``,
  ``<|endoftext|>``) and a ChatML chat template, and saved with ``save_pretrained``: the trained model's
  directory is then an ordinary HF model + tokenizer directory.
* **The end of an answer** is the tokenizer's end-of-turn token: ``<|im_end|>`` where the vocabulary has it
  (ChatML), else ``eos_token``. Supervised targets end with it and rollouts stop at it (``eos_id``).
* **Prompts** (``chat_prompt``): system + user messages through ``apply_chat_template(...,
  add_generation_prompt=True)``; a tokenizer without a template gets a plain "System/User/Assistant" layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CHATML_TEMPLATE", "SPECIAL_TOKENS", "chat_prompt", "end_id", "load", "train_bpe"]

GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def load(path: str | os.PathLike):
    """The HF tokenizer saved in directory ``path`` (``transformers.AutoTokenizer``)."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"no tokenizer in {path} (expected tokenizer.json or tokenizer_config.json)")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = path / "tokenizer_config.json"
    declared = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    if declared in GENERIC_CLASSES and (path / "tokenizer.json").is_file():
        # a plain tokenizer.json (ours): read it as is; AutoTokenizer would pick the class of config.json's
        # model_type (Qwen2Tokenizer, whose own pre-tokenizer splits digits differently) in a model directory
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike | None = None, *,
              min_frequency: int = 2):
    """A byte-level BPE of ``vocab_size`` tokens (special tokens included) trained on ``texts``, with ChatML
    specials and template; saved to ``out_dir`` (``save_pretrained``) when given.

    >>> tok = train_bpe(['{"modified": [], "removed": []}'] * 20, vocab_size=300)
    >>> tok.decode(tok.encode('{"modified": []}'))
    '{"modified": []}'
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (bytes + special tokens), "
                         f"got {vocab_size}")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 bos_token=None, unk_token=None)
    hf.chat_template = CHATML_TEMPLATE
    if out_dir is not None:
        hf.save_pretrained(str(out_dir))
    return hf


def end_id(tokenizer) -> int:
    """The id that ends an answer: ``<|im_end|>`` when the vocabulary has it, else ``eos_token_id``."""
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in vocab:
        return vocab["<|im_end|>"]
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an eos_token: cannot tell where an answer ends")
    return int(tokenizer.eos_token_id)


def chat_prompt(tokenizer, system: str, user: str) -> str:
    """The prompt text up to the start of the assistant's answer."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"System: {system}\n\nUser: {user}\n\nAssistant: "
