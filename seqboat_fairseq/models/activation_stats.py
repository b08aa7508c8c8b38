"""Per-layer activation rates of SeqBoat models, logged the fairseq way.

A criterion puts *counts* into its ``logging_output`` (:func:`activation_counts`); fairseq sums
logging outputs over workers and gradient-accumulation steps, and the criterion's
``reduce_metrics`` turns the sums into rates (:func:`log_activation_rates`). So 2 workers log
exactly what 1 worker with ``--update-freq 2`` logs, and ``fairseq-validate`` prints them too.
(Logging from inside the model's forward would record one worker's rate only.)

Keys: ``act_tokens`` (real, non-pad tokens seen by each layer) and ``act_count_l{i}`` (tokens
layer i routed to the GAU). Metrics: ``act_rate_l{i}`` and their mean ``act_rate``.
"""

from typing import Dict, List, Optional, Sequence, Union

import torch
from fairseq.logging import metrics
from torch import Tensor

from ..modules.seqboat_layer import LayerActivation

# after the loss and the criterion's own metrics in progress bars (fairseq sorts by priority)
ACTIVATION_METRICS_PRIORITY = 200

Activations = Union[List[LayerActivation], List[List[LayerActivation]]]


def activation_counts(activations: Activations, padding_masks: Union[None, Tensor, Sequence[Optional[Tensor]]]
                      ) -> Dict[str, Tensor]:
    """Counts for one forward pass. ``activations``: one :class:`LayerActivation` per layer, or
    one such list per document (two-tower models); ``padding_masks`` alike (``(B, L)``, True =
    pad; None = no padding). Counts stay tensors on the model's device (no host sync here)."""
    if not activations:
        return {}
    if isinstance(activations[0], LayerActivation):
        activations, padding_masks = [activations], [padding_masks]
    counts: Dict[str, Tensor] = {}
    for document, padding_mask in zip(activations, padding_masks):
        first = document[0].active
        # always a tensor on the model's device: fairseq all-reduces device tensors and Python
        # numbers in separate buffers, so every rank must give each key the same kind of value
        tokens = first.new_tensor(first.numel(), dtype=torch.long) if padding_mask is None else (~padding_mask).sum()
        counts["act_tokens"] = counts.get("act_tokens", 0) + tokens
        for i, layer in enumerate(document):  # pads are never active
            counts[f"act_count_l{i}"] = counts.get(f"act_count_l{i}", 0) + layer.active.sum()
    return counts


def log_activation_rates(logging_outputs: Sequence[Dict]) -> None:
    """Inside ``reduce_metrics``: turns summed counts into ``act_rate_l{i}`` and ``act_rate``,
    weighted by the number of tokens."""
    tokens = float(sum(log.get("act_tokens", 0) for log in logging_outputs))
    layers = sorted({int(k[len("act_count_l"):]) for log in logging_outputs for k in log
                     if k.startswith("act_count_l")})
    if not tokens or not layers:
        return
    rates = [float(sum(log.get(f"act_count_l{i}", 0) for log in logging_outputs)) / tokens for i in layers]
    metrics.log_scalar("act_rate", sum(rates) / len(rates), tokens, round=3, priority=ACTIVATION_METRICS_PRIORITY)
    for i, rate in zip(layers, rates):
        metrics.log_scalar(f"act_rate_l{i}", rate, tokens, round=3, priority=ACTIVATION_METRICS_PRIORITY + 1)
