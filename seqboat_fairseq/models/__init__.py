"""Registers the SeqBoat models and their architectures with fairseq."""

from . import seqboat_lm  # noqa: F401
from . import seqboat_lra  # noqa: F401
from . import lra_presets  # noqa: F401  (after seqboat_lra: registers its presets)
