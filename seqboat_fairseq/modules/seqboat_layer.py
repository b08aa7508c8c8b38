"""One SeqBoat layer (upstream ``SeqBoatUnit``), spec section 4.

    x ─ [prenorm] ─ MD-EMA ─ SiLU ─ dropout ─ s                        (L, B, D)
    [u | hx] = hx_proj(s)                       router logits u (2), always-on path hx (D)
    active, gate = router(u)                    hard decision, confidence (0 when skipped)
    G = extract(GAU(compress(s, active))) * gate
    y = SiLU(hx + G + x)              bidirectional
    y = SiLU(dropout(hx + G) + x)     causal
    [postnorm] y = norm(y);  [ffn]

Variants, all options of this one layer:
  * SeqBoat       ``window=w > 0``: local attention over a working memory of w activated tokens.
  * SeqBoat-full  ``window <= 0``: unbounded attention over the compressed sequence.
  * always-active ``always_active=True``: no router, every token runs the GAU (MEGA-style).

The layer *always* compresses, so a sequence's output never depends on its batch mates
(upstream skips compression when any row is fully active, which changes the window of
every other row: spec H1).
"""

from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.modules.fairseq_dropout import FairseqDropout
from torch import Tensor, nn

from .ema import MultiHeadEMA, trunc_normal_
from .ffn import NormalizedFeedForwardNetwork
from .gau import GatedAttentionUnit
from .norms import SequenceNorm
from .sma import LatentConfigurator, compress, extract, plan_compression


class LayerActivation(NamedTuple):
    """Per-token routing outcome of one layer: ``active`` (B, L) bool and the gate
    ``confidence`` (B, L) (max router probability for active tokens, else 0; all-ones for
    always-active layers)."""

    active: Tensor
    confidence: Tensor


class SeqBoatLayer(nn.Module):
    """A SeqBoat layer on time-major ``(L, B, D)`` inputs. See the module docstring."""

    def __init__(
        self,
        embed_dim: int,
        zdim: int,
        hdim: int,
        ndim: int = 16,
        *,
        bidirectional: bool = False,
        window: Optional[int] = None,
        truncation: Optional[int] = None,
        norm_type: str = "layernorm",
        prenorm: bool = True,
        norm_affine: bool = True,
        attention_activation: str = "softmax",
        rel_pos: str = "simple",
        max_positions: int = 1024,
        local_pos: bool = False,
        init_temp_scale: float = 0.3,
        always_active: bool = False,
        act_bias: float = 0.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        ffn_dim: int = -1,
        activation_dropout: float = 0.0,
        export: bool = False,
    ):
        super().__init__()
        if window is not None and window <= 0:
            window = None  # chunk size <= 0 selects SeqBoat-full, as upstream
        self.embed_dim = embed_dim
        self.bidirectional = bidirectional
        self.prenorm = prenorm
        self.act_bias = act_bias
        self.norm = SequenceNorm(norm_type, embed_dim, affine=norm_affine, export=export)
        self.ema = MultiHeadEMA(embed_dim, ndim, bidirectional=bidirectional, truncation=truncation)
        self.router = None if always_active else LatentConfigurator(embed_dim, init_temp_scale)
        num_logits = 0 if always_active else LatentConfigurator.num_options
        self.hx_proj = nn.Linear(embed_dim, num_logits + embed_dim)
        with torch.no_grad():
            trunc_normal_(self.hx_proj.weight, 0.02)
            self.hx_proj.bias.zero_()
        self.gau = GatedAttentionUnit(
            embed_dim, zdim, hdim, window=window, bidirectional=bidirectional,
            activation=attention_activation, rel_pos=rel_pos, max_positions=max_positions,
            local_pos=local_pos, dropout=dropout, attention_dropout=attention_dropout,
            hidden_dropout=hidden_dropout,
        )
        self.dropout = FairseqDropout(dropout, module_name=type(self).__name__)
        self.ffn = (
            NormalizedFeedForwardNetwork(embed_dim, ffn_dim, norm_type=norm_type, prenorm=prenorm,
                                         dropout=dropout, activation_dropout=activation_dropout,
                                         export=export)
            if ffn_dim > 0 else None
        )

    @property
    def window(self) -> Optional[int]:
        return self.gau.window

    def route(self, s: Tensor, padding_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """s: ``(B, L, D)`` -> ``(hx (B, L, D), active (B, L), gate (B, L) or None)``."""
        h = self.hx_proj(s)
        if self.router is None:
            active = torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
            if padding_mask is not None:
                active = active & ~padding_mask
            return h, active, None
        logits, hx = h.split([LatentConfigurator.num_options, self.embed_dim], dim=-1)
        active, gate = self.router(logits, padding_mask, self.act_bias)
        return hx, active, gate

    def combine(self, hx: Tensor, gated: Tensor, residual: Tensor) -> Tensor:
        """Always-on path + gated GAU output + residual, then SiLU, postnorm and FFN.
        All inputs time-major ``(L, B, D)``."""
        mixed = hx + gated
        y = F.silu(mixed + residual if self.bidirectional else self.dropout(mixed) + residual)
        if not self.prenorm:
            y = self.norm(y)
        return self.ffn(y) if self.ffn is not None else y

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, LayerActivation]:
        """x: ``(L, B, D)``; padding_mask: ``(B, L)`` True = pad.

        Returns ``(y (L, B, D), LayerActivation)``.
        """
        residual = x
        if self.prenorm:
            x = self.norm(x)
        s = self.dropout(F.silu(self.ema(x, padding_mask))).transpose(0, 1)  # (B, L, D)
        hx, active, gate = self.route(s, padding_mask)

        plan = plan_compression(active)
        g = self.gau(compress(s, plan), plan.index, plan.slot_valid)
        gated = extract(g, plan)
        if gate is not None:
            gated = gated * gate.unsqueeze(-1)
        y = self.combine(hx.transpose(0, 1), gated.transpose(0, 1), residual)
        confidence = gate if gate is not None else active.to(s.dtype)
        return y, LayerActivation(active, confidence)


# --------------------------------------------------------------------------- checkpoints
# upstream SeqBoatUnit key (after the unit prefix) -> our key; prefixes end with "."
UPSTREAM_KEY_MAP: Dict[str, str] = {
    "gamma": "gau.qk_gamma",
    "beta": "gau.qk_beta",
    "rel_pos_bias.rel_pos_bias": "gau.rel_pos.table",
    "q_router.temp": "router.log_temperature",
    "move.": "ema.",
    "mx_proj.": "gau.in_proj.",
    "h_proj.": "gau.out_proj.",
}


def upgrade_upstream_layer_keys(state_dict: Dict[str, Tensor], old_prefix: str, new_prefix: str) -> None:
    """Renames, in place, the keys of one upstream unit saved under ``old_prefix`` (e.g.
    ``decoder.layers.3.slag_layer.``) to this layer's names under ``new_prefix``."""
    for key in [k for k in state_dict if k.startswith(old_prefix)]:
        rest = key[len(old_prefix):]
        for old, new in UPSTREAM_KEY_MAP.items():
            if rest == old or (old.endswith(".") and rest.startswith(old)):
                rest = new + rest[len(old):]
                break
        state_dict[new_prefix + rest] = state_dict.pop(key)
