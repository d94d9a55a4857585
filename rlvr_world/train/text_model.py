"""The language world model of a run: its tokenizer, its weights, optional LoRA adapters, and how it is saved.

What it decides:

* **Where a model comes from** (``model.init_from``): a local HF Qwen2/LLaMA directory (``config.json`` +
  safetensors, e.g. DeepSeek-R1-Distill-Qwen-1.5B), or a run directory of ours (its ``model/``). Without
  one, the ``model.name`` preset (``lm-tiny``: a Qwen2-shaped decoder) is trained from scratch with
  ``vocab_size`` = the tokenizer's length.
* **The tokenizer**: ``model.tokenizer`` if given, else the one saved beside ``init_from``, else a byte-level
  BPE trained on the training split (``text_tokenizer.train_bpe``, ``model.bpe_vocab_size`` tokens) and
  kept in ``out_dir/tokenizer`` so a resumed run reuses it.
* **LoRA** (``model.lora_rank`` > 0; the paper used rank 32): ``peft``'s LoRA layers are injected into the
  q/k/v/o and MLP projections of our ``Transformer`` and only they train. The saved model has the adapters
  merged (``merged_model``): an ordinary HF directory, loadable by ``Transformer.from_pretrained`` and by
  ``transformers``.
* **Saving** (``save``) writes the model (HF layout) and the tokenizer into one directory: that directory is
  what ``grpo`` and ``mpc`` take as ``init_from`` / world model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

from ..data import text_tokenizer
from ..models.transformer import ModelArgs, Transformer

__all__ = ["LORA_TARGETS", "add_lora", "load_tokenizer", "merged_model", "model_dir", "save"]

LORA_TARGETS = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


def model_dir(path: str | os.PathLike) -> Path:
    """``path`` itself when it holds a model, else its ``model/`` (a run directory)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    raise FileNotFoundError(f"no model at {path}: expected config.json there or in {path / 'model'} (an HF "
                            f"directory, or the run directory of `rlvr-train sft` / `grpo`)")


def load_tokenizer(cfg, out_dir: Path, texts: Iterable[str] | None):
    """The run's tokenizer (module docstring); ``texts`` (the training text) is read only to train a BPE."""
    if cfg.tokenizer:
        return text_tokenizer.load(cfg.tokenizer)
    if cfg.init_from:
        return text_tokenizer.load(model_dir(cfg.init_from))
    saved = out_dir / "tokenizer"
    if (saved / "tokenizer.json").is_file():
        return text_tokenizer.load(saved)
    if texts is None:
        raise ValueError("no tokenizer: set model.tokenizer or model.init_from, or give training text for a BPE")
    return text_tokenizer.train_bpe(texts, cfg.bpe_vocab_size, saved)


def build(cfg, vocab_size: int, device: torch.device) -> Transformer:
    """The model of ``cfg`` (``init_from`` weights, or the preset at random init) in fp32 on ``device``."""
    if cfg.init_from:
        model = Transformer.from_pretrained(model_dir(cfg.init_from), dtype=torch.float32)
        if model.args.vocab_size < vocab_size:
            raise ValueError(f"model.init_from {cfg.init_from} has vocab_size={model.args.vocab_size}, fewer than "
                             f"the tokenizer's {vocab_size} tokens")
    else:
        model = Transformer(ModelArgs.from_name(cfg.name, **{**cfg.overrides, "vocab_size": vocab_size}))
    return model.to(device)


def add_lora(model: Transformer, rank: int, alpha: float, dropout: float = 0.0) -> Transformer:
    """Inject LoRA adapters (peft) into the projections and freeze everything else; in place."""
    from ..testing import prepare_torchvision

    prepare_torchvision()  # peft imports transformers, which imports torchvision when it is installed
    from peft import LoraConfig, inject_adapter_in_model

    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS),
                            model)
    return model


def _has_lora(model: torch.nn.Module) -> bool:
    return any("lora_A" in name for name, _ in model.named_parameters())


@torch.no_grad()
def merged_model(model: Transformer) -> Transformer:
    """``model`` itself without adapters; with LoRA, a new plain ``Transformer`` with the adapters merged."""
    if not _has_lora(model):
        return model
    from peft.tuners.lora import LoraLayer

    state = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            state[f"{name}.weight"] = base.weight + module.get_delta_weight("default").to(base.weight.dtype)
            if base.bias is not None:
                state[f"{name}.bias"] = base.bias
    for name, value in model.state_dict().items():
        if "lora_" not in name and ".base_layer." not in name:
            state[name] = value
    plain = Transformer(model.args).to(model.lm_head_weight.device)
    plain.load_state_dict(state)
    return plain


def save(model: Transformer, tokenizer, path: str | os.PathLike) -> Path:
    """The model (LoRA merged) in the HF layout and its tokenizer, in one directory."""
    path = Path(path)
    merged_model(model).save_pretrained(path)
    tokenizer.save_pretrained(str(path))
    return path
