"""A training run killed with SIGKILL mid-epoch and restarted from checkpoint_last.pt continues
with exactly the losses of an uninterrupted run (fixed seed, CPU, dropout on); and two runs with
the same seed log the same losses."""

import os
import re
import signal
import subprocess
import sys

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
