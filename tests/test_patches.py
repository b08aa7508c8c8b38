"""SEQBOAT_FAIRSEQ_DISABLE_PATCHES keeps fairseq's (and Python's) originals in place, patch by
patch; without it every patch is installed. Each case imports the plugin in a fresh process."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("fairseq")

from seqboat_fairseq.patches import ENV, PATCHES  # noqa: E402

# Prints {patch name: installed?}, comparing each global with its value before the import.
PROBE = r"""
import json, logging, sys, warnings
import torch
from fairseq import checkpoint_utils, tasks
from fairseq.data import data_utils
from fairseq.data.encoders import BPE_REGISTRY
from fairseq.sequence_generator import SequenceGenerator
names = ("PathManager", "load_checkpoint", "verify_checkpoint_directory", "load_checkpoint_to_cpu",
         "load_model_ensemble_and_task")
before = {name: getattr(checkpoint_utils, name) for name in names}
before.update(generate=SequenceGenerator._generate, batch_by_size=data_utils.batch_by_size,
              setup_task=tasks.setup_task, sentencepiece=BPE_REGISTRY["sentencepiece"],
              excepthook=sys.excepthook)
filters, safe = len(warnings.filters), len(torch.serialization.get_safe_globals())
import seqboat_fairseq
now = {name: getattr(checkpoint_utils, name) for name in names}
now.update(generate=SequenceGenerator._generate, batch_by_size=data_utils.batch_by_size,
           setup_task=tasks.setup_task, sentencepiece=BPE_REGISTRY["sentencepiece"],
           excepthook=sys.excepthook)
installed = {name: now[name] is not before[name] for name in now}
installed["safe_globals"] = len(torch.serialization.get_safe_globals()) > safe
installed["hydra_quiet"] = len(warnings.filters) > filters
print(json.dumps(installed))
"""


def probe(disabled):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if disabled is not None:
        env[ENV] = disabled
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)


def installed(disabled):
    run = probe(disabled)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_patch_is_installed_by_default():
    assert installed(None) == {name: True for name in PATCHES}


def test_disabling_patches_keeps_exactly_their_originals():
    # two complementary lists: every patch is disabled once, and left alone once
    names = ["batch_by_size", "excepthook", "sentencepiece", "setup_task", "load_checkpoint", "hydra_quiet"]
    assert installed(" , ".join(names)) == {name: name not in names for name in PATCHES}
    rest = [name for name in PATCHES if name not in names]
    assert installed(",".join(rest)) == {name: name in names for name in PATCHES}
    assert PATCHES.keys() - names - set(rest) == set()


def test_an_unknown_patch_name_is_one_error_line():
    run = probe("batch_by_size,batch_by_sise")
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("error: "), run.stderr
    assert ENV in run.stderr and "batch_by_sise" in run.stderr and "batch_by_size," in run.stderr
