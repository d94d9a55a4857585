"""Models: the networks the trainer, the rollout engine and the rewards run (DESIGN §2).

* ``fsq``: finite scalar quantization (``FSQ``), the discrete bottleneck of the frame tokenizers.
* ``frame_tokenizer``: the per-frame CNN FSQ tokenizer (``FrameTokenizer``, ``FrameTokenizerArgs``).
* ``compressive_tokenizer``: context frames at full rate, future frames at a low rate with cross-attention
  to the context (``CompressiveTokenizer``, ``CompressiveTokenizerArgs``).
* ``released_tokenizer``: RLVR-World's released RT-1 tokenizers (diffusers-style VAE blocks) in their file layout.
* ``discriminator``: the PatchGAN discriminator and hinge / adaptive-weight terms of the tokenizer's GAN loss.
* ``lpips``: VGG16 / AlexNet feature nets and the LPIPS v0.1 metric (``LPIPS``), a video reward.
* ``transformer``: the LLaMA / Qwen2 decoder (``Transformer``, ``ModelArgs``) with HF weight interop.
* ``kv_cache``: static KV caches (``KVCache``, per-group ``SharedPrefixKVCache``) and their eager attention.
"""

from . import (
    compressive_tokenizer,
    discriminator,
    frame_tokenizer,
    fsq,
    kv_cache,
    lpips,
    released_tokenizer,
    transformer,
)
from .compressive_tokenizer import CompressiveTokenizer, CompressiveTokenizerArgs
from .frame_tokenizer import FrameTokenizer, FrameTokenizerArgs
from .fsq import FSQ
from .kv_cache import KVCache, SharedPrefixKVCache
from .lpips import LPIPS
from .released_tokenizer import ReleasedCompressiveTokenizer, ReleasedFrameTokenizer
from .transformer import ModelArgs, Transformer

__all__ = ["FSQ", "LPIPS", "CompressiveTokenizer", "CompressiveTokenizerArgs", "FrameTokenizer", "FrameTokenizerArgs",
           "KVCache", "ModelArgs", "ReleasedCompressiveTokenizer", "ReleasedFrameTokenizer", "SharedPrefixKVCache",
           "Transformer", "compressive_tokenizer", "discriminator", "frame_tokenizer", "fsq", "kv_cache", "lpips", "released_tokenizer",
           "transformer"]
