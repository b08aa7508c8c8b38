"""Every metric over every example, in the unit it names, whatever the flags.

* ``lra_cross_entropy`` is per example: at initialisation the first loss of every classification
  task (ListOps, Retrieval, image, speech) is about log2(classes) bits, with and without
  ``--sentence-avg``, from the command line's config and from fairseq-hydra-train's.
* Every pass over a split keeps its last batch (``tasks/last_batch.py``): fairseq 0.12 drops it
  unless its size is a multiple of ``--required-batch-size-multiple`` (default 8). Every evaluation
  entry point (validation during training, fairseq-validate, fairseq-eval-lm, the analysis tool)
  scores every example of a 61-example split (and every token of an LM split of a number of
  blocks that is not a multiple of 8), with the same numbers at ``--batch-size 1, 3, 32``.
"""

import json
import math
import os
import re

import numpy as np
import pytest
import torch

from conftest import PLUGIN_DIR, build_from_cli, run_module, train_tiny_lm, write_lra_dictionaries
from seqboat_fairseq.testing import LISTOPS_SYMBOLS

SPLIT = 61  # examples per evaluation split: not a multiple of 8 (nor of 3 or 32)
TINY = {"encoder_layers": 1, "encoder_embed_dim": 16, "encoder_hidden_dim": 32, "z_dim": 8, "n_dim": 4,
        "chunk_size": 16, "classifier_out_dim": 16}


def flags(options):
    return [item for key, value in options.items() for item in (f"--{key.replace('_', '-')}", str(value))]


# --------------------------------------------------------------------------- data


def _write_tokens(prefix, lines, dictionary):
    from fairseq.data import indexed_dataset

    builder = indexed_dataset.make_builder(f"{prefix}.bin", impl="mmap", vocab_size=len(dictionary))
    for line in lines:
        builder.add_item(dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).int())
    builder.finalize(f"{prefix}.idx")


def make_text(root, classes=10, two=False, sizes=(("train", 24), ("valid", SPLIT), ("test", SPLIT))):
    """An lra-text directory (ListOps-like symbols; Retrieval-like with ``two``) of random documents
    of 10..40 tokens and random labels."""
    from fairseq.data import Dictionary

    data = write_lra_dictionaries(root, labels=tuple(map(str, range(classes))), two_documents=two)
    src = Dictionary.load(os.path.join(data, "src-bin", "dict.txt"))
    labels = Dictionary.load(os.path.join(data, "label-bin", "dict.txt"))
    rng = np.random.RandomState(len(str(root)))
    for split, count in sizes:
        for folder in ("src-bin", "src1-bin") if two else ("src-bin",):
            docs = [" ".join(rng.choice(LISTOPS_SYMBOLS, rng.randint(10, 41))) for _ in range(count)]
            _write_tokens(os.path.join(data, folder, split), docs, src)
        _write_tokens(os.path.join(data, "label-bin", split), [str(rng.randint(classes)) for _ in range(count)],
                      labels)
    return data


def make_image(root, length=64):
    rng = np.random.RandomState(1)
    for sub in ("input", "label"):
        os.makedirs(os.path.join(root, sub))
    for split, count in (("train", 24), ("valid", SPLIT)):
        np.save(os.path.join(root, "input", f"{split}.npy"), rng.randint(0, 256, (count, length)).astype(np.uint8))
        np.save(os.path.join(root, "label", f"{split}.npy"), rng.randint(0, 10, count).astype(np.int64))
    return str(root)


def make_speech(root, clip=256):
    from seqboat_fairseq.tasks.speech_commands import FORMAT, META

    rng = np.random.RandomState(2)
    for sub in ("input", "label"):
        os.makedirs(os.path.join(root, sub))
    for split, count in (("train", 24), ("valid", SPLIT)):
        np.save(os.path.join(root, "input", f"{split}.npy"), rng.randint(-3000, 3000, (count, clip)).astype(np.int16))
        np.save(os.path.join(root, "label", f"{split}.npy"), rng.randint(0, 10, count).astype(np.int64))
    with open(os.path.join(root, META), "w") as f:
        json.dump({"format": FORMAT, "classes": [f"w{i}" for i in range(10)], "clip_samples": clip,
                   "sample_scale": 32768.0, "train_mean": 0.0, "train_std": 0.05}, f)
    return str(root)


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    """``{name: (data, task, arch, classes)}`` for each classification task."""
    root = tmp_path_factory.mktemp("classify")
    return {"listops": (make_text(root / "listops"), "lra-text", "seqboat_lra_listop", 10),
            "retrieval": (make_text(root / "aan", classes=2, two=True), "lra-text", "seqboat_lra_aan", 2),
            "image": (make_image(root / "image"), "lra-image", "seqboat_lra_cifar10", 10),
            "speech": (make_speech(root / "speech"), "speech_commands", "seqboat_sc_raw", 10)}


# --------------------------------------------------------------------------- 1. the loss is per example


def cli_config(data, task, arch, sentence_avg):
    _, task_obj, cfg = build_from_cli(data, task, "--arch", arch, *flags(TINY), "--criterion", "lra_cross_entropy",
                                      *(["--sentence-avg"] if sentence_avg else []))
    return task_obj, cfg


def hydra_config(data, task, arch, sentence_avg):
    """What fairseq-hydra-train composes (its ``sentence_avg`` defaults to false): add_defaults, resolve."""
    from fairseq import tasks
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.dataclass.initialize import add_defaults
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(FairseqConfig())
    OmegaConf.set_struct(cfg, False)
    cfg.task, cfg.model = {"_name": task, "data": data}, {"_name": arch, **TINY}
    cfg.criterion = {"_name": "lra_cross_entropy"}
    if sentence_avg:
        cfg.optimization.sentence_avg = True
    cfg.common.user_dir = PLUGIN_DIR
    add_defaults(cfg)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return tasks.setup_task(cfg.task), cfg


def first_logged_loss(task, cfg):
    """The loss fairseq logs for the first batch (8 examples): criterion, then reduce_metrics.
    Returns ``(loss in bits, input tokens per example)``."""
    from fairseq.logging import metrics

    torch.manual_seed(0)
    task.load_dataset("valid")
    model, criterion = task.build_model(cfg.model).eval(), task.build_criterion(cfg.criterion)
    itr = task.get_batch_iterator(task.dataset("valid"), max_sentences=8, disable_iterator_cache=True)
    sample = next(iter(itr.next_epoch_itr(shuffle=False)))
    with torch.no_grad():
        _, sample_size, log = criterion(model, sample)
    assert sample_size == sample["nsentences"] == 8
    with metrics.aggregate(new_root=True) as agg:
        type(criterion).reduce_metrics([log])
    return agg["loss"].avg, sample["ntokens"] / sample["nsentences"]


@pytest.mark.parametrize("frontend", ["cli", "hydra"])
@pytest.mark.parametrize("sentence_avg", [False, True], ids=["no-sentence-avg", "sentence-avg"])
@pytest.mark.parametrize("name", ["listops", "retrieval", "image", "speech"])
def test_first_loss_is_about_log2_classes(classification, name, sentence_avg, frontend):
    data, task_name, arch, classes = classification[name]
    task, cfg = (cli_config if frontend == "cli" else hydra_config)(data, task_name, arch, sentence_avg)
    assert cfg.criterion.sentence_avg is sentence_avg and cfg.optimization.sentence_avg is sentence_avg
    loss, tokens_per_example = first_logged_loss(task, cfg)
    assert tokens_per_example >= 10  # a loss per input token would be at least 10x too small
    assert abs(loss - math.log2(classes)) < 0.35 * math.log2(classes), (loss, math.log2(classes))


# --------------------------------------------------------------------------- 2. every example of every split


@pytest.mark.parametrize("count", [1, 7, 9, 56, 60, 61, 64, 100])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 32])
@pytest.mark.parametrize("multiple", [1, 8])
def test_batches_cover_every_index_once(count, batch_size, multiple):
    """fairseq's batches, in its order, with the last one kept: each index once, none dropped;
    at ``--required-batch-size-multiple 8`` fairseq itself drops some of these (shown here)."""
    from fairseq.data import data_utils
    from seqboat_fairseq.tasks import last_batch

    indices = np.random.RandomState(count).permutation(count)
    sizes = np.random.RandomState(batch_size).randint(1, 20, count)
    for max_tokens in (None, 60):
        kwargs = dict(num_tokens_vec=sizes[indices], max_tokens=max_tokens, max_sentences=batch_size,
                      required_batch_size_multiple=multiple)
        ours = data_utils.batch_by_size(indices, lambda i: sizes[i], **kwargs)
        assert data_utils.batch_by_size is last_batch.batch_by_size
        theirs = last_batch._fairseq_batch_by_size(indices, lambda i: sizes[i], **kwargs)
        assert np.concatenate(ours).tolist() == indices.tolist()
        assert [b.tolist() for b in ours[:len(theirs)]] == [list(b) for b in theirs]
        assert all(len(b) <= batch_size and (max_tokens is None or len(b) == 1 or sizes[b].max() * len(b) <= 60)
                   for b in ours)
    if multiple == 8 and batch_size == 32 and count in (60, 61):
        assert sum(map(len, theirs)) < count  # what fairseq alone scores


def _metric(line, name):
    match = re.search(rf"(?:\| |, | ){name}[ =]([\d.]+)", line)  # "| loss 3.3 |" or "loss=3.3, "
    assert match, f"no {name} in: {line}"
    return float(match.group(1))


def _validate(data, *args):
    out = run_module("fairseq_cli.validate", data, "--user-dir", PLUGIN_DIR, *args, "--cpu", "--num-workers", "0",
                     "--log-format", "simple")
    lines = re.findall(r"valid on '\w+' subset \|.*", out.stdout + out.stderr)
    assert len(lines) == 1, (out.stdout + out.stderr)[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.e2e
def test_classification_entry_points_score_every_example(classification, tmp_path):
    """fairseq-train (no --sentence-avg, fairseq's default --required-batch-size-multiple 8) validates
    all 61 examples; fairseq-validate scores all 61 at --batch-size 1, 3 and 32, with one loss and
    accuracy; the analysis tool analyses all 61."""
    data, _, _, classes = classification["listops"]
    save = tmp_path / "ckpt"
    out = run_module("fairseq_cli.train", data, "--user-dir", PLUGIN_DIR, "--task", "lra-text", "--arch",
                     "seqboat_lra_listop", *flags(TINY), "--criterion", "lra_cross_entropy", "--optimizer", "adam",
                     "--lr", "1e-3", "--batch-size", "32", "--max-update", "2", "--save-dir", save, "--cpu",
                     "--num-workers", "0", "--log-format", "simple", "--log-interval", "1", "--no-epoch-checkpoints")
    log = out.stdout + out.stderr
    first = re.search(r"\| INFO \| train_inner \|.*", log) or re.search(r"\| INFO \| train \|.*", log)
    assert first and abs(_metric(first.group(0), "loss") - math.log2(classes)) < 0.35 * math.log2(classes), log[-3000:]
    valid = re.findall(r"valid on 'valid' subset \|.*", log)
    assert len(valid) == 2 and all(_metric(line, "examples") == SPLIT for line in valid), log[-3000:]

    checkpoint = save / "checkpoint_last.pt"
    scored = {}
    for batch_size in (1, 3, 32):
        line = _validate(data, "--task", "lra-text", "--path", checkpoint, "--valid-subset", "test",
                         "--batch-size", str(batch_size))
        scored[batch_size] = tuple(_metric(line, name) for name in ("examples", "loss", "accuracy"))
    assert scored[1][0] == SPLIT and len(set(scored.values())) == 1, scored

    out_dir = tmp_path / "analysis"
    run_module("seqboat_fairseq.analysis.activation", "--path", checkpoint, "--data", data, "--split", "test",
               "--out-dir", out_dir, "--batch-size", "32", "--cpu")
    with open(out_dir / "activation_time.json") as f:
        summary = json.load(f)
    assert summary["n_samples"] == SPLIT, summary


@pytest.mark.slow
@pytest.mark.e2e
def test_lm_entry_points_score_every_token(pydoc_data_bin, tmp_path):
    """The LM's validation split in blocks whose number is not a multiple of 8 (nor of 3):
    fairseq-validate scores every token at --batch-size 1, 3 and 32 with one loss; fairseq-eval-lm
    evaluates every token; validation during training scores every token."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(os.path.join(pydoc_data_bin, "dict.txt"))
    split = data_utils.load_indexed_dataset(os.path.join(pydoc_data_bin, "valid"), dictionary)
    tokens = int(np.array(split.sizes).sum())  # copied while the memory map is open
    del split
    block = next(b for b in (64, 48, 40, 56, 72, 80) if -(-tokens // b) % 8 and -(-tokens // b) % 3)
    checkpoint = train_tiny_lm(pydoc_data_bin, tmp_path / "lm", "--tokens-per-sample", str(block))

    scored = {}
    for batch_size in (1, 3, 32):
        line = _validate(pydoc_data_bin, "--task", "language_modeling", "--path", checkpoint,
                         "--criterion", "seqboat_cross_entropy", "--tokens-per-sample", str(block),
                         "--batch-size", str(batch_size))
        scored[batch_size] = (_metric(line, "tokens"), _metric(line, "loss"))
    assert scored[1][0] == tokens and len(set(scored.values())) == 1, (tokens, scored)

    out = run_module("fairseq_cli.eval_lm", pydoc_data_bin, "--user-dir", PLUGIN_DIR, "--path", checkpoint,
                     "--gen-subset", "valid", "--tokens-per-sample", str(block), "--batch-size", "3", "--cpu",
                     "--num-workers", "0")
    evaluated = re.search(r"Evaluated ([\d,]+) tokens", out.stdout + out.stderr)
    assert evaluated and int(evaluated.group(1).replace(",", "")) == tokens, (out.stdout + out.stderr)[-2000:]

    out = run_module("fairseq_cli.train", pydoc_data_bin, "--user-dir", PLUGIN_DIR, "--task", "language_modeling",
                     "--arch", "seqboat_lm_tiny", "--criterion", "seqboat_cross_entropy", "--tokens-per-sample",
                     str(block), "--batch-size", "3", "--optimizer", "adam", "--lr", "3e-3", "--max-update", "1",
                     "--save-dir", tmp_path / "lm2", "--no-save", "--cpu", "--num-workers", "0",
                     "--log-format", "simple", "--validate-interval-updates", "1")
    valid = re.findall(r"valid on 'valid' subset \|.*", out.stdout + out.stderr)
    assert valid and all(_metric(line, "tokens") == tokens for line in valid), (out.stdout + out.stderr)[-3000:]
