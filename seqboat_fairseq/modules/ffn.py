"""Normalised feed-forward network (``nffn`` upstream; docs/design.md, 'Normalisation and the FFN').

Built only when the FFN size is > 0. No published SeqBoat recipe uses it (they all pass
``--*-ffn-embed-dim -1``), but upstream's architecture defaults do, so the ``slag_*``
aliases can build it.
"""

import torch.nn.functional as F
from fairseq.modules.fairseq_dropout import FairseqDropout
from torch import Tensor, nn

from .initializers import trunc_normal_
from .linear import Linear
from .norms import SequenceNorm


class NormalizedFeedForwardNetwork(nn.Module):
    """(pre)norm -> fc1 -> SiLU -> hidden dropout -> fc2 -> dropout -> + residual -> (post)norm."""

    def __init__(self, embed_dim: int, ffn_dim: int, *, norm_type: str = "layernorm",
                 prenorm: bool = True, dropout: float = 0.0, activation_dropout: float = 0.0,
                 export: bool = False):
        super().__init__()
        self.prenorm = prenorm
        self.norm = SequenceNorm(norm_type, embed_dim, export=export)
        self.fc1 = Linear(embed_dim, ffn_dim)
        self.fc2 = Linear(ffn_dim, embed_dim)
        for fc in (self.fc1, self.fc2):
            trunc_normal_(fc.weight.data, 0.02)
            fc.bias.data.zero_()
        self.hidden_dropout = FairseqDropout(activation_dropout, module_name=type(self).__name__)
        self.dropout = FairseqDropout(dropout, module_name=type(self).__name__)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(L, B, D)`` -> ``(L, B, D)``."""
        residual = x
        if self.prenorm:
            x = self.norm(x)
        x = self.dropout(self.fc2(self.hidden_dropout(F.silu(self.fc1(x))))) + residual
        return x if self.prenorm else self.norm(x)
