"""Optimizers and LR schedulers registered with fairseq on import.

``--optimizer radam`` (torch's RAdam with decoupled weight decay, under upstream SeqBoat/MEGA's
option names) and ``--lr-scheduler linear_decay`` (a port of the upstream schedule).
"""

from . import lr_scheduler  # noqa: F401
from . import radam  # noqa: F401
