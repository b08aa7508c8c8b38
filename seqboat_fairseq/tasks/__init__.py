"""Registers the Long Range Arena tasks ``lra-text`` and ``lra-image`` and the raw speech task
``speech_commands``."""

from . import lra  # noqa: F401
from . import speech_commands  # noqa: F401
