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
from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.modules.fairseq_dropout import FairseqDropout
from torch import Tensor, nn

from .ema import MultiHeadEMA, trunc_normal_
from .ffn import NormalizedFeedForwardNetwork
from .gau import GatedAttentionUnit
from .local_attention import local_attention, memory_attention
from .norms import SequenceNorm
from .sma import Compression, LatentConfigurator, compress, extract, plan_compression


class LayerActivation(NamedTuple):
    """Per-token routing outcome of one layer: ``active`` (B, L) bool and the gate
    ``confidence`` (B, L) (max router probability for active tokens, else 0; all-ones for
    always-active layers)."""

    active: Tensor
    confidence: Tensor


DecodingState = Dict[str, Tensor]
MEMORY_SLOTS = ("memory_key", "memory_value", "memory_position", "memory_fill")


@with_incremental_state
class SeqBoatLayer(nn.Module):
    """A SeqBoat layer on time-major ``(L, B, D)`` inputs. See the module docstring.

    Incremental decoding (causal layers) keeps a constant-size state per layer, stored in
    fairseq's ``incremental_state`` under this module's ``seqboat_state`` key; every slot is
    a tensor with batch first (``init_state`` is the only place that decides the shapes):

    * ``ema_hidden``, ``ema_lag_hidden``, ``ema_inputs``: the MD-EMA state (see ``MultiHeadEMA``);
    * ``memory_key`` ``(B, M, Z)`` / ``memory_value`` ``(B, M, H)``: keys (rotated at their
      absolute position) and values of the last ``M = w`` *activated* tokens, oldest first,
      left-aligned; SeqBoat-full grows ``M`` with every activated token;
    * ``memory_position`` ``(B, M)``: their absolute positions; ``memory_fill`` ``(B,)``: how
      many of the M slots hold a token (rows fill at different rates);
    * ``position`` ``(B,)``: tokens consumed so far (the next token's absolute position).

    A skipped token costs the EMA step and the always-on path and leaves the memory as is.
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
    ):
        super().__init__()
        if window == 0:
            raise ValueError("--chunk-size / --decoder-chunk-size 0: give the working-memory size w > 0, "
                             "or -1 for SeqBoat-full (unbounded attention over the compressed sequence)")
        if window is not None and window < 0:
            window = None  # chunk size < 0 selects SeqBoat-full, as upstream
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

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None,
                incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
                ) -> Tuple[Tensor, LayerActivation]:
        """x: ``(L, B, D)``; padding_mask: ``(B, L)`` True = pad.

        With ``incremental_state``, x holds the *new* tokens only: one (``step``) or several
        (``forward_chunk``, e.g. a prompt) continuing the stored state.
        Returns ``(y (L, B, D), LayerActivation)``.
        """
        if incremental_state is not None:
            state = self.get_incremental_state(incremental_state, "seqboat_state")
            if state is None:
                state = self.init_state(x.size(1), x.device, x.dtype)
            if x.size(0) == 1:
                y, activation, state = self.step(x[0], state, None if padding_mask is None else padding_mask[:, 0])
                y = y.unsqueeze(0)
            else:
                y, activation, state = self.forward_chunk(x, state, padding_mask)
            self.set_incremental_state(incremental_state, "seqboat_state", state)
            return y, activation

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

    # ------------------------------------------------------------------ incremental decoding
    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> DecodingState:
        """An empty decoding state (see the class docstring for the slots)."""
        if self.bidirectional:
            raise RuntimeError("incremental decoding needs a causal layer (bidirectional=False)")
        capacity = self.window or 0  # SeqBoat-full starts empty and grows
        state = {f"ema_{k}": v for k, v in self.ema.init_state(batch_size, device).items()}
        state.update(
            memory_key=torch.zeros(batch_size, capacity, self.gau.zdim, device=device, dtype=dtype),
            memory_value=torch.zeros(batch_size, capacity, self.gau.hdim, device=device, dtype=dtype),
            memory_position=torch.zeros(batch_size, capacity, dtype=torch.long, device=device),
            memory_fill=torch.zeros(batch_size, dtype=torch.long, device=device),
            position=torch.zeros(batch_size, dtype=torch.long, device=device),
        )
        return state

    def _ema_state(self, state: DecodingState) -> Dict[str, Tensor]:
        return {k[len("ema_"):]: v for k, v in state.items() if k.startswith("ema_")}

    def step(self, x: Tensor, state: DecodingState, padding_mask: Optional[Tensor] = None
             ) -> Tuple[Tensor, LayerActivation, DecodingState]:
        """One new token per row: x ``(B, D)``. O(w) work, independent of the context length.

        Equals the parallel causal ``forward`` at this position (tested). Returns
        ``(y (B, D), LayerActivation of (B, 1), new state)``.
        """
        position = state["position"]
        residual = x
        h = self.norm(x.unsqueeze(0))[0] if self.prenorm else x
        e, ema_state = self.ema.step(h, self._ema_state(state), position, padding_mask)
        s = self.dropout(F.silu(e)).unsqueeze(1)  # (B, 1, D)
        hx, active, gate = self.route(s, None if padding_mask is None else padding_mask.unsqueeze(1))

        new_state = {f"ema_{key}": value for key, value in ema_state.items()}
        if bool(active.any()):
            gated, k, v = self._attend_memory(s, state, position)
            gated = gated * (gate if gate is not None else active.to(s.dtype)).unsqueeze(-1)
            new_state.update(self._push(state, active[:, 0], k[:, 0], v[:, 0], position))
        else:  # every row skipped the GAU: only the EMA and the always-on path ran
            gated = torch.zeros_like(s)
            new_state.update({key: state[key] for key in MEMORY_SLOTS})
        y = self.combine(hx.transpose(0, 1), gated.transpose(0, 1), residual.unsqueeze(0))[0]
        new_state["position"] = position + 1
        confidence = gate if gate is not None else active.to(s.dtype)
        return y, LayerActivation(active, confidence), new_state

    def _attend_memory(self, s: Tensor, state: DecodingState, position: Tensor
                       ) -> Tuple[Tensor, Tensor, Tensor]:
        """GAU of one new token over [working memory; itself]. s: ``(B, 1, D)``.
        Returns ``(GAU output (B, 1, D), k (B, 1, Z), v (B, 1, H))``."""
        gau = self.gau
        q, k, r, v = gau.project(s, position.unsqueeze(1))
        fill, capacity = state["memory_fill"], state["memory_key"].size(1)
        keys = torch.cat([state["memory_key"], k], dim=1)
        values = torch.cat([state["memory_value"], v], dim=1)
        slots = torch.arange(capacity + 1, device=s.device)
        valid = (slots < fill.unsqueeze(1)) | (slots == capacity)
        if gau.local_pos:  # slot offsets: memory entry i is (fill - i) activated tokens back
            offsets = torch.where(slots == capacity, 0, slots - fill.unsqueeze(1))
        else:
            offsets = torch.cat([state["memory_position"], position.unsqueeze(1)], dim=1) - position.unsqueeze(1)
        attended = memory_attention(
            q[:, 0], keys, values, valid, window=gau.window, activation=gau.activation,
            offsets=offsets, bias=gau.rel_pos, dropout=gau.attention_dropout)
        return gau.output(attended.unsqueeze(1), r), k, v

    def _push(self, state: DecodingState, active: Tensor, k: Tensor, v: Tensor, position: Tensor
              ) -> DecodingState:
        """Appends (k, v, position) of the rows whose token is active; a full working memory
        drops its oldest entry (FIFO). Skipped rows keep their memory unchanged."""
        keys, values = state["memory_key"], state["memory_value"]
        positions, fill = state["memory_position"], state["memory_fill"]
        if self.window is None and bool((active & (fill == keys.size(1))).any()):  # SeqBoat-full: grow
            keys, values, positions = (torch.cat([t, t.new_zeros(t.size(0), 1, *t.shape[2:])], dim=1)
                                       for t in (keys, values, positions))
        capacity = keys.size(1)
        full = (fill == capacity) & active
        shift = full.view(-1, 1, 1)
        keys = torch.where(shift, keys.roll(-1, dims=1), keys)
        values = torch.where(shift, values.roll(-1, dims=1), values)
        positions = torch.where(full.view(-1, 1), positions.roll(-1, dims=1), positions)
        slot = fill.clamp(max=capacity - 1)
        rows = torch.arange(keys.size(0), device=keys.device)[active]
        keys, values, positions = keys.clone(), values.clone(), positions.clone()
        keys[rows, slot[active]] = k[active].to(keys.dtype)
        values[rows, slot[active]] = v[active].to(values.dtype)
        positions[rows, slot[active]] = position[active]
        fill = torch.where(active, (fill + 1).clamp(max=capacity), fill)
        return {"memory_key": keys, "memory_value": values, "memory_position": positions, "memory_fill": fill}

    def forward_chunk(self, x: Tensor, state: DecodingState, padding_mask: Optional[Tensor] = None
                      ) -> Tuple[Tensor, LayerActivation, DecodingState]:
        """Several new tokens at once (prompt prefill), continuing ``state``: x ``(T, B, D)``.

        One parallel pass; the GAU attends over [working memory; new activated tokens]
        compacted per row. Leaves the same state as T calls of ``step`` (tested).
        """
        seq_len, bsz, _ = x.shape
        position = state["position"]
        residual = x
        h = self.norm(x) if self.prenorm else x
        e, ema_state = self.ema.forward_chunk(h, self._ema_state(state), position, padding_mask)
        s = self.dropout(F.silu(e)).transpose(0, 1)  # (B, T, D)
        hx, active, gate = self.route(s, padding_mask)
        token_positions = position.unsqueeze(1) + torch.arange(seq_len, device=x.device)  # (B, T)

        gau = self.gau
        new_plan = plan_compression(active)
        new_pos = compress(token_positions, new_plan)
        q, k, r, v = gau.project(compress(s, new_plan), new_pos)
        # [memory ; new activated tokens], compacted so slot distance == activation rank distance
        fill, capacity = state["memory_fill"], state["memory_key"].size(1)
        memory_valid = torch.arange(capacity, device=x.device).unsqueeze(0) < fill.unsqueeze(1)
        joint = plan_compression(torch.cat([memory_valid, new_plan.slot_valid], dim=1))
        joint_k = compress(torch.cat([state["memory_key"], k.to(state["memory_key"].dtype)], dim=1), joint)
        joint_v = compress(torch.cat([state["memory_value"], v.to(state["memory_value"].dtype)], dim=1), joint)
        joint_q = compress(torch.cat([q.new_zeros(bsz, capacity, q.size(-1)), q], dim=1), joint)
        joint_pos = compress(torch.cat([state["memory_position"], new_pos], dim=1), joint)
        attended = local_attention(
            joint_q, joint_k, joint_v, joint.slot_valid, window=gau.window, causal=True,
            activation=gau.activation, positions=gau.bias_positions(joint_pos), bias=gau.rel_pos,
            dropout=gau.attention_dropout)
        attended = extract(attended, joint)[:, capacity:]  # back to the new slots
        gated = extract(gau.output(attended, r), new_plan)
        if gate is not None:
            gated = gated * gate.unsqueeze(-1)
        y = self.combine(hx.transpose(0, 1), gated.transpose(0, 1), residual)

        # the new working memory: the last w (all, for SeqBoat-full) compacted slots per row
        count = joint.count
        keep = count if self.window is None else count.clamp(max=self.window)
        new_capacity = max(int(keep.max()), 0) if self.window is None else self.window
        slots = torch.arange(new_capacity, device=x.device).unsqueeze(0)
        kept = slots < keep.unsqueeze(1)
        index = ((count - keep).unsqueeze(1) + slots).clamp(max=max(joint_k.size(1) - 1, 0)) * kept
        memory = Compression(index, kept, joint.rank, keep, False)  # "compress" = take these slots
        new_state = {f"ema_{key}": value for key, value in ema_state.items()}
        new_state.update(memory_key=compress(joint_k, memory), memory_value=compress(joint_v, memory),
                         memory_position=compress(joint_pos, memory), memory_fill=keep,
                         position=position + seq_len)
        confidence = gate if gate is not None else active.to(s.dtype)
        return y, LayerActivation(active, confidence), new_state

    def decoded_length(self, incremental_state) -> int:
        """How many tokens the stored state has consumed (0 without a state)."""
        state = self.get_incremental_state(incremental_state, "seqboat_state")
        return 0 if state is None else int(state["position"][0])

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        """Beam search: every slot is batch-first, so reordering is one index_select each."""
        state = self.get_incremental_state(incremental_state, "seqboat_state")
        if state is not None:
            state = {key: value.index_select(0, new_order) for key, value in state.items()}
            self.set_incremental_state(incremental_state, "seqboat_state", state)
        return incremental_state


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
