"""fairseq-train's ``--save-dir``, made safe against a run killed mid-save and against a second run.

The plugin is only a ``--user-dir``, so it acts where fairseq calls it. Two narrow hooks in
``fairseq.checkpoint_utils``; everything else behaves exactly as in fairseq.

1. **Atomic checkpoint copies.** ``save_checkpoint`` writes the first file of a save
   (e.g. ``checkpoint_1_2.pt``) to a temporary file and renames it, but then copies it to
   ``checkpoint_last.pt`` (and ``checkpoint_best.pt`` ...) with ``PathManager.copy``, a plain
   ``shutil.copyfile`` that truncates the destination first: a run killed during that copy leaves
   a torn ``checkpoint_last.pt`` (0 bytes, 196,608 bytes, ...) and the next ``fairseq-train``
   cannot resume. ``save_checkpoint`` is the only caller of ``PathManager.copy`` in
   ``fairseq.checkpoint_utils``, so that module's ``PathManager`` is replaced by a subclass whose
   ``copy`` writes ``DST.tmp``, fsyncs it and renames it over ``DST``: ``DST`` is always either the
   previous or the new complete file. Remote (ioPath) paths keep fairseq's own copy.

2. **Resume from the newest intact checkpoint.** ``checkpoint_utils.load_checkpoint`` is called
   by ``fairseq_cli.train`` only. Its wrapper checks the default ``SAVE_DIR/checkpoint_last.pt``
   (the zip directory at its end: cheap); if the file is there but torn (written by a fairseq
   without hook 1, or by a crash of the machine), training resumes from the newest intact
   ``checkpoint*.pt`` in the save dir (newest by modification time, every record's CRC verified)
   and logs which file it used and why. With none, one error names the torn file and the
   directory. An explicit ``--restore-file``, a missing ``checkpoint_last.pt`` (first launch) and
   sharded checkpoints (a checkpoint suffix) are left to fairseq.

3. **One run per save dir.** Two ``fairseq-train`` on one ``--save-dir`` resume from and overwrite
   each other's checkpoints (and one crashes renaming a temporary file the other moved). In the
   same wrapper, before any checkpoint is read or written, global rank 0 of a run that saves
   (not ``--no-save``) takes an exclusive ``flock`` on ``SAVE_DIR/train.lock`` and holds it for
   the life of the process: other ranks of the same run never lock, the kernel releases the lock
   when the process exits or is killed (nothing stays stuck), and ``fairseq-eval-lm``,
   ``fairseq-generate`` and hub loading never call this function. The file names the holder's pid
   and host; a second run stops with an error naming the save dir and that pid. Where the file
   system has no locks, a warning is logged and training goes on.

4. **A save dir it cannot write.** fairseq-train's first act (``verify_checkpoint_directory``)
   creates ``--save-dir`` and a file in it; where that fails (read-only, permission denied, a
   file in the way) fairseq logs a warning and re-raises the ``OSError`` with its traceback. The
   wrapper raises one CheckpointError naming ``--save-dir`` and the reason instead, before
   anything is trained.
"""

import copy
import datetime
import functools
import logging
import os
import re
import shutil
import socket
import time

from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
from omegaconf import DictConfig, open_dict

from .checkpoint_compat import CheckpointError, checkpoint_problem
from .patches import enabled

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- 1. atomic copies
def _is_remote(path: str) -> bool:
    return PathManager.path_requires_pathmanager(path)


def atomic_copy(src: str, dst: str) -> bool:
    """Copies ``src`` to ``dst`` so that ``dst`` is never partly written: through ``dst + ".tmp"``,
    fsynced, then renamed over ``dst``."""
    tmp = dst + ".tmp"
    try:
        shutil.copyfile(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (best effort: not every file system allows it)
        fd = os.open(os.path.dirname(os.path.abspath(dst)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return True


class AtomicCopyPathManager(PathManager):
    """fairseq's ``PathManager`` with an atomic ``copy`` for local files."""

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if _is_remote(src_path) or _is_remote(dst_path):
            return PathManager.copy(src_path, dst_path, overwrite=overwrite)
        if not overwrite and os.path.exists(dst_path):
            return False
        return atomic_copy(src_path, dst_path)


if enabled("PathManager"):
    checkpoint_utils.PathManager = AtomicCopyPathManager


# --------------------------------------------------------------------------- 3. one run per save dir
LOCK_NAME = "train.lock"
_held = {}  # realpath(save_dir) -> open lock file, kept for the life of the process


class SaveDirInUseError(CheckpointError):
    """Another live fairseq-train holds the save directory's lock."""


def _lock_owner(path: str) -> str:
    for _ in range(20):  # the holder writes its pid right after taking the lock
        try:
            with open(path) as f:
                owner = f.read().strip()
        except OSError:
            owner = ""
        if owner:
            return owner
        time.sleep(0.1)
    return "pid unknown"


def lock_save_dir(save_dir: str) -> None:
    """Holds ``SAVE_DIR/train.lock`` for the life of this process, or raises SaveDirInUseError."""
    if fcntl is None or _is_remote(save_dir):
        return
    key = os.path.realpath(save_dir)
    if key in _held:  # this process holds it already (e.g. fairseq_cli.train.main called twice)
        return
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, LOCK_NAME)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SaveDirInUseError(
            f"--save-dir {save_dir} is in use by another fairseq-train run ({_lock_owner(path)}; it holds "
            f"{path}). Two runs in one save dir resume from and overwrite each other's checkpoints: wait for "
            "that run to end or stop it, or give this run another --save-dir") from None
    except OSError as error:
        handle.close()
        logger.warning(f"cannot lock {path} ({error}): nothing stops a second fairseq-train from using "
                       f"--save-dir {save_dir} at the same time")
        return
    started = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on host {socket.gethostname()}, running since {started}\n")
    handle.flush()
    _held[key] = handle


# --------------------------------------------------------------------------- 2. resume fallback
_SHARDED = re.compile(r".*(-shard\d+|_part\d+)\.pt")


def _resume_candidates(save_dir: str, last: str):
    """``checkpoint*.pt`` in ``save_dir`` other than ``last``, newest first."""
    found = []
    for name in os.listdir(save_dir):
        path = os.path.join(save_dir, name)
        if not name.startswith("checkpoint") or not name.endswith(".pt") or _SHARDED.fullmatch(name):
            continue
        try:
            if os.path.isfile(path) and not os.path.samefile(path, last):
                found.append((os.path.getmtime(path), name, path))
        except OSError:
            continue
    return [path for _, _, path in sorted(found, reverse=True)]


def resume_fallback(save_dir: str) -> str:
    """``SAVE_DIR/checkpoint_last.pt`` if it is intact (or absent), else the newest intact checkpoint
    beside it; raises CheckpointError when there is none."""
    last = os.path.join(save_dir, "checkpoint_last.pt")
    if _is_remote(last) or not os.path.isfile(last):
        return last
    problem = checkpoint_problem(last)
    if problem is None:
        return last
    unreadable = []
    for candidate in _resume_candidates(save_dir, last):
        reason = checkpoint_problem(candidate, thorough=True)
        if reason is None:
            written = datetime.datetime.fromtimestamp(os.path.getmtime(candidate)).isoformat(sep=" ",
                                                                                           timespec="seconds")
            logger.warning(
                f"{last} is unreadable ({problem}). Resuming instead from {candidate}, "
                f"the newest intact checkpoint in {save_dir} (written {written})"
                + (f"; also unreadable: {'; '.join(unreadable)}" if unreadable else "")
                + f". The next checkpoint save replaces {os.path.basename(last)}")
            return candidate
        unreadable.append(f"{os.path.basename(candidate)} ({reason})")
    raise CheckpointError(
        f"cannot resume: {last} is unreadable ({problem}), and {save_dir} holds no other "
        "intact checkpoint" + (f" ({'; '.join(unreadable)})" if unreadable else "") +
        f". To start over in this directory, move {last} out of the way; or give --restore-file a checkpoint")


def _guarded(load):
    @functools.wraps(load)
    def load_checkpoint(cfg, trainer, **passthrough_args):
        if not getattr(cfg, "no_save", False):
            from fairseq.distributed import utils as distributed_utils

            if distributed_utils.get_global_rank() == 0:
                lock_save_dir(cfg.save_dir)
        if cfg.restore_file == "checkpoint_last.pt" and not getattr(trainer, "checkpoint_suffix", ""):
            chosen = resume_fallback(cfg.save_dir)
            if chosen != os.path.join(cfg.save_dir, "checkpoint_last.pt"):
                cfg = copy.deepcopy(cfg)  # fairseq reads an explicit --restore-file just like checkpoint_last
                if isinstance(cfg, DictConfig):
                    with open_dict(cfg):
                        cfg.restore_file, cfg.finetune_from_model = chosen, None
                else:
                    cfg.restore_file, cfg.finetune_from_model = chosen, None
        return load(cfg, trainer, **passthrough_args)

    return load_checkpoint


if enabled("load_checkpoint"):
    checkpoint_utils.load_checkpoint = _guarded(checkpoint_utils.load_checkpoint)


# --------------------------------------------------------------------------- 4. a writable save dir
def _verified(verify):
    @functools.wraps(verify)
    def verify_checkpoint_directory(save_dir: str) -> None:
        from .quiet import quiet_loggers

        try:
            with quiet_loggers([checkpoint_utils.__name__], logging.ERROR):  # its warning says less than ours
                verify(save_dir)
        except OSError as error:
            raise CheckpointError(
                f"--save-dir {save_dir}: cannot write checkpoints there ({error.strerror or error}); expected a "
                "directory this user can create and write, or give another --save-dir") from None

    verify_checkpoint_directory._seqboat_verified = True
    return verify_checkpoint_directory


if enabled("verify_checkpoint_directory") and not getattr(checkpoint_utils.verify_checkpoint_directory,
                                                         "_seqboat_verified", False):
    checkpoint_utils.verify_checkpoint_directory = _verified(checkpoint_utils.verify_checkpoint_directory)
