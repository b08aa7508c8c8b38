"""Position information for the GAU (docs/design.md, 'Positions'): learned relative bias and rotary.

Both are functions of *original* token positions carried with the compressed slots, so
they are computed per (query, key) pair inside the attention window: nothing of size
L x L is ever materialised (upstream hazard H9), and rotary extends to any position.

``rotary`` (``--rel-pos-bias rotary``) is RoPE: q and k are rotated by their absolute positions
(:func:`apply_rotary`), no parameter, no bias term. MEGA's ``--rel-pos-bias rotary`` is another
thing of the same name: a learned bias, two vectors rotated by the positions whose dot product is
added to the scores (``RotaryRelativePositionalBias``; its enwik8 recipe uses it); it is not
implemented here.
"""

import functools

import torch
from torch import Tensor, nn

from .initializers import trunc_normal_
from .precision import upcast


class RelativePositionalBias(nn.Module):
    """A learned bias ``table[clip(center + (pos_k - pos_q), 0, size - 1)]``.

    * ``simple``: ``size = 2M - 1``, ``center = M - 1`` (M = max_positions); offsets beyond
      +-(M - 1) would be clamped to the end entries, so the LM refuses longer sequences unless
      the attention never sees such offsets (MEGA-chunk: at most c - 1 inside a chunk of c
      consecutive tokens, ``models/baselines.offsets_within_chunk``).
    * ``local_pos``: ``size = 6w - 1``, ``center = 4w - 1``, offsets measured in slots of the
      compressed sequence; only ``[3w - 1, 5w - 1]`` is ever used, the rest exists for
      upstream checkpoint compatibility (upstream hazard H21; docs/design.md, 'Positions').
    """

    def __init__(self, size: int, center: int):
        super().__init__()
        self.center = center
        self.table = nn.Parameter(torch.empty(size))
        with torch.no_grad():
            trunc_normal_(self.table, 0.02)

    @classmethod
    def simple(cls, max_positions: int) -> "RelativePositionalBias":
        return cls(2 * max_positions - 1, max_positions - 1)

    @classmethod
    def local(cls, window: int) -> "RelativePositionalBias":
        return cls(6 * window - 1, 4 * window - 1)

    def forward(self, offset: Tensor) -> Tensor:
        """offset: integer tensor of ``pos_key - pos_query``; returns a bias of its shape."""
        index = (offset + self.center).clamp(0, self.table.numel() - 1)
        return self.table[index]


@functools.lru_cache(maxsize=16)
def rotary_frequencies(dim: int, device=None) -> Tensor:
    """theta_m = 10000^(-2m / dim), m = 0 .. dim/2 - 1 (fp32), as upstream computes it.

    A constant of (dim, device), so it is computed once (a decoding step would otherwise spend a
    tenth of its rotary time on it); made outside inference mode, so training may use it too.
    Not a parameter or buffer: nothing can make it stale (upstream hazard H14)."""
    with torch.inference_mode(False):
        return 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim))


def apply_rotary(x: Tensor, positions: Tensor) -> Tensor:
    """Rotate interleaved pairs ``(x_2m, x_2m+1)`` by ``positions * theta_m`` (fp32).

    x: ``(..., Z)``; positions: integer ``(...)`` (0-based absolute positions).
    """
    theta = rotary_frequencies(x.size(-1), device=x.device)
    angle = positions.float().unsqueeze(-1) * theta  # (..., Z/2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    pairs = upcast(x).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)
