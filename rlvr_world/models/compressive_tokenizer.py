"""The compressive, context-conditioned video tokenizer (after iVideoGPT): context frames are tokenized at
full rate on their own; each future frame is tokenized at a much lower rate by a dynamics branch whose
encoder and decoder cross-attend to the context, so only what changed has to be coded.

What it decides:

* **Two branches.** The *context branch* is a whole ``FrameTokenizer`` (``self.context``: its encoder,
  FSQ and decoder, unchanged): ``rt1`` 256x320 -> 16x20 = 320 tokens per context frame. The *dynamics
  branch* is built from the same blocks (``ResBlock``, strided-conv downsampling, ``Upsample``, ``FSQ``,
  imported from ``frame_tokenizer``) with one more downsampling: ``rt1`` -> 8x10 = 80 tokens per future
  frame. Levels: ``levels`` (context) and ``dyn_levels`` (future; default the same, [7, 5, 5, 5, 5]).
* **What the future frames see of the context: the context decoder's hidden states, computed from the
  quantized context codes** (the output of each decoder level before its upsampling). So a future frame
  depends on the context only through the context *tokens*: a world model that holds tokens alone can
  decode (``context_from_tokens``), and ``encode_context`` returns exactly what ``context_from_tokens``
  would. ``context`` is a list of ``[B, Tc, C_k, h_k, w_k]`` tensors, one per cross-attention site
  (``args.attn_levels``: the dynamics bottleneck first, then ``cross_attn_levels`` coarse to fine); a site
  at dynamics level k (k downsamplings) reads the context decoder level ``min(k, num_down)``.
* **Cross-attention** (``CrossAttention``): pre-norm (GroupNorm on both sides), multi-head, fused
  ``F.scaled_dot_product_attention``, residual. Queries are the future frame's grid positions; keys and
  values are every position of every context frame (``Tc * h_k * w_k`` of them; the ``Tf`` future frames
  of a clip are folded into the query length, so the context is never repeated). Fixed sinusoidal
  embeddings of (row, column) in pixel units and of the frame offset (context frame t at ``t - Tc``, the
  future frame at 0) are added to both sides before the projections, so any frame size works. One site
  sits in the middle of the dynamics encoder and of the dynamics decoder (the bottleneck); each level in
  ``cross_attn_levels`` adds one more after that level's ResNet blocks (``rt1``: at 16x20).
* **Each future frame is coded independently** given the context (no future-to-future attention): the
  Tf future frames of a clip may be encoded or decoded in any grouping with the same result.
* Pixels, precision, sigmoid output and token layout as ``frame_tokenizer``: float in [0, 1] or uint8 in,
  fp32 frames in (0, 1) out; FSQ in fp32; tokens int64 row-major ``[B, T, h, w]``. ``forward`` uses the
  straight-through FSQ for both branches; the future reconstruction's gradient also reaches the context
  encoder (through the context decoder's features and the context codes).
* **Checkpoints**: ``save_pretrained`` writes ``config.json`` (the ``CompressiveTokenizerArgs`` fields +
  ``model_type``) and ``model.safetensors`` atomically; ``from_pretrained`` checks both (ValueError naming
  the field or tensor).

Where it departs from iVideoGPT: FSQ instead of learned VQ codebooks, for both branches; ResNet-only
encoders/decoders (no self-attention, no dropout); the cross-attention source is the context *decoder*'s
features from the quantized codes (see above), with fixed sinusoidal position/time embeddings; every
future frame is conditioned on all context frames only; losses (L1/perceptual/GAN) live in the training
recipe, not here.

Presets (``CompressiveTokenizerArgs.from_name``): ``rt1`` (256x320: 16x20 context, 8x10 future tokens),
``sim-64`` (64x64: 8x8 context, 4x4 future), ``tiny`` (tests; 32x32: 8x8 context, 4x4 future).

Shapes: B batch, Tc context frames, Tf future frames, C image channels, H x W pixels, (hc, wc) the context
grid H / 2**num_down, (hd, wd) the future grid H / 2**dyn_num_down.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .frame_tokenizer import _FLOAT_DTYPES, FrameTokenizer, FrameTokenizerArgs, ResBlock, Upsample, _capturing
from .fsq import FSQ, _check_levels
from .hf_format import load_model_dir, save_model_dir

__all__ = ["PRESETS", "CompressiveTokenizer", "CompressiveTokenizerArgs", "CrossAttention"]

MODEL_TYPE = "rlvr_world.compressive_tokenizer"


@dataclass
class CompressiveTokenizerArgs:
    in_channels: int = 3
    norm_groups: int = 32
    # context branch (a FrameTokenizer)
    base_channels: int = 128
    channel_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    num_down: int = 4
    levels: Sequence[int] = (7, 5, 5, 5, 5)
    # dynamics (future-frame) branch
    dyn_base_channels: int = 128
    dyn_channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4)
    dyn_num_res_blocks: int = 2
    dyn_num_down: int = 5
    dyn_levels: Sequence[int] | None = None  # None: the same as levels
    cross_attn_levels: Sequence[int] = (4,)  # extra cross-attention sites (dynamics levels < dyn_num_down)
    num_heads: int = 8

    def __post_init__(self):
        self.levels = _check_levels(self.levels)
        try:
            self.channel_mult = tuple(self.channel_mult)
        except TypeError:
            raise ValueError(f"channel_mult must be a sequence of positive ints, got {self.channel_mult!r}") from None
        self.dyn_levels = self.levels if self.dyn_levels is None else _check_levels(self.dyn_levels)
        self.context_args  # validates the context fields  # noqa: B018
        for name in ("dyn_base_channels", "dyn_num_res_blocks", "dyn_num_down", "num_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("dyn_channel_mult", "cross_attn_levels"):
            try:
                setattr(self, name, tuple(getattr(self, name)))
            except TypeError:
                raise ValueError(f"{name} must be a sequence of ints, got {getattr(self, name)!r}") from None
        if len(self.dyn_channel_mult) != self.dyn_num_down + 1 or any(
                not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in self.dyn_channel_mult):
            raise ValueError(f"dyn_channel_mult must hold dyn_num_down + 1 = {self.dyn_num_down + 1} positive ints, "
                             f"got {list(self.dyn_channel_mult)}")
        extra = self.cross_attn_levels
        if len(set(extra)) != len(extra) or any(
                not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < self.dyn_num_down for k in extra):
            raise ValueError(f"cross_attn_levels must be distinct ints in [0, dyn_num_down = {self.dyn_num_down}) "
                             f"(the bottleneck always has one), got {list(extra)}")
        for k in self.attn_levels:
            if self.dyn_widths[k] % self.num_heads:
                raise ValueError(f"num_heads must divide the dynamics width {self.dyn_widths[k]} at cross-attention "
                                 f"level {k}, got {self.num_heads}")
        for width in self.dyn_widths:
            if width % self.norm_groups:
                raise ValueError(f"norm_groups must divide every dynamics level width {list(self.dyn_widths)}, "
                                 f"got {self.norm_groups}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> CompressiveTokenizerArgs:
        """A preset (``PRESETS``) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"name must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def context_args(self) -> FrameTokenizerArgs:
        return FrameTokenizerArgs(in_channels=self.in_channels, base_channels=self.base_channels,
                                  channel_mult=self.channel_mult, num_res_blocks=self.num_res_blocks,
                                  num_down=self.num_down, levels=self.levels, norm_groups=self.norm_groups)

    @property
    def dyn_widths(self) -> tuple[int, ...]:
        return tuple(self.dyn_base_channels * m for m in self.dyn_channel_mult)

    @property
    def attn_levels(self) -> tuple[int, ...]:
        """Dynamics levels with a cross-attention site: the bottleneck, then ``cross_attn_levels`` coarse to fine."""
        return (self.dyn_num_down, *sorted(self.cross_attn_levels, reverse=True))

    @property
    def stride(self) -> int:
        """H and W must be multiples of this: 2**max(num_down, dyn_num_down)."""
        return 2 ** max(self.num_down, self.dyn_num_down)


PRESETS: dict[str, dict] = {
    # RT-1: 256x320 -> context 16x20 = 320 tokens, future 8x10 = 80 tokens; extra cross-attention at 16x20
    "rt1": {},
    # simulator frames: 64x64 -> context 8x8, future 4x4 (num_down=2, channel_mult=(1, 2, 2) gives 16x16 context)
    "sim-64": {"norm_groups": 8, "base_channels": 32, "channel_mult": (1, 2, 2, 4), "num_res_blocks": 1,
               "num_down": 3, "dyn_base_channels": 32, "dyn_channel_mult": (1, 2, 2, 4, 4),
               "dyn_num_res_blocks": 1, "dyn_num_down": 4, "cross_attn_levels": (3,), "num_heads": 4},
    # tests: 32x32 -> context 8x8, future 4x4
    "tiny": {"norm_groups": 4, "base_channels": 16, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "num_down": 2,
             "dyn_base_channels": 16, "dyn_channel_mult": (1, 2, 2, 2), "dyn_num_res_blocks": 1, "dyn_num_down": 3,
             "cross_attn_levels": (2,), "num_heads": 2},
}


def _sincos(h: int, w: int, H: int, W: int, t: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed embeddings of (time t [T], row, column in pixels) -> [T, h * w, dim] fp32 (zero-padded to dim)."""
    n = max(dim // 6, 1)
    freqs = torch.exp(-math.log(1e4) * torch.arange(n, dtype=torch.float32, device=t.device) / n)       # [n]
    ys = (torch.arange(h, dtype=torch.float32, device=t.device) + 0.5) * (H / h)                         # [h]
    xs = (torch.arange(w, dtype=torch.float32, device=t.device) + 0.5) * (W / w)                         # [w]
    ey = torch.cat([torch.sin(ys[:, None] * freqs), torch.cos(ys[:, None] * freqs)], -1)                 # [h, 2n]
    ex = torch.cat([torch.sin(xs[:, None] * freqs), torch.cos(xs[:, None] * freqs)], -1)                 # [w, 2n]
    et = torch.cat([torch.sin(t.float()[:, None] * freqs), torch.cos(t.float()[:, None] * freqs)], -1)   # [T, 2n]
    T = t.shape[0]
    e = torch.cat([et[:, None, None].expand(T, h, w, -1), ey[None, :, None].expand(T, h, w, -1),
                   ex[None, None, :].expand(T, h, w, -1)], -1).reshape(T, h * w, -1)                      # [T, hw, 6n]
    return F.pad(e, (0, dim - e.shape[-1]))[..., :dim]


class CrossAttention(nn.Module):
    """x [B*T, C, h, w] attends to ctx [B, Tc, Cc, hc, wc] (all context positions); returns x + attention."""

    def __init__(self, dim: int, ctx_dim: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.ctx_norm = nn.GroupNorm(groups, ctx_dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(ctx_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
        B, Tc, Cc, hc, wc = ctx.shape
        N, C, h, w = x.shape
        T, H, W, nh = N // B, *frame_size, self.num_heads
        dt = self.q.weight.dtype
        q_pe = _sincos(h, w, H, W, torch.zeros(1, device=x.device), C).to(dt)                    # [1, hw, C]
        k_pe = _sincos(hc, wc, H, W, torch.arange(Tc, device=x.device) - Tc, Cc).to(dt)           # [Tc, hwc, Cc]
        hq = self.norm(x).reshape(B, T, C, h * w).transpose(2, 3) + q_pe                          # [B, T, hw, C]
        hk = self.ctx_norm(ctx.reshape(B * Tc, Cc, hc, wc).to(dt)).reshape(B, Tc, Cc, hc * wc)
        hk = (hk.transpose(2, 3) + k_pe).reshape(B, Tc * hc * wc, Cc)                             # [B, S, Cc]
        q = self.q(hq.reshape(B, T * h * w, C)).unflatten(-1, (nh, C // nh)).transpose(1, 2)     # [B, nh, L, d]
        k, v = self.kv(hk).unflatten(-1, (2, nh, C // nh)).permute(2, 0, 3, 1, 4)                 # [B, nh, S, d] x2
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, h * w, C)      # [B, T, hw, C]
        o = self.out(o).transpose(2, 3).reshape(N, C, h, w)
        return x + o


class _Stage(nn.Module):
    """One level of the dynamics encoder/decoder: ResNet blocks, optional cross-attention, optional resampling."""

    def __init__(self, blocks: list[nn.Module], attn: CrossAttention | None, site: int, resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.attn, self.site = attn, site
        self.resample = resample if resample is not None else nn.Identity()

    def forward(self, x, context, frame_size):
        x = self.blocks(x)
        if self.attn is not None:
            x = self.attn(x, context[self.site], frame_size)
        return self.resample(x)


class _DynamicsCoder(nn.Module):
    """The dynamics encoder (``decoder=False``: [B*Tf, C, H, W] -> latent [B*Tf, D, hd, wd]) or decoder
    (codes [B*Tf, D, hd, wd] -> pre-sigmoid [B*Tf, C, H, W]), cross-attending to ``context``."""

    def __init__(self, args: CompressiveTokenizerArgs, decoder: bool):
        super().__init__()
        widths, g, nd, heads = args.dyn_widths, args.norm_groups, args.dyn_num_down, args.num_heads
        ctx_widths = args.context_args.widths
        site_of = {k: i for i, k in enumerate(args.attn_levels)}

        def attn(k):
            return CrossAttention(widths[k], ctx_widths[min(k, args.num_down)], heads, g)

        D, ch = len(args.dyn_levels), widths[-1]
        self.decoder = decoder
        self.stem = nn.Conv2d(D, ch, 1) if decoder else nn.Conv2d(args.in_channels, widths[0], 3, padding=1)
        stages, ch = [], (ch if decoder else widths[0])
        for k in (reversed(range(nd + 1)) if decoder else range(nd + 1)):
            blocks = []
            for _ in range(args.dyn_num_res_blocks):
                blocks.append(ResBlock(ch, widths[k], g))
                ch = widths[k]
            has_attn = k in site_of and k != nd
            if decoder:
                resample = Upsample(ch) if k > 0 else None
            else:
                resample = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if k < nd else None
            stages.append(_Stage(blocks, attn(k) if has_attn else None, site_of.get(k, -1), resample))
        # the bottleneck: ResBlock -> cross-attention -> ResBlock
        mid_ch = widths[-1]
        self.mid = _Stage([ResBlock(mid_ch, mid_ch, g)], attn(nd), 0, ResBlock(mid_ch, mid_ch, g))
        self.stages = nn.ModuleList(stages)
        self.norm_out = nn.GroupNorm(g, ch, eps=1e-6)
        self.proj_out = nn.Conv2d(ch, args.in_channels, 3, padding=1) if decoder else nn.Conv2d(ch, D, 1)

    def forward(self, x: torch.Tensor, context: list[torch.Tensor], frame_size: tuple[int, int]) -> torch.Tensor:
        h = self.stem(x)
        if self.decoder:
            h = self.mid(h, context, frame_size)
        for stage in self.stages:
            h = stage(h, context, frame_size)
        if not self.decoder:
            h = self.mid(h, context, frame_size)
        return self.proj_out(F.silu(self.norm_out(h)))


class CompressiveTokenizer(nn.Module):
    """Context frames [B, Tc, C, H, W] <-> tokens [B, Tc, hc, wc]; future frames [B, Tf, C, H, W] <-> tokens
    [B, Tf, hd, wd] given the context. ``encode_*`` / ``decode_*`` for rollouts (no gradient), ``forward`` for
    training."""

    def __init__(self, args: CompressiveTokenizerArgs):
        super().__init__()
        self.args = args
        self.context = FrameTokenizer(args.context_args)
        self.dyn_encoder = _DynamicsCoder(args, decoder=False)
        self.dyn_fsq = FSQ(args.dyn_levels)
        self.dyn_decoder = _DynamicsCoder(args, decoder=True)

    @classmethod
    def from_name(cls, name: str, **overrides) -> CompressiveTokenizer:
        return cls(CompressiveTokenizerArgs.from_name(name, **overrides))

    @property
    def context_codebook_size(self) -> int:
        return self.context.codebook_size

    @property
    def future_codebook_size(self) -> int:
        return self.dyn_fsq.codebook_size

    def _check_size(self, H, W) -> None:
        s = self.args.stride
        for name, size in (("H", H), ("W", W)):
            if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % s:
                raise ValueError(f"{name} must be a positive multiple of 2**max(num_down, dyn_num_down) = {s}, "
                                 f"got {size!r}")

    def context_grid(self, H: int, W: int) -> tuple[int, int]:
        self._check_size(H, W)
        return H >> self.args.num_down, W >> self.args.num_down

    def future_grid(self, H: int, W: int) -> tuple[int, int]:
        self._check_size(H, W)
        return H >> self.args.dyn_num_down, W >> self.args.dyn_num_down

    # ------------------------------------------------------------------ checks
    def _check_frames(self, name: str, frames) -> None:
        C = self.args.in_channels
        if not isinstance(frames, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor [B, T, {C}, H, W], got {type(frames).__name__}")  # noqa: TRY004
        if frames.dim() != 5 or frames.shape[2] != C or frames.shape[0] == 0 or frames.shape[1] == 0:
            raise ValueError(f"{name} must have shape [B, T, {C}, H, W] with B, T >= 1, got {tuple(frames.shape)}")
        if frames.dtype != torch.uint8 and frames.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be uint8 or float, got {frames.dtype}")
        H, W = frames.shape[-2:]
        s = self.args.stride
        if H == 0 or W == 0 or H % s or W % s:
            raise ValueError(f"{name} height and width must be positive multiples of 2**max(num_down, dyn_num_down) "
                             f"= {s}, got {H}x{W}")

    def _check_tokens(self, name: str, tokens, size: int, stride_log2: int) -> None:
        if not isinstance(tokens, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor [B, T, h, w], got {type(tokens).__name__}")  # noqa: TRY004
        if tokens.dim() != 4 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"{name} must have shape [B, T, h, w] with B, T >= 1, got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {tokens.dtype}")
        h, w = tokens.shape[-2:]
        s = self.args.stride >> stride_log2
        if h == 0 or w == 0 or h % s or w % s:
            raise ValueError(f"{name} grid must be positive multiples of {s} (frames are multiples of "
                             f"{self.args.stride} pixels), got {h}x{w}")
        if not _capturing() and tokens.numel():
            bad = (tokens < 0) | (tokens >= size)
            if bool(bad.any()):
                raise ValueError(f"{name} must lie in [0, {size}) (the codebook size), got {int(bad.sum())} "
                                 f"outside, e.g. {int(tokens[bad][0])}")

    def _check_context(self, context, B: int, frame_size: tuple[int, int]) -> None:
        levels = self.args.attn_levels
        if not isinstance(context, (list, tuple)) or len(context) != len(levels):
            raise ValueError(f"context must be the list of {len(levels)} tensors from encode_context / "
                             f"context_from_tokens, got {type(context).__name__}")
        H, W = frame_size
        widths = self.args.context_args.widths
        for i, (k, f) in enumerate(zip(levels, context)):
            lc = min(k, self.args.num_down)
            want = (B, widths[lc], H >> lc, W >> lc)
            if not isinstance(f, torch.Tensor) or f.dim() != 5 or (f.shape[0], *f.shape[2:]) != want:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(f"context[{i}] must have shape [{B}, Tc, {want[1]}, {want[2]}, {want[3]}] (batch and "
                                 f"frame size of the future frames/tokens), got {got}")

    # ------------------------------------------------------------------ building blocks
    def _context_codes(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, Tc, C, H, W] -> codes [B*Tc, hc, wc, D] (straight-through)."""
        return self.context._quantize(self.context.encode_latent(frames.flatten(0, 1)))

    def _context_decode(self, codes: torch.Tensor, B: int, full: bool):
        """codes [B*Tc, hc, wc, D] -> (frames [B, Tc, C, H, W] or None, context list of [B, Tc, C_k, h_k, w_k])."""
        dec, nd = self.context.decoder, self.args.num_down
        need = {min(k, nd) for k in self.args.attn_levels}
        h = dec.mid(dec.proj(codes.permute(0, 3, 1, 2).to(dec.proj.weight.dtype)))
        feats, level = {}, nd
        for layer in dec.up:
            if isinstance(layer, Upsample):
                feats[level] = h
                if not full and level <= min(need):
                    break
                level -= 1
            h = layer(h)
        if level == 0:
            feats[0] = h
        context = [feats[min(k, nd)].unflatten(0, (B, -1)) for k in self.args.attn_levels]
        if not full:
            return None, context
        frames = torch.sigmoid(dec.conv_out(F.silu(dec.norm_out(h))).float())
        return frames.unflatten(0, (B, -1)), context

    def _future_latent(self, frames: torch.Tensor, context: list[torch.Tensor]) -> torch.Tensor:
        """[B, Tf, C, H, W] -> latent [B*Tf, hd, wd, D] fp32 (before FSQ)."""
        x = frames.flatten(0, 1).to(self.dyn_encoder.stem.weight.dtype)
        x = x * (2.0 / 255.0) - 1.0 if frames.dtype == torch.uint8 else x * 2.0 - 1.0
        return self.dyn_encoder(x, context, tuple(frames.shape[-2:])).float().permute(0, 2, 3, 1)

    def _future_decode(self, codes: torch.Tensor, context: list[torch.Tensor], B: int) -> torch.Tensor:
        """codes [B*Tf, hd, wd, D] -> frames [B, Tf, C, H, W] fp32 in (0, 1)."""
        s = 2 ** self.args.dyn_num_down
        size = (codes.shape[1] * s, codes.shape[2] * s)
        z = codes.permute(0, 3, 1, 2).to(self.dyn_decoder.stem.weight.dtype)
        return torch.sigmoid(self.dyn_decoder(z, context, size).float()).unflatten(0, (B, -1))

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def encode_context(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """frames [B, Tc, C, H, W] (float in [0, 1] or uint8) -> (tokens [B, Tc, hc, wc] int64 in
        [0, context_codebook_size), context: list of [B, Tc, C_k, h_k, w_k] per cross-attention site)."""
        self._check_frames("frames", frames)
        tokens = self.context.fsq.codes_to_indices(self._context_codes(frames))   # [B*Tc, hc, wc]
        codes = self.context.fsq.indices_to_codes(tokens)  # exactly the grid codes context_from_tokens sees
        return tokens.unflatten(0, frames.shape[:2]), self._context_decode(codes, frames.shape[0], full=False)[1]

    @torch.no_grad()
    def context_from_tokens(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Context tokens [B, Tc, hc, wc] -> the context list (the same as ``encode_context`` returns)."""
        self._check_tokens("tokens", tokens, self.context_codebook_size, self.args.num_down)
        codes = self.context.fsq.indices_to_codes(tokens.flatten(0, 1))
        return self._context_decode(codes, tokens.shape[0], full=False)[1]

    @torch.no_grad()
    def decode_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, Tc, hc, wc] -> frames [B, Tc, C, hc * 2**num_down, wc * 2**num_down] fp32 in (0, 1)."""
        self._check_tokens("tokens", tokens, self.context_codebook_size, self.args.num_down)
        return self.context.decode(tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2])

    @torch.no_grad()
    def encode_future(self, frames: torch.Tensor, context: list[torch.Tensor]) -> torch.Tensor:
        """frames [B, Tf, C, H, W] + context -> tokens [B, Tf, hd, wd] int64 in [0, future_codebook_size)."""
        self._check_frames("frames", frames)
        self._check_context(context, frames.shape[0], tuple(frames.shape[-2:]))
        codes = self.dyn_fsq.quantize(self._future_latent(frames, context))  # [B*Tf, hd, wd, D]
        return self.dyn_fsq.codes_to_indices(codes).unflatten(0, frames.shape[:2])

    @torch.no_grad()
    def decode_future(self, tokens: torch.Tensor, context: list[torch.Tensor]) -> torch.Tensor:
        """tokens [B, Tf, hd, wd] + context -> frames [B, Tf, C, hd * 2**dyn_num_down, ...] fp32 in (0, 1)."""
        self._check_tokens("tokens", tokens, self.future_codebook_size, self.args.dyn_num_down)
        s = 2 ** self.args.dyn_num_down
        self._check_context(context, tokens.shape[0], (tokens.shape[2] * s, tokens.shape[3] * s))
        codes = self.dyn_fsq.indices_to_codes(tokens.flatten(0, 1))
        return self._future_decode(codes, context, tokens.shape[0])

    def forward(self, context_frames: torch.Tensor, future_frames: torch.Tensor):
        """Training pass -> (recon_context [B, Tc, C, H, W], recon_future [B, Tf, C, H, W] fp32 in (0, 1),
        context_tokens [B, Tc, hc, wc], future_tokens [B, Tf, hd, wd] int64). Straight-through FSQ in both
        branches; tokens carry no gradient."""
        self._check_frames("context_frames", context_frames)
        self._check_frames("future_frames", future_frames)
        if context_frames.shape[0] != future_frames.shape[0] or context_frames.shape[-2:] != future_frames.shape[-2:]:
            raise ValueError(f"future_frames must share batch size and frame size with context_frames "
                             f"{tuple(context_frames.shape)}, got {tuple(future_frames.shape)}")
        B = context_frames.shape[0]
        c_codes = self._context_codes(context_frames)                           # [B*Tc, hc, wc, D]
        recon_context, context = self._context_decode(c_codes, B, full=True)
        f_codes = self.dyn_fsq.quantize(self._future_latent(future_frames, context))
        recon_future = self._future_decode(f_codes, context, B)
        c_tokens = self.context.fsq.codes_to_indices(c_codes.detach()).unflatten(0, context_frames.shape[:2])
        f_tokens = self.dyn_fsq.codes_to_indices(f_codes.detach()).unflatten(0, future_frames.shape[:2])
        return recon_context, recon_future, c_tokens, f_tokens

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json (the args) + model.safetensors into ``path``, each atomically."""
        save_model_dir(path, MODEL_TYPE, self.args, self.state_dict())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                        device: torch.device | str = "cpu") -> CompressiveTokenizer:
        """Load a ``save_pretrained`` directory (eval mode). dtype: default the checkpoint's. Missing files raise
        FileNotFoundError; a config or weights that do not match raise a ValueError naming the field or tensor."""
        model, state = load_model_dir(path, MODEL_TYPE, CompressiveTokenizerArgs, cls)
        if dtype is None:
            dtype = state["context.encoder.stem.weight"].dtype
        return model.to(device=device, dtype=dtype).eval()
