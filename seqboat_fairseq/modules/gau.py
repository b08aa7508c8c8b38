"""Gated Attention Unit over the compressed (activated-token) sequence.
See docs/design.md, 'The gated attention unit'.

    [z | r | v] = SiLU(in_proj(s))            z: Z, r: H, v: H
    q = z * gamma_0 + beta_0,  k = z * gamma_1 + beta_1   (shared-z queries / keys)
    O = Attn(q, k, v)   (working memory of w slots, or unbounded; see local_attention)
    g = out_proj(O * r)

The GAU takes the whole (uncompressed) sequence and the router's decisions: it compresses the
active tokens, attends among them and scatters the result back (zeros for skipped tokens), in
all three modes of the common decoding contract:

* ``forward``: the parallel pass (training, scoring);
* ``step``: one new token per row over the working memory, O(w) work, state updated in place;
* ``forward_chunk``: several new tokens (prompt prefill) over [memory; new active tokens].

Upstream fuses this into the layer (``mx_proj``, ``h_proj``, ``gamma``, ``beta``,
``rel_pos_bias``); ``seqboat_layer.UPSTREAM_KEY_MAP`` renames those checkpoint keys.
See ``docs/design.md``, 'GAU working memory', for the decoding state.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.modules.fairseq_dropout import FairseqDropout
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .initializers import linear, trunc_normal_
from .local_attention import ATTENTION_ACTIVATIONS, local_attention, memory_attention, window_geometry
from .positions import RelativePositionalBias, apply_rotary, rotary_frequencies
from .precision import upcast
from .recompute import gated_linear, silu_linear
from .sma import Compression, compress, extract, plan_compression

REL_POS_TYPES = ("simple", "rotary")
MemoryState = Dict[str, Tensor]


class GatedAttentionUnit(nn.Module):
    """GAU on ``(B, C, D)`` slot sequences.

    Args:
        window: working-memory size w (> 0) or None (SeqBoat-full, unbounded).
        rel_pos: ``simple`` (learned bias of original-position offsets) or ``rotary``.
        local_pos: with ``simple`` and a window: bias of *slot* offsets (table of 6w - 1).
        dropout: applied to the GAU output in bidirectional mode only (upstream's asymmetry).
        chunked: ``window`` is a chunk size c: MEGA's chunked attention (the MEGA-chunk baseline),
            each slot attends only inside its fixed chunk of c slots (``local_attention.chunked_attention``);
            the decoding memory is then the current chunk: c slots, reset at chunk boundaries.
    """

    def __init__(self, embed_dim: int, zdim: int, hdim: int, *, window: Optional[int],
                 bidirectional: bool, activation: str = "softmax", rel_pos: str = "simple",
                 max_positions: int = 1024, local_pos: bool = False, dropout: float = 0.0,
                 attention_dropout: float = 0.0, hidden_dropout: float = 0.0, chunked: bool = False):
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
        if chunked and (window is None or window <= 0):
            raise ValueError("chunked attention (MEGA-chunk) needs a positive chunk size "
                             "(--chunk-size / --decoder-chunk-size c > 0)")
        self.embed_dim, self.zdim, self.hdim = embed_dim, zdim, hdim
        self.window = window  # w (working memory / sliding window) or, when chunked, MEGA's chunk size c
        self.chunked = chunked
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
        self.in_proj = linear(embed_dim, zdim + 2 * hdim)
        self.out_proj = linear(hdim, embed_dim)
        self.hidden_dropout = FairseqDropout(hidden_dropout, module_name=type(self).__name__)
        self.attention_dropout = FairseqDropout(attention_dropout, module_name=type(self).__name__)
        self.dropout = FairseqDropout(dropout, module_name=type(self).__name__)
        # --recompute-gau (set by models/checkpoint_activations.py): the parallel forward keeps
        # only the compressed input and runs ``attend`` again in the backward pass
        self.recompute = False

    def project(self, s: Tensor, positions: Tensor):
        """s: ``(B, C, D)`` -> q, k ``(B, C, Z)`` (rotated if rotary), r, v ``(B, C, H)``."""
        # with --recompute-gau the widest activation, the pre-activation, is recomputed as well
        # (one more matmul); without it, speed first
        a = silu_linear(s, self.in_proj) if self.recompute else F.silu(self.in_proj(s))
        z, r, v = a.split([self.zdim, self.hdim, self.hdim], dim=-1)
        qk = z.unsqueeze(-2) * self.qk_gamma + self.qk_beta  # (B, C, 2, Z): one op pair for both
        if self.rotary:
            qk = apply_rotary(qk, positions.unsqueeze(-1))
        q, k = qk.unbind(-2)
        return q, k, r, self.hidden_dropout(v)

    def slot_count(self, count: int) -> int:
        """The slot count at which the attention cuts ``count`` compressed tokens into its blocks
        without a copy (``count`` rounded up with empty slots): MEGA-chunk's chunks of c, the
        windowed attention's ``window_geometry(w, count).padded``, unbounded attention as it is."""
        if self.window is None:
            return count
        if self.chunked:
            return -(-count // self.window) * self.window if count > self.window else count
        return window_geometry(self.window, count, self.causal).padded

    def bias_positions(self, positions: Tensor) -> Optional[Tensor]:
        """Integer coordinates whose differences index the additive bias: the original positions,
        or None (rotary: no bias; local_pos: the slot offsets, which ``local_attention`` derives
        from its blocking, the same for every block)."""
        if self.rel_pos is None or self.local_pos:
            return None
        return positions

    def output(self, attended: Tensor, r: Tensor) -> Tensor:
        g = gated_linear(attended, r, self.out_proj)
        return g if self.causal else self.dropout(g)

    def attend(self, s: Tensor, positions: Tensor, slot_valid: Tensor) -> Tensor:
        """The GAU on an already compressed slot sequence. s: ``(B, C, D)``; positions: ``(B, C)``
        original 0-based positions of the slots; slot_valid: ``(B, C)`` bool. Returns ``(B, C, D)``."""
        q, k, r, v = self.project(s, positions)
        attended = local_attention(
            q, k, v, slot_valid, window=self.window, causal=self.causal,
            activation=self.activation, positions=self.bias_positions(positions),
            bias=self.rel_pos, dropout=self.attention_dropout, chunked=self.chunked,
        )
        return self.output(attended, r)

    def forward(self, s: Tensor, active: Tensor) -> Tensor:
        """s: ``(B, L, D)``, active: ``(B, L)`` bool. Runs on the active tokens only; returns
        ``(B, L, D)`` with zeros at skipped tokens."""
        out, _, plan = self.forward_compressed(s, active)
        return extract(out, plan)

    def forward_compressed(self, s: Tensor, active: Tensor, gate: Optional[Tensor] = None
                           ) -> Tuple[Tensor, Optional[Tensor], Compression]:
        """``forward`` before the scatter: ``(out (B, C', D), compress(gate) (B, C') or None, plan)``,
        with ``forward(s, active) * gate[..., None] == extract(out * gate_c[..., None], plan)``: a
        layer that gates and scatters in one step keeps the compressed output, not a
        ``(B, L, D)`` one (``recompute.gated_combine``)."""
        plan = plan_compression(active, round_slots=self.slot_count)
        compressed = compress(s, plan)
        if self.recompute and torch.is_grad_enabled():
            # torch's checkpoint restores the RNG state (same dropout masks) and the autocast state
            out = checkpoint(self.attend, compressed, plan.index, plan.slot_valid, use_reentrant=False)
        else:
            out = self.attend(compressed, plan.index, plan.slot_valid)
        return out, None if gate is None else compress(gate, plan), plan

    # ------------------------------------------------------------------ incremental decoding
    # Working memory (causal only), batch first, updated in place by step / forward_chunk:
    #   key (B, S, Z) rotated at its absolute position, value (B, S, H),
    #   position (B, S) absolute position, rank (B, S) activation rank (0-based) of each slot,
    #   count (B,) activated tokens so far. A ring: the token of rank r lives in slot r % S.
    # S = w + 1 (the w previous activated tokens and the current one); SeqBoat-full keeps every
    # activated token, so S grows (doubling) to the number of tokens consumed.
    # Chunked (MEGA-chunk): S = c, the current chunk. The token of rank r is in slot r % c; a query
    # of rank r sees slots 0 .. r % c; the slots above hold the previous chunk and are masked, so
    # crossing a chunk boundary resets the memory without touching it.
    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> MemoryState:
        if self.chunked:
            slots = self.window
        else:
            slots = self.window + 1 if self.window is not None else 0
        return {
            "key": torch.zeros(batch_size, slots, self.zdim, device=device, dtype=dtype),
            "value": torch.zeros(batch_size, slots, self.hdim, device=device, dtype=dtype),
            "position": torch.zeros(batch_size, slots, dtype=torch.long, device=device),
            "rank": torch.zeros(batch_size, slots, dtype=torch.long, device=device),
            "count": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    @staticmethod
    def reorder_state(state: MemoryState, new_order: Tensor) -> MemoryState:
        """The memory of the rows ``new_order`` ``(B',)`` (beam search): every entry is per row."""
        return {name: entry.index_select(0, new_order) for name, entry in state.items()}

    def _reserve(self, state: MemoryState, max_count: int) -> None:
        """SeqBoat-full: make room for ``max_count`` activated tokens (a Python bound known to
        the caller, so no device value is read)."""
        slots = state["key"].size(1)
        if self.window is not None or max_count <= slots:
            return
        grown = max(max_count, 2 * slots, 16)
        for name in ("key", "value", "position", "rank"):
            old = state[name]
            state[name] = torch.cat([old, old.new_zeros(old.size(0), grown - slots, *old.shape[2:])], dim=1)

    def step(self, s: Tensor, active: Tensor, position: Tensor, state: MemoryState, max_count: int) -> Tensor:
        """One new token per row. s: ``(B, D)``; active: ``(B,)`` bool; position: ``(B,)``;
        ``max_count``: a bound on ``count`` after this token (tokens consumed so far + 1).
        Returns ``(B, D)`` (zeros where the token is skipped). No host synchronisation."""
        return self.step_projected(self.in_proj(s), active, position, state, max_count)

    def step_projected(self, a: Tensor, active: Tensor, position: Tensor, state: MemoryState, max_count: int,
                       *, scale: Optional[Tensor] = None, consumed: Optional[int] = None) -> Tensor:
        """``step`` from the input projection's output ``a = in_proj(s)`` ``(B, Z + 2H)``, which a layer
        may compute in one product with its other projections of s. ``scale`` ``(B,)``: the factor
        on the output (default ``active``; a layer passes its router gate, 0 where the token is
        skipped). ``consumed``: the tokens consumed so far as a Python int (every row's ``position``),
        which lets the rotary rotation come from a table made once per decode. Returns ``(B, D)``.

        The new key / value / position / rank are written at ring slot ``count % S`` whether or not
        the token is active (one ``index_copy_`` each, no read-modify-write): a skipped token's entry
        is overwritten by the next activated token, which has the same rank, before any query that
        could see it (a slot below ``count`` only in a full ring, where it holds rank ``count - S``,
        one past the window of every later query; chunked: beyond the current query's slot)."""
        self._reserve(state, max_count)
        z, r, v = F.silu(a).split([self.zdim, self.hdim, self.hdim], dim=-1)
        v = self.hidden_dropout(v)
        qk = torch.addcmul(self.qk_beta, z.unsqueeze(1), self.qk_gamma)  # (B, 2, Z): q and k in one op
        if self.rotary:
            qk = self._rotate_step(qk, position, consumed)
        q, k = qk.unbind(1)
        keys, values, count = state["key"], state["value"], state["count"]
        bsz, slots = keys.shape[:2]
        slot = count % slots  # (B,): the ring slot of rank count
        flat = slot if bsz == 1 else slot + torch.arange(0, bsz * slots, slots, device=slot.device)
        keys.view(bsz * slots, -1).index_copy_(0, flat, k.to(keys.dtype))
        values.view(bsz * slots, -1).index_copy_(0, flat, v.to(values.dtype))
        state["position"].view(-1).index_copy_(0, flat, position)
        state["rank"].view(-1).index_copy_(0, flat, count)
        # Only slots below max_count can hold an entry (the token of rank r is in slot r % S and
        # r < max_count): attending over those alone is exact and, early in a context, reads a
        # fraction of the memory (decoding is memory-bandwidth bound). max_count is a host int.
        used = min(slots, max_count)
        offsets = None
        if self.rel_pos is not None:
            if self.local_pos:  # slot offsets: how many activated tokens back
                offsets = state["rank"][:, :used] - count.unsqueeze(1)
            else:
                offsets = state["position"][:, :used] - position.unsqueeze(1)
        slot_index = torch.arange(used, device=a.device)
        if self.chunked:  # the current chunk: slots 0 .. rank % c (the new token included)
            valid = slot_index <= slot.unsqueeze(1)
        count.add_(active)
        if not self.chunked:
            valid = slot_index < count.clamp(max=slots).unsqueeze(1)
        # chunked: the full-mode normaliser (1 / keys seen) is the chunk's, so window=None
        attended = memory_attention(q, keys[:, :used], values[:, :used], valid,
                                    window=None if self.chunked else self.window, activation=self.activation,
                                    offsets=offsets, bias=self.rel_pos, dropout=self.attention_dropout)
        out = self.output(attended, r)
        return out * (active.to(out.dtype) if scale is None else scale).unsqueeze(-1)

    def _rotate_step(self, qk: Tensor, position: Tensor, consumed: Optional[int]) -> Tensor:
        """``apply_rotary(qk, position)`` for qk ``(B, 2, Z)``; with ``consumed`` (the position of
        every row, a host int) the rotation ``exp(i position theta)`` is read from a table."""
        if consumed is None:
            return apply_rotary(qk, position.unsqueeze(-1))
        table = rotary_step_table(qk.size(-1), consumed + 1, qk.device)
        pairs = torch.view_as_complex(upcast(qk).unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * table[consumed]).flatten(-2).type_as(qk)

    def forward_chunk(self, s: Tensor, active: Tensor, positions: Tensor, state: MemoryState,
                      max_count: int) -> Tensor:
        """Several new tokens per row (prompt prefill). s: ``(B, T, D)``; active, positions:
        ``(B, T)``; ``max_count`` as in ``step``. Returns ``(B, T, D)``; leaves the state that
        T calls of ``step`` leave. The GAU attends over [memory; new active tokens], compacted
        per row so that slot distance equals activation-rank distance."""
        self._reserve(state, max_count)
        bsz, slots = state["key"].shape[:2]
        count = state["count"]
        # memory entries, ranks count - held .. count - 1 (chunked: the current chunk only, so the
        # joint sequence below starts at a chunk boundary and its chunks are the ranks' chunks)
        held = count % slots if self.chunked else count.clamp(max=slots)
        chronological = read_ring_oldest_first(first=count - held, held=held, slots=slots)

        new_plan = plan_compression(active)
        new_positions = compress(positions, new_plan)
        q, k, r, v = self.project(compress(s, new_plan), new_positions)
        joint = plan_compression(torch.cat([chronological.slot_valid, new_plan.slot_valid], dim=1))

        def joined(memory: Tensor, new: Tensor) -> Tensor:
            return compress(torch.cat([compress(memory, chronological), new.to(memory.dtype)], dim=1), joint)

        joint_k, joint_v = joined(state["key"], k), joined(state["value"], v)
        joint_pos = joined(state["position"], new_positions)
        joint_q = compress(torch.cat([q.new_zeros(bsz, slots, q.size(-1)), q], dim=1), joint)
        attended = local_attention(
            joint_q, joint_k, joint_v, joint.slot_valid, window=self.window, causal=True,
            activation=self.activation, positions=self.bias_positions(joint_pos), bias=self.rel_pos,
            dropout=self.attention_dropout, chunked=self.chunked)
        attended = extract(attended, joint)[:, slots:]  # back to the new tokens' slots
        out = extract(self.output(attended, r), new_plan)

        # the new ring: the last S of the joint (chronological) entries, the token of rank r in slot r % S
        total = count + new_plan.count
        kept = total % slots if self.chunked else total.clamp(max=slots)  # chunked: the current chunk
        ring, ring_rank = write_ring_from_chronological(first=total - kept, kept=kept, slots=slots,
                                                        source_first=count - held, source_slots=joint_k.size(1))
        for name, joint_values in (("key", joint_k), ("value", joint_v), ("position", joint_pos)):
            state[name].copy_(compress(joint_values, ring))
        state["rank"].copy_(ring_rank)
        count.copy_(total)
        return out

    def extra_repr(self) -> str:
        pos = "rotary" if self.rotary else ("local_pos" if self.local_pos else "simple")
        span = f"chunk={self.window}" if self.chunked else f"window={self.window}"
        return (f"zdim={self.zdim}, hdim={self.hdim}, {span}, causal={self.causal}, "
                f"activation={self.activation}, positions={pos}")


_ROTARY_STEP_TABLES: Dict[Tuple[int, str], Tensor] = {}


def rotary_step_table(dim: int, length: int, device) -> Tensor:
    """``exp(i p theta)`` for positions p < at least ``length``: ``(P, dim / 2)`` complex64, one table
    per (dim, device) shared by every layer, grown by doubling. The angles are ``apply_rotary``'s
    (``float(p) * theta`` in fp32). A cache of constants, not a buffer (nothing can make it stale),
    made outside inference mode so that any mode may read it."""
    key = (dim, str(device))
    table = _ROTARY_STEP_TABLES.get(key)
    if table is None or table.size(0) < length:
        size = max(length, 2 * (0 if table is None else table.size(0)), 1024)
        with torch.inference_mode(False), torch.no_grad():
            angle = torch.arange(size, device=device).float().unsqueeze(-1) * rotary_frequencies(dim, device)
            table = _ROTARY_STEP_TABLES[key] = torch.polar(torch.ones_like(angle), angle)
    return table


# --------------------------------------------------------------------------- ring memory <-> chronological order
# The decoding memory is a ring of S slots: the activated token of rank r (0-based) lives in
# slot r % S. forward_chunk reads the ring oldest first, appends the new tokens, and writes the
# newest entries back; these two plans do the index arithmetic (``compress`` applies them).
def read_ring_oldest_first(*, first: Tensor, held: Tensor, slots: int) -> Compression:
    """The plan that reads the ``held`` ``(B,)`` ring entries of ranks ``first`` .. ``first + held
    - 1`` ``(B,)`` in chronological order: slot i reads ring slot ``(first + i) % S``, valid for
    i < held."""
    offset = torch.arange(slots, device=first.device).unsqueeze(0)
    valid = offset < held.unsqueeze(1)
    index = (first.unsqueeze(1) + offset) % max(slots, 1) * valid
    return Compression(index=index, slot_valid=valid, rank=None, count=held, identity=False)


def write_ring_from_chronological(*, first: Tensor, kept: Tensor, slots: int, source_first: Tensor,
                                  source_slots: int) -> Tuple[Compression, Tensor]:
    """The plan that fills a ring of S = ``slots`` slots with the ``kept`` ``(B,)`` entries of ranks
    ``first`` .. ``first + kept - 1`` ``(B,)`` of a chronological sequence of ``source_slots`` slots
    whose slot 0 holds rank ``source_first`` ``(B,)``. Ring slot j receives the kept rank that is
    j modulo S (empty when there is none). Returns ``(plan, rank of each ring slot (B, S), 0 where empty)``."""
    slot = torch.arange(slots, device=first.device).unsqueeze(0)
    start = first.unsqueeze(1)
    rank = start + (slot - start) % max(slots, 1)  # the smallest rank >= first that is slot modulo S
    valid = rank < (first + kept).unsqueeze(1)
    source = (rank - source_first.unsqueeze(1)).clamp(min=0, max=max(source_slots - 1, 0))
    return (Compression(index=source * valid, slot_valid=valid, rank=None, count=kept, identity=False),
            rank * valid)
