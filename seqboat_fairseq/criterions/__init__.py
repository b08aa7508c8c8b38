"""Registers the ``lra_cross_entropy`` and ``seqboat_cross_entropy`` criteria."""

from . import lra_cross_entropy  # noqa: F401
from . import seqboat_cross_entropy  # noqa: F401
