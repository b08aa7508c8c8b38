"""SeqBoat building blocks. ``naive`` (dense, loop-based references) is for tests only."""

from .decoding_layer import DecodingLayer
from .ema import MultiHeadEMA
from .ffn import NormalizedFeedForwardNetwork
from .gau import GatedAttentionUnit
from .local_attention import local_attention
from .norms import SequenceNorm
from .positions import RelativePositionalBias, apply_rotary
from .seqboat_layer import LayerActivation, SeqBoatLayer, upgrade_upstream_layer_keys
from .sma import LatentConfigurator, compress, extract, forced_activation, plan_compression
from .spade_layer import SpadeLayer

__all__ = [
    "DecodingLayer", "GatedAttentionUnit", "LatentConfigurator", "LayerActivation", "MultiHeadEMA",
    "NormalizedFeedForwardNetwork", "RelativePositionalBias", "SeqBoatLayer", "SequenceNorm", "SpadeLayer",
    "apply_rotary", "compress", "extract", "forced_activation", "local_attention", "plan_compression",
    "upgrade_upstream_layer_keys",
]
