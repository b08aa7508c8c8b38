"""Gated Attention Unit over the compressed (activated-token) sequence. Spec 4.2, 4.4 steps 8-12.

    [z | r | v] = SiLU(in_proj(s))            z: Z, r: H, v: H
    q = z * gamma_0 + beta_0,  k = z * gamma_1 + beta_1   (shared-z queries / keys)
    O = Attn(q, k, v)   (working memory of w slots, or unbounded; see local_attention)
    g = out_proj(O * r)

Upstream fuses this into the layer (``mx_proj``, ``h_proj``, ``gamma``, ``beta``,
``rel_pos_bias``); ``seqboat_layer.UPSTREAM_KEY_MAP`` renames those checkpoint keys.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.modules.fairseq_dropout import FairseqDropout
from torch import Tensor, nn

from .ema import trunc_normal_
from .local_attention import ATTENTION_ACTIVATIONS, local_attention
from .positions import RelativePositionalBias, apply_rotary

REL_POS_TYPES = ("simple", "rotary")


def _linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        trunc_normal_(layer.weight, 0.02)
        layer.bias.zero_()
    return layer


class GatedAttentionUnit(nn.Module):
    """GAU on ``(B, C, D)`` slot sequences.

    Args:
        window: working-memory size w (> 0) or None (SeqBoat-full, unbounded).
        rel_pos: ``simple`` (learned bias of original-position offsets) or ``rotary``.
        local_pos: with ``simple`` and a window: bias of *slot* offsets (table of 6w - 1).
        dropout: applied to the GAU output in bidirectional mode only (upstream's asymmetry).
    """

    def __init__(self, embed_dim: int, zdim: int, hdim: int, *, window: Optional[int],
                 bidirectional: bool, activation: str = "softmax", rel_pos: str = "simple",
                 max_positions: int = 1024, local_pos: bool = False, dropout: float = 0.0,
                 attention_dropout: float = 0.0, hidden_dropout: float = 0.0):
        super().__init__()
        if activation not in ATTENTION_ACTIVATIONS:
            raise ValueError(f"--attention-activation-fn must be one of {ATTENTION_ACTIVATIONS}, got {activation!r}")
        if rel_pos not in REL_POS_TYPES:
            raise ValueError(f"--rel-pos-bias must be one of {REL_POS_TYPES}, got {rel_pos!r}")
        if rel_pos == "rotary" and zdim % 2:
            raise ValueError(f"--rel-pos-bias rotary needs an even z dim (--*z-dim), got {zdim}")
        if local_pos and (rel_pos != "simple" or window is None):
            raise ValueError("--local-pos biases offsets inside the working memory: it needs --rel-pos-bias simple "
                             "and a positive --chunk-size / --decoder-chunk-size")
        self.embed_dim, self.zdim, self.hdim = embed_dim, zdim, hdim
        self.window = window
        self.causal = not bidirectional
        self.activation = activation
        self.rotary = rel_pos == "rotary"
        self.local_pos = local_pos

        self.qk_gamma = nn.Parameter(torch.empty(2, zdim))
        self.qk_beta = nn.Parameter(torch.zeros(2, zdim))
        with torch.no_grad():
            trunc_normal_(self.qk_gamma, 0.02)
        if self.rotary:
            self.rel_pos = None
        elif self.local_pos:
            self.rel_pos = RelativePositionalBias.local(window)
        else:
            self.rel_pos = RelativePositionalBias.simple(max_positions)
        self.in_proj = _linear(embed_dim, zdim + 2 * hdim)
        self.out_proj = _linear(hdim, embed_dim)
        self.hidden_dropout = FairseqDropout(hidden_dropout, module_name=type(self).__name__)
        self.attention_dropout = FairseqDropout(attention_dropout, module_name=type(self).__name__)
        self.dropout = FairseqDropout(dropout, module_name=type(self).__name__)

    def project(self, s: Tensor, positions: Tensor):
        """s: ``(B, C, D)`` -> q, k ``(B, C, Z)`` (rotated if rotary), r, v ``(B, C, H)``."""
        z, r, v = F.silu(self.in_proj(s)).split([self.zdim, self.hdim, self.hdim], dim=-1)
        q = z * self.qk_gamma[0] + self.qk_beta[0]
        k = z * self.qk_gamma[1] + self.qk_beta[1]
        if self.rotary:
            q, k = apply_rotary(q, positions), apply_rotary(k, positions)
        return q, k, r, self.hidden_dropout(v)

    def bias_positions(self, positions: Tensor) -> Optional[Tensor]:
        """Integer coordinates whose differences index the additive bias (None: rotary)."""
        if self.rel_pos is None:
            return None
        if self.local_pos:  # slot offsets in the compressed sequence
            return torch.arange(positions.size(1), device=positions.device).expand_as(positions)
        return positions

    def output(self, attended: Tensor, r: Tensor) -> Tensor:
        g = self.out_proj(attended * r)
        return g if self.causal else self.dropout(g)

    def forward(self, s: Tensor, positions: Tensor, slot_valid: Tensor) -> Tensor:
        """s: ``(B, C, D)`` compressed SSM outputs; positions: ``(B, C)`` original 0-based
        positions of the slots; slot_valid: ``(B, C)`` bool. Returns ``(B, C, D)``."""
        q, k, r, v = self.project(s, positions)
        attended = local_attention(
            q, k, v, slot_valid, window=self.window, causal=self.causal,
            activation=self.activation, positions=self.bias_positions(positions),
            bias=self.rel_pos, dropout=self.attention_dropout,
        )
        return self.output(attended, r)

    def extra_repr(self) -> str:
        pos = "rotary" if self.rotary else ("local_pos" if self.local_pos else "simple")
        return (f"zdim={self.zdim}, hdim={self.hdim}, window={self.window}, causal={self.causal}, "
                f"activation={self.activation}, positions={pos}")
