"""The datasets of ``--task lra-text`` / ``lra-image`` (fairseq's blocks, composed as its
``sentence_prediction`` task composes them): batch layout, padding side, ``<CLS>`` and truncation,
the per-epoch order, and ``ntokens`` of the two Retrieval documents (which the criterion logs as
``wpb``; its loss is per example either way)."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_lra_dictionaries
from seqboat_fairseq.criterions.lra_cross_entropy import LRACrossEntropyCriterion

DOCS = ["[MAX 2 9 ]", "[MIN 4 7 1 2 3 ]", "[SM 1 ]", "[MED 5 5 5 6 ]", "[MAX 0 ]"]
DOCS1 = ["[MIN 1 2 3 4 5 6 7 ]", "[SM 1 ]", "[MAX 3 4 5 ]", "[MED 5 ]", "[MIN 8 ( 9 ) ]"]
LABELS = ["0", "1", "1", "0", "1"]


def write_token_split(prefix, lines, dictionary):
    from fairseq.data import indexed_dataset

    builder = indexed_dataset.make_builder(f"{prefix}.bin", impl="mmap", vocab_size=len(dictionary))
    for line in lines:
        builder.add_item(dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).int())
    builder.finalize(f"{prefix}.idx")


@pytest.fixture
def text_data(tmp_path):
    """``{one: listops-like dir, two: retrieval-like dir}``, the splits ``train`` and ``valid`` (same rows)."""
    from fairseq.data import Dictionary

    dirs = {}
    for name, two in (("one", False), ("two", True)):
        data = write_lra_dictionaries(tmp_path / name, labels=("0", "1"), two_documents=two)
        src = Dictionary.load(os.path.join(data, "src-bin", "dict.txt"))
        labels = Dictionary.load(os.path.join(data, "label-bin", "dict.txt"))
        for split in ("train", "valid"):
            write_token_split(os.path.join(data, "src-bin", split), DOCS, src)
            if two:
                write_token_split(os.path.join(data, "src1-bin", split), DOCS1, src)
            write_token_split(os.path.join(data, "label-bin", split), LABELS, labels)
        dirs[name] = data
    return dirs


def text_task(data, **cfg):
    from seqboat_fairseq.tasks.lra import LRATextConfig, LRATextTask

    return LRATextTask.setup_task(LRATextConfig(data=str(data), seed=cfg.pop("seed", 1), **cfg))


def batches(task, split, epoch=1, **kwargs):
    kwargs.setdefault("max_sentences", 5)
    itr = task.get_batch_iterator(task.datasets[split], seed=1, epoch=epoch, required_batch_size_multiple=1,
                                  max_positions=task.max_positions(), disable_iterator_cache=True, **kwargs)
    return list(itr.next_epoch_itr(shuffle=False))


def encoded(task, line):
    return task.dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).long()


def test_text_batches_are_right_padded_int64_in_file_order(text_data):
    task = text_task(text_data["one"])
    task.load_dataset("valid")
    [batch] = batches(task, "valid")
    assert list(batch) == ["id", "nsentences", "ntokens", "net_input", "target"]
    assert list(batch["net_input"]) == ["src_tokens", "src_lengths"]
    tokens, lengths = batch["net_input"]["src_tokens"], batch["net_input"]["src_lengths"]
    assert tokens.dtype == lengths.dtype == batch["target"].dtype == batch["id"].dtype == torch.int64
    assert batch["id"].tolist() == [0, 1, 2, 3, 4] and batch["target"].tolist() == [0, 1, 1, 0, 1]
    pad = task.dictionary.pad()
    for row, line in enumerate(DOCS):
        want = encoded(task, line)
        assert lengths[row] == len(want)
        assert torch.equal(tokens[row, : len(want)], want) and tokens[row, len(want):].eq(pad).all()  # right pad
    assert batch["nsentences"] == 5 and batch["ntokens"] == int(lengths.sum())
    assert isinstance(batch["ntokens"], int) and isinstance(batch["nsentences"], int)


def test_cls_is_prepended_before_truncation(text_data):
    task = text_task(text_data["one"], sen_rep_type="cls", max_positions=4)
    task.load_dataset("valid")
    dataset = task.datasets["valid"]
    cls = task.dictionary.index("<CLS>")
    assert dataset.sizes[0].tolist() == [min(len(encoded(task, line)) + 1, 4) for line in DOCS]
    [batch] = batches(task, "valid")
    for row, line in enumerate(DOCS):
        want = torch.cat([torch.tensor([cls]), encoded(task, line)])[:4]
        assert torch.equal(batch["net_input"]["src_tokens"][row, : len(want)], want)
        assert batch["net_input"]["src_lengths"][row] == len(want)


def test_training_order_is_a_permutation_per_epoch_seeded_by_seed_plus_epoch(text_data):
    task = text_task(text_data["one"], seed=7)
    task.load_dataset("train")
    task.load_dataset("valid")
    for epoch in (1, 2):
        ids = [i for b in batches(task, "train", epoch=epoch, max_sentences=1) for i in b["id"].tolist()]
        assert ids == np.random.RandomState(7 + epoch).permutation(5).tolist()
        assert [b["id"].item() for b in batches(task, "valid", epoch=epoch, max_sentences=1)] == [0, 1, 2, 3, 4]
    # the sizes never change: fairseq-train builds the batches once and reshuffles them per epoch
    assert task.can_reuse_epoch_itr(task.datasets["train"]) and task.can_reuse_epoch_itr(task.datasets["valid"])
    no_shuffle = text_task(text_data["one"], seed=7, no_shuffle=True)
    no_shuffle.load_dataset("train")
    assert [b["id"].item() for b in batches(no_shuffle, "train", max_sentences=1)] == [0, 1, 2, 3, 4]


class FixedOutput(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, **net_input):
        return self.logits, {}


@pytest.mark.parametrize("sentence_avg", [True, False], ids=["sentence-avg", "no-sentence-avg"])
def test_retrieval_ntokens_counts_both_documents(text_data, sentence_avg):
    task = text_task(text_data["two"], max_positions=6)
    task.load_dataset("valid")
    dataset = task.datasets["valid"]
    lengths0 = [min(len(encoded(task, line)), 6) for line in DOCS]
    lengths1 = [min(len(encoded(task, line)), 6) for line in DOCS1]
    assert dataset.sizes[0].tolist() == np.maximum(lengths0, lengths1).tolist()  # --max-tokens: the longer one
    first, second = batches(task, "valid", max_sentences=3)
    assert list(first["net_input"]) == ["src_tokens", "src_lengths", "src_tokens1", "src_lengths1"]
    assert first["net_input"]["src_lengths"].tolist() == lengths0[:3]
    assert first["net_input"]["src_lengths1"].tolist() == lengths1[:3]
    assert first["ntokens"] == sum(lengths0[:3]) + sum(lengths1[:3])
    assert second["ntokens"] == sum(lengths0[3:]) + sum(lengths1[3:])
    for row, line in enumerate(DOCS1[:3]):
        want = encoded(task, line)[:6]
        tokens1 = first["net_input"]["src_tokens1"][row]
        assert torch.equal(tokens1[: len(want)], want) and tokens1[len(want):].eq(task.dictionary.pad()).all()

    criterion = LRACrossEntropyCriterion(task, sentence_avg=sentence_avg)
    _, sample_size, log = criterion(FixedOutput(torch.zeros(3, 2)), first)
    assert log["ntokens"] == sum(lengths0[:3]) + sum(lengths1[:3])  # what fairseq logs as wpb
    assert sample_size == log["sample_size"] == 3  # examples, never tokens


def test_image_batches_are_normalised_float32_rows_stacked(tmp_path):
    from seqboat_fairseq.tasks.lra import LRAImageConfig, LRAImageTask, MemmapArray

    pixels = np.random.RandomState(0).randint(0, 256, (5, 12)).astype(np.uint8)
    for sub in ("input", "label"):
        (tmp_path / sub).mkdir()
    np.save(tmp_path / "input" / "valid.npy", pixels)
    np.save(tmp_path / "label" / "valid.npy", np.array([1, 0, 2, 1, 0], dtype=np.int64))
    cfg = LRAImageConfig(data=str(tmp_path), max_positions=10, pixel_normalization=[0.25, 0.5], seed=1)
    task = LRAImageTask.setup_task(cfg)
    task.load_dataset("valid")
    samples = task.datasets["valid"].dataset.defn["net_input.src_tokens"]
    assert isinstance(samples.rows, MemmapArray) and isinstance(samples.rows.array, np.memmap)
    [batch] = batches(task, "valid")
    want = (pixels[:, :10].astype(np.float32) / np.float32(255) - np.float32(0.25)) / np.float32(0.5)
    assert torch.equal(batch["net_input"]["src_tokens"], torch.from_numpy(want))
    assert batch["net_input"]["src_lengths"].tolist() == [10] * 5 and batch["ntokens"] == 50
    assert batch["target"].tolist() == [1, 0, 2, 1, 0] and batch["target"].dtype == torch.int64
