import itertools

import pytest
import torch

from rlvr_world.models.fsq import FSQ, PRESETS


def test_codebook_size_and_presets():
    assert FSQ().codebook_size == 4375
    assert FSQ([7, 5, 5, 5, 5]).levels == (7, 5, 5, 5, 5)
    sizes = {bits: FSQ.from_bits(bits).codebook_size for bits in PRESETS}
    assert sizes == {8: 240, 10: 1000, 12: 4375, 14: 15360, 16: 64000}
    assert FSQ.from_bits(12).levels == (7, 5, 5, 5, 5)


def test_index_convention_hand_example():
    # levels (3, 4): basis (1, 3); q = (2, 1) -> index 2 + 1*3 = 5
    fsq = FSQ([3, 4])
    # odd L=3: z = (q - 1) / 1; even L=4: z = (q - 2) / 2  (grid -1, -0.5, 0, 0.5)
    z = torch.tensor([1.0, -0.5])
    assert fsq.codes_to_indices(z).item() == 5
    assert fsq.indices_to_codes(torch.tensor(5)).tolist() == [1.0, -0.5]
    assert fsq.indices_to_codes(torch.tensor(0)).tolist() == [-1.0, -1.0]
    assert fsq.indices_to_codes(torch.tensor(11)).tolist() == [1.0, 0.5]


@pytest.mark.parametrize("levels", [[3, 4], [2, 5, 3], [8, 6, 5]])
def test_round_trip_all_codes(levels):
    fsq = FSQ(levels)
    idx = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(idx)                                  # [N, D]
    assert codes.shape == (fsq.codebook_size, len(levels))
    assert codes.min() >= -1 and codes.max() <= 1
    assert len({tuple(c) for c in codes.tolist()}) == fsq.codebook_size   # all distinct
    assert torch.equal(fsq.codes_to_indices(codes), idx)
    # the order matches the hand formula: dimension 0 varies fastest
    grid = list(itertools.product(*[range(L) for L in reversed(levels)]))
    expected = torch.tensor([[q for q in reversed(g)] for g in grid])
    half = torch.tensor([L // 2 for L in levels])
    assert torch.equal(codes, (expected - half) / half)


@pytest.mark.parametrize("levels", [[7, 5, 5, 5, 5], [8, 6, 5], [2, 3]])
def test_quantize_on_grid_and_reaches_every_level(levels):
    fsq = FSQ(levels)
    z = torch.randn(4096, len(levels), generator=torch.Generator().manual_seed(0)) * 3
    codes = fsq(z)
    assert codes.shape == z.shape and codes.dtype == z.dtype
    half = torch.tensor([L // 2 for L in levels], dtype=torch.float32)
    q = codes * half + half
    assert torch.equal(q, q.round())
    for k, L in enumerate(levels):
        assert sorted(set(q[:, k].long().tolist())) == list(range(L))
    idx = fsq.encode(z)
    assert idx.dtype == torch.int64 and torch.equal(fsq.indices_to_codes(idx), codes)


def test_quantize_straight_through_gradient():
    fsq = FSQ([8, 5])
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
    w = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    (fsq.quantize(z) * w).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    half = torch.tensor([4.0, 2.0])
    (fsq.bound(z2) / half * w).sum().backward()                         # the same without rounding
    assert torch.allclose(z.grad, z2.grad)
    assert (z.grad != 0).all()


def test_quantize_keeps_half_precision_dtype():
    out = FSQ([5, 5]).quantize(torch.randn(3, 2, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("levels", [[1, 5], [], [5, 2.5], [True, 3]])
def test_bad_levels(levels):
    with pytest.raises(ValueError, match="levels"):
        FSQ(levels)


def test_bad_inputs():
    fsq = FSQ([5, 5])
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 25\).*got 1 outside, e.g. 25"):
        fsq.indices_to_codes(torch.tensor([0, 25]))
    with pytest.raises(ValueError, match="indices must lie"):
        fsq.indices_to_codes(torch.tensor([-1]))
    with pytest.raises(ValueError, match="indices must be an integer tensor"):
        fsq.indices_to_codes(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"z must have shape \[\.\.\., 2\].*\(4, 3\)"):
        fsq.quantize(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="z must hold FSQ codes"):
        fsq.codes_to_indices(torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match="bits must be one of"):
        FSQ.from_bits(11)


def test_doctests():
    import doctest

    from rlvr_world.models import fsq

    assert doctest.testmod(fsq, extraglobs={"torch": torch}).failed == 0
