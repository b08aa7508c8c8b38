"""seqboat-fairseq: SeqBoat (Sparse Modular Activation) as a fairseq ``--user-dir`` plugin.

Importing the package registers its models, architectures, optimizer and LR scheduler.
"""

from . import checkpoint_compat  # noqa: F401  (must come first: torch.load allow-list)
from . import encoders  # noqa: F401
from . import models  # noqa: F401
from . import optim  # noqa: F401

__version__ = "0.1.0"
