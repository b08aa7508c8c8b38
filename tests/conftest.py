"""Shared test helpers. Every test runs on CPU; fixed seeds keep them reproducible."""

import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def assert_close(name, actual, expected, atol=1e-5, rtol=0.0):
    """Fails on NaN/inf and reports max abs / rel error (never downgraded to a warning)."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    diff = (actual - expected).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    max_rel = (diff / expected.abs().clamp(min=1e-12)).max().item() if diff.numel() else 0.0
    ok = bool((diff <= atol + rtol * expected.abs()).all())
    assert ok, f"{name}: max abs err {max_abs:.3e}, max rel err {max_rel:.3e} (atol={atol}, rtol={rtol})"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


PLUGIN_DIR = os.path.join(REPO_ROOT, "seqboat_fairseq")


def write_byte_dictionary(directory, symbols=256):
    """A fairseq dict.txt over byte tokens "0".."255" (what data_prep/enwik8.py produces)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "dict.txt"), "w") as f:
        for i in range(symbols):
            f.write(f"{i} {1000 - i}\n")
    return str(directory)


def build_lm(data_dir, *cli_args):
    """Builds a SeqBoat LM exactly as fairseq-train would, from command-line arguments."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data_dir), "--user-dir", PLUGIN_DIR, "--task", "language_modeling", *cli_args])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model), task, cfg


def write_lra_dictionaries(directory, symbols=("[MAX", "[MIN", "[MED", "[SM", "]", *map(str, range(10))),
                           labels=tuple(map(str, range(10))), two_documents=False):
    """The dict.txt files an lra-text data directory needs (``src-bin``, ``label-bin``)."""
    for sub, entries in (("src-bin", symbols), ("label-bin", labels)):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
        with open(os.path.join(directory, sub, "dict.txt"), "w") as f:
            f.writelines(f"{s} {1000 - i}\n" for i, s in enumerate(entries))
    if two_documents:
        os.makedirs(os.path.join(directory, "src1-bin"), exist_ok=True)
    return str(directory)


def build_lra(data_dir, task, *cli_args):
    """Builds an LRA model exactly as fairseq-train would, from command-line arguments."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data_dir), "--user-dir", PLUGIN_DIR, "--task", task, "--criterion", "lra_cross_entropy",
                 *cli_args])
    cfg = convert_namespace_to_omegaconf(args)
    task_obj = tasks.setup_task(cfg.task)
    return task_obj.build_model(cfg.model), task_obj, cfg


def run_module(module, *args, cwd=REPO_ROOT, check=True, timeout=900, stdin=None, env=None):
    """Runs ``python -m <module> args`` (fairseq's console scripts) and returns the completed
    process; with ``check`` a non-zero exit fails the test with the output's tail."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
    if check:
        assert proc.returncode == 0, f"{module} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


@pytest.fixture(scope="session")
def pydoc_data_bin(tmp_path_factory):
    """A small enwik8-style byte data-bin (train/valid/test) from Python's pydoc text."""
    import subprocess

    data = tmp_path_factory.mktemp("pydoc") / "data-bin"
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "data_prep", "enwik8.py"), "--pydoc-demo",
                    "--max-bytes", "60000", "--destdir", str(data)], check=True, capture_output=True, timeout=600)
    return data


def train_tiny_lm(data, save_dir, *extra, updates=2):
    """A few updates of seqboat_lm_tiny through fairseq-train (for tests that need a checkpoint,
    not a good model). Returns the path of checkpoint_last.pt."""
    run_module("fairseq_cli.train", data, "--user-dir", PLUGIN_DIR, "--task", "language_modeling",
               "--arch", "seqboat_lm_tiny", "--criterion", "seqboat_cross_entropy", "--tokens-per-sample", "64",
               "--batch-size", "4", "--optimizer", "adam", "--lr", "3e-3", "--max-update", str(updates),
               "--disable-validation", "--no-epoch-checkpoints", "--save-dir", save_dir, "--cpu",
               "--num-workers", "0", "--log-format", "simple", *extra)
    return os.path.join(str(save_dir), "checkpoint_last.pt")
