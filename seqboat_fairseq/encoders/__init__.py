"""Registers the text <-> token encoders used with SeqBoat models: ``--bpe enwik8_bytes`` and a
``--bpe sentencepiece`` that decodes byte-fallback pieces to text."""

from . import enwik8_bytes  # noqa: F401
from . import sentencepiece_text  # noqa: F401
