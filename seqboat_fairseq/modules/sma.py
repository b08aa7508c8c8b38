"""Sparse Modular Activation: the latent configurator and the compress / extract operators.

See docs/design.md, 'Routing' and 'Compression'. The configurator turns two router
logits per token into a hard decision ``active`` (run the GAU or skip it) and a
confidence ``gate``; the GAU then runs only on the compressed sequence of active tokens,
and its outputs are scattered back.

Compression is gather-based: a stable sort puts each row's active positions first, in
order, so no index is ever written twice (upstream scatters every skipped token into a
shared dump slot, which is non-deterministic: upstream hazard H13). Gradients reach the
router only through ``gate``; ``active``, the indices and the compressed length are discrete.
"""

import math
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import upcast


class LatentConfigurator(nn.Module):
    """Router with a learned log-temperature (parameter ``log_temperature``, shape (1,)).

    ``pi = softmax((u + [act_bias, 0]) / tau)`` in fp32, option 0 = skip, 1 = activate;
    ``active = argmax(pi) == 1 and not pad`` (ties go to skip), ``gate = max(pi) * active``.
    """

    num_options = 2

    def __init__(self, embed_dim: int, init_temp_scale: float = 0.3):
        super().__init__()
        if init_temp_scale <= 0:
            raise ValueError(f"--init-temp-scale must be positive, got {init_temp_scale}")
        self.log_temperature = nn.Parameter(
            torch.tensor([math.log(init_temp_scale * math.sqrt(embed_dim))]))
        # set by ``forced_activation`` (benchmarks, tests, analyses): maps the router's own
        # decisions to the ones to use; None = the router decides
        self.decide: Optional[Callable[[Tensor], Tensor]] = None

    def forward(self, logits: Tensor, padding_mask: Optional[Tensor] = None,
                act_bias: float = 0.0) -> Tuple[Tensor, Tensor]:
        """logits: ``(..., 2)``; padding_mask: ``(...)`` True = pad.

        Returns ``(active (...) bool, gate (...) in logits.dtype)``.
        """
        u = upcast(logits)
        if act_bias != 0.0:
            u = u + u.new_tensor([act_bias, 0.0])
        probs = torch.softmax(u / torch.exp(upcast(self.log_temperature)), dim=-1)
        confidence, choice = probs.max(dim=-1)  # first maximum: ties go to skip
        active = choice == 1
        if self.decide is not None:
            active = self.decide(active).to(device=active.device, dtype=torch.bool)
        if padding_mask is not None:
            active = active & ~padding_mask
        gate = confidence * active
        return active, gate.to(logits.dtype)


@contextmanager
def forced_activation(module: nn.Module, decide: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Inside the block, every router in ``module`` activates the tokens ``decide`` returns.

    ``decide`` receives the router's own hard decisions ``(..., L)`` bool and returns the ones to
    use, of the same shape (e.g. ``lambda active: mask`` for a fixed mask, ``torch.ones_like``
    for all). Padding still wins (pads are never active), and each active token's gate is the
    router's confidence as usual, so gradients flow exactly as in training::

        with forced_activation(layer, lambda active: mask):
            y, activation = layer(x)
    """
    routers = [m for m in module.modules() if isinstance(m, LatentConfigurator)]
    previous = [router.decide for router in routers]
    for router in routers:
        router.decide = decide
    try:
        yield
    finally:
        for router, old in zip(routers, previous):
            router.decide = old


class Compression(NamedTuple):
    """Index bookkeeping of one compress / extract pair for a ``(B, L)`` activation mask.

    index: ``(B, C')`` original position of each slot (0 for empty slots);
    slot_valid: ``(B, C')`` True for the first ``count[b]`` slots of row b;
    rank: ``(B, L)`` 1-based slot of each active token, 0 for skipped tokens;
    count: ``(B,)`` number of active tokens per row. ``C' = max(max(count), 1)``, rounded up
    by ``round_slots`` (see ``plan_compression``).
    identity: every position of every row is active (compress/extract are no-ops).
    """

    index: Tensor
    slot_valid: Tensor
    rank: Tensor
    count: Tensor
    identity: bool


def plan_compression(active: Tensor, round_slots: Optional[Callable[[int], int]] = None) -> Compression:
    """Builds the slot layout for ``active`` ``(B, L)`` bool. One host sync (C is a shape).

    ``round_slots``: maps the slot count to the one the attention cuts into its blocks
    (``GatedAttentionUnit.slot_count``: MEGA-chunk's chunks, the windowed attention's query
    blocks); the extra slots are empty, so that the attention takes the compressed sequence as it
    is instead of copying q, k and v into padded blocks (the copies were kept for the backward
    pass: 6 % of an LM step's memory). Empty slots are invalid keys and their outputs are never
    extracted.
    """
    bsz, seq_len = active.shape
    count = active.sum(dim=1)
    slots = max(int(count.max()) if bsz > 0 else 0, 1)
    rank = torch.cumsum(active.long(), dim=1) * active
    if slots == seq_len and bool(active.all()):
        index = torch.arange(seq_len, device=active.device).expand(bsz, seq_len)
        return Compression(index, active, rank, count, True)
    if round_slots is not None:
        slots = round_slots(slots)
    # stable sort of "not active": the active positions come first, in their original order
    order = torch.sort((~active).to(torch.uint8), dim=1, stable=True).indices[:, :slots]
    if slots > seq_len:  # rounded past the sequence: empty slots (index 0, invalid)
        order = F.pad(order, (0, slots - seq_len))
    slot_valid = torch.arange(slots, device=active.device).unsqueeze(0) < count.unsqueeze(1)
    index = order * slot_valid
    return Compression(index, slot_valid, rank, count, False)


def compress(x: Tensor, plan: Compression) -> Tensor:
    """x: ``(B, L, *F)`` -> ``(B, C', *F)``: row b's active tokens in order, then zeros."""
    if plan.identity:
        return x
    bsz, seq_len = x.shape[:2]
    # row b's token t is entry b L + t; index_select, unlike gather, does not keep its (B, L, *F)
    # input for the backward pass (the layer does not keep s otherwise: recompute.silu_projection)
    flat = plan.index if bsz == 1 else plan.index + torch.arange(bsz, device=x.device).unsqueeze(1) * seq_len
    gathered = x.flatten(0, 1).index_select(0, flat.flatten()).view(*plan.index.shape, *x.shape[2:])
    valid = plan.slot_valid.view(*plan.slot_valid.shape, *([1] * (x.dim() - 2)))
    return gathered * valid if x.dtype != torch.bool else gathered & valid


def extract(y: Tensor, plan: Compression) -> Tensor:
    """y: ``(B, C', *F)`` -> ``(B, L, *F)``: active token t gets its slot, skipped tokens 0."""
    if plan.identity:
        return y
    bsz, slots = y.shape[:2]
    zero = y.new_zeros(bsz, 1, *y.shape[2:])
    padded = torch.cat([zero, y], dim=1).flatten(0, 1)  # slot 0 of each row: the zero skipped tokens read
    # row b's slot r is entry b (C' + 1) + r; index_select, unlike gather, does not keep its
    # (B, C' + 1, *F) input for the backward pass
    index = plan.rank + torch.arange(bsz, device=y.device).unsqueeze(1) * (slots + 1)
    return padded.index_select(0, index.flatten()).view(bsz, -1, *y.shape[2:])
