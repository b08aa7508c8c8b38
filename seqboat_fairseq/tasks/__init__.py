"""Registers the Long Range Arena tasks ``lra-text`` and ``lra-image`` and the raw speech task
``speech_commands``; every task's batches keep the last one (``last_batch.py``)."""

from . import last_batch  # noqa: F401
from . import lra  # noqa: F401
from . import speech_commands  # noqa: F401
from . import streaming_lm  # noqa: F401  (--task language_modeling_stream)
