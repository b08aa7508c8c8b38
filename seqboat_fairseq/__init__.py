"""seqboat-fairseq: SeqBoat (Sparse Modular Activation) as a fairseq ``--user-dir`` plugin.

Importing the package registers its models, architectures, tasks, criteria, optimizer,
LR scheduler and encoders (``--bpe enwik8_bytes``, and ``--bpe sentencepiece`` re-registered to
decode byte pieces to text) with fairseq, and patches a few fairseq globals
(:mod:`seqboat_fairseq.patches` lists them; ``SEQBOAT_FAIRSEQ_DISABLE_PATCHES`` keeps any of
fairseq's originals).
"""

from .fairseq_check import require_fairseq

require_fairseq()  # one clear ImportError when no fairseq with the 0.12 API is installed

from . import checkpoint_compat  # noqa: F401,E402  (must come first: torch.load allow-list)
from . import criterions  # noqa: F401
from . import encoders  # noqa: F401
from . import eval_lm_flags  # noqa: F401  (fairseq-eval-lm's block flags, checked first)
from . import generation  # noqa: F401  (--task multiline_language_modeling)
from . import models  # noqa: F401
from . import optim  # noqa: F401
from . import tasks  # noqa: F401
from . import quiet  # noqa: F401,E402  (Hydra deprecation filters; see quiet.py)
from . import training_safety  # noqa: F401  (atomic checkpoint copies, resume fallback, save-dir lock)

__version__ = "0.1.0"
