"""Data preps never lose data: what --force may replace, unwritable outputs, killed runs and their children."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from data_prep import common, enwik8, lra
from test_data_prep_lra import make_cifar, make_listops

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENWIK8 = os.path.join(REPO_ROOT, "data_prep", "enwik8.py")
LRA = os.path.join(REPO_ROOT, "data_prep", "lra.py")


def run(script, *args, cwd=None, env=None, preexec_fn=None):
    return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, preexec_fn=preexec_fn, timeout=300)


def assert_one_error(result, prog, *fragments):
    """Exit status 2, stderr is exactly one ``<prog>: error: ...`` line (no traceback) with the fragments."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(directory):
    """{relative path: content} of every file below ``directory``."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def temporaries(parent):
    return sorted(n for n in os.listdir(parent) if n.startswith((".tmp-", ".old-")))


# --------------------------------------------------------------------------- --force


def test_enwik8_force_on_the_current_directory_deletes_nothing(tmp_path):
    """The reported case: ``--text corpus.txt --destdir . --force`` deleted the whole directory."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "corpus.txt").write_text("some text to model\n" * 200)
    (work / "train.py").write_text("print('my sources')\n")
    before = snapshot(work)
    result = run(ENWIK8, "--text", "corpus.txt", "--destdir", ".", "--force", cwd=work)
    assert_one_error(result, "enwik8.py", f"--destdir {work} holds the input corpus.txt (--text)")
    assert snapshot(work) == before and temporaries(tmp_path) == []


@pytest.mark.parametrize("where", ["same", "parent"])
def test_lra_force_on_the_input_dir_deletes_nothing(tmp_path, where):
    """The reported case: ``listops --input-dir D --destdir D --force`` deleted the raw TSVs."""
    folder = make_listops(tmp_path / "release" / "listops-1000")
    dest = folder if where == "same" else folder.parent
    before = snapshot(tmp_path)
    result = run(LRA, "listops", "--input-dir", folder, "--destdir", dest, "--force")
    assert_one_error(result, "lra.py", f"--destdir {dest} holds the input {folder} (--input-dir)")
    assert snapshot(tmp_path) == before


def test_force_refuses_a_directory_no_prep_wrote(tmp_path, capsys):
    dest = tmp_path / "papers"
    dest.mkdir()
    (dest / "thesis.tex").write_text("years of work")
    for force in ([], ["--force"]):
        assert enwik8.main(["--pydoc-demo", "--max-bytes", "5000", "--destdir", str(dest), *force]) == 2
        err = capsys.readouterr().err
        assert "was not written by a data prep of this project" in err and str(dest) in err
        assert "--force" not in err.split("error:")[1]  # never suggests --force for it
    assert os.listdir(dest) == ["thesis.tex"]

    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    assert enwik8.main(["--pydoc-demo", "--max-bytes", "5000", "--destdir", str(link), "--force"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and temporaries(tmp_path) == []


def test_force_refuses_prep_output_holding_other_files_or_the_input(tmp_path, capsys):
    dest = tmp_path / "bin"
    assert enwik8.main(["--pydoc-demo", "--max-bytes", "5000", "--destdir", str(dest), "--keep-text"]) == 0
    (dest / "notes.txt").write_text("added later by the user")
    (dest / "runs").mkdir()
    before = snapshot(dest)
    assert enwik8.main(["--pydoc-demo", "--max-bytes", "6000", "--destdir", str(dest), "--force"]) == 2
    err = capsys.readouterr().err
    assert "holds files the prep did not write (notes.txt, runs)" in err and str(dest) in err
    assert snapshot(dest) == before

    os.remove(dest / "notes.txt")
    os.rmdir(dest / "runs")
    # its own kept text as the input of a new run into the same directory
    assert enwik8.main(["--text", str(dest / "raw" / "train.txt"), "--destdir", str(dest), "--force"]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert snapshot(dest) == {k: v for k, v in before.items() if k != "notes.txt"}

    # what a prep wrote, and nothing else: replaced
    assert enwik8.main(["--pydoc-demo", "--max-bytes", "6000", "--destdir", str(dest), "--force"]) == 0
    assert sorted(os.listdir(dest)) == sorted([common.MARKER, "dict.txt"] + [
        f"{s}.{e}" for s in ("train", "valid", "test") for e in ("bin", "idx")])
    marker = json.loads((dest / common.MARKER).read_text())
    assert marker["written_by"].endswith("enwik8.py") and "train.bin" in marker["entries"]
    assert temporaries(tmp_path) == []


# --------------------------------------------------------------------------- unwritable --destdir


@pytest.fixture
def locked_dir(tmp_path):
    """A directory nobody may create entries in: chmod 555, or as root the immutable attribute."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o555)
        undo = lambda: locked.chmod(0o755)  # noqa: E731
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(locked)], check=True)  # noqa: E731
    else:
        pytest.skip("root without chattr +i: no way to make a directory unwritable here")
    try:
        yield locked
    finally:
        undo()


def test_unwritable_destdir_is_one_clear_error(tmp_path, locked_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("text\n" * 1000)
    dest = locked_dir / "out"
    result = run(ENWIK8, "--text", corpus, "--destdir", dest)
    assert_one_error(result, "enwik8.py", f"--destdir {dest}: cannot write in {locked_dir}",
                     "expected a writable location")

    folder = make_listops(tmp_path / "listops-1000")
    dest = locked_dir / "sub" / "l"
    result = run(LRA, "listops", "--input-dir", folder, "--destdir", dest)
    assert_one_error(result, "lra.py", f"--destdir {dest}: cannot create its parent directory")
    assert os.listdir(locked_dir) == []


def test_permission_denied_destdir_in_process(tmp_path, monkeypatch, capsys):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    dest = tmp_path / "out"
    assert enwik8.main(["--pydoc-demo", "--max-bytes", "5000", "--destdir", str(dest)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"enwik8.py: error: --destdir {dest}: cannot write in {tmp_path} (Permission denied); "
                     "expected a writable location"]


def test_destdir_below_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    dest = tmp_path / "file.txt" / "out"
    assert_one_error(run(ENWIK8, "--pydoc-demo", "--max-bytes", 5000, "--destdir", dest), "enwik8.py",
                     f"--destdir {dest}: {tmp_path / 'file.txt'} is not a directory")
    make_cifar(tmp_path / "in")
    deeper = dest / "cifar"
    assert_one_error(run(LRA, "cifar10", "--input-dir", tmp_path / "in", "--destdir", deeper), "lra.py",
                     f"--destdir {deeper}: cannot create its parent directory", "Not a directory")
    assert (tmp_path / "file.txt").read_text() == "x"


# --------------------------------------------------------------------------- killed runs


def alive(pid):
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


_SLOW_PREPROCESS = '''
import multiprocessing, os, sys, time

def work(_):
    with open(os.environ["PIDS_FILE"], "a") as f:
        f.write(f"worker {os.getpid()}\\n")
    time.sleep(120)

if __name__ == "__main__":
    destdir = sys.argv[sys.argv.index("--destdir") + 1]
    os.makedirs(destdir, exist_ok=True)
    pool = multiprocessing.Pool(1)
    pool.map_async(work, [0])
    with open(os.environ["PIDS_FILE"], "a") as f:
        f.write(f"child {os.getpid()}\\n")
    time.sleep(120)
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_sigkill_of_lra_prep_ends_preprocess_and_its_workers(tmp_path):
    fake = tmp_path / "fake" / "fairseq_cli"  # a fairseq-preprocess that forks a worker and keeps running
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "preprocess.py").write_text(_SLOW_PREPROCESS)
    folder = make_listops(tmp_path / "listops-1000")
    parent = tmp_path / "bin"
    pids_file = tmp_path / "pids"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "fake"), PIDS_FILE=str(pids_file))
    prep = subprocess.Popen([sys.executable, LRA, "listops", "--input-dir", str(folder), "--destdir",
                             str(parent / "listops"), "--workers", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = {}
    try:
        def started():
            if pids_file.exists():
                pids.update(line.split() for line in pids_file.read_text().splitlines() if line.count(" ") == 1)
            return {"child", "worker"} <= set(pids)
        wait_for(started, 120, "fairseq-preprocess and its worker to start")
        prep.send_signal(signal.SIGKILL)
        prep.wait()
        wait_for(lambda: not any(alive(int(p)) for p in pids.values()), 10,
                 f"the prep's child and worker {pids} to die with it")
    finally:
        for pid in pids.values():  # only what this test started
            if alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        if prep.poll() is None:
            prep.kill()
            prep.wait()
    stale = temporaries(parent)
    assert len(stale) == 1 and stale[0].startswith(".tmp-lra-"), stale

    # the next run next to it removes the dead run's temporary directory
    make_cifar(tmp_path / "in")
    assert lra.main(["cifar10", "--input-dir", str(tmp_path / "in"), "--destdir", str(parent / "cifar")]) == 0
    assert temporaries(parent) == []


_SLOW_ENWIK8 = '''
import os, sys, time
sys.path.insert(0, {repo!r})
from data_prep import enwik8
name = "binarize_splits" if hasattr(enwik8, "binarize_splits") else "run_preprocess"  # the latter: old code

def slow(*args):
    open({ready!r}, "w").close()
    time.sleep(120)

setattr(enwik8, name, slow)
sys.exit(enwik8.main(sys.argv[1:]))
'''


def test_next_run_removes_the_temporary_of_a_killed_enwik8_prep(tmp_path, capsys):
    parent = tmp_path / "bin"
    ready = tmp_path / "ready"
    code = _SLOW_ENWIK8.format(repo=REPO_ROOT, ready=str(ready))
    prep = subprocess.Popen([sys.executable, "-c", code, "--pydoc-demo", "--max-bytes", "20000", "--destdir",
                             str(parent / "a")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(ready.exists, 120, "the prep to start binarising")
        prep.send_signal(signal.SIGKILL)
        prep.wait()
    finally:
        if prep.poll() is None:
            prep.kill()
            prep.wait()
    assert len(temporaries(parent)) == 1
    assert enwik8.main(["--pydoc-demo", "--max-bytes", "5000", "--destdir", str(parent / "b")]) == 0
    assert temporaries(parent) == []
    assert "removed 1 temporary directory of interrupted runs" in capsys.readouterr().err


def test_only_temporaries_of_dead_owners_are_removed(tmp_path, capsys):
    parent = tmp_path / "bin"
    parent.mkdir()
    dest = str(parent / "out")
    live = common.make_temp_dir(dest, "lra.py")  # owned by this (live) process
    unknown = parent / ".tmp-enwik8-unknown"  # no owner record: never touched
    unknown.mkdir()
    other_host = parent / ".tmp-lra-otherhost"
    other_host.mkdir()
    (other_host / common.OWNER).write_text(json.dumps({"pid": 1, "start": 0, "host": "another-machine"}))
    reused = parent / ".tmp-lra-reused"  # our pid, but another start time: the pid was reused
    reused.mkdir()
    (reused / common.OWNER).write_text(json.dumps(dict(common._owner_record(), pid=os.getppid(), start=-1)))
    # a dead run that had moved the old output aside but not installed the new one: kept, reported
    orphan_old = parent / ".old-enwik8-x"
    (orphan_old / "old").mkdir(parents=True)
    (orphan_old / common.OWNER).write_text(json.dumps(dict(common._owner_record(), pid=os.getppid(), start=-1,
                                                           destdir=dest)))
    removed = common.remove_stale_temporaries(str(parent), "lra.py")
    assert removed == [".tmp-lra-reused"]
    assert temporaries(parent) == sorted([os.path.basename(live), unknown.name, other_host.name, orphan_old.name])
    err = capsys.readouterr().err
    assert "holds the previous" in err and "without an owner record" in err
    shutil.rmtree(live)
