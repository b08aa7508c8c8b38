"""Optimizers and LR schedulers registered with fairseq on import.

``--optimizer radam`` and ``--lr-scheduler linear_decay`` (ports of the SeqBoat/MEGA upstream).
"""

from . import lr_scheduler  # noqa: F401
from . import radam  # noqa: F401
