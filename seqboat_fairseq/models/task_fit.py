"""Whether a classifier's config fits the task and data it is built for, checked in
``build_model`` so that a mismatch is refused before the first batch:

* the task a preset was made for (``seqboat_sc_raw`` is the Speech Commands preset: it names
  ``--task speech_commands``, not an LRA task);
* the data's labels: a label at or above ``--sentence-class-num`` (a Pathfinder preset, 2 classes,
  on CIFAR-10's 10) would fail only in the loss of the first batch that holds one.
"""

import glob
import os
from typing import Optional, Tuple

import numpy as np

# presets made for --task speech_commands (raw audio; "image" input to the encoder)
SPEECH_PRESETS = ("seqboat_sc_raw", "slag_sc_raw_base")


def preset_task(arch: Optional[str], input_type: Optional[str]) -> str:
    """The ``--task`` a preset is used with: ``speech_commands`` for the speech presets, else
    ``lra-<input_type>``."""
    return "speech_commands" if arch in SPEECH_PRESETS else f"lra-{input_type}"


def check_speech_preset(arch: Optional[str], task_name: str) -> None:
    """Raises ``ValueError`` for a speech preset on another task than ``speech_commands`` or
    ``lra-image`` (which reads real-valued input too: the presets' equivalence tests build it there)."""
    if arch in SPEECH_PRESETS and task_name not in ("speech_commands", "lra-image"):
        raise ValueError(f"--arch {arch} is the Speech Commands preset (raw 16 kHz audio, 16,000 samples per "
                         f"clip): use it with --task speech_commands, not --task {task_name}")


def data_classes(task) -> Optional[Tuple[int, str]]:
    """``(number of classes the data's labels need, where they were read)``: the largest label + 1
    over the prepared ``label/*.npy`` files (``lra-image``, ``speech_commands``; memory-mapped, 8 bytes
    per example). None when unknown (the earlier text layout; ``lra-text``, whose label dictionary
    may list more symbols than the data uses)."""
    data = getattr(getattr(task, "cfg", None), "data", None)
    if getattr(getattr(task, "cfg", None), "input_type", None) != "image" or not data:
        return None
    found = None
    for path in sorted(glob.glob(os.path.join(data, "label", "*.npy"))):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError):
            continue  # the task's own loader names an unreadable file
        if array.ndim == 1 and array.size and np.issubdtype(array.dtype, np.integer):
            top = int(array.max()) + 1
            if found is None or top > found[0]:
                found = (top, path)
    return found


def check_class_count(classes: int, arch: Optional[str], task) -> None:
    """Raises ``ValueError`` when the data holds a label >= ``classes`` (``--sentence-class-num``)."""
    found = data_classes(task)
    if found is not None and found[0] > classes:
        needed, source = found
        raise ValueError(f"--sentence-class-num {classes} (--arch {arch}) is fewer than the {needed} classes of "
                         f"the data ({source}): use a preset made for this data, or --sentence-class-num {needed}")
