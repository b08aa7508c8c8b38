"""What the data preps share: errors, the output directory's safety rules, temporaries, child processes.

Output directories
    Every prep builds its output in a temporary directory next to ``--destdir`` and renames it into
    place only once complete.  The last file written into it is the marker ``.seqboat-prep.json``,
    which names the prep and lists every entry (file or folder) it wrote.  ``--force`` replaces an
    existing ``--destdir`` only if

    * it is a real directory (not a symbolic link) carrying that marker,
    * it holds nothing the marker does not list (so nothing added later is lost), and
    * it neither is nor contains any input of the run (checked for every run, with or without --force).

    (An empty directory holds nothing to lose and may be replaced too.)  Anything else is refused
    with one message naming the directory; nothing is deleted.

Temporaries
    A temporary directory (``.tmp-<prep>-*`` while building, ``.old-<prep>-*`` while an old output is
    being replaced) holds the file ``.seqboat-prep-owner`` with the owner's pid, its start time
    (Linux ``/proc/<pid>/stat``) and host.  Every run first removes the temporaries next to its
    ``--destdir`` whose owner is dead (same host, and no process with that pid and start time),
    so runs killed with SIGKILL do not pile up.  Temporaries of live runs, of other hosts, or without
    an owner record are left alone (and named in a note), and so is an ``.old-*`` whose run died
    after moving the previous output aside but before installing the new one: it then holds the
    only copy of that output.

Child processes
    ``run_guarded`` runs a Python module (fairseq-preprocess for the LRA text preps) in a child
    interpreter that asks the Linux kernel to SIGKILL it when the prep dies
    (``prctl(PR_SET_PDEATHSIG)``), and does the same for every process it forks (its multiprocessing
    workers), so killing the prep, even with SIGKILL, ends all of its work.  (The enwik8 prep has no
    child at all: it binarises in-process with numpy.  The LRA text preps keep fairseq-preprocess for
    its parallel workers: in-process, AAN's ~1e9 tokens would be binarised by one Python thread.)
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

MARKER = ".seqboat-prep.json"
OWNER = ".seqboat-prep-owner"
MARKER_FORMAT = 1
PROJECT = "seqboat-fairseq"


class PrepError(Exception):
    """A user-facing error; the preps' ``main`` print it as one line and exit with code 2."""


def run_reporting_errors(prog, work):
    """Runs ``work()`` for a prep's ``main``: returns ``(0, its result)``, or, for a ``PrepError``
    or Ctrl-C, prints one ``PROG: error:`` line and returns ``(2, None)`` / ``(130, None)``."""
    try:
        return 0, work()
    except PrepError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2, None
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted; partial output removed", file=sys.stderr)
        return 130, None


def warn(prog, message):
    """Print ``<prog>: warning: <message>`` on stderr."""
    print(f"{prog}: warning: {message}", file=sys.stderr)


def note(prog, message):
    print(f"{prog}: note: {message}", file=sys.stderr)


def interrupt_on_signal(signum, frame):
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so temporaries and children are cleaned up."""
    raise KeyboardInterrupt


def install_signal_handlers():
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, interrupt_on_signal)


def current_umask():
    """Return the process umask (reading it requires setting it, so it is restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_input(path, what=None):
    """``open(path, "rb")`` of an input file; a missing or unreadable file raises PrepError
    ``<what>: no such file`` / ``<what>: cannot read: <reason>`` (``what``: default ``path``)."""
    what = path if what is None else what
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise PrepError(f"{what}: no such file") from None
    except OSError as exc:
        raise PrepError(f"{what}: cannot read: {exc.strerror or exc}") from None


def read_input(path, what=None):
    """The bytes of an input file (errors as :func:`open_input`)."""
    with open_input(path, what) as f:
        try:
            return f.read()
        except OSError as exc:
            raise PrepError(f"{path if what is None else what}: cannot read: {exc.strerror or exc}") from None


def os_error_message(exc):
    """``path: reason`` of an OSError."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


# --------------------------------------------------------------------------- destdir safety


def _real(path):
    return os.path.realpath(os.path.abspath(path))


def _is_within(path, directory):
    """True if ``path`` is ``directory`` or lies below it (both resolved)."""
    path, directory = _real(path), _real(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _entries(directory):
    """Relative paths of everything below ``directory`` (files, folders, links), the marker excluded."""
    found = set()
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if rel not in (MARKER, OWNER):
                found.add(rel)
    return found


def write_marker(directory, prog):
    """Write the marker listing every entry of ``directory``; call it last, when the output is complete."""
    content = {"written_by": f"{PROJECT} data_prep/{prog}", "format": MARKER_FORMAT,
               "entries": sorted(_entries(directory))}
    with open(os.path.join(directory, MARKER), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=1)
        f.write("\n")


def _read_marker(directory):
    """The marker's content, or None if it is missing or not ours."""
    path = os.path.join(directory, MARKER)
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError):
        return None
    if not (isinstance(content, dict) and str(content.get("written_by", "")).startswith(PROJECT)
            and isinstance(content.get("entries"), list)):
        return None
    return content


def _describe(names, limit=3):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_destdir(destdir, force, inputs, flag="--destdir"):
    """Raise PrepError unless the run may write ``destdir`` (absolute).

    ``inputs``: ``(flag, path)`` of every input of the run.  An existing ``destdir`` must not be or
    contain an input; it is replaced only with ``force`` and only if a prep wrote it (marker) and
    it holds nothing else (an empty directory counts as replaceable).  Never deletes anything.
    """
    if not os.path.lexists(destdir):
        return
    if os.path.islink(destdir):
        raise PrepError(f"{flag} {destdir} is a symbolic link; pass the directory itself or a new path")
    if not os.path.isdir(destdir):
        raise PrepError(f"{flag} {destdir} exists and is not a directory")
    for input_flag, path in inputs:
        if _is_within(path, destdir):
            raise PrepError(f"{flag} {destdir} holds the input {path} ({input_flag}); "
                            f"choose a {flag} outside the input")
    entries = _entries(destdir)
    marker = _read_marker(destdir)
    if marker is None and entries:
        raise PrepError(f"{flag} {destdir} already exists and was not written by a data prep of this project "
                        f"(no {MARKER}); it is never replaced, remove it yourself or choose another {flag}")
    extra = entries - set(marker["entries"] if marker else ())
    if extra:
        raise PrepError(f"{flag} {destdir} holds files the prep did not write ({_describe(extra)}); "
                        f"it is not replaced: move them away or choose another {flag}")
    if not force:
        raise PrepError(f"output directory {destdir} already exists; pass --force to overwrite")


# --------------------------------------------------------------------------- owned temporaries


def _start_time(pid):
    """The start time of process ``pid`` (Linux: field 22 of /proc/<pid>/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def _owner_record():
    return {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname()}


def _write_owner(directory, destdir):
    with open(os.path.join(directory, OWNER), "w", encoding="utf-8") as f:
        json.dump(dict(_owner_record(), destdir=destdir), f)


def _read_owner(directory):
    try:
        with open(os.path.join(directory, OWNER), encoding="utf-8") as f:
            record = json.load(f)
        int(record["pid"])
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def owner_is_dead(record):
    """True only if the run that wrote ``record`` has certainly ended (same host, no such process)."""
    if record.get("host") != socket.gethostname():
        return False
    pid = int(record["pid"])
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, another user's
    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            if stat[stat.rfind(b")") + 2 :].split()[0] == b"Z":
                return True  # a zombie: dead, not yet reaped
        except OSError:
            return True
        start = _start_time(pid)
        if record.get("start") is not None and start is not None and start != record["start"]:
            return True  # the pid was reused by another process
    return False


def remove_stale_temporaries(parent, prog):
    """Remove the temporaries in ``parent`` of preps that died; report them (and unknown ones) on stderr."""
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    removed, unknown = [], []
    for name in sorted(names):
        if not name.startswith(tuple(f".{kind}-{prep}-" for kind in ("tmp", "old")
                                     for prep in ("enwik8", "lra", "speech_commands", "sentencepiece_lm"))):
            continue
        path = os.path.join(parent, name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        record = _read_owner(path)
        if record is None:
            unknown.append(name)
            continue
        if not owner_is_dead(record):
            continue
        old = os.path.join(path, "old")
        destdir = record.get("destdir")
        if name.startswith(".old-") and os.path.isdir(old) and not (destdir and os.path.isdir(destdir)):
            note(prog, f"{old} holds the previous {destdir} of an interrupted run (which had not installed its "
                       "new output); move it back or delete it")
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    if removed:
        note(prog, f"removed {len(removed)} temporary director{'y' if len(removed) == 1 else 'ies'} of "
                   f"interrupted runs in {parent}: {_describe(removed)}")
    if unknown:
        note(prog, f"{parent} holds {_describe(unknown)} without an owner record (left by an older version of "
                   "this prep?); delete it if no prep is running")
    return removed


def make_temp_dir(destdir, prog, flag="--destdir"):
    """Create the owned temporary build directory next to ``destdir`` (after removing dead runs' ones)."""
    parent = os.path.dirname(destdir)
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise PrepError(f"{flag} {destdir}: {parent} is not a directory (expected a directory to write into)")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise PrepError(f"{flag} {destdir}: cannot create its parent directory ({os_error_message(exc)})") from None
    remove_stale_temporaries(parent, prog)
    try:
        tmpdir = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{prog.split('.')[0]}-")
    except OSError as exc:
        raise PrepError(f"{flag} {destdir}: cannot write in {parent} ({exc.strerror or exc}); "
                        "expected a writable location") from None
    try:
        _write_owner(tmpdir, destdir)
        os.chmod(tmpdir, 0o777 & ~current_umask())  # mkdtemp creates it private (0700)
    except BaseException as exc:
        shutil.rmtree(tmpdir, ignore_errors=True)
        if isinstance(exc, OSError):
            raise PrepError(f"{flag} {destdir}: cannot write in {parent} ({os_error_message(exc)})") from None
        raise
    return tmpdir


def install(tmpdir, destdir, force, inputs, prog, flag="--destdir"):
    """Mark the finished ``tmpdir`` and rename it to ``destdir``, replacing an old one as ``check_destdir`` allows."""
    write_marker(tmpdir, prog)
    if not os.path.lexists(destdir):
        os.rename(tmpdir, destdir)
        _remove_owner(destdir)
        return
    check_destdir(destdir, force, inputs, flag)  # again: it may have changed while we were building
    trash = tempfile.mkdtemp(dir=os.path.dirname(destdir), prefix=f".old-{prog.split('.')[0]}-")
    _write_owner(trash, destdir)
    old = os.path.join(trash, "old")
    os.rename(destdir, old)
    try:
        os.rename(tmpdir, destdir)
    except BaseException:
        os.rename(old, destdir)
        shutil.rmtree(trash, ignore_errors=True)
        raise
    _remove_owner(destdir)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_owner(directory):
    try:
        os.remove(os.path.join(directory, OWNER))
    except OSError:
        pass  # a leftover owner record is ignored by the marker check


def build_atomically(destdir, force, inputs, build, prog, flag="--destdir"):
    """Check ``destdir``, run ``build(tmpdir)`` in an owned temporary directory, then install it.

    The temporary directory is removed on any failure (including KeyboardInterrupt); an OSError
    while building (disk full, ...) becomes a PrepError naming the file.  Returns what ``build`` returns.
    """
    check_destdir(destdir, force, inputs, flag)
    tmpdir = make_temp_dir(destdir, prog, flag)
    try:
        try:
            result = build(tmpdir)
            install(tmpdir, destdir, force, inputs, prog, flag)
        except OSError as exc:
            raise PrepError(f"{os_error_message(exc)}; nothing was installed") from None
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return result


# --------------------------------------------------------------------------- child processes

# Runs in the child interpreter: ``python -c _GUARD <module> <args>``.  PR_SET_PDEATHSIG is not
# inherited by fork()ed processes, so it is set again in every child the module forks; the ppid check
# closes the window between fork and prctl (the parent may already have died then).
_GUARD = r"""
import os, runpy, signal, sys
parent = int(os.environ.pop("SEQBOAT_PREP_PARENT"))
if sys.platform.startswith("linux"):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1

    def die_with(expected_parent):
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != expected_parent:
            os._exit(70)

    die_with(parent)
    forking = [os.getpid()]
    os.register_at_fork(before=lambda: forking.__setitem__(0, os.getpid()),
                        after_in_child=lambda: die_with(forking[0]))
    import multiprocessing
    multiprocessing.set_start_method("fork", force=True)  # workers are forked, so the hook above covers them
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_guarded(module, args):
    """Run ``python -m module args`` so that it (and its forked workers) die with this process.

    Returns the exit status (negative: killed by that signal).  On KeyboardInterrupt (or any
    exception) the child is killed and waited for before the exception propagates.
    """
    env = dict(os.environ, SEQBOAT_PREP_PARENT=str(os.getpid()))
    proc = subprocess.Popen([sys.executable, "-c", _GUARD, module, *map(str, args)], env=env)
    try:
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
