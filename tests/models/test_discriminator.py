"""models.discriminator: PatchGAN shapes and per-sample independence, hinge losses on hand examples, and the
adaptive GAN weight against a manual autograd computation."""

import pytest
import torch
from torch import nn

from rlvr_world.models.discriminator import NLayerDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss


@pytest.mark.parametrize(("n_layers", "size"), [(1, 32), (2, 32), (3, 32), (3, 64)])
def test_patch_logits_shape(n_layers, size):
    d = NLayerDiscriminator(3, 8, n_layers)
    out = d(torch.rand(2, 3, size, size))
    side = size // 2 ** n_layers - 2
    assert out.shape == (2, 1, side, side)
    assert d.min_size() == 3 * 2 ** n_layers
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())


def test_logits_do_not_depend_on_batch_mates_and_uint8_matches_float():
    d = NLayerDiscriminator(3, 8, 2)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    alone = d(x[:1])
    together = d(torch.cat([x[:1].float() / 255, torch.rand(2, 3, 32, 32)]))[:1]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)  # GroupNorm: per sample
    torch.testing.assert_close(d(x), d(x.float() / 255), rtol=1e-5, atol=1e-6)


def test_bad_args_raise():
    with pytest.raises(ValueError, match="n_layers must be a positive int"):
        NLayerDiscriminator(3, 8, 0)


def test_hinge_losses_on_a_hand_example():
    real = torch.tensor([2.0, 0.5, -1.0, 1.0])   # relu(1 - real) = [0, 0.5, 2, 0] -> mean 0.625
    fake = torch.tensor([-2.0, 0.0, 0.5, -0.5])  # relu(1 + fake) = [0, 1, 1.5, 0.5] -> mean 0.75
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.625 + 0.75))
    assert hinge_g_loss(fake).item() == pytest.approx(0.5)  # -mean([-2, 0, 0.5, -0.5]) = 0.5
    perfect = hinge_d_loss(torch.full((3,), 1.0), torch.full((3,), -1.0))
    assert perfect.item() == 0.0  # margins met: no loss


def test_adaptive_weight_matches_manual_autograd():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
    disc = NLayerDiscriminator(3, 8, 1)
    z, target = torch.randn(2, 4, 16, 16), torch.rand(2, 3, 16, 16)
    last = decoder[2].weight

    def losses():
        recon = torch.sigmoid(decoder(z))
        return (recon - target).abs().mean(), hinge_g_loss(disc(recon))

    rec, g = losses()
    w = adaptive_weight(rec, g, last)
    # manual: separate graphs, plain backward into .grad
    rec2, _ = losses()
    rec2.backward()
    rec_norm = last.grad.norm().item()
    decoder.zero_grad()
    disc.zero_grad()
    _, g2 = losses()
    g2.backward()
    g_norm = last.grad.norm().item()
    assert w.item() == pytest.approx(rec_norm / (g_norm + 1e-4), rel=1e-5)
    assert not w.requires_grad
    # graphs retained: the caller can still backward through both
    (rec + w * g).backward()
    # clamped to max_weight
    rec, g = losses()
    assert adaptive_weight(rec * 1e9, g, last, max_weight=5.0).item() == 5.0
    with pytest.raises(ValueError, match="must depend on last_layer"):
        adaptive_weight(rec, g, nn.Parameter(torch.ones(3)))
