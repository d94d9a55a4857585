"""Finite scalar quantization (FSQ, Mentzer et al. 2023): the discrete bottleneck of the frame tokenizers.

A D-dimensional latent is squashed into a box and each dimension k is rounded to one of ``L_k`` levels, so
the implicit codebook is the grid of ``prod(levels)`` points; no codebook is learned. Decisions:

* **Index convention** (the paper's and the reference's, iVideoGPT / RLVR-World): with per-dimension
  level numbers ``q_k`` in ``[0, L_k)`` the index is ``sum_k q_k * basis_k`` where
  ``basis = (1, L_0, L_0 L_1, ...)`` (the cumulative product of the levels, starting at 1), so dimension 0
  varies fastest. ``levels=[7, 5, 5, 5, 5]`` gives 4,375 codes (the paper's tokenizer).
* **Codes** are ``z_k = (q_k - L_k // 2) / (L_k // 2)``. For odd ``L_k`` the grid is symmetric,
  ``{-1, ..., 0, ..., 1}``; for even ``L_k`` the paper's half-shift makes it ``{-1, ..., 1 - 2 / L_k}``
  (e.g. L = 8: ``-4/4 .. 3/4``): the bound below shifts the tanh by half a level so that exactly ``L_k``
  integers are reachable. All codes lie in ``[-1, 1]``.
* **quantize** (the forward used by tokenizers): ``bound(z) = tanh(z + shift) * half_l - offset`` with
  ``half_l = (L - 1)(1 + 1e-3) / 2``, ``offset = 0.5`` for even L (else 0), ``shift = atanh(offset /
  half_l)``; then rounding with a straight-through gradient, and division by ``L // 2``. It runs in fp32
  and returns the input's dtype.
* Levels < 2 and indices outside ``[0, codebook_size)`` raise a ValueError naming the argument.
* Presets: ``FSQ.from_bits(n)`` / ``PRESETS`` hold the levels of the reference's "fsq levels" n
  (about 2^n codes): 8 -> [8, 6, 5], 10 -> [8, 5, 5, 5], 12 -> [7, 5, 5, 5, 5], 14 -> [8, 8, 8, 6, 5],
  16 -> [8, 8, 8, 5, 5, 5].

>>> fsq = FSQ([7, 5, 5, 5, 5])
>>> fsq.codebook_size
4375
>>> fsq.codes_to_indices(torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0, 1.0]]))
tensor([   0, 4374])
>>> fsq.indices_to_codes(torch.tensor(7))   # q = (0, 1, 0, 0, 0)
tensor([-1.0000, -0.5000, -1.0000, -1.0000, -1.0000])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FSQ", "PRESETS"]

PRESETS: dict[int, tuple[int, ...]] = {
    8: (8, 6, 5),
    10: (8, 5, 5, 5),
    12: (7, 5, 5, 5, 5),
    14: (8, 8, 8, 6, 5),
    16: (8, 8, 8, 5, 5, 5),
}

_BOUND_EPS = 1e-3


def _check_levels(levels) -> tuple[int, ...]:
    try:
        levels = tuple(levels)
    except TypeError:
        raise ValueError(f"levels must be a sequence of ints >= 2, got {levels!r}") from None
    if not levels or any(isinstance(x, bool) or not isinstance(x, int) or x < 2 for x in levels):
        raise ValueError(f"levels must be a non-empty sequence of ints >= 2 (levels per dimension), got {list(levels)}")
    return levels


class FSQ(nn.Module):
    """Finite scalar quantizer over ``D = len(levels)`` dimensions with ``prod(levels)`` codes.

    ``forward`` is ``quantize``: z [..., D] (any float) -> codes [..., D] on the grid, in [-1, 1].
    """

    def __init__(self, levels: Sequence[int] = (7, 5, 5, 5, 5)):
        super().__init__()
        self.levels = _check_levels(levels)
        self.dim = len(self.levels)
        self.codebook_size = math.prod(self.levels)
        basis = [1]
        for level in self.levels[:-1]:
            basis.append(basis[-1] * level)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)

    @classmethod
    def from_bits(cls, bits: int) -> FSQ:
        """The reference's preset with about 2**bits codes (``PRESETS``).

        >>> FSQ.from_bits(10).levels, FSQ.from_bits(10).codebook_size
        ((8, 5, 5, 5), 1000)
        """
        if bits not in PRESETS:
            raise ValueError(f"bits must be one of {sorted(PRESETS)} (the FSQ presets), got {bits!r}")
        return cls(PRESETS[bits])

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, codebook_size={self.codebook_size}"

    def _check_last_dim(self, name: str, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")  # noqa: TRY004
        if z.dim() == 0 or z.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape [..., {self.dim}] (one value per FSQ level), "
                             f"got {tuple(z.shape)}")
        if not z.dtype.is_floating_point:
            raise ValueError(f"{name} must be a float tensor, got {z.dtype}")

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash z [..., D] (fp32) so that rounding reaches exactly L_k integers per dimension: [..., D]."""
        levels = self._levels.to(torch.float32)
        half_l = (levels - 1) * (1 + _BOUND_EPS) / 2                      # [D]
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)              # [D]
        shift = torch.atanh(offset / half_l)                               # [D]
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., D] -> codes [..., D] in [-1, 1] on the grid; gradients pass straight through the rounding.

        >>> FSQ([5]).quantize(torch.tensor([[-10.0], [0.3], [10.0]])).flatten()
        tensor([-1.0000,  0.5000,  1.0000])
        """
        self._check_last_dim("z", z)
        bounded = self.bound(z.float())                                    # [..., D]
        rounded = bounded + (torch.round(bounded) - bounded).detach()     # straight-through
        half_width = (self._levels // 2).to(torch.float32)
        return (rounded / half_width).to(z.dtype)

    forward = quantize

    def codes_to_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Grid codes z [..., D] -> indices [...] int64 in [0, codebook_size). Codes are rounded to the grid."""
        self._check_last_dim("z", z)
        half_width = self._levels // 2                                     # [D] int64
        q = torch.round(z.double() * half_width + half_width).to(torch.int64)   # [..., D]
        bad = (q < 0) | (q >= self._levels)
        if bool(bad.any()):
            raise ValueError(f"z must hold FSQ codes in [-1, 1] on the grid of levels {list(self.levels)}, "
                             f"got {int(bad.any(dim=-1).sum())} code vectors outside, e.g. {z[bad.any(dim=-1)][0].tolist()}")
        return (q * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices [...] (integer, in [0, codebook_size)) -> codes [..., D] fp32 in [-1, 1]."""
        if not isinstance(indices, torch.Tensor):
            raise ValueError(f"indices must be a torch.Tensor, got {type(indices).__name__}")  # noqa: TRY004
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
        indices = indices.to(torch.int64)
        bad = (indices < 0) | (indices >= self.codebook_size)
        if bool(bad.any()):
            raise ValueError(f"indices must lie in [0, {self.codebook_size}) (the codebook size), "
                             f"got {int(bad.sum())} outside, e.g. {int(indices[bad][0])}")
        q = (indices[..., None] // self._basis) % self._levels                # [..., D]
        half_width = self._levels // 2
        return (q - half_width).to(torch.float32) / half_width.to(torch.float32)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., D] -> indices [...] int64 (``codes_to_indices(quantize(z))``; no gradient)."""
        return self.codes_to_indices(self.quantize(z).detach())
