"""Measuring: the model in eval mode over the first ``N`` samples of a split.

Batches come from the task's own batch iterator (``task.get_batch_iterator``: the dataset's
order, collater and batching, as in ``fairseq-validate``) behind fairseq's progress bar
(``fairseq.logging.progress_bar``: tqdm on a terminal, a log line every 100 batches otherwise).
Nothing is filtered by size: every sample is measured or the command fails, and
:func:`check_complete` refuses a result that does not hold each of the ``N`` samples exactly once
(per document), so no rate over fewer examples than asked is ever reported.

Rates are the model's own activation statistics
(:func:`seqboat_fairseq.models.activation_stats.activation_counts`, what training logs as
``act_rate_l{i}``), taken per sequence: ``act_count_l{i} / act_tokens`` of that sequence (pads
never count).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset

from ..models.activation_stats import activation_counts
from ..modules.seqboat_layer import LayerActivation
from .load import AnalysisError, LoadedModel

# fairseq's EpochBatchIterator always asks for pinned memory; torch warns about it on a CPU-only machine
PIN_MEMORY_WARNING = r"'pin_memory' argument is set as true but no accelerator is found"


@dataclass
class SequenceRecord:
    """One sequence (a sample, or one document of a two-document sample)."""

    sample: int
    document: Optional[int]
    n_tokens: int
    active: List[int]  # per layer: tokens routed through the GAU
    label: Optional[int] = None
    prediction: Optional[int] = None

    @property
    def rates(self) -> List[float]:
        """Per layer: the fraction of the sequence's ``n_tokens`` that activate the GAU."""
        return [count / max(self.n_tokens, 1) for count in self.active]


@dataclass
class HeatmapInput:
    sample: int
    pixels: np.ndarray  # (L,) de-normalised, 0..255
    confidence: np.ndarray  # (layers, L): router confidence of active tokens, 0 for skipped ones
    active: np.ndarray  # (layers, L) bool
    rates: List[float]
    label: Optional[int]
    prediction: Optional[int]


@dataclass
class AnalysisResult:
    records: List[SequenceRecord] = field(default_factory=list)
    heatmaps: List[HeatmapInput] = field(default_factory=list)
    num_layers: int = 0
    documents: int = 1
    requested: int = 0  # samples asked for (each of ``documents`` sequences)
    confidence_sum: Optional[np.ndarray] = None  # (documents, layers): over active tokens

    def add_confidence(self, document: int, sums: np.ndarray) -> None:
        if self.confidence_sum is None:
            self.num_layers = sums.shape[0]
            self.confidence_sum = np.zeros((self.documents, self.num_layers))
        self.confidence_sum[document] += sums


def sequence_counts(activations: Sequence[LayerActivation], padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``(B, 1 + layers)`` int64: per row of the batch, :func:`activation_counts` of that row alone
    (``act_tokens``, then ``act_count_l0`` ...). Stays on the model's device."""
    layers, rows = len(activations), activations[0].active.size(0)
    counts = []
    for row in range(rows):
        one = [LayerActivation(a.active[row:row + 1], a.confidence[row:row + 1]) for a in activations]
        c = activation_counts(one, None if padding_mask is None else padding_mask[row:row + 1])
        counts.append(torch.stack([c["act_tokens"]] + [c[f"act_count_l{i}"] for i in range(layers)]))
    return torch.stack(counts)


class FirstSamples(BaseWrapperDataset):
    """The first ``count`` samples of a fairseq dataset (file order), for the task's batch
    iterator: the dataset's own order (e.g. by length), sizes and collater."""

    def __init__(self, dataset, count: int):
        super().__init__(dataset)
        self.count = count

    def __len__(self):
        return self.count

    def ordered_indices(self):
        order = np.asarray(self.dataset.ordered_indices())
        return order[order < self.count]


def batch_iterator(task, dataset, count: int, batch_size: int, prefix: str = "analysis"):
    """The task's batch iterator over the first ``count`` samples behind fairseq's progress bar."""
    from fairseq.logging import progress_bar

    from ..quiet import ignore_warnings, quiet_loggers

    with quiet_loggers(["fairseq.tasks.fairseq_task"]), ignore_warnings(PIN_MEMORY_WARNING):
        epoch_itr = task.get_batch_iterator(
            dataset=FirstSamples(dataset, count), max_sentences=batch_size, max_positions=None,
            ignore_invalid_inputs=False, required_batch_size_multiple=1, num_workers=0,
            disable_iterator_cache=True)
        itr = epoch_itr.next_epoch_itr(shuffle=False)
    return progress_bar.progress_bar(itr, log_format=None, log_interval=100, prefix=prefix,
                                     default_log_format="tqdm")


def check_complete(result: AnalysisResult) -> None:
    """Raises :class:`AnalysisError` unless every one of the ``requested`` samples was measured
    exactly once per document."""
    for document in range(result.documents):
        seen = sorted(r.sample for r in result.records if (r.document or 0) == document)
        if seen != list(range(result.requested)):
            missing = sorted(set(range(result.requested)) - set(seen))
            raise AnalysisError(
                f"measured {len(seen)} sequences of document {document} but {result.requested} samples were asked "
                f"for (missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}; duplicates: "
                f"{len(seen) - len(set(seen))}); no rates are reported over fewer examples than asked")


def _to_device(sample, device):
    from fairseq import utils

    return utils.apply_to_sample(lambda t: t.to(device), sample)


@torch.no_grad()
def analyse(loaded: LoadedModel, dataset, max_samples: Optional[int] = None, batch_size: int = 8,
            device: str = "cpu", heatmaps: int = 0, pixel_normalization=(0.5, 0.5),
            prefix: str = "analysis") -> AnalysisResult:
    """Runs the model over the first ``max_samples`` samples of ``dataset`` (file order; all by
    default); heat-map inputs for samples ``0 .. heatmaps-1`` (image classifiers)."""
    model = loaded.model.to(device).eval()
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    two_tower = loaded.kind == "lra" and getattr(model, "two_tower", False)
    result = AnalysisResult(documents=2 if two_tower else 1, requested=count)
    progress = batch_iterator(loaded.task, dataset, count, batch_size, prefix)
    for batch in progress:
        batch = _to_device(batch, device)
        net_input = batch["net_input"]
        ids = batch["id"].tolist()
        if loaded.kind == "lm":
            _, extra = model(net_input["src_tokens"], features_only=True)
            docs, pads = [extra["activations"]], [extra["padding_mask"]]
            labels = predictions = [None] * len(ids)
        else:
            logits, extra = model(**net_input)
            docs, pads = extra["activations"], extra["padding_mask"]
            labels = batch["target"].tolist()
            predictions = logits.argmax(dim=-1).tolist()
        for document, (activations, padding_mask) in enumerate(zip(docs, pads)):
            counts = sequence_counts(activations, padding_mask).cpu()  # (B, 1 + layers)
            active = torch.stack([a.active for a in activations])  # (layers, B, L); pads are never active
            confidence = torch.stack([a.confidence for a in activations]).float() * active
            result.add_confidence(document, confidence.double().flatten(1).sum(-1).cpu().numpy())
            for row, sample in enumerate(ids):
                record = SequenceRecord(sample, document if two_tower else None, int(counts[row, 0]),
                                        counts[row, 1:].tolist(), labels[row], predictions[row])
                result.records.append(record)
                if document == 0 and loaded.kind == "lra" and sample < heatmaps:
                    mean, std = pixel_normalization
                    pixels = (net_input["src_tokens"][row].double().cpu().numpy() * std + mean) * 255.0
                    result.heatmaps.append(HeatmapInput(
                        sample, np.clip(pixels, 0, 255), confidence[:, row].cpu().numpy(),
                        active[:, row].cpu().numpy(), record.rates, labels[row], predictions[row]))
        progress.log({"sequences": len(result.records)})
    result.records.sort(key=lambda r: (r.sample, r.document or 0))
    result.heatmaps.sort(key=lambda h: h.sample)
    check_complete(result)
    return result
