"""Lets fairseq load its checkpoints under torch >= 2.6, whose ``torch.load`` defaults to
``weights_only=True``.

fairseq (0.12.x and its registry builds) calls ``torch.load`` without ``weights_only``.
Instead of turning the safe loader off, we allow-list exactly the non-tensor objects that
fairseq checkpoints contain: ``argparse.Namespace`` (the ``args`` of old and upstream
checkpoints), fairseq's metric meters (``extra_state["metrics"]``; fairseq 0.9 pickled
them as ``fairseq.meters.*``, mapped here to the 0.12 classes) and numpy scalars. A
checkpoint containing anything else still fails with torch's "Unsupported global" error.

It also wraps ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` (which every fairseq tool and
the hub interface call) so that an empty, truncated or corrupt checkpoint file gives an error
that names the file and says what is wrong, instead of a bare zip-reader message.
"""

import argparse
import functools
import os
import pickle
import zipfile

import numpy as np
import torch
from fairseq import checkpoint_utils
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


# --------------------------------------------------------------------------- clear errors
def _describe_unreadable(path: str, error: BaseException) -> str:
    return (f"cannot read checkpoint {path}: the file is truncated or corrupt ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no details'}). fairseq writes checkpoints "
            "through a temporary file, so this usually means a copy or download was cut short; use "
            "another checkpoint (e.g. checkpoint_best.pt) or copy it again")


def _checked(load):
    @functools.wraps(load)
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                head = f.read(4)
            if not head:
                raise RuntimeError(_describe_unreadable(path, EOFError("empty file")))
            if head.startswith(b"PK") and not zipfile.is_zipfile(path):  # torch's zip format, cut short
                raise RuntimeError(_describe_unreadable(path, EOFError("zip archive without its directory")))
        try:
            return load(path, arg_overrides, load_on_all_ranks)
        except (EOFError, zipfile.BadZipFile) as error:
            raise RuntimeError(_describe_unreadable(path, error)) from error
        except (RuntimeError, pickle.UnpicklingError) as error:
            message = str(error)
            if "Unsupported global" in message:  # the safe loader refused an object: say which file
                raise pickle.UnpicklingError(f"{path}: {message}") from error
            if any(s in message for s in ("PytorchStreamReader", "invalid load key", "unpickling stack",
                                          "Unsupported operand",
                                          "CRC", "corrupt")):
                raise RuntimeError(_describe_unreadable(path, error)) from error
            raise

    return load_checkpoint_to_cpu


checkpoint_utils.load_checkpoint_to_cpu = _checked(checkpoint_utils.load_checkpoint_to_cpu)
