"""The decoding contract shared by the SeqBoat and SPADE layers (docs/design.md, 'Decoding state').

A :class:`DecodingLayer` runs one pipeline (``_pipeline``, written by each subclass) in three
modes: the parallel ``forward``, ``step`` (one new token) and ``forward_chunk`` (several, e.g. a
prompt). Causal layers keep their decoding state in fairseq's ``incremental_state`` under the
layer's ``seqboat_state`` key::

    {"ema": MultiHeadEMA state (absent from SPADE's local layers), "gau": the GAU's working memory,
     "position": (B,) tokens consumed (on the device), "length": the same count as a Python int}

Each sub-module owns its part, updates it in place and says how it follows a beam reorder
(``MultiHeadEMA.reorder_state``, ``GatedAttentionUnit.reorder_state``).
"""

from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor, nn


class LayerActivation(NamedTuple):
    """Per-token routing outcome of one layer: ``active`` (B, L) bool and the gate
    ``confidence`` (B, L) (max router probability for active tokens, else 0; all-ones for
    always-active layers)."""

    active: Tensor
    confidence: Tensor


DecodingState = Dict[str, Any]


@with_incremental_state
class DecodingLayer(nn.Module):
    """Base class of the layers on time-major ``(L, B, D)`` inputs that decode incrementally.

    A subclass builds ``self.gau`` (a :class:`~seqboat_fairseq.modules.gau.GatedAttentionUnit`),
    optionally ``self.ema`` (a :class:`~seqboat_fairseq.modules.ema.MultiHeadEMA`, or None), sets
    ``self.bidirectional`` and implements ``_pipeline`` and ``init_state``."""

    def _pipeline(self, x: Tensor, padding_mask: Optional[Tensor], state: Optional[DecodingState]
                  ) -> Tuple[Tensor, "LayerActivation"]:
        """The layer on x ``(T, B, D)``: in parallel (``state`` None), for one new token or for
        several, updating ``state`` in place. Returns ``(y (T, B, D), LayerActivation)``."""
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> DecodingState:
        """An empty decoding state (see the module docstring)."""
        raise NotImplementedError

    @property
    def window(self) -> Optional[int]:
        """The GAU's span: the working memory / sliding window w, with chunked attention MEGA's
        chunk size c; None: unbounded."""
        return self.gau.window

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None,
                incremental_state: Optional[Dict[str, Dict[str, Any]]] = None,
                ) -> Tuple[Tensor, LayerActivation]:
        """x: ``(L, B, D)``; padding_mask: ``(B, L)`` True = pad.

        With ``incremental_state``, x holds the *new* tokens only: one (``step``) or several
        (``forward_chunk``, e.g. a prompt) continuing the stored state.
        Returns ``(y (L, B, D), LayerActivation)``.
        """
        if incremental_state is None:
            return self._pipeline(x, padding_mask, None)
        state = self.get_incremental_state(incremental_state, "seqboat_state")
        if state is None:
            state = self.init_state(x.size(1), x.device, x.dtype)
        y, activation = self._pipeline(x, padding_mask, state)
        self.set_incremental_state(incremental_state, "seqboat_state", state)
        return y, activation

    def step(self, x: Tensor, state: DecodingState, padding_mask: Optional[Tensor] = None
             ) -> Tuple[Tensor, LayerActivation, DecodingState]:
        """One new token per row: x ``(B, D)``. O(w) work, independent of the context length, no
        host synchronisation; the state is updated in place. Equals the parallel causal
        ``forward`` at this position (tested). Returns ``(y (B, D), LayerActivation of (B, 1), state)``."""
        y, activation = self._pipeline(x.unsqueeze(0), None if padding_mask is None else padding_mask.unsqueeze(1),
                                       state)
        return y[0], activation, state

    def forward_chunk(self, x: Tensor, state: DecodingState, padding_mask: Optional[Tensor] = None
                      ) -> Tuple[Tensor, LayerActivation, DecodingState]:
        """Several new tokens at once (prompt prefill), continuing ``state``: x ``(T, B, D)``.
        Leaves the same state as T calls of ``step`` (tested). Returns ``(y (T, B, D), activation, state)``."""
        y, activation = self._pipeline(x, padding_mask, state)
        return y, activation, state

    def decoded_length(self, incremental_state) -> int:
        """How many tokens the stored state has consumed (0 without a state); read on the host."""
        state = self.get_incremental_state(incremental_state, "seqboat_state")
        return 0 if state is None else state["length"]

    def reorder_state(self, state: DecodingState, new_order: Tensor) -> DecodingState:
        """The state of the rows ``new_order`` ``(B',)`` (beam search): each part reordered by the
        module that owns it; the host-side count is the same for every row."""
        rules = {
            "ema": lambda ema_state: self.ema.reorder_state(ema_state, new_order),
            "gau": lambda memory: self.gau.reorder_state(memory, new_order),
            "position": lambda position: position.index_select(0, new_order),
            "length": lambda length: length,
        }
        unknown = set(state) - set(rules)
        if unknown:  # a new entry must say how it follows the beams
            raise KeyError(f"{type(self).__name__}.reorder_state: no rule for state entries {sorted(unknown)}")
        return {key: rules[key](value) for key, value in state.items()}

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        """Beam search (fairseq's hook): replaces the stored state by ``reorder_state``'s."""
        state = self.get_incremental_state(incremental_state, "seqboat_state")
        if state is not None:
            self.set_incremental_state(incremental_state, "seqboat_state", self.reorder_state(state, new_order))
        return incremental_state
