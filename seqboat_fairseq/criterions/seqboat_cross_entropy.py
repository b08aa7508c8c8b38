"""``--criterion seqboat_cross_entropy``: fairseq's ``cross_entropy`` plus the per-layer
activation rates of SeqBoat models (``act_rate``, ``act_rate_l{i}``) and ``tokens``, the number
of target tokens scored (a sum over batches and workers: a validation pass prints the number of
tokens of the split it scored).

The loss, its reduction and every logged value of ``cross_entropy`` are unchanged; the
activation counts travel in ``logging_output`` and are summed over workers and accumulation
steps before they become rates (``models/activation_stats.py``).
"""

from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig
from fairseq.logging import metrics

from ..models.activation_stats import activation_counts, log_activation_rates


@register_criterion("seqboat_cross_entropy", dataclass=CrossEntropyCriterionConfig)
class SeqBoatCrossEntropyCriterion(CrossEntropyCriterion):
    def forward(self, model, sample, reduce: bool = True):
        # CrossEntropyCriterion.forward, keeping the model's output for the activation counts
        net_output = model(**sample["net_input"])
        loss, _ = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        extra = net_output[1]
        logging_output.update(activation_counts(extra.get("activations", []), extra.get("padding_mask")))
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        CrossEntropyCriterion.reduce_metrics(logging_outputs)
        metrics.log_scalar_sum("tokens", sum(log.get("ntokens", 0) for log in logging_outputs), priority=900, round=0)
        log_activation_rates(logging_outputs)
