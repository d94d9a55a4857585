"""The Hugging Face checkpoint format of ``models.transformer``: parameter names, config.json fields, and
safetensors files (single or sharded), written atomically.

Only ``safetensors`` is needed (transformers is a test dependency). Configs that the decoder would compute
differently from HF are rejected with a ValueError naming the field: RoPE scaling, sliding window,
non-SiLU activation, MLP bias, attention dropout, non-full-attention layer types, other architectures.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

import torch

__all__ = ["HF_NAMES", "atomic_write", "hf_config_from_args", "hf_to_ours", "model_args_from_hf_config",
           "ours_to_hf", "read_safetensors"]

HF_NAMES = {  # ours (with {i} for the layer) -> HF
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "layers.{i}.attention_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.feed_forward.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.feed_forward.w3.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.feed_forward.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
    **{f"layers.{{i}}.attention.w{p}.{kind}": f"model.layers.{{i}}.self_attn.{p}_proj.{kind}"
       for p in "qkvo" for kind in ("weight", "bias")},
}


def _rename(name: str, table: dict[str, str]) -> str | None:
    m = re.search(r"\.(\d+)\.", name)
    generic = name.replace(f".{m.group(1)}.", ".{i}.", 1) if m else name
    target = table.get(generic)
    return None if target is None else target.replace("{i}", m.group(1)) if m else target


def ours_to_hf(name: str) -> str:
    return _rename(name, HF_NAMES)


def hf_to_ours(name: str) -> str | None:
    return _rename(name, {v: k for k, v in HF_NAMES.items()})


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def model_args_from_hf_config(cfg: dict) -> dict:
    """``ModelArgs`` fields from an HF LLaMA / Qwen2 config.json dict; unsupported settings raise a ValueError
    naming the field."""
    model_type = cfg.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise ValueError(f"config model_type must be one of {tuple(_ARCHITECTURES)}, got {model_type!r}")
    for arch in cfg.get("architectures") or []:
        if arch != _ARCHITECTURES[model_type]:
            raise ValueError(f"config architectures must be [{_ARCHITECTURES[model_type]!r}] for model_type "
                             f"{model_type!r}, got {cfg['architectures']!r}")
    rope_params = cfg.get("rope_parameters") or {}
    rope_type = rope_params.get("rope_type", rope_params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"config rope_parameters must have rope_type 'default' (no RoPE scaling), got {rope_params!r}")
    if cfg.get("rope_scaling") is not None:
        scaling = cfg["rope_scaling"]
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        if kind != "default":
            raise ValueError(f"config rope_scaling must be null (no RoPE scaling), got {scaling!r}")
    unsupported = {  # field: (value read, the only accepted value)
        "hidden_act": (cfg.get("hidden_act", "silu"), "silu"),
        "mlp_bias": (cfg.get("mlp_bias", False), False),
        "use_sliding_window": (cfg.get("use_sliding_window", False), False),
        "attention_dropout": (float(cfg.get("attention_dropout", 0.0)), 0.0),
        "pretraining_tp": (cfg.get("pretraining_tp", 1), 1),
    }
    for field, (value, ok) in unsupported.items():
        if value != ok:
            raise ValueError(f"config {field} must be {ok!r} (unsupported otherwise), got {value!r}")
    layer_types = cfg.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise ValueError(f"config layer_types must all be 'full_attention', got {layer_types!r}")
    qwen = model_type == "qwen2"
    bias = bool(cfg.get("attention_bias", False))
    n_heads = cfg["num_attention_heads"]
    return dict(
        vocab_size=cfg["vocab_size"], dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads, intermediate_size=cfg["intermediate_size"],
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
        rope_theta=float(cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), max_seq_len=cfg.get("max_position_embeddings", 4096),
        qkv_bias=qwen or bias, out_bias=(not qwen) and bias,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def hf_config_from_args(args, dtype: torch.dtype = torch.float32) -> dict:
    """The HF config.json dict of ``args`` (``model_type`` "qwen2" or "llama", see ``ModelArgs.model_type``)."""
    model_type = args.model_type
    if model_type == "llama" and args.qkv_bias != args.out_bias:
        raise ValueError("qkv_bias=False with out_bias=True has no HF equivalent (LLaMA biases all of q/k/v/o)")
    dtype_name = {v: k for k, v in _DTYPES.items()}.get(dtype, "float32")
    cfg = {
        "architectures": [_ARCHITECTURES[model_type]], "model_type": model_type,
        "vocab_size": args.vocab_size, "hidden_size": args.dim, "intermediate_size": args.intermediate_size,
        "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim, "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len, "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta, "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "tie_word_embeddings": args.tie_embeddings, "attention_dropout": 0.0,
        "torch_dtype": dtype_name, "dtype": dtype_name, "use_cache": True,
    }
    if model_type == "llama":
        cfg.update(attention_bias=args.qkv_bias, mlp_bias=False)
    else:
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=args.n_layers)
    return cfg


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    from safetensors.torch import load_file

    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return load_file(single)
    index = os.path.join(path, "model.safetensors.index.json")
    if not os.path.isfile(index):
        raise FileNotFoundError(f"no weights found: expected {single} or {index} (only safetensors are read)")
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    state = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(path, shard)
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"weight shard listed in {index} not found: {shard_path}")
        state.update(load_file(shard_path))
    missing = [k for k in weight_map if k not in state]
    if missing:
        raise ValueError(f"{index} lists tensor {missing[0]!r} but its shard {weight_map[missing[0]]} lacks it")
    return state


def atomic_write(directory: str, name: str, write) -> None:
    """``write(tmp_path)`` to a temp file in ``directory``, then os.replace onto ``directory/name``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise



# ---------------------------------------------------------------------- our own model directories
def save_model_dir(path: str | os.PathLike, model_type: str, args, state_dict: dict[str, torch.Tensor]) -> None:
    """``path/config.json`` ({model_type, **dataclass args}, tuples as lists) + ``path/model.safetensors``,
    each written atomically: the layout of our tokenizers' ``save_pretrained``."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write(path, "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = {"model_type": model_type, **asdict(args)}
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    def write_config(tmp):
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)

    atomic_write(path, "config.json", write_config)


def load_model_dir(path: str | os.PathLike, model_type: str, args_cls, build):
    """Load a ``save_model_dir`` directory: ``build(args_cls(**config))`` with the weights copied in, checked.

    A missing directory or file raises FileNotFoundError naming the path; a wrong ``model_type``, an unknown
    config field, or a missing / unexpected / mis-shaped tensor raises a ValueError naming it.
    """
    from dataclasses import fields

    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    config_file, weights_file = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    for file in (config_file, weights_file):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{os.path.basename(file)} not found: {file}")
    with open(config_file) as f:
        config = json.load(f)
    found = config.pop("model_type", None)
    if found != model_type:
        raise ValueError(f"config model_type must be {model_type!r}, got {found!r} in {config_file}")
    known = {f.name for f in fields(args_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"config field {unknown[0]!r} is not a {args_cls.__name__} field "
                         f"(expected a subset of {sorted(known)}), in {config_file}")
    model = build(args_cls(**config))
    state, expected = load_file(weights_file), model.state_dict()
    for name, param in expected.items():
        if name not in state:
            raise ValueError(f"checkpoint {weights_file} is missing tensor {name!r}")
        if state[name].shape != param.shape:
            raise ValueError(f"checkpoint tensor {name!r} must have shape {tuple(param.shape)} (from config.json), "
                             f"got {tuple(state[name].shape)}")
    for name in state:
        if name not in expected:
            raise ValueError(f"checkpoint {weights_file} has an unexpected tensor {name!r} for this config")
    model.load_state_dict(state)
    return model, state
