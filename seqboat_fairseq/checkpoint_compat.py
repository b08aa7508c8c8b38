"""Loading checkpoints: torch >= 2.6's safe loader, and one clear error per bad checkpoint file.

**Safe loader.** torch >= 2.6's ``torch.load`` defaults to ``weights_only=True``, and fairseq
(0.12.x and its registry builds) calls ``torch.load`` without ``weights_only``. Instead of turning
the safe loader off, we allow-list exactly the non-tensor objects that fairseq checkpoints contain:
``argparse.Namespace`` (the ``args`` of old and upstream checkpoints), fairseq's metric meters
(``extra_state["metrics"]``; fairseq 0.9 pickled them as ``fairseq.meters.*``, mapped here to the
0.12 classes) and numpy scalars. A checkpoint containing anything else is still refused.

**Clear errors.** The plugin is only a ``--user-dir``, so it can only act where fairseq calls it.
Two functions of ``fairseq.checkpoint_utils`` are wrapped; both wrappers change nothing on success
and only turn fairseq's failures into one message that names the file and what was expected:

* ``load_checkpoint_to_cpu`` (every fairseq tool and the hub interface load through it): an empty,
  truncated or corrupt file (the message names the newest intact checkpoint beside it, if there is
  one, and no file that does not exist); a file the safe loader refused (it names the file and the
  refused global, e.g. ``posix.system``); a torch file that is not a fairseq checkpoint (e.g.
  ``torch.save({"w": ...})``, which fairseq reports as ``KeyError: 'best_loss'``).
* ``load_model_ensemble_and_task``: when building the model fails and the checkpoint was trained
  for another task than the one the tool set up (an LRA classifier given to ``fairseq-eval-lm``,
  which fairseq reports as ``no attribute 'supported_targets'``), the error says so.

These errors are :class:`CheckpointError`\\ s. When one reaches the top of a command-line tool
uncaught, only its message is printed (the excepthook of :mod:`seqboat_fairseq.quiet`, which
prints every refusal as one ``error:`` line); code that calls fairseq gets an ordinary exception (a
``RuntimeError``).
"""

import argparse
import functools
import os
import pickle
import re
import zipfile
from typing import Optional

import numpy as np
import torch
from fairseq import checkpoint_utils
from fairseq.logging import meters

from .patches import enabled

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


if enabled("safe_globals"):
    register_safe_globals()


# --------------------------------------------------------------------------- errors
class CheckpointError(RuntimeError):
    """A checkpoint or save-directory problem the user has to fix; the message says which file and
    what was expected. At the top of a command-line tool only the message is printed."""


class RefusedCheckpointError(CheckpointError, pickle.UnpicklingError):
    """torch's safe loader refused an object in the checkpoint (still a ``pickle.UnpicklingError``)."""


# --------------------------------------------------------------------------- is a file intact?
def checkpoint_problem(path: str, thorough: bool = False) -> Optional[str]:
    """None if ``path`` looks like a complete checkpoint file, else what is wrong with it.

    torch writes a zip archive whose directory is its last bytes, so a copy or write cut short
    (at any length) has no directory: that check only reads the end of the file. ``thorough``
    also verifies the CRC-32 of every record (reads the whole file). Files in torch's legacy
    (non-zip) format are not checked here: loading them is the check.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(2)
        if head != b"PK":
            return None
        with zipfile.ZipFile(path) as archive:
            if thorough:
                bad = archive.testzip()
                if bad is not None:
                    return f"{size:,} bytes, record {bad} fails its CRC check"
    except zipfile.BadZipFile:
        return f"{size:,} bytes, cut short (no zip directory at its end)"
    except (OSError, EOFError, ValueError, RuntimeError) as error:  # I/O error, or torn record data
        return f"{type(error).__name__}: {error}"
    return None


def _sibling_checkpoints(path: str):
    """Other ``checkpoint*.pt`` files in the directory of ``path``, newest first (no temporaries)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        other = os.path.join(directory, name)
        try:
            if (name.startswith("checkpoint") and name.endswith(".pt") and os.path.isfile(other)
                    and not os.path.samefile(other, path)):
                found.append((os.path.getmtime(other), name, other))
        except OSError:  # vanished meanwhile
            continue
    return [other for _, _, other in sorted(found, reverse=True)]


def newest_intact_sibling(path: str) -> Optional[str]:
    for other in _sibling_checkpoints(path):
        if checkpoint_problem(other, thorough=True) is None:
            return other
    return None


# --------------------------------------------------------------------------- clear errors
def _describe_unreadable(path: str, reason: str) -> str:
    message = (f"cannot read checkpoint {path}: the file is truncated or corrupt ({reason}). fairseq writes "
               "checkpoints through a temporary file, so this usually means a copy or download was cut short; ")
    other = newest_intact_sibling(path) if os.path.isfile(path) else None
    if other is not None:
        return message + f"use the newest intact checkpoint beside it, {other}, or copy the file again"
    return message + "copy it again (no other intact checkpoint is beside it)"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    if "WeightsUnpickler error:" in text:  # skip torch's advice to turn the safe loader off
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no details'}"


def _not_a_checkpoint(path: str) -> Optional[str]:
    """What ``path`` holds instead of a fairseq checkpoint, or None if it looks like one."""
    try:
        with open(path, "rb") as f:
            obj = torch.load(f, map_location="cpu")
    except Exception:  # cannot tell: let fairseq's own error stand
        return None
    if not isinstance(obj, dict):
        return f"a {type(obj).__module__}.{type(obj).__name__}"
    has_config = obj.get("cfg") is not None or obj.get("args") is not None
    has_history = "optimizer_history" in obj or ("best_loss" in obj and "optimizer" in obj)  # or fairseq < 0.6
    if "model" in obj and has_config and has_history:
        return None
    keys = sorted(map(str, obj))
    shown = ", ".join(repr(k) for k in keys[:8]) + (f", ... ({len(keys)} keys)" if len(keys) > 8 else "")
    return f"a dict with keys [{shown}]" if keys else "an empty dict"


def _refused_global(message: str) -> Optional[str]:
    """The global torch's safe loader refused ("Unsupported global: GLOBAL x.y was not an allowed
    global", or since torch 2.6 also "unsupported GLOBAL posix.system whose module ... is blocked")."""
    found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", message)
    return found.group(1) if found else None


_UNREADABLE_MARKERS = ("PytorchStreamReader", "invalid load key", "unpickling stack", "Unsupported operand",
                       "CRC", "corrupt")

_last_loaded = {}  # what load_checkpoint_to_cpu last read: {"path", "task", "arch"}


def _config_names(state):
    cfg, args = state.get("cfg"), state.get("args")
    if cfg is not None:
        try:
            return cfg["task"].get("_name"), cfg["model"].get("_name") or cfg["model"].get("arch")
        except (KeyError, TypeError, AttributeError):
            return None, None
    return getattr(args, "task", None), getattr(args, "arch", None)


def _checked(load):
    @functools.wraps(load)
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        if os.path.isfile(path):
            problem = checkpoint_problem(path)
            if problem is not None:
                raise CheckpointError(_describe_unreadable(path, problem))
        try:
            state = load(path, arg_overrides, load_on_all_ranks)
        except CheckpointError:
            raise
        except (EOFError, zipfile.BadZipFile) as error:
            raise CheckpointError(_describe_unreadable(path, _first_line(error))) from error
        except Exception as error:
            message = str(error)
            refused = _refused_global(message)
            if refused is not None:
                raise RefusedCheckpointError(
                    f"refusing to load checkpoint {path}: it holds a pickled reference to {refused} "
                    "(torch: Unsupported global), and a fairseq checkpoint holds only tensors, argparse.Namespace, "
                    "fairseq meters and numpy scalars. torch's safe loader refuses other objects because "
                    "unpickling them can run arbitrary code; use a checkpoint written by fairseq-train"
                ) from error
            if isinstance(error, (RuntimeError, pickle.UnpicklingError)) and any(
                    s in message for s in _UNREADABLE_MARKERS):
                raise CheckpointError(_describe_unreadable(path, _first_line(error))) from error
            if os.path.isfile(path):
                found = _not_a_checkpoint(path)
                if found is not None:
                    raise CheckpointError(
                        f"{path} is not a fairseq checkpoint: expected a dict with the model's weights under "
                        "'model', its training configuration under 'cfg' (or 'args') and 'optimizer_history', "
                        f"as fairseq-train writes; found {found}") from error
            raise
        task, arch = _config_names(state) if isinstance(state, dict) else (None, None)
        _last_loaded.clear()
        _last_loaded.update(path=path, task=task, arch=arch)
        return state

    return load_checkpoint_to_cpu


def _task_name(task) -> Optional[str]:
    from fairseq.tasks import TASK_REGISTRY

    names = [name for name, cls in TASK_REGISTRY.items() if type(task) is cls]
    return names[0] if names else None


def _checked_ensemble(load):
    @functools.wraps(load)
    def load_model_ensemble_and_task(filenames, arg_overrides=None, task=None, *args, **kwargs):
        _last_loaded.clear()
        try:
            return load(filenames, arg_overrides, task, *args, **kwargs)
        except CheckpointError:
            raise
        except Exception as error:
            wanted, trained = _task_name(task) if task is not None else None, _last_loaded.get("task")
            if wanted is None or trained is None or wanted == trained:
                raise
            path, arch = _last_loaded["path"], _last_loaded.get("arch")
            hint = (f"an LRA classifier gives no language-model scores; measure its accuracy with "
                    f"`bash examples/lra/test.sh {trained} DATA_DIR {path}` (fairseq-validate --task {trained})"
                    if trained.startswith("lra") else f"use it with --task {trained}")
            raise CheckpointError(
                f"checkpoint {path} holds a model trained with --task {trained}"
                f"{f' (--arch {arch})' if arch else ''}, but this tool set up --task {wanted}, which cannot use it "
                f"({_first_line(error)}); {hint}") from error

    return load_model_ensemble_and_task


if enabled("load_checkpoint_to_cpu"):
    checkpoint_utils.load_checkpoint_to_cpu = _checked(checkpoint_utils.load_checkpoint_to_cpu)
if enabled("load_model_ensemble_and_task"):
    checkpoint_utils.load_model_ensemble_and_task = _checked_ensemble(checkpoint_utils.load_model_ensemble_and_task)
