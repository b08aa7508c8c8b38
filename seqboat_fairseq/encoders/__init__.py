"""Registers the text <-> token encoders used with SeqBoat byte-level models."""

from . import enwik8_bytes  # noqa: F401
