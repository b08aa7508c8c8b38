"""Data-parallel training: every parameter always gets a gradient (no unused-parameter errors,
no hang when one rank activates nothing), and 2 CPU workers (gloo) reproduce 1 worker with
--update-freq 2."""

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import PLUGIN_DIR, REPO_ROOT, build_lm, write_byte_dictionary


@pytest.mark.parametrize("act_bias", [1e4, -1e4, 0.0], ids=["nothing-active", "everything-active", "mixed"])
def test_every_parameter_gets_a_gradient(tmp_path, act_bias):
    """DDP (pytorch_ddp without --find-unused-parameters) needs every parameter in every backward:
    the GAU runs even on an empty compressed sequence, contributing exact-zero gradients."""
    model, _, _ = build_lm(write_byte_dictionary(tmp_path), "--arch", "seqboat_lm_tiny", "--decoder-layers", "2")
    for layer in model.decoder.layers:
        layer.act_bias = act_bias
    logits, extra = model(torch.randint(4, 260, (2, 40)))
    logits.float().logsumexp(-1).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    if act_bias > 0:
        assert not any(a.active.any() for a in extra["activations"])
        assert all((p.grad == 0).all() for n, p in model.named_parameters() if ".gau." in n)


def _losses(log):
    return {int(u): float(l) for l, u in re.findall(r"train_inner .*?loss=([\d.]+).*?num_updates=(\d+)", log)}


def _activation_rates(log):
    return {int(u): float(r) for u, r in re.findall(r"train_inner .*?num_updates=(\d+).*?act_rate=([\d.]+)", log)}


def _lm_data(tmp_path):
    data = tmp_path / "data-bin"
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "data_prep", "enwik8.py"), "--pydoc-demo",
                    "--max-bytes", "40000", "--destdir", str(data)], check=True, capture_output=True)
    return [str(data), "--task", "language_modeling", "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "64",
            "--criterion", "seqboat_cross_entropy"]


def _pathfinder_data(tmp_path):
    from test_data_prep_lra import make_pathfinder

    make_pathfinder(tmp_path / "raw", resolution=32, per_file=(12, 12, 12, 12, 12, 12))
    data = tmp_path / "pf32"
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "data_prep", "lra.py"), "pathfinder", "--input-dir",
                    str(tmp_path / "raw"), "--resolution", "32", "--destdir", str(data)], check=True,
                   capture_output=True)
    return [str(data), "--task", "lra-image", "--arch", "seqboat_lra_pf32", "--criterion", "lra_cross_entropy",
            "--encoder-layers", "2", "--encoder-embed-dim", "32", "--encoder-hidden-dim", "64", "--z-dim", "16",
            "--chunk-size", "16", "--classifier-out-dim", "32", "--sentence-avg"]


@pytest.mark.slow
@pytest.mark.parametrize("make_data", [_lm_data, _pathfinder_data], ids=["lm", "lra-pathfinder-batchnorm"])
def test_two_cpu_workers_match_one_worker_with_update_freq_2(tmp_path, make_data):
    common = [*make_data(tmp_path), "--user-dir", PLUGIN_DIR, "--batch-size", "4", "--optimizer", "adam",
              "--lr", "3e-3", "--max-update", "8", "--log-format", "simple", "--log-interval", "1",
              "--disable-validation", "--no-save", "--num-workers", "0", "--seed", "5",
              "--required-batch-size-multiple", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "fairseq_cli.train", *common, "--cpu", "--update-freq", "2"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run(["bash", os.path.join(REPO_ROOT, "scripts", "train_cpu_ddp.sh"), "2", *common],
                           capture_output=True, text=True, env=env, timeout=600, cwd=REPO_ROOT)
    log = multi.stdout + multi.stderr
    assert multi.returncode == 0, log[-3000:]
    assert "distributed init (rank 1)" in log
    one, two = _losses(single.stdout + single.stderr), _losses(log)
    assert sorted(one) == list(range(1, 9)) and sorted(two) == sorted(one)
    for update in one:  # logged with 3 decimals
        assert two[update] == pytest.approx(one[update], abs=2e-3), (update, one, two)
    # activation rates: counts summed over both workers, as over both accumulation steps
    rates_one, rates_two = _activation_rates(single.stdout + single.stderr), _activation_rates(log)
    assert sorted(rates_one) == list(range(1, 9)) and sorted(rates_two) == sorted(rates_one)
    for update in rates_one:
        assert rates_two[update] == pytest.approx(rates_one[update], abs=2e-3), (update, rates_one, rates_two)
