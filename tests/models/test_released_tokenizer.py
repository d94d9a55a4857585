"""Compatibility of ``models.released_tokenizer`` with the released thuml RT-1 tokenizers, without the weights.

The reference modules below are RLVR-World's (github.com/thuml/RLVR-World, ``vid_wm/ivideogpt/ivideogpt``:
``tokenizer/vq_model.py`` + ``tokenizer/vae.py`` for ``CNNFSQModel256``, ``ctx_tokenizer/compressive_vq_model_fsq.py``
+ ``ctx_tokenizer/vae.py`` + ``ctx_tokenizer/conditional_vae.py`` for ``CompressiveVQModelFSQ``, and
``utils/finite_scalar_quantize.py`` for FSQ), transcribed with their module structure and constructor calls into
``diffusers`` blocks unchanged; only prints, dead branches (gradient checkpointing, spatial norm) and einops
(rewritten as the equivalent permutes/reshapes) are left out. They are random-initialised with a seed, saved
with diffusers' own ``save_pretrained`` (the released layout), loaded with ours, and compared.
"""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
from torch import nn

from rlvr_world.testing import prepare_torchvision

prepare_torchvision()  # diffusers -> transformers -> torchvision beside a CPU torch
pytest.importorskip("diffusers")

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block

from rlvr_world.models.fsq import FSQ
from rlvr_world.models.released_tokenizer import (
    RT1_COMPRESSIVE_CONFIG,
    ReleasedCompressiveConfig,
    ReleasedCompressiveTokenizer,
    ReleasedFrameConfig,
    ReleasedFrameTokenizer,
)

TOL = 1e-5


# ============================================================================ reference: finite_scalar_quantize.py
def get_fsq_levels(n):
    return {8: [8, 6, 5], 10: [8, 5, 5, 5], 12: [7, 5, 5, 5, 5], 14: [8, 8, 8, 6, 5], 16: [8, 8, 8, 5, 5, 5]}[n]


def round_ste(z):
    zhat = z.round()
    return z + (zhat - z).detach()


class RefFSQ(nn.Module):
    """lucidrains' FSQ as vendored by iVideoGPT, for num_codebooks=1, dim=len(levels) (no projections)."""

    def __init__(self, levels):
        super().__init__()
        _levels = torch.tensor(levels, dtype=torch.int32)
        self.register_buffer("_levels", _levels, persistent=False)
        _basis = torch.cumprod(torch.tensor([1] + levels[:-1]), dim=0, dtype=torch.int32)
        self.register_buffer("_basis", _basis, persistent=False)
        self.codebook_dim = len(levels)

    def bound(self, z, eps: float = 1e-3):
        half_l = (self._levels - 1) * (1 + eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def quantize(self, z):
        quantized = round_ste(self.bound(z))
        half_width = self._levels // 2
        return quantized / half_width

    def _scale_and_shift(self, zhat_normalized):
        half_width = self._levels // 2
        return (zhat_normalized * half_width) + half_width

    def _scale_and_shift_inverse(self, zhat):
        half_width = self._levels // 2
        return (zhat - half_width) / half_width

    def _indices_to_codes(self, indices):
        return self._scale_and_shift_inverse(self.indices_to_level_indices(indices))

    def codes_to_indices(self, zhat):
        assert zhat.shape[-1] == self.codebook_dim
        zhat = self._scale_and_shift(zhat)
        return (zhat * self._basis).sum(dim=-1).to(torch.int32)

    def indices_to_level_indices(self, indices):
        indices = indices[..., None]                                   # '... -> ... 1'
        return (indices // self._basis) % self._levels

    def indices_to_codes(self, indices):
        is_img_or_video = indices.ndim >= 3
        codes = self._indices_to_codes(indices)
        if is_img_or_video:
            codes = codes.movedim(-1, 1)                               # 'b ... d -> b d ...'
        return codes

    def forward(self, z):
        is_img_or_video = z.ndim >= 4
        if is_img_or_video:
            z = z.movedim(1, -1)                                       # 'b d ... -> b ... d'
            ps = z.shape[1:-1]
            z = z.reshape(z.shape[0], -1, z.shape[-1])                 # pack 'b * d'
        z = z[:, :, None, :]                                           # 'b n (c d) -> b n c d', c = 1
        orig_dtype = z.dtype
        if orig_dtype not in (torch.float32, torch.float64):
            z = z.float()
        codes = self.quantize(z)
        indices = self.codes_to_indices(codes)                         # [b, n, 1]
        codes = codes.reshape(*codes.shape[:2], -1).type(orig_dtype)   # 'b n c d -> b n (c d)'
        out = codes
        if is_img_or_video:
            out = out.reshape(out.shape[0], *ps, out.shape[-1]).movedim(-1, 1)
            indices = indices.reshape(indices.shape[0], *ps, 1)
        indices = indices[..., 0]                                      # '... 1 -> ...'
        return out, indices


# ============================================================================ reference: tokenizer/vae.py
class CNNEncoder(nn.Module):
    def __init__(self, in_channels=3, out_channels=64, down_block_types=("DownEncoderBlock2D",) * 3,
                 block_out_channels=(128, 256, 512), layers_per_block=2, norm_num_groups=32, act_fn="silu",
                 double_z=False, mid_block_add_attention=True, init_res=64):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList([])
        self.cross_attention_blocks = nn.ModuleList([])
        output_channel = block_out_channels[0]
        for i, down_block_type in enumerate(down_block_types):
            input_channel = output_channel
            output_channel = block_out_channels[i]
            is_final_block = i == len(block_out_channels) - 1
            down_block = get_down_block(
                down_block_type, num_layers=layers_per_block, in_channels=input_channel,
                out_channels=output_channel, add_downsample=not is_final_block, resnet_eps=1e-6,
                downsample_padding=0, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                attention_head_dim=output_channel, temb_channels=None)
            self.down_blocks.append(down_block)
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn, output_scale_factor=1,
            resnet_time_scale_shift="default", attention_head_dim=block_out_channels[-1],
            resnet_groups=norm_num_groups, temb_channels=None, add_attention=mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[-1], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        conv_out_channels = 2 * out_channels if double_z else out_channels
        self.conv_out = nn.Conv2d(block_out_channels[-1], conv_out_channels, 3, padding=1)

    def forward(self, sample):
        sample = self.conv_in(sample)
        for down_block in self.down_blocks:
            sample = down_block(sample)
        sample = self.mid_block(sample)
        sample = self.conv_norm_out(sample)
        sample = self.conv_act(sample)
        return self.conv_out(sample)


class CNNDecoder(nn.Module):
    def __init__(self, in_channels=64, out_channels=3, up_block_types=("UpDecoderBlock2D",) * 3,
                 block_out_channels=(128, 256, 512), layers_per_block=2, norm_num_groups=32, act_fn="silu",
                 norm_type="group", mid_block_add_attention=True, init_res=16):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        temb_channels = in_channels if norm_type == "spatial" else None
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn, output_scale_factor=1,
            resnet_time_scale_shift="default" if norm_type == "group" else norm_type,
            attention_head_dim=block_out_channels[-1], resnet_groups=norm_num_groups, temb_channels=temb_channels,
            add_attention=mid_block_add_attention)
        self.up_blocks = nn.ModuleList([])
        self.cross_attention_blocks = nn.ModuleList([])
        reversed_block_out_channels = list(reversed(block_out_channels)) + [block_out_channels[0]]
        output_channel = reversed_block_out_channels[0]
        for i, up_block_type in enumerate(up_block_types):
            prev_output_channel = output_channel
            output_channel = reversed_block_out_channels[i + 1]
            is_first_block = i == 0
            up_block = get_up_block(
                up_block_type, num_layers=layers_per_block, in_channels=prev_output_channel,
                out_channels=output_channel, prev_output_channel=None, add_upsample=not is_first_block,
                resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                attention_head_dim=output_channel, temb_channels=temb_channels, resnet_time_scale_shift=norm_type)
            self.up_blocks.append(up_block)
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, sample, latent_embeds=None):
        sample = self.conv_in(sample)
        upscale_dtype = next(iter(self.up_blocks.parameters())).dtype
        sample = self.mid_block(sample, latent_embeds)
        sample = sample.to(upscale_dtype)
        for up_block in self.up_blocks:
            sample = up_block(sample, latent_embeds)
        sample = self.conv_norm_out(sample)
        sample = self.conv_act(sample)
        return self.conv_out(sample)


# ============================================================================ reference: tokenizer/vq_model.py
class CNNFSQModel256(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 down_block_types=("DownEncoderBlock2D",) * 5, up_block_types=("UpDecoderBlock2D",) * 5,
                 block_out_channels=(128, 256, 256, 512, 768), layers_per_block: int = 2, act_fn: str = "silu",
                 latent_channels: int = 64, norm_num_groups: int = 32, fsq_levels=12, norm_type: str = "group",
                 resolution=256):
        super().__init__()
        if isinstance(fsq_levels, int):
            fsq_levels = get_fsq_levels(fsq_levels)
        self.latent_channels = latent_channels
        self.encoder = CNNEncoder(
            in_channels=in_channels, out_channels=self.latent_channels, down_block_types=down_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
            norm_num_groups=norm_num_groups, double_z=False, mid_block_add_attention=True, init_res=resolution)
        self.fsq_levels = fsq_levels
        self.vq_embed_dim = len(fsq_levels)
        self.num_vq_embeddings = math.prod(fsq_levels)
        self.quant_linear = nn.Conv2d(self.latent_channels, self.vq_embed_dim, kernel_size=1, stride=1, padding=0)
        self.dynamics_quantize = RefFSQ(levels=list(fsq_levels))
        self.post_quant_linear = nn.Conv2d(self.vq_embed_dim, self.latent_channels, kernel_size=1, stride=1, padding=0)
        self.decoder = CNNDecoder(
            in_channels=self.latent_channels, out_channels=out_channels, up_block_types=up_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
            norm_num_groups=norm_num_groups, norm_type=norm_type, mid_block_add_attention=True,
            init_res=resolution // 2 ** (len(down_block_types) - 1))

    def forward(self, sample):
        input = sample.reshape(-1, *sample.shape[2:]) if sample.ndim == 5 else sample
        d = self.encoder(input)
        d = self.quant_linear(d)
        quant, _info = self.dynamics_quantize(d)
        quant2 = self.post_quant_linear(quant)
        dec = self.decoder(quant2)
        return dec.reshape(*sample.shape), torch.tensor(0.0)

    def encode(self, sample):
        input = sample.reshape(-1, *sample.shape[2:]) if sample.ndim == 5 else sample
        d = self.encoder(input)
        d = self.quant_linear(d)
        _quant, info = self.dynamics_quantize(d)
        return info.reshape(*sample.shape[:2], *info.shape[-2:])

    def decode(self, indices):
        input = indices.reshape(-1, *indices.shape[2:]) if indices.ndim == 4 else indices
        code = self.dynamics_quantize.indices_to_codes(input)
        quant2 = self.post_quant_linear(code)
        dec = self.decoder(quant2)
        return dec.reshape(*indices.shape[:-2], *dec.shape[-3:])


# ============================================================================ reference: ctx_tokenizer/vae.py
class Encoder(nn.Module):
    def __init__(self, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 block_out_channels=(64,), layers_per_block=2, norm_num_groups=32, act_fn="silu", double_z=True,
                 mid_block_add_attention=True):
        super().__init__()
        self.layers_per_block = layers_per_block
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList([])
        output_channel = block_out_channels[0]
        for i, down_block_type in enumerate(down_block_types):
            input_channel = output_channel
            output_channel = block_out_channels[i]
            is_final_block = i == len(block_out_channels) - 1
            down_block = get_down_block(
                down_block_type, num_layers=self.layers_per_block, in_channels=input_channel,
                out_channels=output_channel, add_downsample=not is_final_block, resnet_eps=1e-6,
                downsample_padding=0, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                attention_head_dim=output_channel, temb_channels=None)
            self.down_blocks.append(down_block)
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn, output_scale_factor=1,
            resnet_time_scale_shift="default", attention_head_dim=block_out_channels[-1],
            resnet_groups=norm_num_groups, temb_channels=None, add_attention=mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[-1], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        conv_out_channels = 2 * out_channels if double_z else out_channels
        self.conv_out = nn.Conv2d(block_out_channels[-1], conv_out_channels, 3, padding=1)

    def forward(self, sample, return_features=False):
        features = []
        sample = self.conv_in(sample)
        features.append(sample)
        for down_block in self.down_blocks:
            sample = down_block(sample)
            features.append(sample)
        sample = self.mid_block(sample)
        features.append(sample)
        sample = self.conv_norm_out(sample)
        sample = self.conv_act(sample)
        sample = self.conv_out(sample)
        return (sample, features) if return_features else sample


class Decoder(nn.Module):
    def __init__(self, in_channels=3, out_channels=3, up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,),
                 layers_per_block=2, norm_num_groups=32, act_fn="silu", norm_type="group",
                 mid_block_add_attention=True):
        super().__init__()
        self.layers_per_block = layers_per_block
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        self.up_blocks = nn.ModuleList([])
        temb_channels = in_channels if norm_type == "spatial" else None
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn, output_scale_factor=1,
            resnet_time_scale_shift="default" if norm_type == "group" else norm_type,
            attention_head_dim=block_out_channels[-1], resnet_groups=norm_num_groups, temb_channels=temb_channels,
            add_attention=mid_block_add_attention)
        reversed_block_out_channels = list(reversed(block_out_channels))
        output_channel = reversed_block_out_channels[0]
        for i, up_block_type in enumerate(up_block_types):
            prev_output_channel = output_channel
            output_channel = reversed_block_out_channels[i]
            is_final_block = i == len(block_out_channels) - 1
            up_block = get_up_block(
                up_block_type, num_layers=self.layers_per_block + 1, in_channels=prev_output_channel,
                out_channels=output_channel, prev_output_channel=None, add_upsample=not is_final_block,
                resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                attention_head_dim=output_channel, temb_channels=temb_channels, resnet_time_scale_shift=norm_type)
            self.up_blocks.append(up_block)
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, sample, latent_embeds=None, return_features=False):
        features = []
        sample = self.conv_in(sample)
        features.append(sample)
        upscale_dtype = next(iter(self.up_blocks.parameters())).dtype
        sample = self.mid_block(sample, latent_embeds)
        sample = sample.to(upscale_dtype)
        features.append(sample)
        for up_block in self.up_blocks:
            sample = up_block(sample, latent_embeds)
            features.append(sample)
        sample = self.conv_norm_out(sample)
        sample = self.conv_act(sample)
        sample = self.conv_out(sample)
        return (sample, features) if return_features else sample


# ============================================================================ reference: ctx_tokenizer/conditional_vae.py
class CrossAttentionBlock(nn.Module):
    def __init__(self, channels, resolution, norm_group=32, act_fn="silu", num_head=4, dropout=0.1, kv_frames=1):
        super().__init__()
        self.att = nn.MultiheadAttention(channels, num_head, dropout=dropout, batch_first=True)
        self.resid_dropout = nn.Dropout(dropout)
        self.kv_norm = nn.GroupNorm(norm_group, channels)
        self.q_norm = nn.GroupNorm(norm_group, channels)
        self.kv_frames = kv_frames
        self.kv_pos_emb = nn.Parameter(torch.zeros((kv_frames * resolution * resolution // 4 * 5, channels)))
        self.q_pos_emb = nn.Parameter(torch.zeros((resolution * resolution // 4 * 5, channels)))
        self.act = get_activation(act_fn)

    def forward(self, z, addin):
        if self.kv_frames > 1:
            addin = addin.permute(0, 2, 1, 3, 4).reshape(addin.shape[0], addin.shape[2], -1, addin.shape[3])
        kv = self.kv_norm(addin).permute(0, 2, 3, 1).reshape(addin.shape[0], -1, addin.shape[1])
        kv = kv + self.kv_pos_emb
        q = self.q_norm(z).permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1])
        q = q + self.q_pos_emb
        attn_output, _attn_weight = self.att(q, kv, kv)
        attn_output = self.resid_dropout(attn_output)
        attn_output = attn_output.permute(0, 2, 1).reshape(z.shape)
        return self.act(z + attn_output)


class ConditionalEncoder(Encoder):
    def __init__(self, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 block_out_channels=(64,), layers_per_block=2, norm_num_groups=32, act_fn="silu", double_z=True,
                 mid_block_add_attention=True, max_att_resolution=32, init_resolution=256, context_length=1):
        super().__init__(in_channels, out_channels, down_block_types, block_out_channels, layers_per_block,
                         norm_num_groups, act_fn, double_z, mid_block_add_attention)
        resolution = init_resolution
        self.max_att_resolution = max_att_resolution
        self.cross_att_blocks = nn.ModuleList([])
        output_channel = block_out_channels[0]
        for i, down_block_type in enumerate(down_block_types):
            output_channel = block_out_channels[i]
            is_final_block = i == len(block_out_channels) - 1
            if not is_final_block:
                resolution //= 2
            if resolution <= max_att_resolution:
                self.cross_att_blocks.append(CrossAttentionBlock(output_channel, resolution, kv_frames=context_length))

    def forward(self, sample, cond_features):
        sample = self.conv_in(sample)
        att_idx = 0
        for i, down_block in enumerate(self.down_blocks):
            sample = down_block(sample)
            if sample.shape[-2] <= self.max_att_resolution:
                sample = self.cross_att_blocks[att_idx](sample, cond_features[i + 1])
                att_idx += 1
        sample = self.mid_block(sample)
        sample = self.conv_norm_out(sample)
        sample = self.conv_act(sample)
        return self.conv_out(sample)


class ConditionalDecoder(Decoder):
    def __init__(self, in_channels=3, out_channels=3, up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,),
                 layers_per_block=2, norm_num_groups=32, act_fn="silu", norm_type="group",
                 mid_block_add_attention=True, max_att_resolution=32, init_resolution=16, context_length=1):
        super().__init__(in_channels, out_channels, up_block_types, block_out_channels, layers_per_block,
                         norm_num_groups, act_fn, norm_type, mid_block_add_attention)
        resolution = init_resolution
        self.max_att_resolution = max_att_resolution
        reversed_block_out_channels = list(reversed(block_out_channels))
        output_channel = reversed_block_out_channels[0]
        self.cross_att_blocks = nn.ModuleList([
            CrossAttentionBlock(output_channel, resolution, kv_frames=context_length)])
        for i, up_block_type in enumerate(up_block_types):
            output_channel = reversed_block_out_channels[i]
            is_final_block = i == len(block_out_channels) - 1
            if not is_final_block:
                resolution *= 2
            if resolution <= max_att_resolution:
                self.cross_att_blocks.append(CrossAttentionBlock(output_channel, resolution, kv_frames=context_length))

    def forward(self, sample, cond_features):
        sample = self.conv_in(sample)
        upscale_dtype = next(iter(self.up_blocks.parameters())).dtype
        sample = self.mid_block(sample, None)
        sample = sample.to(upscale_dtype)
        sample = self.cross_att_blocks[0](sample, cond_features[1])
        for i, up_block in enumerate(self.up_blocks):
            sample = up_block(sample, None)
            if sample.shape[-2] <= self.max_att_resolution:
                sample = self.cross_att_blocks[i + 1](sample, cond_features[i + 2])
        sample = self.conv_norm_out(sample)
        sample = self.conv_act(sample)
        return self.conv_out(sample)


# ============================================================================ reference: compressive_vq_model_fsq.py
def _repeat_cond(cond_features, context_length, future_length, B=None):
    if context_length > 1:
        return [f.reshape(B, context_length, *f.shape[-3:]).unsqueeze(1).repeat(1, future_length, 1, 1, 1, 1)
                .reshape(-1, context_length, *f.shape[-3:]) for f in cond_features]
    return [f.unsqueeze(1).repeat(1, future_length, 1, 1, 1).reshape(-1, *f.shape[-3:]) for f in cond_features]


class CompressiveVQModelFSQ(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block: int = 1,
                 act_fn: str = "silu", latent_channels: int = 3, sample_size: int = 32, vq_fsq_levels: int = 12,
                 norm_num_groups: int = 32, scaling_factor: float = 0.18215, norm_type: str = "group",
                 mid_block_add_attention=True, lookup_from_codebook=False, force_upcast=False,
                 dyn_fsq_levels: int = 12, context_length: int = 1, max_att_resolution=32, resolution=256,
                 patch_size=4):
        super().__init__()
        vq_fsq_levels = get_fsq_levels(vq_fsq_levels)
        dyn_fsq_levels = get_fsq_levels(dyn_fsq_levels)
        self.latent_channels = latent_channels
        self.dyna_latent_channels = latent_channels
        self.context_length = context_length
        self.vq_fsq_levels = vq_fsq_levels
        self.dyn_fsq_levels = dyn_fsq_levels
        self.patch_size = patch_size
        self.cond_encoder = ConditionalEncoder(
            in_channels=in_channels, out_channels=self.dyna_latent_channels, down_block_types=down_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
            norm_num_groups=norm_num_groups, double_z=False, mid_block_add_attention=True,
            max_att_resolution=max_att_resolution, init_resolution=resolution, context_length=context_length)
        self.encoder = Encoder(
            in_channels=in_channels, out_channels=latent_channels, down_block_types=down_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
            norm_num_groups=norm_num_groups, double_z=False, mid_block_add_attention=mid_block_add_attention)
        vq_embed_dim = len(self.vq_fsq_levels)
        self.quant_conv = nn.Conv2d(latent_channels, vq_embed_dim, 1)
        self.quantize = RefFSQ(levels=vq_fsq_levels)
        self.post_quant_conv = nn.Conv2d(vq_embed_dim, latent_channels, 1)
        dyn_vq_embed_dim = len(self.dyn_fsq_levels)
        self.quant_linear = nn.Linear(self.dyna_latent_channels * self.patch_size * self.patch_size, dyn_vq_embed_dim)
        self.dynamics_quantize = RefFSQ(levels=dyn_fsq_levels)
        self.post_quant_linear = nn.Linear(dyn_vq_embed_dim, self.dyna_latent_channels * self.patch_size * self.patch_size)
        self.cond_decoder = ConditionalDecoder(
            in_channels=self.dyna_latent_channels, out_channels=out_channels, up_block_types=up_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
            norm_num_groups=norm_num_groups, norm_type=norm_type, mid_block_add_attention=True,
            max_att_resolution=max_att_resolution, init_resolution=32, context_length=context_length)
        self.decoder = Decoder(
            in_channels=latent_channels, out_channels=out_channels, up_block_types=up_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
            norm_num_groups=norm_num_groups, norm_type=norm_type, mid_block_add_attention=mid_block_add_attention)

    def tokenize(self, pixel_values, context_length: int = 1):
        assert context_length == self.context_length
        B, T, C, H, W = pixel_values.shape
        context_frames = pixel_values[:, :context_length].reshape(-1, C, H, W)
        future_frames = pixel_values[:, context_length:].reshape(-1, C, H, W)
        future_length = T - context_length
        h, cond_features = self.encoder(context_frames, return_features=True)
        cond_features = _repeat_cond(cond_features, self.context_length, future_length,
                                     future_frames.shape[0] // future_length)
        h = self.quant_conv(h)
        d = self.cond_encoder(future_frames, cond_features)
        p = self.patch_size
        d = d.permute(0, 2, 3, 1).unfold(1, p, p).unfold(2, p, p).permute(0, 1, 2, 4, 5, 3)
        d = d.reshape(d.shape[0], d.shape[1] * d.shape[2], -1)
        d = self.quant_linear(d)
        _quant, info = self.quantize(h)
        d = d.transpose(-1, -2).unsqueeze(-1)
        _quant_d, info_d = self.dynamics_quantize(d)
        return info.reshape(B, context_length, -1), info_d.reshape(B, future_length, -1), h, d

    def detokenize(self, indices_c, indices_d, context_length: int = 1):
        assert context_length == self.context_length
        future_length = indices_d.shape[1]
        ctx_res = (32, 40)  # hard-coded in the released code, transcribed as is
        dyn_res = (8, 10)
        B = indices_c.shape[0]
        indices_c = indices_c.reshape(B, -1)
        indices_d = indices_d.reshape(B, -1)
        quant = self.quantize.indices_to_codes(indices_c)
        quant = quant.reshape(B * context_length, ctx_res[0], ctx_res[1], len(self.vq_fsq_levels)).permute(0, 3, 1, 2)
        quant2 = self.post_quant_conv(quant)
        quant_d = self.dynamics_quantize.indices_to_codes(indices_d)
        quant_d = quant_d.reshape(-1, dyn_res[0] * dyn_res[1], len(self.dyn_fsq_levels))
        quant2_d = self.post_quant_linear(quant_d)
        h, w, p, c = quant2.shape[-2], quant2.shape[-1], self.patch_size, self.dyna_latent_channels
        quant2_d = torch.reshape(quant2_d, [quant2_d.shape[0], h // p, w // p, p, p, c])
        quant2_d = torch.einsum("nhwpqc->nchpwq", quant2_d)
        quant2_d = torch.reshape(quant2_d, [quant2_d.shape[0], c, h, w])
        context_dec, cond_features = self.decoder(quant2, return_features=True)
        if context_length > 1:
            B = quant2_d.shape[0] // future_length
        cond_features = _repeat_cond(cond_features, context_length, future_length, B)
        dec = self.cond_decoder(quant2_d, cond_features)
        context_dec = context_dec.reshape(B, context_length, *context_dec.shape[-3:])
        dec = dec.reshape(B, future_length, *dec.shape[-3:])
        return torch.cat([context_dec, dec], dim=1)


# ============================================================================ helpers
def _perturb(model: nn.Module, seed: int) -> None:
    """Move every parameter off its default init (norm affines of 1/0, zero position embeddings) by seeded noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


FRAME_CFG = {"block_out_channels": [16, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 3,
             "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 2, "latent_channels": 8,
             "norm_num_groups": 8}


def _frame_reference(fsq_levels=12, seed=0) -> CNNFSQModel256:
    torch.manual_seed(seed)
    ref = CNNFSQModel256(fsq_levels=fsq_levels, resolution=32, **FRAME_CFG).eval()
    _perturb(ref, seed + 1)
    return ref


# ============================================================================ FSQ convention
@pytest.mark.parametrize("levels", [[7, 5, 5, 5, 5], [8, 5, 5, 5], [8, 6, 5]])
def test_fsq_convention_matches_ivideogpt(levels):
    ref, ours = RefFSQ(levels), FSQ(levels)
    idx = torch.arange(math.prod(levels))
    ref_codes = ref._indices_to_codes(idx)                                           # [N, D]
    torch.testing.assert_close(ours.indices_to_codes(idx), ref_codes, rtol=0, atol=0)
    assert torch.equal(ref.codes_to_indices(ref_codes).long(), idx)                  # their float->int32 path
    assert torch.equal(ours.codes_to_indices(ref_codes), idx)
    z = torch.randn(4096, len(levels), generator=torch.Generator().manual_seed(0)) * 2
    torch.testing.assert_close(ours.quantize(z), ref.quantize(z), rtol=0, atol=0)
    _out, info = ref(z[None].transpose(1, 2)[..., None])                              # image path [1, D, N, 1]
    assert torch.equal(ours.encode(z), info[0, :, 0].long())


# ============================================================================ per-frame tokenizer
def test_frame_reference_layout_and_keys(tmp_path):
    ref = _frame_reference()
    ref.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["_class_name"] == "CNNFSQModel256"
    ours = ReleasedFrameTokenizer.from_pretrained(tmp_path)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)                                              # same keys, same order
    assert all(our_sd[k].shape == ref_sd[k].shape for k in ref_sd)


def test_frame_full_size_rt1_keys_match():
    """The released RT-1 config (CNNFSQModel256's defaults): identical key names and shapes (on the meta device)."""
    with torch.device("meta"):
        ref, ours = CNNFSQModel256(), ReleasedFrameTokenizer(ReleasedFrameConfig())
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    assert ours.tokens_per_frame(256, 320) == 320 and ours.codebook_size == 4375


@pytest.mark.parametrize("fsq_levels", [12, 10])
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_frame_matches_reference(tmp_path, fsq_levels, weights):
    ref = _frame_reference(fsq_levels)
    ref.save_pretrained(tmp_path, safe_serialization=weights == "safetensors")
    assert (tmp_path / ("diffusion_pytorch_model." + weights)).is_file()
    ours = ReleasedFrameTokenizer.from_pretrained(tmp_path)
    frames = torch.rand(3, 3, 32, 40, generator=torch.Generator().manual_seed(5))    # [B, C, H, W] in [0, 1]
    with torch.no_grad():
        ref_latent = ref.quant_linear(ref.encoder(frames))                           # [B, D, h, w]
        ref_tokens = ref.encode(frames[:, None])[:, 0]                               # [B, h, w] int32
        ref_frames = ref.decode(ref_tokens[:, None])[:, 0]                            # [B, C, H, W]
        ref_recon, _ = ref(frames)
        our_latent = ours.encode_latent(frames)
        our_tokens = ours.encode(frames)
        our_frames = ours.decode(our_tokens, clamp=False)
        our_recon, our_fwd_tokens = ours(frames)
    assert our_tokens.shape == (3, 8, 10) and our_tokens.dtype == torch.int64
    assert _max_diff(our_latent, ref_latent) <= TOL
    assert torch.equal(our_tokens, ref_tokens.long()) and torch.equal(our_fwd_tokens, our_tokens)
    assert _max_diff(our_frames, ref_frames) <= TOL
    assert _max_diff(our_recon, ref_recon) <= TOL
    assert torch.equal(ours.decode(our_tokens), our_frames.clamp(0, 1))
    # uint8 frames are the float frames / 255
    u8 = (frames * 255).round().to(torch.uint8)
    assert torch.equal(ours.encode(u8), ours.encode(u8.float() / 255))


def test_frame_save_pretrained_loads_in_reference(tmp_path):
    ours = ReleasedFrameTokenizer.from_pretrained(_save(_frame_reference(seed=3), tmp_path / "ref"))
    ours.save_pretrained(tmp_path / "ours")
    assert sorted(os.listdir(tmp_path / "ours")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    ref2 = CNNFSQModel256.from_pretrained(tmp_path / "ours").eval()
    tokens = torch.randint(0, ours.codebook_size, (2, 8, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _max_diff(ours.decode(tokens, clamp=False), ref2.decode(tokens[:, None])[:, 0]) <= TOL


def _save(ref, path):
    ref.save_pretrained(path)
    return path


# ============================================================================ compressive tokenizer
CTX_CFG = {"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
           "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "latent_channels": 8,
           "norm_num_groups": 8, "mid_block_add_attention": False, "resolution": 64,
           "max_att_resolution": 32}  # 64x80 frames -> 32x40 context tokens, 8x10 future tokens


@pytest.mark.parametrize("context_length", [1, 2])
def test_compressive_matches_reference(tmp_path, context_length):
    torch.manual_seed(0)
    ref = CompressiveVQModelFSQ(context_length=context_length, **CTX_CFG).eval()
    _perturb(ref, 1)
    ref.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    ours = ReleasedCompressiveTokenizer.from_pretrained(tmp_path)
    assert list(ours.state_dict()) == list(ref.state_dict())
    frames = torch.rand(2, context_length + 2, 3, 64, 80, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref_c, ref_d, _h, _d = ref.tokenize(frames, context_length)
        ref_video = ref.detokenize(ref_c, ref_d, context_length)
        our_c, our_d = ours.tokenize(frames)
        our_video = ours.detokenize(our_c, our_d)
    assert our_c.shape == (2, context_length, 32 * 40) and our_d.shape == (2, 2, 8 * 10)
    assert torch.equal(our_c, ref_c.long()) and torch.equal(our_d, ref_d.long())
    assert _max_diff(our_video, ref_video) <= TOL
    assert _max_diff(ours.decode_context(our_c, clamp=False), ref_video[:, :context_length]) <= TOL


def test_compressive_full_size_rt1_keys_match():
    with torch.device("meta"):
        ref = CompressiveVQModelFSQ(**{k: v for k, v in RT1_COMPRESSIVE_CONFIG.items()})
        ours = ReleasedCompressiveTokenizer()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    assert ours.config.latent_grid == (32, 40) and ours.config.dyn_grid == (8, 10)


# ============================================================================ errors
def test_missing_or_misshaped_tensor_named(tmp_path):
    from safetensors.torch import load_file, save_file

    path = _save(_frame_reference(), tmp_path)
    weights = path / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = "encoder.mid_block.attentions.0.to_q.weight"
    save_file({k: v for k, v in state.items() if k != key}, weights)
    with pytest.raises(ValueError, match=re.escape(f"missing tensor '{key}'")):
        ReleasedFrameTokenizer.from_pretrained(path)
    save_file({**state, key: state[key][:, :-1].contiguous()}, weights)
    with pytest.raises(ValueError, match=re.escape(f"tensor '{key}'") + ".*must have shape"):
        ReleasedFrameTokenizer.from_pretrained(path)
    save_file({**state, "encoder.extra.weight": state[key].clone()}, weights)
    with pytest.raises(ValueError, match="unexpected tensor 'encoder.extra.weight'"):
        ReleasedFrameTokenizer.from_pretrained(path)


def test_deprecated_attention_names_are_renamed(tmp_path):
    from safetensors.torch import load_file, save_file

    ref = _frame_reference()
    path = _save(ref, tmp_path)
    weights = path / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    old = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
           .replace(".to_out.0.", ".proj_attn."): v for k, v in state.items()}
    save_file(old, weights)
    ours = ReleasedFrameTokenizer.from_pretrained(path)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_bad_config_and_files(tmp_path):
    path = _save(_frame_reference(), tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    for field, value, match in [("norm_type", "spatial", "norm_type"), ("act_fn", "tanh", "act_fn"),
                                ("_class_name", "VQModel", "_class_name"), ("fsq_levels", 11, "fsq_levels"),
                                ("down_block_types", ["AttnDownEncoderBlock2D"] * 3, "down_block_types"),
                                ("mystery", 1, "'mystery'")]:
        (path / "config.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(ValueError, match=match):
            ReleasedFrameTokenizer.from_pretrained(path)
    (path / "config.json").write_text(json.dumps(cfg))
    os.remove(path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model"):
        ReleasedFrameTokenizer.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        ReleasedFrameTokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="resolution"):
        ReleasedCompressiveConfig(**{**CTX_CFG, "resolution": 128})


def test_subfolder(tmp_path):
    _save(_frame_reference(), tmp_path / "tokenizer")
    ours = ReleasedFrameTokenizer.from_pretrained(tmp_path, subfolder="tokenizer")
    assert ours.codebook_size == 4375


# ============================================================================ the released RT-1 sizes, numerically
@pytest.mark.slow
def test_frame_rt1_size_matches_reference(tmp_path):
    """CNNFSQModel256's defaults (the released RT-1 frame tokenizer) on a 256x320 frame: 16x20 tokens."""
    torch.manual_seed(0)
    ref = CNNFSQModel256().eval()
    _perturb(ref, 1)
    ours = ReleasedFrameTokenizer.from_pretrained(_save(ref, tmp_path))
    frames = torch.rand(1, 3, 256, 320, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref_tokens = ref.encode(frames[:, None])[:, 0]
        ref_frames = ref.decode(ref_tokens[:, None])[:, 0]
        our_tokens = ours.encode(frames)
        our_frames = ours.decode(our_tokens, clamp=False)
    assert our_tokens.shape == (1, 16, 20)
    assert torch.equal(our_tokens, ref_tokens.long())
    assert _max_diff(our_frames, ref_frames) <= TOL * max(1.0, ref_frames.abs().max().item())


@pytest.mark.slow
def test_compressive_rt1_size_matches_reference(tmp_path):
    """configs/ctx_vae256/config.json (the released RT-1 compressive tokenizer) on 256x320 frames."""
    torch.manual_seed(0)
    ref = CompressiveVQModelFSQ(**RT1_COMPRESSIVE_CONFIG).eval()
    _perturb(ref, 1)
    ours = ReleasedCompressiveTokenizer.from_pretrained(_save(ref, tmp_path))
    frames = torch.rand(1, 2, 3, 256, 320, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref_c, ref_d, _h, _d = ref.tokenize(frames)
        ref_video = ref.detokenize(ref_c, ref_d)
        our_c, our_d = ours.tokenize(frames)
        our_video = ours.detokenize(our_c, our_d)
    assert our_c.shape == (1, 1, 1280) and our_d.shape == (1, 1, 80)
    assert torch.equal(our_c, ref_c.long()) and torch.equal(our_d, ref_d.long())
    assert _max_diff(our_video, ref_video) <= TOL * max(1.0, ref_video.abs().max().item())
