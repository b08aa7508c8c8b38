"""Lets fairseq load its checkpoints under torch >= 2.6, whose ``torch.load`` defaults to
``weights_only=True``.

fairseq (0.12.x and its registry builds) calls ``torch.load`` without ``weights_only``.
Instead of turning the safe loader off, we allow-list exactly the non-tensor objects that
fairseq checkpoints contain: ``argparse.Namespace`` (the ``args`` of old and upstream
checkpoints), fairseq's metric meters (``extra_state["metrics"]``; fairseq 0.9 pickled
them as ``fairseq.meters.*``, mapped here to the 0.12 classes) and numpy scalars. A
checkpoint containing anything else still fails with torch's "Unsupported global" error.
"""

import argparse

import numpy as np
import torch
from fairseq.logging import meters

_METERS = [meters.Meter, meters.AverageMeter, meters.SumMeter, meters.ConcatTensorMeter,
           meters.TimeMeter, meters.StopwatchMeter, meters.MetersDict]


def _numpy_globals():
    found = [np.dtype, np.ndarray, np.core.multiarray.scalar, np.core.multiarray._reconstruct]
    found += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    return found


def register_safe_globals() -> None:
    if not hasattr(torch.serialization, "add_safe_globals"):  # torch < 2.4: nothing to do
        return
    safe = [argparse.Namespace, *_METERS, *_numpy_globals()]
    # fairseq 0.9 (upstream SeqBoat/MEGA) pickled its meters under fairseq.meters
    safe += [(cls, f"fairseq.meters.{cls.__name__}") for cls in _METERS]
    torch.serialization.add_safe_globals(safe)


register_safe_globals()
