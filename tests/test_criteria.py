"""``--criterion lra_cross_entropy``: loss in bits against a hand computation, accuracy counts,
two-tower input, and the activation counts (``act_tokens``, ``act_count_l{i}``) that
``reduce_metrics`` turns into token-weighted rates (``act_rate_l{i}``, ``act_rate``)."""

import math
import types

import pytest
import torch
from torch import nn

from conftest import build_lra, strong_weights_, write_lra_dictionaries
from seqboat_fairseq.criterions.lra_cross_entropy import LRACrossEntropyCriterion
from seqboat_fairseq.modules.seqboat_layer import LayerActivation

NO_TASK = types.SimpleNamespace(target_dictionary=None)


class FixedOutput(nn.Module):
    """A stand-in model: returns the given logits and ``extra`` whatever its input, and records
    the keyword arguments it was called with."""

    def __init__(self, logits, extra=None):
        super().__init__()
        self.logits, self.extra, self.calls = logits, extra or {}, []

    def forward(self, **net_input):
        self.calls.append(net_input)
        return self.logits, self.extra


def nll_by_hand(logits, target):
    """-sum_b log softmax(logits[b])[target[b]] in Python floats (nats)."""
    total = 0.0
    for row, label in zip(logits.tolist(), target.tolist()):
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        total += log_z - row[label]
    return total


def sample_for(target, ntokens, **net_input):
    return {"id": torch.arange(len(target)), "nsentences": len(target), "ntokens": ntokens,
            "net_input": net_input or {"src_tokens": torch.zeros(len(target), 1, dtype=torch.long),
                                       "src_lengths": torch.ones(len(target), dtype=torch.long)},
            "target": target}


def reduced(logging_outputs):
    """reduce_metrics over several logging outputs (workers / accumulation steps), as fairseq
    calls it; returns ``{name: unrounded value}``."""
    from fairseq.logging import metrics

    with metrics.aggregate(new_root=True) as agg:
        LRACrossEntropyCriterion.reduce_metrics(logging_outputs)
    return {name: getattr(meter, "avg", getattr(meter, "sum", None)) for name, meter in agg.items()}


# logits with clear argmaxes: rows 0, 2 and 4 are predicted right, rows 1 and 3 wrong
LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.3, 1.7], [-0.5, 3.0, 0.0], [1.2, 0.2, -2.0], [0.0, 0.4, 2.5]])
TARGET = torch.tensor([0, 1, 1, 2, 2])


@pytest.mark.parametrize("sentence_avg", [True, False], ids=["sentence-avg", "no-sentence-avg"])
def test_loss_in_bits_and_accuracy_match_a_hand_computation(sentence_avg):
    """Per example with or without ``--sentence-avg``: the inputs' token counts (37, 80) never
    divide the loss (a classification loss, as fairseq's sentence_prediction)."""
    criterion = LRACrossEntropyCriterion(NO_TASK, sentence_avg=sentence_avg)
    halves = [(slice(0, 2), 37), (slice(2, 5), 80)]  # two workers: (rows, ntokens)
    outputs = []
    for rows, ntokens in halves:
        loss, sample_size, log = criterion(FixedOutput(LOGITS[rows]), sample_for(TARGET[rows], ntokens))
        nats = nll_by_hand(LOGITS[rows], TARGET[rows])
        assert loss.item() == pytest.approx(nats, abs=1e-5)  # summed NLL in nats: what is optimised
        assert log["loss"].item() == pytest.approx(nats, abs=1e-5)
        assert sample_size == log["sample_size"] == len(TARGET[rows])
        assert log["nsentences"] == len(TARGET[rows]) and log["ntokens"] == ntokens
        outputs.append(log)
    assert [int(log["ncorrect"]) for log in outputs] == [1, 2]

    stats = reduced(outputs)
    total_nats = nll_by_hand(LOGITS, TARGET)
    assert stats["loss"] == pytest.approx(total_nats / 5 / math.log(2), abs=1e-6)  # bits per example
    assert stats["examples"] == 5  # the number scored, summed over the workers
    assert stats["accuracy"] == pytest.approx(100.0 * 3 / 5)
    assert not any(name.startswith("act_") for name in stats), "no activations, no rates"


def test_labels_outside_the_classes_are_refused():
    criterion = LRACrossEntropyCriterion(NO_TASK, sentence_avg=True)
    with pytest.raises(ValueError, match="sentence-class-num"):
        criterion(FixedOutput(LOGITS), sample_for(torch.tensor([0, 1, 3, 0, 0]), 5))


def _activation(rows):
    active = torch.tensor(rows, dtype=torch.bool)
    return LayerActivation(active, active.float() * 0.8)


def test_activation_counts_are_token_weighted_over_outputs_and_documents():
    """Two logging outputs (workers) of a two-layer, two-tower model: the counts cover both
    documents and only real tokens; the rates are sum(count) / sum(tokens), not a mean of
    per-output rates."""
    criterion = LRACrossEntropyCriterion(NO_TASK, sentence_avg=True)
    # worker A: 2 sentences, document 0 of length 4 (row 1 has 2 pads), document 1 of length 3
    pad_a0 = torch.tensor([[False] * 4, [False, False, True, True]])
    doc_a0 = [_activation([[1, 1, 0, 0], [1, 0, 0, 0]]), _activation([[1, 1, 1, 1], [0, 1, 0, 0]])]
    doc_a1 = [_activation([[0, 0, 1], [1, 1, 1]]), _activation([[0, 0, 0], [0, 0, 0]])]
    extra_a = {"activations": [doc_a0, doc_a1], "padding_mask": [pad_a0, None]}
    # worker B: 1 sentence, both documents of length 10, no padding
    doc_b0 = [_activation([[1] * 10]), _activation([[1] * 5 + [0] * 5])]
    doc_b1 = [_activation([[1] * 10]), _activation([[0] * 10])]
    extra_b = {"activations": [doc_b0, doc_b1], "padding_mask": [None, None]}

    _, _, log_a = criterion(FixedOutput(LOGITS[:2], extra_a), sample_for(TARGET[:2], 13))
    _, _, log_b = criterion(FixedOutput(LOGITS[2:3], extra_b), sample_for(TARGET[2:3], 20))
    tokens_a, tokens_b = 6 + 6, 10 + 10
    assert int(log_a["act_tokens"]) == tokens_a and int(log_b["act_tokens"]) == tokens_b
    assert [int(log_a[f"act_count_l{i}"]) for i in (0, 1)] == [3 + 4, 5 + 0]
    assert [int(log_b[f"act_count_l{i}"]) for i in (0, 1)] == [20, 5]

    stats = reduced([log_a, log_b])
    rate_l0, rate_l1 = (7 + 20) / (12 + 20), (5 + 5) / (12 + 20)
    assert stats["act_rate_l0"] == pytest.approx(rate_l0)
    assert stats["act_rate_l1"] == pytest.approx(rate_l1)
    assert stats["act_rate"] == pytest.approx((rate_l0 + rate_l1) / 2)
    mean_of_rates = (7 / 12 + 20 / 20) / 2  # what averaging per-worker rates would log
    assert abs(mean_of_rates - rate_l0) > 0.04
    assert list(stats)[:2] == ["loss", "accuracy"], "the loss first in progress bars"


def test_two_tower_model_through_the_criterion(tmp_path):
    """A real two-tower (AAN) model: the criterion passes both documents, its loss is the
    model's NLL, and the counts cover both documents' real tokens."""
    data = write_lra_dictionaries(tmp_path / "aan", labels=("0", "1"), two_documents=True)
    model, task, cfg = build_lra(data, "lra-text", "--arch", "seqboat_lra_aan", "--encoder-layers", "2",
                                 "--encoder-embed-dim", "32", "--encoder-hidden-dim", "48", "--z-dim", "16",
                                 "--n-dim", "4", "--sentence-avg")
    for i, layer in enumerate(model.encoder.layers):
        strong_weights_(layer, seed=i)
    model.eval()
    pad = task.source_dictionary.pad()
    a, b = torch.randint(4, 15, (3, 20)), torch.randint(4, 15, (3, 14))
    a[1, 15:] = pad
    b[2, 9:] = pad
    lengths_a, lengths_b = a.ne(pad).sum(1), b.ne(pad).sum(1)
    target = torch.tensor([1, 0, 1])
    sample = sample_for(target, int(lengths_a.sum() + lengths_b.sum()), src_tokens=a, src_lengths=lengths_a,
                        src_tokens1=b, src_lengths1=lengths_b)
    criterion = task.build_criterion(cfg.criterion)
    assert isinstance(criterion, LRACrossEntropyCriterion) and criterion.sentence_avg
    loss, sample_size, log = criterion(model, sample)

    logits, extra = model(a, lengths_a, b, lengths_b)
    assert logits.shape == (3, 2)
    assert loss.item() == pytest.approx(nll_by_hand(logits, target), abs=1e-5)
    assert sample_size == 3 and int(log["ncorrect"]) == int((logits.argmax(-1) == target).sum())
    real_a, real_b = a.ne(pad), b.ne(pad)
    assert int(log["act_tokens"]) == int(real_a.sum() + real_b.sum())
    for i in range(2):
        active_a, active_b = extra["activations"][0][i].active, extra["activations"][1][i].active
        assert not (active_a & ~real_a).any() and not (active_b & ~real_b).any()
        assert int(log[f"act_count_l{i}"]) == int(active_a.sum() + active_b.sum())
        assert 0 < int(log[f"act_count_l{i}"]) < int(log["act_tokens"])
    stats = reduced([log])
    assert stats["loss"] == pytest.approx(loss.item() / 3 / math.log(2), abs=1e-6)
    for i in range(2):
        assert stats[f"act_rate_l{i}"] == pytest.approx(int(log[f"act_count_l{i}"]) / int(log["act_tokens"]))
