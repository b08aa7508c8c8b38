"""Checks of the SeqBoat layer options shared by the LM and the LRA models.

The two models spell the same option differently (``--decoder-z-dim`` vs ``--z-dim``), so each
passes ``{flag: value}`` and every message names the flag the user typed.
"""

from typing import Dict, Optional


def check_layer_options(*, layers: Dict[str, Optional[int]], dims: Dict[str, Optional[int]],
                        chunk_size: Dict[str, Optional[int]], truncation: Dict[str, Optional[int]]) -> None:
    """Raises ``ValueError`` naming the flag for a value no SeqBoat layer can be built with.

    layers: ``{flag: number of layers}`` (>= 1); dims: ``{flag: size}`` (each >= 1);
    chunk_size: ``{flag: w}`` (w >= 1, or -1 for SeqBoat-full); truncation: ``{flag: t}``
    (t >= 1, or 0 / unset for no truncation).
    """
    for flag, value in layers.items():
        if value is None or value < 1:
            raise ValueError(f"{flag} {value}: a model needs at least one SeqBoat layer")
    for flag, value in dims.items():
        if value is None or value < 1:
            raise ValueError(f"{flag} {value}: every dimension of a SeqBoat layer must be a positive integer")
    for flag, value in chunk_size.items():
        if value is not None and value < -1:
            raise ValueError(f"{flag} {value}: give the working-memory size w > 0, or -1 for SeqBoat-full "
                             "(unbounded attention over the compressed sequence)")
    for flag, value in truncation.items():
        if value is not None and value < 0:
            raise ValueError(f"{flag} {value}: the MD-EMA kernel truncation must be a positive length, "
                             "or 0 for none")


def task_name(task) -> str:
    """The registered name of a fairseq task object (for messages)."""
    from fairseq.tasks import TASK_REGISTRY

    return next((name for name, cls in TASK_REGISTRY.items() if type(task) is cls), type(task).__name__)
