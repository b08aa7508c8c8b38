"""One SeqBoat layer (upstream ``SeqBoatUnit``); docs/design.md, 'Data flow of one layer'.

    x ─ [prenorm] ─ MD-EMA ─ SiLU ─ dropout ─ s                        (L, B, D)
    [u | hx] = hx_proj(s)                       router logits u (2), always-on path hx (D)
    active, gate = router(u)                    hard decision, confidence (0 when skipped)
    G = extract(GAU(compress(s, active))) * gate
    y = SiLU(hx + G + x)              bidirectional
    y = SiLU(dropout(hx + G) + x)     causal
    [postnorm] y = norm(y);  [ffn]

Variants, all options of this one layer:
  * SeqBoat       ``window=w > 0``: local attention over a working memory of w activated tokens.
  * SeqBoat-full  ``window=None`` (or < 0): unbounded attention over the compressed sequence.
  * always-active ``always_active=True``: no router, every token runs the GAU (MEGA-style).
  * chunked       ``chunked=True`` (with ``window=c``): MEGA's chunked attention, each token attends
                  only inside its fixed chunk of c slots. With ``always_active`` this is the
                  MEGA-chunk baseline (docs/design.md, 'Baselines').

The layer *always* compresses, so a sequence's output never depends on its batch mates
(upstream skips compression when any row is fully active, or >= 90 % active in SeqBoat-full,
which changes the window of every other row: upstream hazard H1, see docs/design.md,
'Compression').
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.modules.fairseq_dropout import FairseqDropout
from torch import Tensor

from .decoding_layer import DecodingLayer, DecodingState, LayerActivation
from .ema import MultiHeadEMA
from .ffn import NormalizedFeedForwardNetwork
from .gau import GatedAttentionUnit
from .initializers import linear
from .linear import routed_linear
from .norms import SequenceNorm
from .recompute import fused_head_tail_applies, gated_combine, silu_projection
from .sma import LatentConfigurator


def resolve_window(window: Optional[int]) -> Optional[int]:
    """``--chunk-size`` / ``--decoder-chunk-size`` -> the attention window: w > 0, or None (-1: unbounded)."""
    if window == 0:
        raise ValueError("--chunk-size / --decoder-chunk-size 0: give the working-memory size w > 0, "
                         "or -1 for SeqBoat-full (unbounded attention over the compressed sequence)")
    return None if window is not None and window < 0 else window


def run_ema(ema: MultiHeadEMA, h: Tensor, padding_mask: Optional[Tensor], state: Optional[DecodingState]) -> Tensor:
    """The MD-EMA in the mode ``state`` selects: parallel (None), ``step`` (one new token) or
    ``forward_chunk`` (several). h: ``(T, B, D)`` -> ``(T, B, D)``."""
    if state is None:
        return ema(h, padding_mask)
    if h.size(0) == 1:
        return ema.step(h[0], state["ema"], state["position"],
                        None if padding_mask is None else padding_mask[:, 0])[0].unsqueeze(0)
    return ema.forward_chunk(h, state["ema"], state["position"], padding_mask, consumed=state["length"])[0]


def run_gau(gau: GatedAttentionUnit, s: Tensor, active: Tensor, state: Optional[DecodingState]) -> Tensor:
    """The GAU in the mode ``state`` selects (as ``run_ema``). s: ``(B, T, D)``, active ``(B, T)``."""
    seq_len = s.size(1)
    if state is None:
        return gau(s, active)
    if seq_len == 1:
        return gau.step(s[:, 0], active[:, 0], state["position"], state["gau"],
                        max_count=state["length"] + 1).unsqueeze(1)
    positions = state["position"].unsqueeze(1) + torch.arange(seq_len, device=s.device)
    return gau.forward_chunk(s, active, positions, state["gau"], max_count=state["length"] + seq_len)


def advance(state: Optional[DecodingState], seq_len: int) -> None:
    """Counts ``seq_len`` consumed tokens in a layer's state (on the device and on the host)."""
    if state is not None:
        state["position"].add_(seq_len)
        state["length"] += seq_len


class SeqBoatLayer(DecodingLayer):
    """A SeqBoat layer on time-major ``(L, B, D)`` inputs. See the module docstring.

    One pipeline (``_pipeline``) runs in the three modes of the decoding contract that every
    sub-module implements (:class:`~seqboat_fairseq.modules.decoding_layer.DecodingLayer`, which
    also describes the decoding state: ``{"ema", "gau", "position", "length"}``). Each
    sub-module owns its part and updates it in place. Its size is constant for SeqBoat
    (``w + 1`` memory slots, the EMA's truncation ring); SeqBoat-full's memory grows with the
    context (docs/design.md, 'GAU working memory').
    """

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
        chunked: bool = False,
    ):
        super().__init__()
        window = resolve_window(window)  # chunk size < 0 selects SeqBoat-full, as upstream
        self.embed_dim = embed_dim
        self.bidirectional = bidirectional
        self.prenorm = prenorm
        self.act_bias = act_bias
        self.norm = SequenceNorm(norm_type, embed_dim, affine=norm_affine, export=export)
        self.ema = MultiHeadEMA(embed_dim, ndim, bidirectional=bidirectional, truncation=truncation)
        self.router = None if always_active else LatentConfigurator(embed_dim, init_temp_scale)
        num_logits = 0 if always_active else LatentConfigurator.num_options
        self.hx_proj = linear(embed_dim, num_logits + embed_dim)
        self.gau = GatedAttentionUnit(
            embed_dim, zdim, hdim, window=window, bidirectional=bidirectional,
            activation=attention_activation, rel_pos=rel_pos, max_positions=max_positions,
            local_pos=local_pos, dropout=dropout, attention_dropout=attention_dropout,
            hidden_dropout=hidden_dropout, chunked=chunked,
        )
        self.dropout = FairseqDropout(dropout, module_name=type(self).__name__)
        self.ffn = (
            NormalizedFeedForwardNetwork(embed_dim, ffn_dim, norm_type=norm_type, prenorm=prenorm,
                                         dropout=dropout, activation_dropout=activation_dropout,
                                         export=export)
            if ffn_dim > 0 else None
        )

    def route(self, s: Tensor, padding_mask: Optional[Tensor], h: Optional[Tensor] = None
              ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """s: ``(B, L, D)`` -> ``(hx (B, L, D), active (B, L), gate (B, L) or None)``;
        h: ``hx_proj(s)`` when already computed."""
        h = self.hx_proj(s) if h is None else h
        if self.router is None:
            active = torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
            if padding_mask is not None:
                active = active & ~padding_mask
            return h, active, None
        logits, hx = h.split([LatentConfigurator.num_options, self.embed_dim], dim=-1)
        # a copy of the 2 logit columns: the router keeps its input for the backward pass, and a
        # view would keep the whole (B, L, D + 2) projection alive with it (4 % of a step's memory)
        active, gate = self.router(logits.contiguous(), padding_mask, self.act_bias)
        return hx, active, gate

    def combine(self, hx: Tensor, gated: Tensor, residual: Tensor) -> Tensor:
        """Always-on path + gated GAU output + residual, then SiLU, postnorm and FFN.
        All inputs time-major ``(L, B, D)``."""
        mixed = hx + gated
        y = F.silu(mixed + residual if self.bidirectional else self.dropout(mixed) + residual)
        if not self.prenorm:
            y = self.norm(y)
        return self.ffn(y) if self.ffn is not None else y

    def _pipeline(self, x: Tensor, padding_mask: Optional[Tensor], state: Optional[DecodingState]
                  ) -> Tuple[Tensor, LayerActivation]:
        """norm -> MD-EMA -> route -> GAU -> gate -> combine, in parallel (``state`` None), for one
        new token (``step``) or for several (``forward_chunk``); the state is updated in place."""
        if state is not None and x.size(0) == 1:
            return self._decode_token(x, padding_mask, state)
        residual = x
        h = self.norm(x) if self.prenorm else x
        if state is None and self.dropout.p < 1 and fused_head_tail_applies(h, self.hx_proj.weight):
            return self._parallel_fused(x, self.ema(h, padding_mask), padding_mask)
        s = self.dropout(F.silu(run_ema(self.ema, h, padding_mask, state))).transpose(0, 1)  # (B, T, D)
        hx, active, gate = self.route(s, padding_mask)
        g = run_gau(self.gau, s, active, state)
        if gate is not None:
            g = g * gate.unsqueeze(-1)
        y = self.combine(hx.transpose(0, 1), g.transpose(0, 1), residual)
        advance(state, x.size(0))
        confidence = gate if gate is not None else active.to(s.dtype)
        return y, LayerActivation(active, confidence)

    def _dropout_active(self) -> bool:
        return self.dropout.p > 0 and (self.training or self.dropout.apply_during_inference)

    def _parallel_fused(self, x: Tensor, e: Tensor, padding_mask: Optional[Tensor]
                        ) -> Tuple[Tensor, LayerActivation]:
        """``_pipeline``'s parallel pass (gradients recorded) from the MD-EMA output e ``(L, B, D)``,
        through ``recompute.silu_projection`` and ``recompute.gated_combine``: the same values (the
        same dropout masks on the CPU), less kept for the backward pass (their comment in
        recompute.py)."""
        p = self.dropout.p if self._dropout_active() else 0.0
        s, projection, head_keep = silu_projection(e, self.hx_proj, p)
        s = s.transpose(0, 1)  # (B, L, D)
        hx, active, gate = self.route(s, padding_mask, projection)
        out, gate_c, plan = self.gau.forward_compressed(s, active, gate)
        y = gated_combine(hx, out, gate_c, plan, x, e, self.hx_proj, projection.size(-1) - self.embed_dim,
                          head_keep=head_keep, p=p, tail_dropout=not self.bidirectional)
        if not self.prenorm:
            y = self.norm(y)
        y = self.ffn(y) if self.ffn is not None else y
        return y, LayerActivation(active, gate if gate is not None else active.to(s.dtype))

    # ------------------------------------------------------------------ incremental decoding
    def _decode_token(self, x: Tensor, padding_mask: Optional[Tensor], state: DecodingState
                      ) -> Tuple[Tensor, LayerActivation]:
        """``_pipeline`` for one new token (x ``(1, B, D)``, padding_mask ``(B, 1)``): the same
        computation on ``(B, D)`` rows, with the router logits, the always-on path and the GAU's
        input projection in one product (``step_projection``), the EMA's ring and the rotary
        rotation addressed by the host count, and the router gate applied inside the GAU step. On
        the CPU (``skip_inactive_on_host``) the router goes first and the GAU runs only if some row
        activates the token."""
        pad = None if padding_mask is None else padding_mask[:, 0]
        h = self.norm(x) if self.prenorm else x  # (1, B, D): the norms take time-major sequences
        consumed = state["length"]
        e = self.ema.step(h[0], state["ema"], state["position"], pad, consumed=consumed)[0]
        s = self.dropout(F.silu(e))  # (B, D)
        routed_first = self.router is not None and self._branches_on_host(s)
        if routed_first:  # the router's logits and the always-on path; the GAU's projection if needed
            logits, hx = routed_linear(s, self.hx_proj.weight, self.hx_proj.bias).split(
                [LatentConfigurator.num_options, self.embed_dim], dim=-1)
            a = None
        else:
            projected = self.step_projection(s)
            if self.router is None:
                hx, a = projected.split([self.embed_dim, projected.size(-1) - self.embed_dim], dim=-1)
            else:
                logits, hx, a = projected.split(
                    [LatentConfigurator.num_options, self.embed_dim, projected.size(-1) - self.hx_proj.out_features],
                    dim=-1)
        if self.router is None:
            active = torch.ones(s.size(0), 1, dtype=torch.bool, device=s.device)
            active = active if padding_mask is None else ~padding_mask
            gate = None
        else:
            # (B, 1) as in the parallel pipeline: a ``forced_activation`` rule sees the same shapes
            active, gate = self.router(logits.unsqueeze(1), padding_mask, self.act_bias)
        if routed_first and bool(active.any()):
            a = routed_linear(s, self.gau.in_proj.weight, self.gau.in_proj.bias)
        if a is None:  # no row activates the token: the GAU's output is its gate (0) times its attention
            g = torch.zeros_like(hx)
        else:
            g = self.gau.step_projected(a, active[:, 0], state["position"], state["gau"], max_count=consumed + 1,
                                        scale=None if gate is None else gate[:, 0], consumed=consumed)
        y = self.combine(hx.unsqueeze(0), g.unsqueeze(0), x)
        advance(state, 1)
        return y, LayerActivation(active, active.to(s.dtype) if gate is None else gate)

    # A CPU decoding step reads the router's decision on the host and skips the GAU (its input projection,
    # attention over the working memory and output projection: 5/6 of an enwik8-base layer step's bytes)
    # when no row activates the token, so that decoding time follows the activation rate. On the CPU
    # reading a tensor is not a device synchronisation; on other devices the step stays branch-free (it
    # can be captured in a CUDA graph) and computes the GAU for every token, scaled by the gate. A skipped
    # token leaves the working memory as the branch-free step leaves it up to the entry that step writes
    # at slot ``count % S``, which the next activated token overwrites before any query can see it
    # (``GatedAttentionUnit.step_projected``).
    skip_inactive_on_host = True

    def _branches_on_host(self, s: Tensor) -> bool:
        return self.skip_inactive_on_host and s.device.type == "cpu"

    def step_projection(self, s: Tensor) -> Tensor:
        """``[hx_proj(s) | gau.in_proj(s)]`` for s ``(B, D)``: one product with the two weights
        stacked when no gradient is recorded (decoding); the stacked copy is cached on the layer
        and made again whenever a weight changes (in-place updates bump a tensor's version)."""
        parts = (self.hx_proj.weight, self.hx_proj.bias, self.gau.in_proj.weight, self.gau.in_proj.bias)
        if torch.is_grad_enabled() or any(p is None for p in parts):
            return torch.cat([self.hx_proj(s), self.gau.in_proj(s)], dim=-1)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in parts)
        cached = self.__dict__.get("_stacked_projection")
        if cached is None or cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # an ordinary tensor, readable in any mode
                weight = torch.cat([self.hx_proj.weight, self.gau.in_proj.weight], dim=0)
                bias = torch.cat([self.hx_proj.bias, self.gau.in_proj.bias], dim=0)
            cached = self.__dict__["_stacked_projection"] = (key, weight, bias)
        return routed_linear(s, cached[1], cached[2])

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> DecodingState:
        """An empty decoding state (see the class docstring)."""
        if self.bidirectional:
            raise RuntimeError("incremental decoding needs a causal layer (bidirectional=False)")
        return {
            "ema": self.ema.init_state(batch_size, device, dtype),
            "gau": self.gau.init_state(batch_size, device, dtype),
            "position": torch.zeros(batch_size, dtype=torch.long, device=device),
            "length": 0,
        }


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
    ``decoder.layers.3.slag_layer.``) to this layer's names under ``new_prefix``, and the unit's
    FFN, which upstream keeps beside it (``decoder.layers.3.nffn.``), to ``new_prefix + "ffn."``."""
    for key in [k for k in state_dict if k.startswith(old_prefix)]:
        rest = key[len(old_prefix):]
        for old, new in UPSTREAM_KEY_MAP.items():
            if rest == old or (old.endswith(".") and rest.startswith(old)):
                rest = new + rest[len(old):]
                break
        state_dict[new_prefix + rest] = state_dict.pop(key)
    ffn_prefix = old_prefix.rstrip(".").rsplit(".", 1)[0] + ".nffn."
    for key in [k for k in state_dict if k.startswith(ffn_prefix)]:
        state_dict[new_prefix + "ffn." + key[len(ffn_prefix):]] = state_dict.pop(key)
