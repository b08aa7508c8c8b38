"""The SeqBoat layer options shared by the LM and the LRA models: their checks and the one
place a model config becomes layers (:func:`build_layer`).

The two models spell the same option differently (``--decoder-z-dim`` vs ``--z-dim``), so each
passes ``{flag: value}`` to the checks (every message names the flag the user typed) and names
its config fields once in a :class:`LayerFields`.
"""

from dataclasses import dataclass
from typing import Dict, Optional

from torch import nn

from ..modules.seqboat_layer import SeqBoatLayer
from ..modules.spade_layer import SpadeLayer
from .baselines import LAYER_TYPES
from .checkpoint_activations import checkpoint_layers


def check_layer_options(*, layers: Dict[str, Optional[int]], dims: Dict[str, Optional[int]],
                        chunk_size: Dict[str, Optional[int]], truncation: Dict[str, Optional[int]]) -> None:
    """Raises ``ValueError`` naming the flag for a value no SeqBoat layer can be built with.

    layers: ``{flag: number of layers}`` (>= 1); dims: ``{flag: size}`` (each >= 1);
    chunk_size: ``{flag: w}`` (w >= 1, or -1 for SeqBoat-full); truncation: ``{flag: t}``
    (t >= 1, or 0 / unset for no truncation).
    """
    for flag, value in layers.items():
        if value is None or value < 1:
            raise ValueError(f"{flag} {value}: a model needs at least one SeqBoat layer")
    for flag, value in dims.items():
        if value is None or value < 1:
            raise ValueError(f"{flag} {value}: every dimension of a SeqBoat layer must be a positive integer")
    for flag, value in chunk_size.items():
        if value is not None and value < -1:
            raise ValueError(f"{flag} {value}: give the working-memory size w > 0, or -1 for SeqBoat-full "
                             "(unbounded attention over the compressed sequence)")
    for flag, value in truncation.items():
        if value is not None and value < 0:
            raise ValueError(f"{flag} {value}: the MD-EMA kernel truncation must be a positive length, "
                             "or 0 for none")


def task_name(task) -> str:
    """The registered name of a fairseq task object (for messages)."""
    from fairseq.tasks import TASK_REGISTRY

    return next((name for name, cls in TASK_REGISTRY.items() if type(task) is cls), type(task).__name__)


@dataclass(frozen=True)
class LayerFields:
    """The model-config fields holding the layer options that the two models spell differently.
    The others have one name in both configs: ``truncation_length``, ``attention_activation_fn``,
    ``rel_pos_bias``, ``local_pos``, ``init_temp_scale``, ``always_act``, ``dropout``,
    ``attention_dropout``, ``chunked_attention``, ``layer_type`` and (LRA only) ``act_bias``; a
    config saved before ``chunked_attention`` / ``layer_type`` existed builds unchunked SeqBoat layers."""

    layers: str
    embed_dim: str
    z_dim: str
    hidden_dim: str
    n_dim: str
    chunk_size: str
    ffn_dim: str
    norm_type: str
    prenorm: str
    max_positions: str
    hidden_dropout: str
    activation_dropout: str


def build_layer(cfg, names: LayerFields, index: int, *, bidirectional: bool) -> nn.Module:
    """Layer ``index`` (0 = bottom) of the stack the model config ``cfg`` asks for: a
    :class:`SeqBoatLayer`, or with ``--layer-type spade`` a :class:`SpadeLayer` (the bottom one
    with the MD-EMA branch). The router's options (``init_temp_scale``, ``always_act``,
    ``act_bias``) only apply to SeqBoat layers: SPADE layers run every real token."""
    def value(name):
        return getattr(cfg, name)

    # --chunk-size / --decoder-chunk-size: one span, read by the layer according to its kind:
    # SeqBoat's working memory w, SPADE's sliding window w, or with --chunked-attention MEGA's
    # chunk size c (attention inside fixed, non-overlapping chunks of c slots); -1: unbounded
    span = value(names.chunk_size)
    truncation = cfg.truncation_length if cfg.truncation_length and cfg.truncation_length > 0 else None
    shared = dict(
        bidirectional=bidirectional, window=span, chunked=bool(getattr(cfg, "chunked_attention", False)),
        truncation=truncation, norm_type=value(names.norm_type), prenorm=value(names.prenorm),
        attention_activation=cfg.attention_activation_fn, rel_pos=cfg.rel_pos_bias,
        max_positions=value(names.max_positions), local_pos=cfg.local_pos, dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout, hidden_dropout=value(names.hidden_dropout),
        ffn_dim=value(names.ffn_dim), activation_dropout=value(names.activation_dropout),
    )
    dims = (value(names.embed_dim), value(names.z_dim), value(names.hidden_dim), value(names.n_dim))
    layer_type = getattr(cfg, "layer_type", None)  # None: a config saved before the option existed
    if layer_type in (None, "seqboat"):
        return SeqBoatLayer(*dims, init_temp_scale=cfg.init_temp_scale, always_active=cfg.always_act,
                            act_bias=getattr(cfg, "act_bias", 0.0), **shared)
    if layer_type == "spade":
        return SpadeLayer(*dims, global_branch=index == 0, **shared)
    raise ValueError(f"--layer-type {layer_type}: expected one of {LAYER_TYPES}")


def check_window(window: Optional[int], flag: str, layer_type: Optional[str]) -> None:
    """Raises ``ValueError`` for a window ``flag`` (``--chunk-size`` / ``--decoder-chunk-size``)
    of 0, in the words of the layer it sets: SeqBoat's working memory, SPADE's sliding window."""
    if window != 0:
        return
    if layer_type == "spade":
        raise ValueError(f"{flag} 0: SPADE's window attention needs a window of w > 0 tokens (on each side, "
                         "or the w previous ones when causal), or -1 to attend to every token")
    raise ValueError(f"{flag} 0: give the working-memory size w > 0, or -1 for SeqBoat-full "
                     "(unbounded attention over the compressed sequence)")


def build_layers(cfg, names: LayerFields, *, bidirectional: bool) -> nn.ModuleList:
    """The model's stack of SeqBoat (or baseline) layers, bottom first, each checkpointed or its
    GAU recomputing when the config asks for it (``--checkpoint-activations`` /
    ``--offload-activations`` / ``--recompute-gau``)."""
    layer_type = getattr(cfg, "layer_type", None)  # None: a config saved before the option existed
    check_window(getattr(cfg, names.chunk_size), "--" + names.chunk_size.replace("_", "-"), layer_type)
    layers = nn.ModuleList([build_layer(cfg, names, i, bidirectional=bidirectional)
                            for i in range(getattr(cfg, names.layers))])
    return checkpoint_layers(layers, cfg)
