"""The layers of the SPADE baseline (Zuo et al. 2022, *Efficient Long Sequence Modeling via State
Space Augmented Transformer*), built from SeqBoat's modules; docs/design.md, 'Baselines'.

SPADE augments only the *bottom* layer of a local-attention Transformer with a state space model:

    global layer (index 0)                       local layer (the others)
    x ─ [prenorm] ─ h                             x ─ [prenorm] ─ h
    e = SiLU(MD-EMA(h))     global branch         a = GAU_w(h)
    a = GAU_w(h)            local branch          y = x + dropout(a)
    y = x + dropout(merge([e | a]))               [postnorm]; [FFN]
    [postnorm]; [FFN]

``GAU_w`` is SeqBoat's gated attention unit on *every* real token (no router, no compression
beyond dropping pads) with a sliding window of w tokens (causal: the w previous tokens and
itself; bidirectional: w on each side); ``merge`` is a linear map ``2D -> D`` of the two
branches' concatenation. Simplifications against the paper (MD-EMA instead of S4, a
single-head GAU instead of multi-head softmax attention, the FFN size chosen to match a SeqBoat
preset's parameter count) are listed in docs/design.md, 'Baselines'.

Like ``SeqBoatLayer`` it is a :class:`~seqboat_fairseq.modules.decoding_layer.DecodingLayer`
(``init_state`` / ``step`` / ``forward_chunk``, state in fairseq's ``incremental_state`` under
``seqboat_state``, updated in place, no host synchronisation in ``step``), so the SeqBoat LM
decoder and the LRA encoder use it unchanged: ``{"ema": MD-EMA state (global layer only), "gau": the window ring of w + 1 slots,
"position": (B,), "length": int}``. Like an always-active SeqBoat layer it returns a
``LayerActivation`` with every real token active.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.modules.fairseq_dropout import FairseqDropout
from torch import Tensor

from .decoding_layer import DecodingLayer, DecodingState, LayerActivation
from .ema import MultiHeadEMA
from .ffn import NormalizedFeedForwardNetwork
from .gau import GatedAttentionUnit
from .initializers import linear
from .norms import SequenceNorm
from .seqboat_layer import advance, resolve_window, run_ema, run_gau


class SpadeLayer(DecodingLayer):
    """One SPADE layer on time-major ``(L, B, D)`` inputs: the global layer (``global_branch=True``,
    MD-EMA beside local attention) or a local-attention layer. See the module docstring.

    ``window=w > 0`` is the sliding window; ``None`` (or < 0) attends to every token (a
    full-attention Transformer, for comparison); ``chunked=True`` cuts the tokens into fixed chunks
    of w instead (SPADE's chunk-attention variant)."""

    def __init__(
        self,
        embed_dim: int,
        zdim: int,
        hdim: int,
        ndim: int = 16,
        *,
        global_branch: bool,
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
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        ffn_dim: int = -1,
        activation_dropout: float = 0.0,
        export: bool = False,
        chunked: bool = False,
    ):
        super().__init__()
        window = resolve_window(window)
        self.embed_dim = embed_dim
        self.bidirectional = bidirectional
        self.prenorm = prenorm
        self.norm = SequenceNorm(norm_type, embed_dim, affine=norm_affine, export=export)
        self.ema = (MultiHeadEMA(embed_dim, ndim, bidirectional=bidirectional, truncation=truncation)
                    if global_branch else None)
        # the layer drops the merged output itself: no second dropout inside the GAU
        self.gau = GatedAttentionUnit(
            embed_dim, zdim, hdim, window=window, bidirectional=bidirectional,
            activation=attention_activation, rel_pos=rel_pos, max_positions=max_positions,
            local_pos=local_pos, dropout=0.0, attention_dropout=attention_dropout,
            hidden_dropout=hidden_dropout, chunked=chunked,
        )
        self.merge = linear(2 * embed_dim, embed_dim) if global_branch else None
        self.dropout = FairseqDropout(dropout, module_name=type(self).__name__)
        self.ffn = (
            NormalizedFeedForwardNetwork(embed_dim, ffn_dim, norm_type=norm_type, prenorm=prenorm,
                                         dropout=dropout, activation_dropout=activation_dropout,
                                         export=export)
            if ffn_dim > 0 else None
        )

    @property
    def global_branch(self) -> bool:
        return self.ema is not None

    def _pipeline(self, x: Tensor, padding_mask: Optional[Tensor], state: Optional[DecodingState]
                  ) -> Tuple[Tensor, LayerActivation]:
        """norm -> [MD-EMA | local GAU] -> merge -> residual -> [postnorm] -> [FFN], in parallel
        (``state`` None), for one new token or for several; the state is updated in place."""
        residual = x
        h = self.norm(x) if self.prenorm else x
        s = h.transpose(0, 1)  # (B, T, D)
        active = torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
        if padding_mask is not None:
            active = active & ~padding_mask
        a = run_gau(self.gau, s, active, state)
        if self.ema is not None:
            e = run_ema(self.ema, h, padding_mask, state)
            a = self.merge(torch.cat([F.silu(e).transpose(0, 1), a], dim=-1))
        y = residual + self.dropout(a.transpose(0, 1))
        if not self.prenorm:
            y = self.norm(y)
        if self.ffn is not None:
            y = self.ffn(y)
        advance(state, x.size(0))
        return y, LayerActivation(active, active.to(s.dtype))

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> DecodingState:
        """An empty decoding state (see the module docstring)."""
        if self.bidirectional:
            raise RuntimeError("incremental decoding needs a causal layer (bidirectional=False)")
        state = {
            "gau": self.gau.init_state(batch_size, device, dtype),
            "position": torch.zeros(batch_size, dtype=torch.long, device=device),
            "length": 0,
        }
        if self.ema is not None:
            state["ema"] = self.ema.init_state(batch_size, device, dtype)
        return state

    def extra_repr(self) -> str:
        return f"global_branch={self.global_branch}, prenorm={self.prenorm}"
