"""SeqBoat building blocks. ``naive`` (dense, loop-based references) is for tests only."""

from .ema import MultiHeadEMA
from .ffn import NormalizedFeedForwardNetwork
from .gau import GatedAttentionUnit
from .local_attention import local_attention
from .norms import SequenceNorm
from .positions import RelativePositionalBias, apply_rotary
from .seqboat_layer import LayerActivation, SeqBoatLayer, upgrade_upstream_layer_keys
from .sma import LatentConfigurator, compress, extract, plan_compression

__all__ = [
    "GatedAttentionUnit", "LatentConfigurator", "LayerActivation", "MultiHeadEMA",
    "NormalizedFeedForwardNetwork", "RelativePositionalBias", "SeqBoatLayer", "SequenceNorm",
    "apply_rotary", "compress", "extract", "local_attention", "plan_compression",
    "upgrade_upstream_layer_keys",
]
