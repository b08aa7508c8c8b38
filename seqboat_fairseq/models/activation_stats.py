"""Per-layer activation statistics of SeqBoat models, logged as fairseq metrics."""

from typing import List, Optional, Tuple

import torch
from fairseq.logging import metrics
from torch import Tensor

from ..modules.seqboat_layer import LayerActivation


def activation_rates(activations: List[LayerActivation], padding_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Fraction of non-pad tokens routed to the GAU, per layer: ``(rates (layers,), ntokens)``."""
    active = torch.stack([a.active for a in activations])  # (layers, B, T)
    ntokens = active[0].numel() if padding_mask is None else (~padding_mask).sum()
    ntokens = torch.as_tensor(ntokens, device=active.device).clamp(min=1)
    return active.flatten(1).sum(-1) / ntokens, ntokens


def log_activation_rates(activations: List[LayerActivation], padding_mask: Optional[Tensor]) -> None:
    """Logs ``act_rate_l{i}`` and ``act_rate`` into the active fairseq metric aggregators
    (training, validation); a no-op when none is active (generation, eval-lm)."""
    if not activations or not metrics.get_active_aggregators():
        return
    rates, ntokens = activation_rates(activations, padding_mask)
    rates, weight = rates.detach().cpu(), float(ntokens)
    metrics.log_scalar("act_rate", rates.mean(), weight, round=3)
    for i, rate in enumerate(rates):
        metrics.log_scalar(f"act_rate_l{i}", rate, weight, round=3)
