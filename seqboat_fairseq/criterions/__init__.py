"""Registers the ``lra_cross_entropy`` criterion."""

from . import lra_cross_entropy  # noqa: F401
