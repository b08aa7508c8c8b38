"""LRA end to end through fairseq's tools: raw release format -> data_prep/lra.py ->
fairseq-train -> fairseq-validate on test (the recipe's examples/lra/test.sh)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import PLUGIN_DIR, REPO_ROOT
from test_data_prep_lra import make_aan, make_pathfinder

pytestmark = pytest.mark.slow

SMALL = ["--encoder-layers", "2", "--encoder-embed-dim", "32", "--encoder-hidden-dim", "64", "--z-dim", "16",
         "--chunk-size", "8", "--classifier-out-dim", "32"]
TRAIN = ["--criterion", "lra_cross_entropy", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "4",
         "--sentence-avg", "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
         "--log-format", "simple", "--log-interval", "1", "--no-epoch-checkpoints", "--cpu", "--num-workers", "0",
         "--required-batch-size-multiple", "1", "--max-update", "6", "--seed", "3"]


def run(args, cwd=REPO_ROOT):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{args[:3]} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


def _train_and_test(data, save, task, arch, extra):
    log = run(["-m", "fairseq_cli.train", data, "--user-dir", PLUGIN_DIR, "--task", task, "--arch", arch,
               *SMALL, *TRAIN, "--save-dir", save, *extra])
    valid = re.search(r"valid on 'valid' subset \|.*", log)  # fairseq orders the metrics by their priority
    assert valid and re.search(r"\| accuracy [\d.]+( |$)", valid.group(0)), log[-3000:]
    assert re.search(r"\| act_rate [\d.]+ .*\| act_rate_l0 [\d.]+", valid.group(0)), valid.group(0)
    out = subprocess.run(["bash", os.path.join(REPO_ROOT, "examples", "lra", "test.sh"), task, str(data),
                          str(save / "checkpoint_best.pt")], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    accuracy = float(re.search(r"valid on 'test' subset .*accuracy ([\d.]+)", out.stdout + out.stderr).group(1))
    assert 0.0 <= accuracy <= 100.0
    return log


def test_pathfinder_from_pngs_to_test_accuracy(tmp_path):
    make_pathfinder(tmp_path / "raw", resolution=32, per_file=(8, 8, 8, 8, 8, 8))
    data = tmp_path / "pf32"
    run([os.path.join(REPO_ROOT, "data_prep", "lra.py"), "pathfinder", "--input-dir", tmp_path / "raw",
         "--resolution", "32", "--destdir", data])
    assert sorted(os.listdir(data / "input")) == ["test.npy", "train.npy", "valid.npy"]  # memory-mapped, no text
    log = _train_and_test(data, tmp_path / "ckpt", "lra-image", "seqboat_lra_pf32",
                          ["--pixel-normalization", "0.5", "0.5"])
    assert re.search(r"loaded 40 images of 1024 pixels from train", log), log[-3000:]
    assert "earlier text format" not in log


def test_retrieval_two_documents_from_tsv_to_test_accuracy(tmp_path):
    make_aan(tmp_path / "tsv_data")
    data = tmp_path / "aan"
    run([os.path.join(REPO_ROOT, "data_prep", "lra.py"), "aan", "--input-dir", tmp_path / "tsv_data",
         "--destdir", data, "--workers", "1"])
    log = _train_and_test(data, tmp_path / "ckpt", "lra-text", "seqboat_lra_aan", [])
    assert "loss" in log
