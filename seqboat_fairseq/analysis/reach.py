"""How far back each layer's working memory reaches, measured during a streaming pass.

For every *active* token (one that runs the GAU) of a layer, its **reach** is the distance, in
original tokens, from the token to the oldest token in its working memory, i.e. the oldest key it
attends to (the token itself is in its memory: the first active token has reach 0):

* SeqBoat, window ``w``: the memory holds the ``w`` previous active tokens, so the oldest is the
  active token ``w`` activation ranks back; skipped tokens stretch the reach beyond ``w``;
* MEGA-chunk, chunks of ``c`` ranks: the oldest is the first token of the token's chunk;
* SeqBoat-full (no window): the first active token since the state was (re)started;
* SPADE: every token is active, so the reach is ``min(t, w)``.

The MD-EMA state is not a memory of tokens (it carries all history) and is not measured here.

:class:`ReachTracker` follows B streams block by block (``update`` with each block's routing
decisions; ``reset`` where the decoding state is dropped), keeps per layer and row only the
memory's positions (at most ``w + 1``; one for SeqBoat-full) and an exact histogram of the
distances (memory: one counter per distance up to the largest seen), and reports per layer the
median / p90 / max (nearest-rank quantiles: the smallest distance with at least that fraction of
the active tokens at or below it). Used by ``--task language_modeling_stream --reach``
(``tasks/streaming_lm.py``).
"""

import math
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
from torch import Tensor

QUANTILES = (("median", 0.5), ("p90", 0.9))


class Memory(NamedTuple):
    """A layer's working memory: ``window`` w (None: unbounded, SeqBoat-full) and ``chunked``
    (MEGA's fixed chunks of w ranks instead of a sliding window)."""

    window: Optional[int]
    chunked: bool = False


def layer_memories(decoder) -> List[Memory]:
    """The working memory of each layer of a SeqBoat decoder (SeqBoat, MEGA-chunk or SPADE layers)."""
    return [Memory(layer.gau.window, bool(layer.gau.chunked)) for layer in decoder.layers]


def nearest_rank(histogram: np.ndarray, fraction: float) -> int:
    """The smallest value v with ``sum(histogram[:v + 1]) >= fraction * total`` (histogram: counts
    per value 0, 1, ...; total > 0)."""
    cumulative = np.cumsum(histogram)
    target = max(1, math.ceil(fraction * cumulative[-1] - 1e-9))
    return int(np.searchsorted(cumulative, target, side="left"))


def reach_distances(memory: Memory, history: np.ndarray, first_rank: int, positions: np.ndarray) -> np.ndarray:
    """Reach of each new active token of one row. ``history``: positions of the remembered active
    tokens (chronological) whose ranks start at ``first_rank``; ``positions``: the new active
    tokens' positions (increasing). Returns int64 distances, one per new token."""
    joint = np.concatenate([history, positions])
    ranks = first_rank + np.arange(len(history), len(joint))  # the new tokens' activation ranks
    if memory.window is None:
        oldest_rank = np.zeros_like(ranks)
    elif memory.chunked:
        oldest_rank = ranks // memory.window * memory.window
    else:
        oldest_rank = np.maximum(ranks - memory.window, 0)
    return positions - joint[oldest_rank - first_rank]


class ReachTracker:
    """Reach statistics per layer over B streams (see the module docstring)."""

    def __init__(self, memories: Sequence[Memory]):
        self.memories = list(memories)
        self.histograms = [np.zeros(0, dtype=np.int64) for _ in self.memories]
        self.reset(0)

    def reset(self, batch_size: int) -> None:
        """Empty memories for ``batch_size`` rows (a new or dropped decoding state); the histograms stay."""
        self.consumed = np.zeros(batch_size, dtype=np.int64)  # tokens per row since the reset
        self.history = [[np.zeros(0, dtype=np.int64) for _ in range(batch_size)] for _ in self.memories]
        self.first_rank = [np.zeros(batch_size, dtype=np.int64) for _ in self.memories]
        self.count = [np.zeros(batch_size, dtype=np.int64) for _ in self.memories]

    def update(self, active: Sequence[Tensor], padding_mask: Optional[Tensor]) -> None:
        """One block: ``active[l]`` ``(B, T)`` bool per layer (pads are never active);
        ``padding_mask`` ``(B, T)`` True at pads (which only end a row)."""
        real = (active[0].new_ones(active[0].shape) if padding_mask is None else ~padding_mask).sum(1)
        real = real.cpu().numpy()
        for layer, memory in enumerate(self.memories):
            flags = active[layer].cpu().numpy()
            for row in range(flags.shape[0]):
                positions = self.consumed[row] + np.flatnonzero(flags[row])
                if len(positions):
                    self._row(layer, memory, row, positions)
        self.consumed += real

    def _row(self, layer: int, memory: Memory, row: int, positions: np.ndarray) -> None:
        history, first = self.history[layer][row], self.first_rank[layer][row]
        distances = reach_distances(memory, history, first, positions)
        self._count(layer, distances)
        joint = np.concatenate([history, positions])
        total = self.count[layer][row] + len(positions)
        if memory.window is None:
            keep_from = 0  # only the first active token matters
            joint = joint[:1]
        elif memory.chunked:
            keep_from = total // memory.window * memory.window  # the current chunk
            joint = joint[keep_from - first:]
        else:
            keep_from = max(total - memory.window, 0)  # the last w ranks
            joint = joint[keep_from - first:]
        self.history[layer][row] = joint
        self.first_rank[layer][row] = keep_from if memory.window is not None else first
        self.count[layer][row] = total

    def _count(self, layer: int, distances: np.ndarray) -> None:
        counts = np.bincount(distances)
        histogram = self.histograms[layer]
        if len(counts) > len(histogram):
            histogram = np.concatenate([histogram, np.zeros(len(counts) - len(histogram), dtype=np.int64)])
        histogram[:len(counts)] += counts
        self.histograms[layer] = histogram

    def summary(self) -> List[Dict]:
        """Per layer: ``layer``, ``window`` (None: unbounded), ``chunked``, ``active_tokens``,
        ``median``, ``p90``, ``max`` (None where the layer had no active token)."""
        rows = []
        for layer, (memory, histogram) in enumerate(zip(self.memories, self.histograms)):
            total = int(histogram.sum())
            row = {"layer": layer, "window": memory.window, "chunked": memory.chunked, "active_tokens": total}
            for name, fraction in QUANTILES:
                row[name] = nearest_rank(histogram, fraction) if total else None
            row["max"] = int(np.flatnonzero(histogram)[-1]) if total else None
            rows.append(row)
        return rows


def format_summary(rows: Sequence[Dict]) -> List[str]:
    """One log line per layer."""
    lines = []
    for row in rows:
        memory = ("unbounded" if row["window"] is None else
                  f"chunks of {row['window']}" if row["chunked"] else f"w={row['window']}")
        if row["active_tokens"]:
            lines.append(f"reach layer {row['layer']} ({memory}): median {row['median']}, p90 {row['p90']}, "
                         f"max {row['max']} tokens over {row['active_tokens']:,} active tokens")
        else:
            lines.append(f"reach layer {row['layer']} ({memory}): no active token")
    return lines
