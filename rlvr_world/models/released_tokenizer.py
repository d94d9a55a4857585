"""The released RLVR-World RT-1 tokenizers (``thuml/rt1-frame-tokenizer``, ``thuml/rt1-compressive-tokenizer``),
loaded from a local directory in their released layout, in plain torch (no ``diffusers`` at run time).

What it decides:

* **Which architectures.** The two tokenizers of RLVR-World's video world models (github.com/thuml/RLVR-World,
  ``vid_wm/ivideogpt``), built from iVideoGPT's diffusers-style VAE blocks:

  - ``ReleasedFrameTokenizer`` = ``CNNFSQModel256`` (``ivideogpt/tokenizer/vq_model.py`` + ``vae.py``), the
    per-frame tokenizer of the single-step model (``train_single_step_prediction.sh``: ``thuml/rt1-frame-tokenizer``).
    Default config: ``block_out_channels (128, 256, 256, 512, 768)``, five ``DownEncoderBlock2D`` /
    ``UpDecoderBlock2D``, ``layers_per_block 2``, ``latent_channels 64``, ``fsq_levels 12`` (= [7, 5, 5, 5, 5],
    4,375 codes): a 256x320 RT-1 frame -> a 16x20 grid = 320 tokens.
  - ``ReleasedCompressiveTokenizer`` = ``CompressiveVQModelFSQ`` (``ivideogpt/ctx_tokenizer/*``), the
    context-conditioned tokenizer of the multi-step model (``thuml/rt1-compressive-tokenizer``, config
    ``configs/ctx_vae256/config.json``: ``block_out_channels (128, 256, 256, 512)``, ``latent_channels 64``,
    ``vq_fsq_levels = dyn_fsq_levels = 12``, ``patch_size 4``, ``context_length 1``, ``max_att_resolution 32``):
    a context frame -> 32x40 = 1,280 tokens, each future frame -> 8x10 = 80 tokens.

* **Layout on disk** (what diffusers' ``ModelMixin.save_pretrained`` writes): ``config.json`` (``_class_name``
  ``"CNNFSQModel256"`` / ``"CompressiveVQModelFSQ"``, ``_diffusers_version``, then every constructor argument)
  and ``diffusion_pytorch_model.safetensors`` (or its sharded ``.safetensors.index.json``, or
  ``diffusion_pytorch_model.bin``, read with ``torch.load(weights_only=True)``). An optional ``subfolder``
  is honoured. The state-dict keys are diffusers' module paths, reproduced here name for name:
  ``encoder.conv_in``, ``encoder.down_blocks.{i}.resnets.{j}.{norm1,conv1,norm2,conv2,conv_shortcut}``,
  ``encoder.down_blocks.{i}.downsamplers.0.conv``, ``encoder.mid_block.resnets.{0,1}``,
  ``encoder.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}``, ``encoder.conv_norm_out``,
  ``encoder.conv_out``, ``quant_linear``, ``post_quant_linear``, ``decoder.conv_in``, ``decoder.mid_block.*``,
  ``decoder.up_blocks.{i}.resnets.{j}.*``, ``decoder.up_blocks.{i}.upsamplers.0.conv``,
  ``decoder.conv_norm_out``, ``decoder.conv_out``; the compressive model adds ``cond_encoder.*``,
  ``cond_decoder.*`` (each with ``cross_att_blocks.{k}.{att.in_proj_weight, att.in_proj_bias,
  att.out_proj, kv_norm, q_norm, kv_pos_emb, q_pos_emb}``), ``quant_conv``, ``post_quant_conv`` and a
  ``quant_linear`` / ``post_quant_linear`` that are ``nn.Linear`` over 4x4 latent patches. The FSQ
  quantizers hold no tensors. Diffusers' deprecated attention names (``query``/``key``/``value``/
  ``proj_attn``) are renamed on load, as diffusers does.
* **Errors.** A missing directory or file raises FileNotFoundError naming the path; an unknown or
  unsupported config field (e.g. ``norm_type "spatial"``, another block type or activation), a wrong
  ``_class_name``, or a missing / unexpected / mis-shaped tensor raises a ValueError naming the field or key
  and the file.
* **FSQ convention**: iVideoGPT's FSQ (lucidrains' ``finite_scalar_quantize``) and ``fsq.FSQ`` agree: the
  same ``bound`` (tanh, ``eps 1e-3``, half-level shift for even L), codes ``(q - L//2) / (L//2)``, and index
  ``sum_k q_k * basis_k`` with ``basis = cumprod([1] + levels[:-1])`` (dimension 0 fastest). So ``fsq.FSQ``
  is used unchanged. Two harmless differences: theirs returns int32 indices (ours int64), and theirs
  truncates ``(code * half + half) * basis`` to int (ours rounds), which agree on every grid code (the tests
  check all 4,375).
* **Pixels, as released** (not as our ``FrameTokenizer``): the encoders take float frames in [0, 1] as
  they are (no mapping to [-1, 1]); uint8 is scaled by 1/255 here for convenience. The decoders' output is
  unbounded; ``decode`` clamps it to [0, 1] as RLVR-World does after decoding (``recon.clamp(0, 1)``),
  ``forward`` returns it raw (the released training losses use it raw). Frames are fp32 out.
* **Interface** (close to ``frame_tokenizer.FrameTokenizer``): ``encode(frames [B, C, H, W]) -> tokens
  [B, h, w]`` int64, ``decode(tokens [B, h, w]) -> frames [B, C, H, W]``, ``encode_latent``,
  ``forward(frames) -> (recon, tokens)``, ``codebook_size``, ``token_grid``, ``tokens_per_frame``,
  ``from_pretrained``, ``save_pretrained`` (writes the released layout, loadable by the reference).
  Row-major flattening of ``[B, h, w]`` is RLVR-World's ``[B, h*w]`` token order. The compressive model
  keeps the released ``tokenize(frames [B, T, C, H, W]) -> (context tokens [B, Tc, hc*wc], future tokens
  [B, T-Tc, L])`` and ``detokenize(context, future) -> frames [B, T, C, H, W]``.
* **Precision**: convolutions, norms and attention run in the parameters' dtype (or under autocast); the
  FSQ step runs in fp32 (as the reference forces).

Fixed by the released code and reproduced, not configurable: the attention head size (one head of full
width in the mid blocks; 4 heads, GroupNorm(32) with eps 1e-5, learned position embeddings in the
cross-attention blocks), ``Downsample2D``'s asymmetric (0, 1, 0, 1) zero pad, the frame decoder's
``layers_per_block`` ResNets per up block (the compressive model's plain decoders use ``layers_per_block
+ 1``), and the compressive model's 4:5 frame aspect (``H = resolution``, ``W = resolution * 5 / 4``, the
size its position embeddings hold) and its conditional decoder's first attention resolution of 32 (a magic
number in the reference: ``resolution / 2**(len(block_out_channels) - 1)`` must equal it). Dropout (0.1 in
the cross-attention blocks, a no-op in eval mode) is kept as modules so that ``train()`` behaves as released.

Shapes: B batch, T frames (Tc context, Tf future), C image channels, H x W pixels, (h, w) token grid,
D = len(levels) FSQ dims.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .fsq import FSQ, _check_levels
from .fsq import PRESETS as FSQ_PRESETS
from .hf_format import atomic_write

__all__ = [
    "CONFIG_NAME",
    "RT1_COMPRESSIVE_CONFIG",
    "RT1_FRAME_CONFIG",
    "WEIGHTS_NAMES",
    "ReleasedCompressiveConfig",
    "ReleasedCompressiveTokenizer",
    "ReleasedFrameConfig",
    "ReleasedFrameTokenizer",
    "load_released_state_dict",
]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
BIN_NAME = "diffusion_pytorch_model.bin"
WEIGHTS_NAMES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, BIN_NAME)  # tried in this order
_DIFFUSERS_VERSION = "0.27.0"  # the version RLVR-World pins (vid_wm/requirements.txt); written by save_pretrained

_ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}  # diffusers'
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# hard-coded by the released code (CompressiveVQModelFSQ builds ConditionalDecoder(init_resolution=32); its own
# comment there calls it a magic number), so reproduced as a constant, not a config field
_COND_DECODER_INIT_RESOLUTION = 32


# ====================================================================== configs
def _fsq_levels(name: str, value) -> tuple[int, ...]:
    """The reference's ``get_fsq_levels``: an int preset (8/10/12/14/16) or an explicit list of levels."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in FSQ_PRESETS:
            raise ValueError(f"config {name} must be one of {sorted(FSQ_PRESETS)} (FSQ presets) or a list of levels, "
                             f"got {value!r}")
        return FSQ_PRESETS[value]
    try:
        return _check_levels(value)
    except ValueError as e:
        raise ValueError(f"config {name}: {e}") from None


def _check_common(cfg) -> None:
    for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"config {name} must be a positive int, got {v!r}")
    cfg.block_out_channels = tuple(cfg.block_out_channels)
    cfg.down_block_types = tuple(cfg.down_block_types)
    cfg.up_block_types = tuple(cfg.up_block_types)
    n = len(cfg.block_out_channels)
    if n == 0 or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 or c % cfg.norm_num_groups
                     for c in cfg.block_out_channels):
        raise ValueError(f"config block_out_channels must be positive multiples of norm_num_groups = "
                         f"{cfg.norm_num_groups}, got {list(cfg.block_out_channels)}")
    for name, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = getattr(cfg, name)
        if len(types) != n or any(t != kind for t in types):
            raise ValueError(f"config {name} must be {n} x {kind!r} (one per block_out_channels entry; other diffusers "
                             f"blocks are not supported), got {list(types)}")
    if not isinstance(cfg.act_fn, str) or cfg.act_fn.lower() not in _ACTIVATIONS:
        raise ValueError(f"config act_fn must be one of {sorted(_ACTIVATIONS)}, got {cfg.act_fn!r}")
    if cfg.norm_type != "group":
        raise ValueError(f"config norm_type must be 'group' ('spatial' is not supported), got {cfg.norm_type!r}")


@dataclass
class ReleasedFrameConfig:
    """``CNNFSQModel256``'s constructor arguments (its defaults; the RT-1 release uses them, see ``RT1_FRAME_CONFIG``)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: Sequence[str] = ("DownEncoderBlock2D",) * 5
    up_block_types: Sequence[str] = ("UpDecoderBlock2D",) * 5
    block_out_channels: Sequence[int] = (128, 256, 256, 512, 768)
    layers_per_block: int = 2
    act_fn: str = "silu"
    latent_channels: int = 64
    norm_num_groups: int = 32
    fsq_levels: int | Sequence[int] = 12
    norm_type: str = "group"
    resolution: int = 256  # unused by the network (bookkeeping in the reference)

    CLASS_NAME = "CNNFSQModel256"

    def __post_init__(self):
        _check_common(self)
        self.levels = _fsq_levels("fsq_levels", self.fsq_levels)
        if not isinstance(self.fsq_levels, int):
            self.fsq_levels = list(self.fsq_levels)


@dataclass
class ReleasedCompressiveConfig:
    """``CompressiveVQModelFSQ``'s constructor arguments (its defaults; the RT-1 release: ``RT1_COMPRESSIVE_CONFIG``).

    ``sample_size``, ``scaling_factor``, ``lookup_from_codebook`` and ``force_upcast`` are accepted and unused,
    as in the reference."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: Sequence[str] = ("DownEncoderBlock2D",)
    up_block_types: Sequence[str] = ("UpDecoderBlock2D",)
    block_out_channels: Sequence[int] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    sample_size: int = 32
    vq_fsq_levels: int | Sequence[int] = 12
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    norm_type: str = "group"
    mid_block_add_attention: bool = True  # the context encoder / decoder; the conditional ones always have it
    lookup_from_codebook: bool = False
    force_upcast: bool = False
    dyn_fsq_levels: int | Sequence[int] = 12
    context_length: int = 1
    max_att_resolution: int = 32
    resolution: int = 256
    patch_size: int = 4

    CLASS_NAME = "CompressiveVQModelFSQ"

    def __post_init__(self):
        _check_common(self)
        self.vq_levels = _fsq_levels("vq_fsq_levels", self.vq_fsq_levels)
        self.dyn_levels = _fsq_levels("dyn_fsq_levels", self.dyn_fsq_levels)
        for name in ("vq_fsq_levels", "dyn_fsq_levels"):
            if not isinstance(getattr(self, name), int):
                setattr(self, name, list(getattr(self, name)))
        for name in ("context_length", "max_att_resolution", "resolution", "patch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"config {name} must be a positive int, got {v!r}")
        for c in self.block_out_channels:
            if c % 32:  # CrossAttentionBlock: GroupNorm(32, C) and 4 heads, fixed in the reference
                raise ValueError(f"config block_out_channels must be multiples of 32 (the cross-attention blocks' "
                                 f"GroupNorm(32)), got {list(self.block_out_channels)}")
        down = 2 ** (len(self.block_out_channels) - 1)
        if self.resolution != _COND_DECODER_INIT_RESOLUTION * down:
            raise ValueError(f"config resolution must be {_COND_DECODER_INIT_RESOLUTION} * 2**(len(block_out_channels) "
                             f"- 1) = {_COND_DECODER_INIT_RESOLUTION * down} (the reference's conditional decoder is "
                             f"built for a {_COND_DECODER_INIT_RESOLUTION}-row latent), got {self.resolution}")
        h, w = self.latent_grid
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"config patch_size must divide the latent grid {h}x{w}, got {self.patch_size}")

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) the position embeddings are sized for: (resolution, resolution * 5 / 4), RT-1's 256x320."""
        return self.resolution, self.resolution * 5 // 4

    @property
    def latent_grid(self) -> tuple[int, int]:
        """The context token grid (hc, wc): the frame size / 2**(blocks - 1); RT-1: 32x40."""
        down = 2 ** (len(self.block_out_channels) - 1)
        H, W = self.frame_size
        return H // down, W // down

    @property
    def dyn_grid(self) -> tuple[int, int]:
        """The future-frame token grid: the latent grid / patch_size; RT-1: 8x10."""
        h, w = self.latent_grid
        return h // self.patch_size, w // self.patch_size


RT1_FRAME_CONFIG: dict = {}  # CNNFSQModel256's defaults (train_tokenizer.py builds it with fsq_levels=12 only)
RT1_COMPRESSIVE_CONFIG: dict = {  # RLVR-World vid_wm/ivideogpt/configs/ctx_vae256/config.json
    "block_out_channels": [128, 256, 256, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "in_channels": 3, "out_channels": 3, "latent_channels": 64,
    "layers_per_block": 2, "lookup_from_codebook": True, "mid_block_add_attention": False, "norm_num_groups": 32,
    "norm_type": "group", "vq_fsq_levels": 12, "dyn_fsq_levels": 12, "sample_size": 32, "scaling_factor": 0.18215,
    "force_upcast": True, "context_length": 1, "resolution": 256, "max_att_resolution": 32, "act_fn": "silu",
}


def _config_from_dict(config_cls, cfg: dict, source: str):
    cls_name = cfg.get("_class_name")
    if cls_name is not None and cls_name != config_cls.CLASS_NAME:
        raise ValueError(f"config _class_name must be {config_cls.CLASS_NAME!r}, got {cls_name!r} in {source}")
    known = {f.name for f in fields(config_cls)}
    args = {k: v for k, v in cfg.items() if not k.startswith("_")}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"config field {unknown[0]!r} is not a {config_cls.CLASS_NAME} argument "
                         f"(expected a subset of {sorted(known)}), in {source}")
    try:
        return config_cls(**args)
    except ValueError as e:
        raise ValueError(f"{e} (in {source})") from None


def _config_to_dict(cfg) -> dict:
    out = {"_class_name": cfg.CLASS_NAME, "_diffusers_version": _DIFFUSERS_VERSION}
    for k, v in asdict(cfg).items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


# ====================================================================== diffusers-compatible blocks
class ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D`` without time embedding: norm1 -> act -> conv1 -> norm2 -> act -> conv2, plus
    the input (through a 1x1 ``conv_shortcut`` if the width changes). [B, Cin, H, W] -> [B, Cout, H, W]."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, act_fn: str, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps, affine=True)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nonlinearity = _ACTIVATIONS[act_fn.lower()]()
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Downsample2D(nn.Module):
    """diffusers ``Downsample2D(use_conv=True, padding=0)``: zero-pad right/bottom by 1, conv 3x3 stride 2.
    [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2D(nn.Module):
    """diffusers ``Upsample2D(use_conv=True)``: nearest 2x, conv 3x3. [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] >= 64:
            x = x.contiguous()
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SelfAttention2D(nn.Module):
    """diffusers ``Attention`` as built by ``UNetMidBlock2D`` (one head of full width, GroupNorm on the input,
    residual): [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, ch: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=eps, affine=True)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)                 # [B, HW, C]
        q, k, v = (proj(h).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))   # [B, 1, HW, C]
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)          # [B, HW, C]
        out = self.to_out[1](self.to_out[0](out))
        return out.transpose(1, 2).reshape(B, C, H, W) + x


class UNetMidBlock2D(nn.Module):
    """diffusers ``UNetMidBlock2D`` (one layer, no time embedding): resnet, [attention], resnet."""

    def __init__(self, ch: int, groups: int, act_fn: str, add_attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([SelfAttention2D(ch, groups) if add_attention else None])  # diffusers' order
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, groups, act_fn), ResnetBlock2D(ch, ch, groups, act_fn)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions[0] is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    """diffusers ``DownEncoderBlock2D``: ``num_layers`` ResNets, then an optional ``Downsample2D``."""

    def __init__(self, in_ch: int, out_ch: int, num_layers: int, groups: int, act_fn: str, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, groups, act_fn)
                                      for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch)]) if add_downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    """diffusers ``UpDecoderBlock2D``: ``num_layers`` ResNets, then an optional ``Upsample2D``."""

    def __init__(self, in_ch: int, out_ch: int, num_layers: int, groups: int, act_fn: str, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, groups, act_fn)
                                      for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class CrossAttentionBlock(nn.Module):
    """iVideoGPT ``conditional_vae.CrossAttentionBlock``: queries from z [B, C, H, W], keys/values from the
    context features [B, C, H, W] (or [B, t, C, H, W] for t > 1 context frames), GroupNorm(32) on both, learned
    position embeddings, ``nn.MultiheadAttention`` (4 heads), then ``act(z + attn)``. -> [B, C, H, W]."""

    def __init__(self, ch: int, resolution: int, act_fn: str, kv_frames: int = 1, num_head: int = 4,
                 norm_group: int = 32, dropout: float = 0.1):
        super().__init__()
        n = resolution * resolution // 4 * 5  # H * W for a 4:5 frame
        self.att = nn.MultiheadAttention(ch, num_head, dropout=dropout, batch_first=True)
        self.resid_dropout = nn.Dropout(dropout)
        self.kv_norm = nn.GroupNorm(norm_group, ch)
        self.q_norm = nn.GroupNorm(norm_group, ch)
        self.kv_frames = kv_frames
        self.kv_pos_emb = nn.Parameter(torch.zeros(kv_frames * n, ch))
        self.q_pos_emb = nn.Parameter(torch.zeros(n, ch))
        self.act = _ACTIVATIONS[act_fn.lower()]()

    def forward(self, z: torch.Tensor, addin: torch.Tensor) -> torch.Tensor:
        if self.kv_frames > 1:                                            # [B, t, C, H, W] -> [B, C, t*H, W]
            addin = addin.permute(0, 2, 1, 3, 4).reshape(addin.shape[0], addin.shape[2], -1, addin.shape[4])
        kv = self.kv_norm(addin).permute(0, 2, 3, 1).reshape(addin.shape[0], -1, addin.shape[1]) + self.kv_pos_emb
        q = self.q_norm(z).permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1]) + self.q_pos_emb  # [B, HW, C]
        out, _ = self.att(q, kv, kv, need_weights=False)
        out = self.resid_dropout(out).permute(0, 2, 1).reshape(z.shape)   # [B, C, H, W]
        return self.act(z + out)


# ====================================================================== encoders / decoders
class Encoder(nn.Module):
    """iVideoGPT ``CNNEncoder`` / ``vae.Encoder`` (the same modules): conv_in, down blocks (a downsampling after
    all but the last), mid block, GroupNorm -> SiLU -> conv_out. [B, Cin, H, W] -> [B, Cout, H/2**(n-1), ...].
    ``return_features`` also returns [conv_in, each down block, mid] outputs (the compressive model's context)."""

    def __init__(self, in_ch: int, out_ch: int, channels: Sequence[int], layers: int, groups: int, act_fn: str,
                 mid_attention: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, channels[0], 3, padding=1)
        blocks, prev = [], channels[0]
        for i, ch in enumerate(channels):
            blocks.append(DownEncoderBlock2D(prev, ch, layers, groups, act_fn, add_downsample=i < len(channels) - 1))
            prev = ch
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = UNetMidBlock2D(channels[-1], groups, act_fn, mid_attention)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[-1], out_ch, 3, padding=1)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        x = self.conv_in(x)
        features = [x]
        for block in self.down_blocks:
            x = block(x)
            features.append(x)
        x = self.mid_block(x)
        features.append(x)
        x = self._head(x)
        return (x, features) if return_features else x


class Decoder(nn.Module):
    """iVideoGPT ``CNNDecoder`` (``frame_style=True``) or ``vae.Decoder`` (False): conv_in, mid block, up blocks,
    GroupNorm -> SiLU -> conv_out. [B, Cin, h, w] -> [B, Cout, h*2**(n-1), ...].

    The two differ: ``CNNDecoder`` gives up block i the width ``[*reversed(channels), channels[0]][i + 1]``,
    ``layers`` ResNets and an upsampling unless it is the *first*; ``vae.Decoder`` gives it
    ``reversed(channels)[i]``, ``layers + 1`` ResNets and an upsampling unless it is the *last*.
    ``return_features`` also returns [conv_in, mid, each up block] outputs."""

    def __init__(self, in_ch: int, out_ch: int, channels: Sequence[int], layers: int, groups: int, act_fn: str,
                 mid_attention: bool, frame_style: bool):
        super().__init__()
        rev = list(reversed(channels))
        self.conv_in = nn.Conv2d(in_ch, rev[0], 3, padding=1)
        if not frame_style:
            self.up_blocks = nn.ModuleList()  # registered before mid_block in vae.Decoder (state-dict order only)
        self.mid_block = UNetMidBlock2D(rev[0], groups, act_fn, mid_attention)
        blocks, prev = [], rev[0]
        for i in range(len(channels)):
            if frame_style:
                ch, n, up = [*rev, channels[0]][i + 1], layers, i > 0
            else:
                ch, n, up = rev[i], layers + 1, i < len(channels) - 1
            blocks.append(UpDecoderBlock2D(prev, ch, n, groups, act_fn, add_upsample=up))
            prev = ch
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], out_ch, 3, padding=1)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        x = self.conv_in(x)
        features = [x]
        x = self.mid_block(x)
        features.append(x)
        for block in self.up_blocks:
            x = block(x)
            features.append(x)
        x = self._head(x)
        return (x, features) if return_features else x


class ConditionalEncoder(Encoder):
    """iVideoGPT ``ConditionalEncoder``: an ``Encoder`` (mid attention on) whose down blocks at a latent height
    <= ``max_att_resolution`` are followed by a ``CrossAttentionBlock`` reading the context encoder's output of
    the same block (``cond_features[i + 1]``)."""

    def __init__(self, cfg: ReleasedCompressiveConfig):
        ch = cfg.block_out_channels
        super().__init__(cfg.in_channels, cfg.latent_channels, ch, cfg.layers_per_block, cfg.norm_num_groups,
                         cfg.act_fn, mid_attention=True)
        self.max_att_resolution = cfg.max_att_resolution
        blocks, res = [], cfg.resolution
        for i in range(len(ch)):
            if i < len(ch) - 1:
                res //= 2
            if res <= cfg.max_att_resolution:
                blocks.append(CrossAttentionBlock(ch[i], res, cfg.act_fn, kv_frames=cfg.context_length))
        self.cross_att_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, cond_features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv_in(x)
        k = 0
        for i, block in enumerate(self.down_blocks):
            x = block(x)
            if x.shape[-2] <= self.max_att_resolution:
                x = self.cross_att_blocks[k](x, cond_features[i + 1])
                k += 1
        return self._head(self.mid_block(x))


class ConditionalDecoder(Decoder):
    """iVideoGPT ``ConditionalDecoder``: a ``vae.Decoder`` (mid attention on) with a ``CrossAttentionBlock``
    after the mid block (reading the context decoder's mid output, ``cond_features[1]``) and after each up
    block at a height <= ``max_att_resolution`` (``cond_features[i + 2]``)."""

    def __init__(self, cfg: ReleasedCompressiveConfig):
        ch = cfg.block_out_channels
        super().__init__(cfg.latent_channels, cfg.out_channels, ch, cfg.layers_per_block, cfg.norm_num_groups,
                         cfg.act_fn, mid_attention=True, frame_style=False)
        self.max_att_resolution = cfg.max_att_resolution
        rev, res = list(reversed(ch)), _COND_DECODER_INIT_RESOLUTION
        blocks = [CrossAttentionBlock(rev[0], res, cfg.act_fn, kv_frames=cfg.context_length)]
        for i in range(len(ch)):
            if i < len(ch) - 1:
                res *= 2
            if res <= cfg.max_att_resolution:
                blocks.append(CrossAttentionBlock(rev[i], res, cfg.act_fn, kv_frames=cfg.context_length))
        self.cross_att_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, cond_features: list[torch.Tensor]) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x))
        x = self.cross_att_blocks[0](x, cond_features[1])
        for i, block in enumerate(self.up_blocks):
            x = block(x)
            if x.shape[-2] <= self.max_att_resolution:
                x = self.cross_att_blocks[i + 1](x, cond_features[i + 2])
        return self._head(x)


# ====================================================================== loading
_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _rename_deprecated(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' old attention-block names (``...attentions.0.query.weight``) -> the current ones."""
    out = {}
    for name, t in state.items():
        parts = name.split(".")
        if len(parts) >= 3 and "attentions" in parts and parts[-2] in _DEPRECATED_ATTN:
            name = ".".join([*parts[:-2], _DEPRECATED_ATTN[parts[-2]], parts[-1]])
        out[name] = t
    return out


def load_released_state_dict(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a diffusers model directory and the file they came from: ``diffusion_pytorch_model
    .safetensors``, else its sharded index, else ``diffusion_pytorch_model.bin`` (``torch.load(weights_only=True)``)."""
    directory = os.fspath(directory)
    single, index, binary = (os.path.join(directory, n) for n in WEIGHTS_NAMES)
    if os.path.isfile(single):
        from safetensors.torch import load_file

        return load_file(single), single
    if os.path.isfile(index):
        from safetensors.torch import load_file

        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        state = {}
        for shard in sorted(set(weight_map.values())):
            path = os.path.join(directory, shard)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"weight shard listed in {index} not found: {path}")
            state.update(load_file(path))
        return state, index
    if os.path.isfile(binary):
        state = torch.load(binary, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{binary} must hold a state dict, got {type(state).__name__}")
        return state, binary
    raise FileNotFoundError(f"no weights found in {directory}: expected one of {list(WEIGHTS_NAMES)}")


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    state = _rename_deprecated(state)
    expected = model.state_dict()
    for name, param in expected.items():
        if name not in state:
            raise ValueError(f"checkpoint {source} is missing tensor {name!r}")
        if tuple(state[name].shape) != tuple(param.shape):
            raise ValueError(f"checkpoint tensor {name!r} in {source} must have shape {tuple(param.shape)} "
                             f"(from config.json), got {tuple(state[name].shape)}")
    for name in state:
        if name not in expected:
            raise ValueError(f"checkpoint {source} has an unexpected tensor {name!r} for this config")
    model.load_state_dict(state)


def _read_dir(directory, subfolder, config_cls):
    directory = os.fspath(directory)
    if subfolder:
        directory = os.path.join(directory, subfolder)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"model directory not found: {directory}")
    config_file = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{CONFIG_NAME} not found: {config_file}")
    with open(config_file) as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{config_file} must hold a JSON object, got {type(raw).__name__}")  # noqa: TRY004
    cfg = _config_from_dict(config_cls, raw, config_file)
    state, source = load_released_state_dict(directory)
    return cfg, state, source


def _save_dir(model: nn.Module, cfg, directory) -> None:
    from safetensors.torch import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory, SAFETENSORS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = _config_to_dict(cfg)

    def write_config(tmp):
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)

    atomic_write(directory, CONFIG_NAME, write_config)


def _to_pixels(frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 -> /255; float as is (the released tokenizers take [0, 1] frames without remapping)."""
    x = frames.to(dtype)
    return x / 255.0 if frames.dtype == torch.uint8 else x


def _check_frames(name: str, frames, ndim: int, C: int) -> None:
    shape = "[B, C, H, W]" if ndim == 4 else "[B, T, C, H, W]"
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {shape}, got {type(frames).__name__}")  # noqa: TRY004
    if frames.dim() != ndim or frames.shape[-3] != C:
        raise ValueError(f"{name} must have shape {shape} with C = {C}, got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8 and frames.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be uint8 or float, got {frames.dtype}")


def _check_tokens(name: str, tokens, ndim: int, size: int) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tokens).__name__}")  # noqa: TRY004
    if tokens.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {tokens.dtype}")
    if tokens.numel():
        bad = (tokens < 0) | (tokens >= size)
        if bool(bad.any()):
            raise ValueError(f"{name} must lie in [0, {size}) (the codebook size), got {int(bad.sum())} outside, "
                             f"e.g. {int(tokens[bad][0])}")


# ====================================================================== the per-frame tokenizer
class ReleasedFrameTokenizer(nn.Module):
    """``CNNFSQModel256``: frames [B, C, H, W] <-> tokens [B, h, w] (h = H / 2**(n-1), n = len(block_out_channels))."""

    def __init__(self, config: ReleasedFrameConfig | None = None):
        super().__init__()
        cfg = self.config = config if config is not None else ReleasedFrameConfig()
        ch, D = cfg.block_out_channels, len(cfg.levels)
        self.encoder = Encoder(cfg.in_channels, cfg.latent_channels, ch, cfg.layers_per_block, cfg.norm_num_groups,
                               cfg.act_fn, mid_attention=True)
        self.quant_linear = nn.Conv2d(cfg.latent_channels, D, 1)
        self.dynamics_quantize = FSQ(cfg.levels)                  # no tensors in the state dict
        self.post_quant_linear = nn.Conv2d(D, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg.latent_channels, cfg.out_channels, ch, cfg.layers_per_block, cfg.norm_num_groups,
                               cfg.act_fn, mid_attention=True, frame_style=True)

    @property
    def fsq(self) -> FSQ:
        return self.dynamics_quantize

    @property
    def codebook_size(self) -> int:
        return self.dynamics_quantize.codebook_size

    @property
    def stride(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def token_grid(self, H: int, W: int) -> tuple[int, int]:
        s = self.stride
        for name, size in (("H", H), ("W", W)):
            if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % s:
                raise ValueError(f"{name} must be a positive multiple of {s} (pixels per token), got {size!r}")
        return H // s, W // s

    def tokens_per_frame(self, H: int, W: int) -> int:
        h, w = self.token_grid(H, W)
        return h * w

    def _dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def encode_latent(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, C, H, W] (float in [0, 1] or uint8) -> the latent before FSQ [B, D, h, w] fp32."""
        _check_frames("frames", frames, 4, self.config.in_channels)
        self.token_grid(int(frames.shape[-2]), int(frames.shape[-1]))
        return self.quant_linear(self.encoder(_to_pixels(frames, self._dtype()))).float()

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w, D] -> raw frames [B, C, H, W] fp32 (unclamped)."""
        z = codes.permute(0, 3, 1, 2).to(self.post_quant_linear.weight.dtype)
        return self.decoder(self.post_quant_linear(z)).float()

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, C, H, W] -> tokens [B, h, w] int64 in [0, codebook_size) (row-major = RLVR-World's h*w order)."""
        codes = self.dynamics_quantize.quantize(self.encode_latent(frames).permute(0, 2, 3, 1))   # [B, h, w, D]
        return self.dynamics_quantize.codes_to_indices(codes)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """tokens [B, h, w] -> frames [B, C, H, W] fp32, clamped to [0, 1] unless ``clamp=False``."""
        _check_tokens("tokens", tokens, 3, self.codebook_size)
        out = self._decode_codes(self.dynamics_quantize.indices_to_codes(tokens))
        return out.clamp(0.0, 1.0) if clamp else out

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [B, C, H, W] -> (raw recon [B, C, H, W] fp32, tokens [B, h, w] int64); straight-through FSQ."""
        codes = self.dynamics_quantize.quantize(self.encode_latent(frames).permute(0, 2, 3, 1))
        tokens = self.dynamics_quantize.codes_to_indices(codes.detach())
        return self._decode_codes(codes), tokens

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the released layout (config.json + diffusion_pytorch_model.safetensors), each atomically."""
        _save_dir(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, subfolder: str | None = None,
                        dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> ReleasedFrameTokenizer:
        """Load a released directory (eval mode); dtype: default the checkpoint's."""
        cfg, state, source = _read_dir(directory, subfolder, ReleasedFrameConfig)
        model = cls(cfg)
        _load_into(model, state, source)
        dtype = dtype if dtype is not None else model.encoder.conv_in.weight.dtype
        return model.to(device=device, dtype=dtype).eval()


# ====================================================================== the compressive tokenizer
class ReleasedCompressiveTokenizer(nn.Module):
    """``CompressiveVQModelFSQ``: Tc context frames at full rate (``encoder`` / ``decoder``, FSQ ``vq_levels``);
    each future frame at ``patch_size**2`` times fewer tokens (``cond_encoder`` / ``cond_decoder`` cross-attending
    to the context encoder's resp. decoder's features, FSQ ``dyn_levels`` over patch-linear latents)."""

    def __init__(self, config: ReleasedCompressiveConfig | None = None):
        super().__init__()
        cfg = self.config = config if config is not None else ReleasedCompressiveConfig(**RT1_COMPRESSIVE_CONFIG)
        ch, p, C = cfg.block_out_channels, cfg.patch_size, cfg.latent_channels
        self.cond_encoder = ConditionalEncoder(cfg)
        self.encoder = Encoder(cfg.in_channels, C, ch, cfg.layers_per_block, cfg.norm_num_groups, cfg.act_fn,
                               mid_attention=cfg.mid_block_add_attention)
        self.quant_conv = nn.Conv2d(C, len(cfg.vq_levels), 1)
        self.vq_fsq = FSQ(cfg.vq_levels)
        self.post_quant_conv = nn.Conv2d(len(cfg.vq_levels), C, 1)
        self.quant_linear = nn.Linear(C * p * p, len(cfg.dyn_levels))
        self.dyn_fsq = FSQ(cfg.dyn_levels)
        self.post_quant_linear = nn.Linear(len(cfg.dyn_levels), C * p * p)
        self.cond_decoder = ConditionalDecoder(cfg)
        self.decoder = Decoder(C, cfg.out_channels, ch, cfg.layers_per_block, cfg.norm_num_groups, cfg.act_fn,
                               mid_attention=cfg.mid_block_add_attention, frame_style=False)

    @property
    def context_codebook_size(self) -> int:
        return self.vq_fsq.codebook_size

    @property
    def future_codebook_size(self) -> int:
        return self.dyn_fsq.codebook_size

    def _dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def _repeat(self, features: list[torch.Tensor], B: int, Tf: int) -> list[torch.Tensor]:
        """Per-context-frame features [B*Tc, C, h, w] -> per future frame: [B*Tf, C, h, w] (Tc = 1) or
        [B*Tf, Tc, C, h, w]."""
        t = self.config.context_length
        out = []
        for f in features:
            f = f.reshape(B, t, *f.shape[-3:]).unsqueeze(1).expand(B, Tf, t, *f.shape[-3:])
            out.append(f.reshape(B * Tf, *f.shape[2:]) if t > 1 else f.reshape(B * Tf, *f.shape[-3:]))
        return out

    def _patchify(self, d: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> [N, (h/p)*(w/p), p*p*C] in (row patch, col patch) x (row, col, channel) order."""
        p = self.config.patch_size
        d = d.permute(0, 2, 3, 1).unfold(1, p, p).unfold(2, p, p).permute(0, 1, 2, 4, 5, 3)   # [N, h/p, w/p, p, p, C]
        return d.reshape(d.shape[0], d.shape[1] * d.shape[2], -1)

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, p*p*C] -> [N, C, h, w]."""
        (h, w), p, C = self.config.latent_grid, self.config.patch_size, self.config.latent_channels
        x = x.reshape(x.shape[0], h // p, w // p, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], C, h, w)

    def _check_video(self, frames: torch.Tensor) -> None:
        _check_frames("frames", frames, 5, self.config.in_channels)
        if tuple(frames.shape[-2:]) != self.config.frame_size:
            raise ValueError(f"frames must be {self.config.frame_size[0]}x{self.config.frame_size[1]} (the size the "
                             f"released position embeddings hold), got {frames.shape[-2]}x{frames.shape[-1]}")
        if frames.shape[1] <= self.config.context_length:
            raise ValueError(f"frames must hold more than context_length = {self.config.context_length} frames, "
                             f"got {frames.shape[1]}")

    @torch.no_grad()
    def tokenize(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [B, T, C, H, W] (float in [0, 1] or uint8; the first ``context_length`` are context) ->
        (context tokens [B, Tc, hc*wc], future tokens [B, T - Tc, L]) int64, as the reference's ``tokenize``."""
        self._check_video(frames)
        cfg, (B, T) = self.config, frames.shape[:2]
        t, Tf = cfg.context_length, T - cfg.context_length
        x = _to_pixels(frames, self._dtype())
        h, features = self.encoder(x[:, :t].flatten(0, 1), return_features=True)      # [B*Tc, C, hc, wc]
        d = self.cond_encoder(x[:, t:].flatten(0, 1), self._repeat(features, B, Tf))    # [B*Tf, C, hc, wc]
        h = self.quant_conv(h).float().permute(0, 2, 3, 1)                              # [B*Tc, hc, wc, D]
        d = self.quant_linear(self._patchify(d)).float()                                # [B*Tf, L, D]
        ctx = self.vq_fsq.codes_to_indices(self.vq_fsq.quantize(h)).reshape(B, t, -1)
        fut = self.dyn_fsq.codes_to_indices(self.dyn_fsq.quantize(d)).reshape(B, Tf, -1)
        return ctx, fut

    def _context_decode(self, ctx_tokens: torch.Tensor):
        hc, wc = self.config.latent_grid
        codes = self.vq_fsq.indices_to_codes(ctx_tokens.reshape(-1, hc, wc))             # [B*Tc, hc, wc, D]
        z = self.post_quant_conv(codes.permute(0, 3, 1, 2).to(self._dtype()))
        return self.decoder(z, return_features=True)                                    # [B*Tc, C, H, W], features

    @torch.no_grad()
    def detokenize(self, ctx_tokens: torch.Tensor, fut_tokens: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """(context tokens [B, Tc, hc*wc], future tokens [B, Tf, L]) -> frames [B, Tc + Tf, C, H, W] fp32 (raw
        like the reference's ``detokenize``; ``clamp=True`` clamps to [0, 1])."""
        cfg = self.config
        hc, wc = cfg.latent_grid
        hd, wd = cfg.dyn_grid
        _check_tokens("ctx_tokens", ctx_tokens, 3, self.context_codebook_size)
        _check_tokens("fut_tokens", fut_tokens, 3, self.future_codebook_size)
        B, t, Tf = ctx_tokens.shape[0], cfg.context_length, fut_tokens.shape[1]
        if tuple(ctx_tokens.shape[1:]) != (t, hc * wc) or fut_tokens.shape[0] != B or fut_tokens.shape[2] != hd * wd:
            raise ValueError(f"ctx_tokens must be [B, {t}, {hc * wc}] and fut_tokens [B, Tf, {hd * wd}], got "
                             f"{tuple(ctx_tokens.shape)} and {tuple(fut_tokens.shape)}")
        context, features = self._context_decode(ctx_tokens)
        codes = self.dyn_fsq.indices_to_codes(fut_tokens.reshape(B * Tf, -1))           # [B*Tf, L, D]
        z = self._unpatchify(self.post_quant_linear(codes.to(self._dtype())))          # [B*Tf, C, hc, wc]
        future = self.cond_decoder(z, self._repeat(features, B, Tf))                    # [B*Tf, C, H, W]
        out = torch.cat([context.reshape(B, t, *context.shape[-3:]), future.reshape(B, Tf, *future.shape[-3:])], 1)
        return out.float().clamp(0.0, 1.0) if clamp else out.float()

    @torch.no_grad()
    def decode_context(self, ctx_tokens: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """context tokens [B, Tc, hc*wc] -> frames [B, Tc, C, H, W] fp32 (clamped to [0, 1] by default)."""
        _check_tokens("ctx_tokens", ctx_tokens, 3, self.context_codebook_size)
        out = self._context_decode(ctx_tokens)[0].float()
        out = out.reshape(*ctx_tokens.shape[:2], *out.shape[-3:])
        return out.clamp(0.0, 1.0) if clamp else out

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the released layout (config.json + diffusion_pytorch_model.safetensors), each atomically."""
        _save_dir(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, subfolder: str | None = None,
                        dtype: torch.dtype | None = None,
                        device: torch.device | str = "cpu") -> ReleasedCompressiveTokenizer:
        """Load a released directory (eval mode); dtype: default the checkpoint's."""
        cfg, state, source = _read_dir(directory, subfolder, ReleasedCompressiveConfig)
        model = cls(cfg)
        _load_into(model, state, source)
        dtype = dtype if dtype is not None else model.encoder.conv_in.weight.dtype
        return model.to(device=device, dtype=dtype).eval()
