"""The adversarial part of the tokenizer loss (VQ-GAN / taming-transformers): a PatchGAN discriminator, the
hinge losses, and VQ-GAN's adaptive weight of the generator term.

What it decides:

* **PatchGAN** (``NLayerDiscriminator``, taming's layout): conv 4x4 stride 2 -> LeakyReLU(0.2); then
  ``n_layers - 1`` times conv 4x4 stride 2 (no bias) -> norm -> LeakyReLU(0.2), the width doubling up to
  8x ``base_channels``; then conv 4x4 stride 1 -> norm -> LeakyReLU(0.2); then a conv 4x4 stride 1 to one
  logit per patch: ``[B, 1, H / 2**n_layers - 2, W / 2**n_layers - 2]`` (the receptive field of a logit
  is 70x70 pixels at ``n_layers=3``). Weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), as taming.
* **Norm: GroupNorm, not BatchNorm** (taming's default) **nor ActNorm** (its option). BatchNorm's output
  depends on the other samples of the batch and it carries running statistics that differ between
  train and eval mode and between grad-accumulation micro-batches; ActNorm initialises itself from the
  first batch it sees (hidden data-dependent state). GroupNorm (``min(32, C)`` groups, or fewer when
  they do not divide C) is per-sample and stateless, so a resumed run is bit-exact and the logits of a
  frame do not depend on its batch-mates.
* **Pixels**: frames in [0, 1] (the tokenizer's output range; uint8 is scaled by 1/255), mapped to
  [-1, 1] inside, as the tokenizer's encoder does.
* **Hinge loss** (``hinge_d_loss``, ``hinge_g_loss``): discriminator
  ``0.5 * (mean(relu(1 - D(real))) + mean(relu(1 + D(fake))))``; generator ``-mean(D(fake))``.
* **Adaptive weight** (``adaptive_weight``): ``||grad_w L_rec|| / (||grad_w L_gan|| + 1e-4)``, clamped to
  ``[0, max_weight]`` (1e4) and detached, with ``w`` the decoder's last layer; the recipe multiplies it by
  its ``gan_weight``. It keeps the GAN gradient at the scale of the reconstruction gradient whatever
  their raw magnitudes. Optional: without it the generator term is weighted by ``gan_weight`` alone.

Shapes: B frames, C image channels, H x W pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NLayerDiscriminator", "adaptive_weight", "hinge_d_loss", "hinge_g_loss"]


def _groups(channels: int, max_groups: int = 32) -> int:
    return math.gcd(channels, max_groups)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: frames [B, C, H, W] in [0, 1] (or uint8) -> patch logits [B, 1, H / 2**n_layers - 2, ...]."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, n_layers: int = 3):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("base_channels", base_channels), ("n_layers", n_layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):  # n_layers - 1 strided blocks, then one stride-1 block
            prev, mult = mult, min(2 ** n, 8)
            c_in, c_out = base_channels * prev, base_channels * mult
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2 if n < n_layers else 1, padding=1, bias=False),
                       nn.GroupNorm(_groups(c_out), c_out), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(base_channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def min_size(self) -> int:
        """The smallest frame side that yields at least one logit: 3 * 2**n_layers."""
        return 3 * 2 ** self.n_layers

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float() * (1 / 255) if frames.dtype == torch.uint8 else frames
        return self.main(x * 2 - 1)                                                     # [B, 1, h, w]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))), a scalar.

    >>> float(hinge_d_loss(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])))
    0.375
    """
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator term: -mean(D(fake)), a scalar.

    >>> float(hinge_g_loss(torch.tensor([1.0, -3.0])))
    1.0
    """
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """VQ-GAN's weight of the generator term: ||d rec_loss / d last_layer|| / (||d g_loss / d last_layer|| + eps),
    clamped to [0, max_weight], detached (a 0-dim fp32 tensor). Both graphs are retained for the backward.

    When the weight cannot be computed (no gradient path to ``last_layer``) it raises ValueError.
    """
    try:
        rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    except RuntimeError as e:
        raise ValueError(f"adaptive_weight: both losses must depend on last_layer ({e})") from None
    w = rec_grad.float().norm() / (g_grad.float().norm() + eps)
    return w.clamp(0.0, max_weight).detach()
