"""A training run killed with SIGKILL mid-epoch and restarted from checkpoint_last.pt continues
with exactly the losses of an uninterrupted run (fixed seed, CPU, dropout on); and two runs with
the same seed log the same losses. A torn checkpoint_last.pt (a run killed while fairseq copied it)
does not block resume: training goes on from the newest intact checkpoint, and says so. A second
fairseq-train on a save dir in use is refused; the lock dies with the run that held it."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import PLUGIN_DIR, REPO_ROOT

pytestmark = pytest.mark.slow


def train_command(data, save):
    return [sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir", PLUGIN_DIR,
            "--task", "language_modeling", "--arch", "seqboat_lm_tiny", "--dropout", "0.1",
            "--tokens-per-sample", "64", "--batch-size", "4", "--optimizer", "radam", "--lr", "3e-3",
            "--lr-scheduler", "linear_decay", "--warmup-updates", "4", "--warmup-init-lr", "1e-4",
            "--total-num-update", "16", "--max-update", "16", "--save-interval-updates", "8",
            "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1", "--disable-validation",
            "--save-dir", str(save), "--cpu", "--num-workers", "0", "--seed", "7"]


def losses(log):
    """{update: loss} from fairseq's per-update train_inner lines."""
    return {int(u): float(l) for l, u in re.findall(r"train_inner .*?loss=([\d.]+).*?num_updates=(\d+)", log)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "data-bin"
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "data_prep", "enwik8.py"), "--pydoc-demo",
                    "--max-bytes", "60000", "--destdir", str(out)], check=True, capture_output=True)
    return out


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = subprocess.run(train_command(data, tmp_path / "a"), capture_output=True, text=True, env=env, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    reference = losses(full.stdout + full.stderr)
    assert sorted(reference) == list(range(1, 17))

    proc = subprocess.Popen(train_command(data, tmp_path / "b"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    seen = ""
    for line in proc.stdout:  # kill it after the update-8 checkpoint, in the middle of update 11+
        seen += line
        if "num_updates=11" in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert "checkpoint_last.pt" in seen and "epoch 001" in seen
    before_kill = losses(seen)
    assert before_kill == {u: reference[u] for u in before_kill}, "same seed, same losses, run to run"

    resumed = subprocess.run(train_command(data, tmp_path / "b"), capture_output=True, text=True, env=env,
                             timeout=600)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 1 @ 8 updates\)", log), log[-3000:]
    after = losses(log)
    assert sorted(after) == list(range(9, 17))
    assert after == {u: reference[u] for u in range(9, 17)}


# --------------------------------------------------------------------------- torn checkpoint_last.pt
def short_command(data, save, max_update, *extra):
    """A checkpoint after every update (--save-interval-updates 1), as in the bug report."""
    return [sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir", PLUGIN_DIR,
            "--task", "language_modeling", "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "64",
            "--batch-size", "4", "--optimizer", "adam", "--lr", "1e-3", "--max-update", str(max_update),
            "--save-interval-updates", "1", "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
            "--disable-validation", "--save-dir", str(save), "--cpu", "--num-workers", "0", "--seed", "7", *extra]


def run(command, **kwargs):
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), **kwargs)
    return proc, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def two_updates(data, tmp_path_factory):
    """A save dir after 2 updates (checkpoint_1_1.pt, checkpoint_1_2.pt, checkpoint_last.pt), and the
    loss of update 3 in an uninterrupted 3-update run."""
    root = tmp_path_factory.mktemp("torn")
    proc, log = run(short_command(data, root / "save", 2))
    assert proc.returncode == 0, log[-3000:]
    proc, log = run(short_command(data, root / "reference", 3))
    assert proc.returncode == 0, log[-3000:]
    return root / "save", losses(log)[3]


@pytest.mark.parametrize("size", [0, 196_608], ids=["empty", "torn-at-196608"])
def test_torn_checkpoint_last_resumes_from_the_newest_intact_checkpoint(data, two_updates, tmp_path, size):
    saved, reference_loss = two_updates
    save = tmp_path / "save"
    shutil.copytree(saved, save)  # keeps modification times: checkpoint_1_2.pt is the newest
    os.truncate(save / "checkpoint_last.pt", size)

    proc, log = run(short_command(data, save, 3))
    assert proc.returncode == 0, log[-3000:]
    assert re.search(rf"WARNING .* {save}/checkpoint_last\.pt is unreadable \(.*\)\. Resuming instead from "
                     rf"{save}/checkpoint_1_2\.pt, the newest intact checkpoint in {save} ", log), log[-3000:]
    assert re.search(r"Loaded checkpoint .*checkpoint_1_2\.pt \(epoch 1 @ 2 updates\)", log), log[-3000:]
    assert losses(log) == {3: reference_loss}  # update 3 exactly as without the interruption
    assert (save / "checkpoint_last.pt").read_bytes() == (save / "checkpoint_1_3.pt").read_bytes()


def test_no_intact_checkpoint_gives_one_error_naming_only_existing_files(data, two_updates, tmp_path):
    save = tmp_path / "save"
    shutil.copytree(two_updates[0], save)
    for name in ("checkpoint_last.pt", "checkpoint_1_2.pt", "checkpoint_1_1.pt"):
        os.truncate(save / name, 196_608)

    proc, log = run(short_command(data, save, 3))
    assert proc.returncode != 0
    assert "Traceback" not in log, log[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, log[-3000:]
    assert errors[0].startswith(f"error: cannot resume: {save}/checkpoint_last.pt is unreadable (196,608 bytes, cut "
                                f"short (no zip directory at its end)), and {save} holds no other intact checkpoint")
    assert "checkpoint_best" not in errors[0]
    assert sorted(p.name for p in save.iterdir()) == ["checkpoint_1_1.pt", "checkpoint_1_2.pt",
                                                      "checkpoint_last.pt", "train.lock"]  # nothing touched


# --------------------------------------------------------------------------- two runs, one save dir
def _wait_for(path, text, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in path.read_text():
            return
        assert proc.poll() is None, path.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} in {path} after {timeout} s")


def test_second_run_on_a_save_dir_in_use_is_refused_and_a_killed_run_leaves_no_lock(data, tmp_path):
    save, first_log = tmp_path / "save", tmp_path / "first.log"
    with open(first_log, "w") as out:
        first = subprocess.Popen(short_command(data, save, 100_000, "--keep-interval-updates", "2"), stdout=out,
                                 stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        _wait_for(first_log, "num_updates=2,", first)
        second, log = run(short_command(data, save, 5, "--lr", "5e-3"))  # other hyperparameters
        assert second.returncode != 0
        assert "Traceback" not in log and "Loaded checkpoint" not in log, log[-3000:]
        errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, log[-3000:]
        assert errors[0].startswith(f"error: --save-dir {save} is in use by another fairseq-train run "
                                    f"(pid {first.pid} on host ")
        assert first.poll() is None, "the first run must go on"
        updates_before = first_log.read_text().count("num_updates=")
        _wait_for(first_log, f"num_updates={updates_before + 2},", first)  # and keep saving
    finally:
        first.kill()
        first.wait(timeout=60)
    assert "Traceback" not in first_log.read_text()

    third, log = run(short_command(data, save, 1))  # the kernel dropped the killed run's lock
    assert third.returncode == 0, log[-3000:]
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 1 @ \d+ updates\)", log), log[-3000:]


def test_data_parallel_run_takes_one_lock_and_rank_1_trains(data, tmp_path):
    save = tmp_path / "save"
    proc, log = run(["bash", os.path.join(REPO_ROOT, "scripts", "train_cpu_ddp.sh"), "2",
                     *short_command(data, save, 2)[3:]], cwd=REPO_ROOT)
    assert proc.returncode == 0, log[-3000:]
    assert "distributed init (rank 1)" in log and "is in use" not in log
    assert re.fullmatch(r"pid \d+ on host \S+, running since [\d :-]+\n", (save / "train.lock").read_text())
    assert (save / "checkpoint_last.pt").read_bytes() == (save / "checkpoint_1_2.pt").read_bytes()
