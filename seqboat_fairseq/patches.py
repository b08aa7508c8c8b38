"""The fairseq / torch / Python globals the plugin changes on import, each of which can be kept
as it was.

``SEQBOAT_FAIRSEQ_DISABLE_PATCHES`` is a comma-separated list of the names below (or ``all``),
read once when the plugin is imported: each listed patch is not installed, and fairseq's (or
Python's) original stays in place. Every patch site asks :func:`enabled` before it assigns.
An unknown name stops the import with one ``error:`` line (a misspelt name must not leave a patch
installed silently).

    SEQBOAT_FAIRSEQ_DISABLE_PATCHES=batch_by_size,excepthook fairseq-validate ...
"""

import os
from typing import Dict, FrozenSet, Optional

ENV = "SEQBOAT_FAIRSEQ_DISABLE_PATCHES"

# name -> what it replaces (docs/install.md has the table with the reason for each)
PATCHES: Dict[str, str] = {
    "PathManager": "fairseq.checkpoint_utils.PathManager (atomic copies to checkpoint_last.pt / _best.pt)",
    "load_checkpoint": "fairseq.checkpoint_utils.load_checkpoint (resume fallback, save-dir lock)",
    "verify_checkpoint_directory": "fairseq.checkpoint_utils.verify_checkpoint_directory (unwritable --save-dir)",
    "load_checkpoint_to_cpu": "fairseq.checkpoint_utils.load_checkpoint_to_cpu (one error per bad file)",
    "load_model_ensemble_and_task": "fairseq.checkpoint_utils.load_model_ensemble_and_task (wrong-task error)",
    "safe_globals": "torch.serialization.add_safe_globals (fairseq's checkpoint objects)",
    "excepthook": "sys.excepthook (one error: line per refusal)",
    "hydra_quiet": "warnings filters for Hydra's deprecation messages, the hydra logger at INFO",
    "generate": "fairseq.sequence_generator.SequenceGenerator._generate (prompt-length check)",
    "batch_by_size": "fairseq.data.data_utils.batch_by_size (last batch kept)",
    "setup_task": "fairseq.tasks.setup_task (fairseq-eval-lm's block flags checked first)",
    "sentencepiece": "fairseq.data.encoders.BPE_REGISTRY['sentencepiece'] (decodes byte pieces to text)",
}


def disabled_patches(value: Optional[str] = None) -> FrozenSet[str]:
    """The names listed in ``value`` (default: the environment variable), ``all`` expanded.
    Raises ``SystemExit`` with one ``error:`` line for an unknown name."""
    value = os.environ.get(ENV, "") if value is None else value
    names = {name.strip() for name in value.split(",") if name.strip()}
    if "all" in names:
        return frozenset(PATCHES)
    unknown = sorted(names - set(PATCHES))
    if unknown:
        raise SystemExit(f"error: {ENV}={value}: unknown patch name(s) {', '.join(unknown)}; expected a "
                         f"comma-separated list of: all, {', '.join(PATCHES)}")
    return frozenset(names)


DISABLED = disabled_patches()


def enabled(name: str) -> bool:
    """Whether the patch ``name`` (a key of :data:`PATCHES`) is to be installed."""
    if name not in PATCHES:
        raise KeyError(name)
    return name not in DISABLED
