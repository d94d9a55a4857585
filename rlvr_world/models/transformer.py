"""The decoder-only world model: one ``Transformer`` class for LLaMA and Qwen2, in gpt-fast's style.

What it decides:

* One class for both families. Qwen2 is LLaMA with biases on the q/k/v projections (``qkv_bias``);
  LLaMA's ``attention_bias`` puts biases on q/k/v *and* o (``out_bias``). ``save_pretrained`` writes
  ``model_type`` "qwen2" when ``qkv_bias and not out_bias``, else "llama".
* Blocks: pre-norm RMSNorm (computed in fp32, HF's order of casts), RoPE in HF's ``rotate_half`` layout
  (so HF checkpoints load without permuting q/k rows), SwiGLU MLP, causal SDPA with GQA
  (``enable_gqa``), optional ``torch.utils.checkpoint`` per block while training
  (``ModelArgs.activation_checkpointing``).
* Parameter names follow gpt-fast (``tok_embeddings``, ``layers.{i}.attention.wq`` ...,
  ``feed_forward.w1/w2/w3`` = gate/down/up, ``attention_norm``, ``ffn_norm``, ``norm``, ``output``);
  ``hf_format.HF_NAMES`` maps them to HF's, both ways. ``lm_head_weight`` is ``output.weight`` [V, H] (the GRPO loss
  takes hidden states and this weight).
* HF interop needs only ``safetensors`` (transformers is a test dependency): ``from_pretrained`` reads
  ``config.json`` + ``model.safetensors`` or a sharded ``model.safetensors.index.json``; the dtype is the
  checkpoint's unless given. Configs this model would compute differently are rejected with a ValueError
  naming the field: rope scaling, sliding window, non-SiLU activation, MLP bias, attention dropout,
  non-full-attention layer types, other architectures.

Where it departs from HF: RoPE angles are computed per call from the positions in fp32 (no cos/sin
table, so ``max_seq_len`` is only a bound that inputs are checked against); ``max_seq_len`` is HF's
``max_position_embeddings``; there is no attention mask or padding (rows are left-aligned, position t in
slot t); caches are static (``kv_cache.py``), including the per-group shared-prefix cache of GRPO rollouts.

Shapes: B batch, S tokens, H = dim, V vocab, Hq / Hkv query / kv heads, D head_dim.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .hf_format import (
    HF_NAMES,
    atomic_write,
    hf_config_from_args,
    hf_to_ours,
    model_args_from_hf_config,
    ours_to_hf,
    read_safetensors,
)
from .kv_cache import KVCache, SharedPrefixKVCache

__all__ = ["HF_NAMES", "ModelArgs", "Transformer"]


@dataclass
class ModelArgs:
    vocab_size: int = 4633  # the paper's video world model vocabulary (frame codes, action bins, specials)
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None -> n_heads (no GQA)
    intermediate_size: int | None = None  # None -> 4 * dim
    head_dim: int | None = None  # None -> dim // n_heads
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    max_seq_len: int = 4096
    qkv_bias: bool = False  # Qwen2
    out_bias: bool = False  # LLaMA attention_bias=True: q, k, v and o all carry biases
    tie_embeddings: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        self.n_kv_heads = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        self.intermediate_size = 4 * self.dim if self.intermediate_size is None else self.intermediate_size
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim must be divisible by n_heads={self.n_heads} (or give head_dim), got {self.dim}")
            self.head_dim = self.dim // self.n_heads
        for name in ("n_kv_heads", "intermediate_size", "head_dim"):
            _check_positive_int(name, getattr(self, name))
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads must divide n_heads={self.n_heads}, got {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs), got {self.head_dim}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelArgs:
        """A preset (``PRESETS``) with optional field overrides, e.g. ``from_name("vwm-s", vocab_size=9008)``."""
        if name not in PRESETS:
            raise ValueError(f"name must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def model_type(self) -> str:
        return "qwen2" if self.qkv_bias and not self.out_bias else "llama"


PRESETS: dict[str, dict] = {
    # the paper's video world models (iVideoGPT-style LLaMA decoders over FSQ + action tokens)
    "vwm-s": {"dim": 768, "n_layers": 12, "n_heads": 12, "intermediate_size": 3072},
    "vwm-b": {"dim": 1024, "n_layers": 24, "n_heads": 16, "intermediate_size": 4096},
    # small presets for CPU runs and tests
    "vwm-xs": {"dim": 256, "n_layers": 4, "n_heads": 4, "intermediate_size": 1024, "max_seq_len": 2048},
    "vwm-tiny": {"dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 512,
                 "max_seq_len": 2048},
    # language world models (Qwen2-shaped: q/k/v biases, GQA); vocab_size comes from the tokenizer
    "lm-tiny": {"dim": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 768,
                "qkv_bias": True, "tie_embeddings": True, "max_seq_len": 2048, "vocab_size": 2048},
    # the shape of DeepSeek-R1-Distill-Qwen-1.5B (the paper's language base model), for benchmarks
    "qwen2-1.5b": {"dim": 1536, "n_layers": 28, "n_heads": 12, "n_kv_heads": 2, "intermediate_size": 8960,
                   "qkv_bias": True, "vocab_size": 151936, "max_seq_len": 4096, "norm_eps": 1e-6},
}


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _describe(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _capturing() -> bool:
    """True under torch.compile or CUDA-graph capture, where data-dependent checks (a host sync) are skipped."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., H]
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions [B, S] -> cos, sin [B, 1, S, D] in ``dtype`` (angles in fp32, HF's cat(freqs, freqs) layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))  # [D/2]
    freqs = positions.float().unsqueeze(-1) * inv_freq  # [B, S, D/2]
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [B, 1, S, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, S, D]: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=args.qkv_bias)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=args.out_bias)

    def forward(self, x, cos, sin, positions, cache, layer: int):
        B, S, _ = x.shape
        q = self.wq(x).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hq, S, D]
        k = self.wk(x).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        v = self.wv(x).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # [B, Hq, S, D]
        else:
            out = cache.attend(layer, q, k, v, positions)  # [B, Hq, S, D]
        return self.wo(out.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim))  # [B, S, H]


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.intermediate_size, bias=False)  # gate
        self.w3 = nn.Linear(args.dim, args.intermediate_size, bias=False)  # up
        self.w2 = nn.Linear(args.intermediate_size, args.dim, bias=False)  # down

    def forward(self, x):  # [B, S, H] -> [B, S, H]
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, positions=None, cache=None, layer: int = 0):
        h = x + self.attention(self.attention_norm(x), cos, sin, positions, cache, layer)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """LLaMA / Qwen2 decoder. ``model(input_ids [B, S]) -> logits [B, S, V]``.

    Caches: ``new_cache`` / ``new_shared_prefix_cache`` allocate, ``prefill`` and ``decode_step`` fill them.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        if self.output.weight.device.type != "meta":
            self.reset_parameters()

    @classmethod
    def from_name(cls, name: str, **overrides) -> Transformer:
        return cls(ModelArgs.from_name(name, **overrides))

    def reset_parameters(self, std: float = 0.02) -> None:
        """HF's init: linear and embedding weights N(0, std), biases 0, norm weights 1."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    @property
    def lm_head_weight(self) -> torch.Tensor:  # [V, H]
        return self.output.weight

    # ------------------------------------------------------------------ forward
    def hidden_states(self, input_ids: torch.Tensor, *, positions: torch.Tensor | None = None,
                      cache: KVCache | SharedPrefixKVCache | None = None, check: bool = True) -> torch.Tensor:
        """input_ids [B, S] -> final-normed hidden states [B, S, H].

        positions [B, S] (default 0 .. S-1) set RoPE and, with a cache, the slots written and read; without
        a cache, attention is causal over the S given tokens. ``check=False`` skips the checks on the *values*
        of input_ids and positions (each a host sync; the rollout engine's static decode steps, whose inputs
        it builds itself, pass False); shapes, dtypes and the cache are always checked.
        """
        positions = self._check_inputs(input_ids, positions, cache, check)
        x = self.tok_embeddings(input_ids)  # [B, S, H]
        cos, sin = rope_cos_sin(positions, self.args.head_dim, self.args.rope_theta, x.dtype)  # [B, 1, S, D]
        ckpt = self.args.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if ckpt:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, positions, cache, i)
        return self.norm(x)  # [B, S, H]

    def forward(self, input_ids: torch.Tensor, *, positions: torch.Tensor | None = None,
                cache: KVCache | SharedPrefixKVCache | None = None) -> torch.Tensor:
        """input_ids [B, S] -> logits [B, S, V]."""
        return self.output(self.hidden_states(input_ids, positions=positions, cache=cache))

    # ------------------------------------------------------------------ caches
    def new_cache(self, batch_size: int, max_len: int | None = None, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """A zeroed KVCache [n_layers, B, Hkv, max_len, D] (default max_seq_len, the model's dtype and device)."""
        a, w = self.args, self.output.weight
        return KVCache.allocate(a.n_layers, batch_size, a.n_kv_heads, a.max_seq_len if max_len is None else max_len,
                                a.head_dim, dtype=dtype or w.dtype, device=device or w.device)

    def new_shared_prefix_cache(self, num_prompts: int, group_size: int, prompt_len: int, max_new_tokens: int, *,
                                dtype: torch.dtype | None = None,
                                device: torch.device | str | None = None) -> SharedPrefixKVCache:
        """Prefix [n_layers, P, Hkv, prompt_len, D] + suffix [n_layers, P*G, Hkv, max_new_tokens, D]."""
        a, w = self.args, self.output.weight
        return SharedPrefixKVCache.allocate(a.n_layers, num_prompts, group_size, a.n_kv_heads, prompt_len,
                                            max_new_tokens, a.head_dim, dtype=dtype or w.dtype,
                                            device=device or w.device)

    def prefill(self, input_ids: torch.Tensor, cache: KVCache | SharedPrefixKVCache) -> torch.Tensor:
        """Run input_ids [B, S] at positions 0 .. S-1 into the cache; returns the last position's logits [B, V].

        With a SharedPrefixKVCache, input_ids are the P prompts [P, Lp]: they fill the prefix and set
        ``cache.prefix_len = Lp``; rows p*G .. p*G+G-1 then decode from position Lp (logits are per prompt).
        """
        if isinstance(cache, SharedPrefixKVCache):
            P = cache.prefix.batch_size
            if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[0] != P:
                raise ValueError(f"input_ids must hold one prompt per prefix row ({P}), "
                                 f"got {input_ids.shape[0]} rows")
            h = self.hidden_states(input_ids, cache=cache.prefix)
            cache.prefix_len = input_ids.shape[1]
        elif isinstance(cache, KVCache):
            h = self.hidden_states(input_ids, cache=cache)
        else:
            raise ValueError(  # noqa: TRY004 - argument errors are ValueErrors throughout (ops/_checks.py)
                f"cache must be a KVCache or SharedPrefixKVCache, got {type(cache).__name__}")
        return self.output(h[:, -1])  # [B, V]

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor,
                    cache: KVCache | SharedPrefixKVCache, *, check: bool = True) -> torch.Tensor:
        """One token per row: tokens [B], positions [B] -> logits [B, V] (the cache gains these tokens).

        ``check=False``: no host sync (value checks skipped, as in ``hidden_states``)."""
        for name, t in (("tokens", tokens), ("positions", positions)):
            if not isinstance(t, torch.Tensor) or t.dim() != 1:
                raise ValueError(f"{name} must be a 1-D tensor [B], got {_describe(t)}")
        if cache is None:
            raise ValueError("cache must be a KVCache or SharedPrefixKVCache, got None")
        h = self.hidden_states(tokens.unsqueeze(1), positions=positions.unsqueeze(1), cache=cache, check=check)
        return self.output(h[:, 0])  # [B, V]

    def _check_inputs(self, input_ids, positions, cache, check: bool = True) -> torch.Tensor:
        """Validate input_ids [B, S], positions [B, S] and the cache; return the positions (int64)."""
        a = self.args
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a 2-D tensor [B, S], got {_describe(input_ids)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        B, S = input_ids.shape
        if S < 1 or S > a.max_seq_len:
            raise ValueError(f"input_ids must have 1 to max_seq_len={a.max_seq_len} tokens per row, got {S}")
        checks = check and not _capturing()  # the value checks below are host syncs
        if checks and bool(((input_ids < 0) | (input_ids >= a.vocab_size)).any()):
            bad = ((input_ids < 0) | (input_ids >= a.vocab_size)).nonzero()[0].tolist()
            raise ValueError(f"input_ids must lie in [0, vocab_size={a.vocab_size}), got "
                             f"{int(input_ids[tuple(bad)])} at {tuple(bad)}")
        if positions is None:
            if isinstance(cache, SharedPrefixKVCache):
                raise ValueError("positions must be given with a SharedPrefixKVCache (absolute, >= the prompt length)")
            positions = torch.arange(S, device=input_ids.device).expand(B, S)
        elif not isinstance(positions, torch.Tensor) or positions.shape != input_ids.shape:
            raise ValueError(f"positions must have input_ids' shape {(B, S)}, got {_describe(positions)}")
        elif positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise ValueError(f"positions must be an integer tensor, got {positions.dtype}")
        positions = positions.to(device=input_ids.device, dtype=torch.long)
        if cache is not None:
            if not isinstance(cache, (KVCache, SharedPrefixKVCache)):
                raise ValueError(f"cache must be a KVCache or SharedPrefixKVCache, got {type(cache).__name__}")
            for name in ("n_layers", "n_kv_heads", "head_dim"):
                if getattr(cache, name) != getattr(a, name):
                    raise ValueError(f"cache {name} must be the model's {getattr(a, name)}, got {getattr(cache, name)}")
            if cache.batch_size != B:
                raise ValueError(f"input_ids must have the cache's batch size {cache.batch_size} rows, got {B}")
            if isinstance(cache, SharedPrefixKVCache) and cache.prefix_len is None:
                raise ValueError("cache has no prefix yet: call prefill(prompts, cache) first")
            if S > cache.max_len:
                raise ValueError(
                    f"input_ids must have at most the cache's max_len={cache.max_len} tokens per row, got {S}")
        if checks:
            lo = cache.prefix_len if isinstance(cache, SharedPrefixKVCache) else 0
            hi = min(a.max_seq_len, cache.max_len) if cache is not None else a.max_seq_len
            if bool(((positions < lo) | (positions >= hi)).any()):
                bad = int(positions[(positions < lo) | (positions >= hi)][0])
                what = "the cache's max_len and max_seq_len" if cache is not None else "max_seq_len"
                raise ValueError(f"positions must lie in [{lo}, {hi}) ({what}), got {bad}")
        return positions

    # ------------------------------------------------------------------ HF interop
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                        device: torch.device | str = "cpu") -> Transformer:
        """Load a local HF ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` directory (config.json + safetensors).

        dtype: default the checkpoint's (of ``model.embed_tokens.weight``). Returns the model in eval mode.
        Unsupported configs raise a ValueError naming the field; a missing directory or file raises
        FileNotFoundError naming the path.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model directory not found: {path}")
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config.json not found: {config_file}")
        with open(config_file) as f:
            args = ModelArgs(**model_args_from_hf_config(json.load(f)))
        hf_state = read_safetensors(path)
        state = {}
        for key, tensor in hf_state.items():
            if re.fullmatch(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", key):
                continue  # old checkpoints store RoPE's inverse frequencies; we recompute them
            if key == "lm_head.weight" and args.tie_embeddings:
                continue  # tied: the embedding is the head (as HF does)
            name = hf_to_ours(key)
            if name is None:
                raise ValueError(f"checkpoint {path} has an unexpected tensor {key!r} for this config")
            state[name] = tensor
        with torch.device("meta"):
            model = cls(args)
        if dtype is None:
            embed = hf_state.get("model.embed_tokens.weight")
            dtype = torch.float32 if embed is None else embed.dtype
        model = model.to_empty(device=device).to(dtype)
        expected = {k: v for k, v in model.state_dict().items() if not (args.tie_embeddings and k == "output.weight")}
        for name, param in expected.items():
            if name not in state:
                raise ValueError(f"checkpoint {path} is missing tensor {ours_to_hf(name)!r}")
            if state[name].shape != param.shape:
                raise ValueError(f"checkpoint tensor {ours_to_hf(name)!r} must have shape {tuple(param.shape)} "
                                 f"(from config.json), got {tuple(state[name].shape)}")
        for name in state:
            if name not in expected:
                raise ValueError(f"checkpoint {path} has an unexpected tensor {ours_to_hf(name)!r} for this config")
        with torch.no_grad():
            for name, param in expected.items():
                param.copy_(state[name])
        if args.tie_embeddings:
            model.output.weight = model.tok_embeddings.weight
        return model.eval()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json + model.safetensors (each atomically: temp file, then os.replace), loadable by
        ``transformers.AutoModelForCausalLM.from_pretrained``."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        tensors = {}
        for name, tensor in self.state_dict().items():
            if self.args.tie_embeddings and name == "output.weight":
                continue
            tensors[ours_to_hf(name)] = tensor.detach().to("cpu").contiguous()
        atomic_write(path, "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        config = hf_config_from_args(self.args, self.output.weight.dtype)

        def write_config(tmp):
            with open(tmp, "w") as f:
                json.dump(config, f, indent=2, sort_keys=True)

        atomic_write(path, "config.json", write_config)
