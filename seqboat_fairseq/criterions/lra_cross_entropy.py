"""``--criterion lra_cross_entropy``: summed NLL over examples, accuracy.

A classification loss is per example whatever the flags: ``sample_size`` is the number of
examples, with or without ``--sentence-avg`` (accepted, no effect), as fairseq's
``sentence_prediction`` sets it. Dividing by input tokens instead (fairseq's
``cross_entropy`` without ``--sentence-avg``, and ``fairseq-hydra-train``'s default) would log
``loss 0`` for 16,000-sample speech clips, scale their gradient by 1/16,000, and make ListOps'
loss (about 3.3 bits at the start) depend on the input lengths.

Logs ``loss`` in bits per example, ``accuracy`` in percent (select checkpoints with
``--best-checkpoint-metric accuracy --maximize-best-checkpoint-metric``), ``examples``: the number
of examples scored (a sum over batches and workers: a validation pass prints the size of the
split), and the per-layer activation rates (``act_rate``, ``act_rate_l{i}``, over both documents
of two-tower models), as counts summed over workers.
"""

import math
from dataclasses import dataclass

import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from ..models.activation_stats import activation_counts, log_activation_rates


@dataclass
class LRACrossEntropyConfig(FairseqDataclass):
    sentence_avg: bool = II("optimization.sentence_avg")  # accepted; the loss is per example either way


@register_criterion("lra_cross_entropy", dataclass=LRACrossEntropyConfig)
class LRACrossEntropyCriterion(FairseqCriterion):
    def __init__(self, task, sentence_avg: bool):
        super().__init__(task)
        self.sentence_avg = sentence_avg

    def forward(self, model, sample, reduce: bool = True):
        logits, extra = model(**sample["net_input"])
        target = sample["target"].view(-1)
        lprobs = F.log_softmax(logits.float(), dim=-1)
        if target.numel() and (int(target.max()) >= lprobs.size(-1) or int(target.min()) < 0):
            raise ValueError(f"labels {target.min().item()}..{target.max().item()} are outside the model's "
                             f"{lprobs.size(-1)} classes (--sentence-class-num)")
        loss = F.nll_loss(lprobs, target, reduction="sum" if reduce else "none")
        ncorrect = (lprobs.argmax(dim=-1) == target).sum()
        sample_size = sample["nsentences"]  # per example whatever --sentence-avg says (see the module)
        logging_output = {
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
            "ncorrect": ncorrect.data,
        }
        logging_output.update(activation_counts(extra.get("activations", []), extra.get("padding_mask")))
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        ncorrect = sum(log.get("ncorrect", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss_sum / max(sample_size, 1) / math.log(2), sample_size, round=3)
        metrics.log_scalar_sum("examples", nsentences, priority=900, round=0)
        if nsentences > 0:
            metrics.log_scalar("accuracy", 100.0 * ncorrect / nsentences, nsentences, round=2)
        log_activation_rates(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
