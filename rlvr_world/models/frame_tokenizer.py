"""The per-frame visual tokenizer: a convolutional encoder, an FSQ bottleneck and a mirrored decoder that
turn each video frame into a grid of discrete tokens and back (the frame codes of the video world model).

What it decides:

* **Architecture** (VQ-GAN-style, as iVideoGPT's tokenizer): conv stem 3x3; per level ``num_res_blocks``
  ResNet blocks (GroupNorm -> SiLU -> conv 3x3, twice, with a 1x1 skip when the width changes); a strided
  3x3 conv (stride 2) between levels, ``num_down`` of them; a middle of two ResNet blocks; then GroupNorm
  -> SiLU -> a 1x1 projection to ``len(levels)`` latent dims. The decoder mirrors it: 1x1 projection from
  the codes, two middle blocks, per level ``num_res_blocks`` blocks and a nearest-neighbour 2x upsampling
  followed by a 3x3 conv, then GroupNorm -> SiLU -> conv 3x3 to the image channels.
* **Level widths**: ``base_channels * channel_mult[i]`` for level i (level 0 at full resolution, level i
  after i downsamplings), so ``len(channel_mult) == num_down + 1``.
* **Quantization**: ``fsq.FSQ(levels)`` on the latent in fp32 (the default ``[7, 5, 5, 5, 5]`` gives 4,375
  codes); ``forward`` passes gradients straight through the rounding. A token is the FSQ index of the code
  vector at one grid position; tokens are laid out ``[B, h, w]`` row-major (``h = H / 2**num_down``).
* **Pixels**: inputs are float in [0, 1] (not range-checked) or uint8 (scaled by 1/255), mapped to
  [-1, 1] inside. The output is ``sigmoid(decoder(codes))``: always in (0, 1), with a gradient everywhere
  (a clamp would zero the gradient of saturated pixels while training). Decoded frames are fp32.
* **Precision and layout**: the FSQ step and the output sigmoid run in fp32, everything else in the
  parameters' dtype or under autocast (bf16 autocast works). Only convolutions, GroupNorm, SiLU,
  nearest-neighbour interpolation and permutes are used, so ``channels_last`` inputs and modules keep
  their layout.
* **Checkpoints**: ``save_pretrained(dir)`` writes ``config.json`` (the ``FrameTokenizerArgs`` fields and
  ``model_type``) and ``model.safetensors``, each atomically; ``from_pretrained`` rejects a config or a
  weight set that does not match with a ValueError naming the field or tensor.

Where it departs from iVideoGPT's tokenizer: no attention layers (the middle block is two ResNet blocks),
no dropout, FSQ instead of a learned VQ codebook (as in RLVR-World), each frame is tokenized on its own
(the context-conditioned compressive tokenizer is ``compressive_tokenizer.py``), and no losses live here:
reconstruction, perceptual and adversarial losses belong to the training recipe (``train/tokenizer.py``).

Presets (``FrameTokenizerArgs.from_name``): ``rt1`` (256x320 RT-1 frames -> 16x20 = 320 tokens),
``sim-64`` (64x64 simulator frames -> 8x8 = 64 tokens; trains on a CPU in minutes), ``tiny`` (tests).

Shapes: B batch, C image channels, H x W pixels, h x w token grid (H / 2**num_down x W / 2**num_down),
D = len(levels) latent dims.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .fsq import FSQ, _check_levels
from .hf_format import load_model_dir, save_model_dir

__all__ = ["PRESETS", "FrameTokenizer", "FrameTokenizerArgs"]

MODEL_TYPE = "rlvr_world.frame_tokenizer"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class FrameTokenizerArgs:
    in_channels: int = 3
    base_channels: int = 128
    channel_mult: Sequence[int] = (1, 1, 2, 2, 4)  # width of level i = base_channels * channel_mult[i]
    num_res_blocks: int = 2  # ResNet blocks per level (encoder and decoder)
    num_down: int = 4  # 2x downsamplings: the token grid is (H / 2**num_down, W / 2**num_down)
    levels: Sequence[int] = (7, 5, 5, 5, 5)  # FSQ levels: prod(levels) codes, len(levels) latent dims
    norm_groups: int = 32  # GroupNorm groups; must divide every level's width

    def __post_init__(self):
        for name in ("in_channels", "base_channels", "num_res_blocks", "norm_groups"):
            _check_positive_int(name, getattr(self, name))
        if not isinstance(self.num_down, int) or isinstance(self.num_down, bool) or self.num_down < 0:
            raise ValueError(f"num_down must be an int >= 0, got {self.num_down!r}")
        try:
            self.channel_mult = tuple(self.channel_mult)
        except TypeError:
            raise ValueError(f"channel_mult must be a sequence of positive ints, got {self.channel_mult!r}") from None
        for m in self.channel_mult:
            _check_positive_int("channel_mult entries", m)
        if len(self.channel_mult) != self.num_down + 1:
            raise ValueError(f"channel_mult must have num_down + 1 = {self.num_down + 1} entries (one per level), "
                             f"got {len(self.channel_mult)}: {list(self.channel_mult)}")
        self.levels = _check_levels(self.levels)
        for width in self.widths:
            if width % self.norm_groups:
                raise ValueError(f"norm_groups must divide every level width {list(self.widths)}, "
                                 f"got {self.norm_groups}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> FrameTokenizerArgs:
        """A preset (``PRESETS``) with optional field overrides, e.g. ``from_name("sim-64", levels=[8, 5, 5, 5])``."""
        if name not in PRESETS:
            raise ValueError(f"name must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def stride(self) -> int:
        """Pixels per token along each side: 2**num_down."""
        return 2 ** self.num_down


PRESETS: dict[str, dict] = {
    # RT-1 (the paper's real-robot data): 256x320 -> 16x20 = 320 tokens, VQ-GAN f16 widths
    "rt1": {"base_channels": 128, "channel_mult": (1, 1, 2, 2, 4), "num_res_blocks": 2, "num_down": 4,
            "norm_groups": 32},
    # built-in simulator frames: 64x64 -> 8x8 = 64 tokens (num_down=2, channel_mult=(1, 2, 2) gives 16x16)
    "sim-64": {"base_channels": 32, "channel_mult": (1, 2, 2, 4), "num_res_blocks": 1, "num_down": 3,
               "norm_groups": 8},
    # tests: 32x32 -> 8x8
    "tiny": {"base_channels": 16, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "num_down": 2, "norm_groups": 4},
}


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _capturing() -> bool:
    """True under torch.compile or CUDA-graph capture, where data-dependent checks (a host sync) are skipped."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv 3x3, twice, plus a skip (1x1 conv if the width changes).

    [B, Cin, H, W] -> [B, Cout, H, W]."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=1e-6)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=1e-6)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then conv 3x3: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """[B, C, H, W] in [-1, 1] -> latent [B, D, h, w] (before quantization)."""

    def __init__(self, args: FrameTokenizerArgs):
        super().__init__()
        widths, g = args.widths, args.norm_groups
        self.stem = nn.Conv2d(args.in_channels, widths[0], 3, padding=1)
        layers, ch = [], widths[0]
        for i, width in enumerate(widths):
            for _ in range(args.num_res_blocks):
                layers.append(ResBlock(ch, width, g))
                ch = width
            if i < args.num_down:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # H -> H / 2
        self.down = nn.Sequential(*layers)
        self.mid = nn.Sequential(ResBlock(ch, ch, g), ResBlock(ch, ch, g))
        self.norm_out = nn.GroupNorm(g, ch, eps=1e-6)
        self.proj = nn.Conv2d(ch, len(args.levels), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.stem(x)))                     # [B, widths[-1], h, w]
        return self.proj(F.silu(self.norm_out(h)))                 # [B, D, h, w]


class Decoder(nn.Module):
    """Codes [B, D, h, w] -> pre-sigmoid image [B, C, H, W]."""

    def __init__(self, args: FrameTokenizerArgs):
        super().__init__()
        widths, g = args.widths, args.norm_groups
        ch = widths[-1]
        self.proj = nn.Conv2d(len(args.levels), ch, 1)
        self.mid = nn.Sequential(ResBlock(ch, ch, g), ResBlock(ch, ch, g))
        layers = []
        for i in reversed(range(len(widths))):
            for _ in range(args.num_res_blocks):
                layers.append(ResBlock(ch, widths[i], g))
                ch = widths[i]
            if i > 0:
                layers.append(Upsample(ch))                        # h -> 2h
        self.up = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(g, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, args.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.proj(z)))                        # [B, widths[0], H, W]
        return self.conv_out(F.silu(self.norm_out(h)))             # [B, C, H, W]


class FrameTokenizer(nn.Module):
    """Frames [B, C, H, W] <-> tokens [B, h, w] int64 in [0, codebook_size).

    ``encode`` / ``decode`` for rollouts and rewards; ``forward(frames) -> (recon, tokens)`` for training.
    """

    def __init__(self, args: FrameTokenizerArgs):
        super().__init__()
        self.args = args
        self.encoder = Encoder(args)
        self.fsq = FSQ(args.levels)
        self.decoder = Decoder(args)

    @classmethod
    def from_name(cls, name: str, **overrides) -> FrameTokenizer:
        return cls(FrameTokenizerArgs.from_name(name, **overrides))

    @property
    def codebook_size(self) -> int:
        return self.fsq.codebook_size

    def token_grid(self, H: int, W: int) -> tuple[int, int]:
        """The token grid (h, w) of H x W frames; H and W must be positive multiples of 2**num_down."""
        s = self.args.stride
        for name, size in (("H", H), ("W", W)):
            if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % s:
                raise ValueError(f"{name} must be a positive multiple of 2**num_down = {s} (pixels per token), "
                                 f"got {size!r}")
        return H // s, W // s

    def tokens_per_frame(self, H: int, W: int) -> int:
        h, w = self.token_grid(H, W)
        return h * w

    # ------------------------------------------------------------------ checks
    def _check_frames(self, frames) -> None:
        C, s = self.args.in_channels, self.args.stride
        if not isinstance(frames, torch.Tensor):
            raise ValueError(  # noqa: TRY004 - argument errors are ValueErrors throughout (ops/_checks.py)
                f"frames must be a torch.Tensor [B, {C}, H, W], got {type(frames).__name__}")
        if frames.dim() != 4 or frames.shape[1] != C:
            raise ValueError(f"frames must have shape [B, {C}, H, W], got {tuple(frames.shape)}")
        if frames.dtype != torch.uint8 and frames.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"frames must be uint8 or float (float16/bfloat16/float32/float64), got {frames.dtype}")
        H, W = frames.shape[-2:]
        if H == 0 or W == 0 or H % s or W % s:
            raise ValueError(f"frames height and width must be positive multiples of 2**num_down = {s} "
                             f"(pixels per token), got {H}x{W}")

    def _check_tokens(self, tokens) -> None:
        if not isinstance(tokens, torch.Tensor):
            raise ValueError(  # noqa: TRY004 - argument errors are ValueErrors throughout (ops/_checks.py)
                f"tokens must be a torch.Tensor [B, h, w], got {type(tokens).__name__}")
        if tokens.dim() != 3:
            raise ValueError(f"tokens must have shape [B, h, w], got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        if not _capturing() and tokens.numel():
            bad = (tokens < 0) | (tokens >= self.codebook_size)
            if bool(bad.any()):
                raise ValueError(f"tokens must lie in [0, {self.codebook_size}) (the codebook size), "
                                 f"got {int(bad.sum())} outside, e.g. {int(tokens[bad][0])}")

    def _weight_dtype(self) -> torch.dtype:
        return self.encoder.stem.weight.dtype

    # ------------------------------------------------------------------ encode / decode
    def encode_latent(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, C, H, W] (float in [0, 1] or uint8) -> continuous latent [B, D, h, w] fp32, before FSQ."""
        self._check_frames(frames)
        x = frames.to(self._weight_dtype())
        x = x * (2.0 / 255.0) - 1.0 if frames.dtype == torch.uint8 else x * 2.0 - 1.0   # [B, C, H, W] in [-1, 1]
        return self.encoder(x).float()                                                  # [B, D, h, w]

    def _quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, D, h, w] -> codes [B, h, w, D] fp32 on the FSQ grid (straight-through gradient)."""
        return self.fsq.quantize(latent.permute(0, 2, 3, 1))

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w, D] -> frames [B, C, H, W] fp32 in (0, 1)."""
        z = codes.permute(0, 3, 1, 2).to(self.decoder.proj.weight.dtype)               # [B, D, h, w]
        return torch.sigmoid(self.decoder(z).float())                                  # [B, C, H, W]

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, C, H, W] (float in [0, 1] or uint8) -> tokens [B, h, w] int64 in [0, codebook_size)."""
        codes = self._quantize(self.encode_latent(frames))                             # [B, h, w, D]
        return self.fsq.codes_to_indices(codes)                                        # [B, h, w]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, h, w] (integer, in [0, codebook_size)) -> frames [B, C, h * 2**num_down, w * 2**num_down]
        fp32 in (0, 1)."""
        self._check_tokens(tokens)
        return self._decode_codes(self.fsq.indices_to_codes(tokens))                   # [B, C, H, W]

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: frames [B, C, H, W] -> (recon [B, C, H, W] fp32 in (0, 1), tokens [B, h, w] int64).

        recon is differentiable w.r.t. encoder and decoder (straight-through FSQ); tokens carry no gradient.
        """
        codes = self._quantize(self.encode_latent(frames))                             # [B, h, w, D]
        tokens = self.fsq.codes_to_indices(codes.detach())                             # [B, h, w]
        return self._decode_codes(codes), tokens

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json (the args) + model.safetensors into ``path``, each atomically."""
        save_model_dir(path, MODEL_TYPE, self.args, self.state_dict())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                        device: torch.device | str = "cpu") -> FrameTokenizer:
        """Load a ``save_pretrained`` directory. dtype: default the checkpoint's. Returns the model in eval mode.

        A missing directory or file raises FileNotFoundError naming the path; a config or weights that do not
        match raise a ValueError naming the field or tensor.
        """
        model, state = load_model_dir(path, MODEL_TYPE, FrameTokenizerArgs, cls)
        if dtype is None:
            dtype = state["encoder.stem.weight"].dtype
        return model.to(device=device, dtype=dtype).eval()
