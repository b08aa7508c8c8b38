"""Parameter initialisers shared by the SeqBoat modules (upstream's ``Normal`` helper)."""

import torch
from torch import Tensor, nn

from .linear import Linear


def trunc_normal_(tensor: Tensor, std: float) -> Tensor:
    """Normal(0, std^2) truncated to [-2 std, 2 std], in place."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def linear(in_features: int, out_features: int, std: float = 0.02) -> nn.Linear:
    """A ``Linear`` (``nn.Linear`` with a faster CPU product for decoding steps, ``linear.py``)
    with weights ``trunc_normal_(std)`` and zero bias (every SeqBoat projection)."""
    layer = Linear(in_features, out_features)
    with torch.no_grad():
        trunc_normal_(layer.weight, std)
        layer.bias.zero_()
    return layer
