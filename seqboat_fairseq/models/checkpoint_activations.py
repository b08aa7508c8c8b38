"""``--checkpoint-activations`` / ``--offload-activations`` for the SeqBoat models.

As in fairseq's own models (``TransformerDecoder.build_decoder_layer``), each layer is wrapped
with fairseq's :func:`~fairseq.modules.checkpoint_activations.checkpoint_wrapper`: a training
forward keeps only the layer's inputs (on the CPU with ``--offload-activations``) and runs the
layer again during the backward pass, with the RNG state of the first run restored (dropout
draws the same masks, so the loss and gradients equal those without checkpointing). What
SeqBoat adds on top (:func:`checkpoint_layer`):

* no checkpointing where there is no backward pass: incremental decoding (the layer's
  ``incremental_state`` must be advanced once, not replayed) and any forward under
  ``torch.no_grad()`` (validation, generation) run the layer directly;
* BatchNorm running statistics (``--norm-type batchnorm`` / ``syncbatchnorm``) are updated by
  the first run only: the recomputation would otherwise apply the momentum update (and
  ``num_batches_tracked``) twice per step; it updates copies that are then dropped;
* the recomputation runs under the autocast state of the first run (``--amp``: fairseq calls
  ``backward`` outside the autocast region, so it would otherwise recompute in fp32).

The routing is discrete but a deterministic function of the layer's inputs, parameters and
(restored) RNG state, so the recomputation takes the same decisions. The
:class:`LayerActivation` returned with the output comes from the first run (it carries no
gradient; it is only read for metrics).
"""

import contextlib
import functools
from dataclasses import dataclass, field
from typing import List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from torch import nn

_AUTOCAST_DEVICES = ("cpu", "cuda")


@dataclass
class CheckpointActivationsConfig(FairseqDataclass):
    """The training-memory options: fairseq's own (as its transformer models have them) and
    ``--recompute-gau``; not architecture (no preset sets them). The base of both model configs
    (``SeqBoatLMConfig``, ``SeqBoatLRAConfig``)."""

    checkpoint_activations: bool = field(
        default=False, metadata={"help": "checkpoint activations at each layer: keep only each layer's input and "
                                         "recompute the layer in the backward pass (same loss and gradients)"})
    offload_activations: bool = field(
        default=False, metadata={"help": "move checkpointed activations to CPU after they are used. "
                                         "Sets --checkpoint-activations."})
    recompute_gau: bool = field(
        default=False, metadata={"help": "selective recomputation: each GAU keeps only its compressed input and "
                                         "runs its projection and attention again in the backward pass (same loss "
                                         "and gradients; less memory than without, less time than "
                                         "--checkpoint-activations; the two combine)"})


def checkpoint_options(cfg):
    """``(checkpoint, offload)`` from a model config; ``--offload-activations`` implies
    ``--checkpoint-activations`` (as in fairseq). Configs saved before the options existed: off."""
    offload = bool(getattr(cfg, "offload_activations", False))
    return bool(getattr(cfg, "checkpoint_activations", False)) or offload, offload


def checkpoint_layers(layers: nn.ModuleList, cfg) -> nn.ModuleList:
    """Wraps every layer (:func:`checkpoint_layer`) when the config asks for checkpointing, and
    sets every GAU's ``recompute`` with ``--recompute-gau``."""
    from ..modules.gau import GatedAttentionUnit

    checkpoint, offload = checkpoint_options(cfg)
    if getattr(cfg, "recompute_gau", False):  # configs saved before the option existed: off
        for module in layers.modules():
            if isinstance(module, GatedAttentionUnit):
                module.recompute = True
    if checkpoint:
        for layer in layers:
            checkpoint_layer(layer, offload_to_cpu=offload)
    return layers


def checkpoint_layer(layer: nn.Module, offload_to_cpu: bool = False) -> nn.Module:
    """fairseq's ``checkpoint_wrapper(layer, offload_to_cpu)`` plus the three points of the module
    docstring. Works in place (the module's parameters, names and state dict are unchanged) and
    returns ``layer``; ``is_checkpointed(layer)`` tells a wrapped layer."""
    direct = layer.forward
    norms = [m for m in layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # what checkpoint_wrapper runs (twice per training call): the layer, replay-aware
    layer.forward = functools.partial(_replayable_forward, direct, norms)
    checkpoint_wrapper(layer, offload_to_cpu=offload_to_cpu)
    layer.forward = functools.partial(_dispatch, direct, layer.forward)
    return layer


def is_checkpointed(layer: nn.Module) -> bool:
    return hasattr(layer, "precheckpoint_forward")


class _Call:
    """One checkpointed call: set by its first run, read by its recomputation."""

    __slots__ = ("ran", "autocast")

    def __init__(self):
        self.ran = False
        self.autocast = None


def _dispatch(direct, checkpointed, *args, incremental_state=None, **kwargs):
    if incremental_state is not None or not torch.is_grad_enabled():
        return direct(*args, incremental_state=incremental_state, **kwargs)
    # the _Call object travels through fairseq's CheckpointFunction as a non-tensor argument:
    # the same object reaches the first run and the recomputation
    return checkpointed(*args, _call=_Call(), **kwargs)


def _replayable_forward(forward, norms: List[nn.Module], *args, _call: "_Call" = None, **kwargs):
    if _call is None:  # called directly (e.g. after fairseq's unwrap_checkpoint)
        return forward(*args, **kwargs)
    if not _call.ran:
        _call.ran = True
        _call.autocast = _autocast_state()
        return forward(*args, **kwargs)
    # the recomputation during backward: BatchNorm updates throw-away copies of its statistics
    # (restoring the originals in place instead would bump the version of tensors that the
    # recomputed graph saved for its backward)
    kept = [(m, dict(m._buffers)) for m in norms]
    for m, buffers in kept:
        for name, buffer in buffers.items():
            if buffer is not None:
                m._buffers[name] = buffer.clone()
    try:
        with _autocast(_call.autocast):
            return forward(*args, **kwargs)
    finally:
        for m, buffers in kept:
            m._buffers.update(buffers)


def _autocast_state():
    return [(device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device),
             torch.is_autocast_cache_enabled())
            for device in _AUTOCAST_DEVICES if torch.amp.is_autocast_available(device)]


def _autocast(state) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for device, enabled, dtype, cache in state:
        stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled, cache_enabled=cache))
    return stack
