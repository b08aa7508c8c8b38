"""Registers the Long Range Arena tasks ``lra-text`` and ``lra-image``."""

from . import lra  # noqa: F401
