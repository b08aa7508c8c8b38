"""Checkpoint files: copies are atomic, bad checkpoint files give one clear error naming the file
(and only files that exist), and the save-dir lock is taken by rank 0 of a saving run only.
The end-to-end resume / second-run checks through fairseq-train are in tests/test_resume.py."""

import argparse
import os
import pickle
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import PLUGIN_DIR, REPO_ROOT, build_lm, build_lra, write_byte_dictionary, write_lra_dictionaries

import seqboat_fairseq  # noqa: F401,E402  (wraps fairseq's checkpoint functions)
from fairseq import checkpoint_utils  # noqa: E402

TORN = 196_608  # the size of a torn checkpoint_last.pt seen after a kill during fairseq's copy


def _checkpoint(path, seed=0, numel=300_000):
    """A torch zip file of about 1.2 MB, like fairseq's checkpoints (only the size matters here)."""
    torch.manual_seed(seed)
    torch.save({"model": {"w": torch.randn(numel)}, "cfg": None}, path)
    return path


# --------------------------------------------------------------------------- atomic copies
def test_copy_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    """checkpoint_last.pt is replaced, never rewritten in place: a reader that opened it before the copy
    (an evaluation job, say) still reads the complete previous checkpoint."""
    src, dst = _checkpoint(tmp_path / "checkpoint_1_2.pt", 1), _checkpoint(tmp_path / "checkpoint_last.pt", 2)
    previous = dst.read_bytes()
    with open(dst, "rb") as reader:
        assert checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)  # what save_checkpoint asserts
        assert reader.read() == previous
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1_2.pt", "checkpoint_last.pt"]


COPY_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys
sys.path.insert(0, sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: let it kill, as the kernel's default
import seqboat_fairseq
from fairseq import checkpoint_utils
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[4]), resource.RLIM_INFINITY))
checkpoint_utils.PathManager.copy(sys.argv[1], sys.argv[2], overwrite=True)  # the call save_checkpoint makes
"""


def test_copy_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    """The kernel kills the copying process (SIGXFSZ) once it has written TORN bytes of a file: a
    deterministic 'killed during the copy to checkpoint_last.pt'."""
    src, dst = _checkpoint(tmp_path / "checkpoint_1_2.pt", 1), _checkpoint(tmp_path / "checkpoint_last.pt", 2)
    previous = dst.read_bytes()
    proc = subprocess.run([sys.executable, "-c", COPY_UNDER_A_SIZE_LIMIT, str(src), str(dst), REPO_ROOT, str(TORN)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr[-3000:]
    assert dst.stat().st_size != TORN
    assert dst.read_bytes() == previous  # the old checkpoint_last.pt, complete
    # the torn temporary (checkpoint_last.pt.tmp) is never taken for a checkpoint: no *.pt name
    assert all(p.name.endswith(".pt.tmp") or p.name in ("checkpoint_1_2.pt", "checkpoint_last.pt")
               for p in tmp_path.iterdir())


# --------------------------------------------------------------------------- unreadable files
@pytest.mark.parametrize("size", [0, TORN], ids=["empty", "torn"])
def test_unreadable_checkpoint_names_the_newest_intact_one_beside_it(tmp_path, size):
    _checkpoint(tmp_path / "checkpoint_1_1.pt", 1)
    intact = _checkpoint(tmp_path / "checkpoint_1_2.pt", 2)
    os.utime(tmp_path / "checkpoint_1_1.pt", (1e9, 1e9))  # older
    last = _checkpoint(tmp_path / "checkpoint_last.pt", 3)
    os.truncate(last, size)
    with pytest.raises(RuntimeError) as error:
        checkpoint_utils.load_checkpoint_to_cpu(str(last))
    message = str(error.value)
    assert f"cannot read checkpoint {last}: the file is truncated or corrupt" in message
    assert f"use the newest intact checkpoint beside it, {intact}" in message
    assert "checkpoint_best" not in message  # does not exist: never recommended


def test_unreadable_checkpoint_alone_recommends_no_other_file(tmp_path):
    last = _checkpoint(tmp_path / "checkpoint_last.pt")
    os.truncate(last, TORN)
    torn_sibling = _checkpoint(tmp_path / "checkpoint_1_2.pt")
    os.truncate(torn_sibling, 1000)
    with pytest.raises(RuntimeError, match=r"copy it again \(no other intact checkpoint is beside it\)") as error:
        checkpoint_utils.load_checkpoint_to_cpu(str(last))
    assert "checkpoint_best" not in str(error.value) and "checkpoint_1_2" not in str(error.value)


# --------------------------------------------------------------------------- not a checkpoint
@pytest.mark.parametrize("obj,found", [
    ({"w": torch.zeros(1)}, r"a dict with keys \['w'\]"),
    (torch.zeros(3), r"a torch.Tensor"),
    ({"model": {"w": torch.zeros(1)}}, r"a dict with keys \['model'\]"),
    ({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(arch="seqboat_lm_tiny")},
     r"a dict with keys \['args', 'model'\]"),
], ids=["dict", "tensor", "weights-only", "no-optimizer-history"])
def test_plain_torch_file_is_not_a_checkpoint(tmp_path, obj, found):
    path = tmp_path / "weights.pt"
    torch.save(obj, path)
    expected = (rf"{path} is not a fairseq checkpoint: expected a dict with the model's weights under 'model', "
                rf"its training configuration under 'cfg' \(or 'args'\) and 'optimizer_history', as fairseq-train "
                rf"writes; found {found}")
    with pytest.raises(RuntimeError, match=expected):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    with pytest.raises(RuntimeError, match=expected):  # what fairseq-eval-lm / -generate / hub loading call
        checkpoint_utils.load_model_ensemble_and_task([str(path)])


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_refused_pickle_names_the_checkpoint_file(tmp_path):
    path, marker = tmp_path / "checkpoint_best.pt", tmp_path / "payload-ran"
    torch.save({"model": {}, "cfg": None, "extra": _RunsACommand(marker)}, path)
    with pytest.raises(pickle.UnpicklingError) as error:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    message = str(error.value)
    assert message.startswith(f"refusing to load checkpoint {path}: it holds a pickled reference to posix.system")
    assert "Unsupported global" in message and "weights_only" not in message  # no advice to switch the check off
    assert not marker.exists()


# --------------------------------------------------------------------------- checkpoint for another task
@pytest.fixture(scope="module")
def lra_checkpoint(tmp_path_factory):
    from omegaconf import OmegaConf

    root = tmp_path_factory.mktemp("lra-ckpt")
    model, _, cfg = build_lra(write_lra_dictionaries(root / "text"), "lra-text", "--arch", "seqboat_lra_listop",
                              "--encoder-layers", "1")
    path = root / "checkpoint_best.pt"
    torch.save({"cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "model": model.state_dict(),
                "optimizer_history": [{"criterion_name": "LRACrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"best": 1.0}, "num_updates": 0}], "extra_state": {}},
               path)
    return path


def test_lra_checkpoint_for_a_language_modeling_task_says_so(tmp_path, lra_checkpoint):
    _, lm_task, _ = build_lm(write_byte_dictionary(tmp_path / "bytes"), "--arch", "seqboat_lm_tiny")
    with pytest.raises(RuntimeError, match=(
            rf"checkpoint {lra_checkpoint} holds a model trained with --task lra-text \(--arch seqboat_lra_listop\), "
            r"but this tool set up --task language_modeling, which cannot use it .*; an LRA classifier gives no "
            rf"language-model scores; measure its accuracy with `bash examples/lra/test.sh lra-text DATA_DIR "
            rf"{lra_checkpoint}`")):
        checkpoint_utils.load_model_ensemble_and_task([str(lra_checkpoint)], task=lm_task)


@pytest.mark.slow
def test_eval_lm_on_an_lra_checkpoint_prints_one_clear_error(tmp_path, lra_checkpoint):
    data = write_byte_dictionary(tmp_path / "bytes")
    proc = subprocess.run([sys.executable, "-m", "fairseq_cli.eval_lm", data, "--user-dir", PLUGIN_DIR, "--path",
                           str(lra_checkpoint), "--cpu", "--tokens-per-sample", "64", "--num-workers", "0"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"checkpoint {lra_checkpoint} holds a model trained with --task lra-text" in errors[0]


# --------------------------------------------------------------------------- save-dir lock
TRY_TO_LOCK = """
import sys
sys.path.insert(0, sys.argv[2])
from seqboat_fairseq import training_safety
try:
    training_safety.lock_save_dir(sys.argv[1])
except RuntimeError as error:
    print(error)
    sys.exit(3)
"""


def _try_to_lock(save_dir):
    return subprocess.run([sys.executable, "-c", TRY_TO_LOCK, str(save_dir), REPO_ROOT], capture_output=True,
                          text=True, timeout=300)


def test_only_rank_0_of_a_saving_run_takes_the_lock(tmp_path, monkeypatch):
    from fairseq.dataclass.configs import CheckpointConfig
    from fairseq.distributed import utils as distributed_utils
    from omegaconf import OmegaConf

    from seqboat_fairseq import training_safety

    loaded = []
    load_checkpoint = training_safety._guarded(lambda cfg, trainer, **kwargs: loaded.append(cfg.restore_file))
    trainer = SimpleNamespace(checkpoint_suffix="")
    for name, rank, no_save in [("rank1", 1, False), ("no-save", 0, True), ("rank0", 0, False)]:
        monkeypatch.setattr(distributed_utils, "get_global_rank", lambda: rank)
        load_checkpoint(OmegaConf.structured(CheckpointConfig(save_dir=str(tmp_path / name), no_save=no_save)),
                        trainer)
        load_checkpoint(OmegaConf.structured(CheckpointConfig(save_dir=str(tmp_path / name), no_save=no_save)),
                        trainer)  # a second call in the same process: still fine
    assert loaded == ["checkpoint_last.pt"] * 6
    assert not (tmp_path / "rank1" / "train.lock").exists() and not (tmp_path / "no-save" / "train.lock").exists()
    assert (tmp_path / "rank0" / "train.lock").read_text().startswith(f"pid {os.getpid()} on host ")

    refused = _try_to_lock(tmp_path / "rank0")  # another process: refused while this one lives
    assert refused.returncode == 3, refused.stderr[-3000:]
    assert refused.stdout.startswith(f"--save-dir {tmp_path / 'rank0'} is in use by another fairseq-train run "
                                     f"(pid {os.getpid()} on host ")
    assert _try_to_lock(tmp_path / "rank1").returncode == 0
