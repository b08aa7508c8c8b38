"""Summarising: per-layer statistics of the per-sequence activation times (the JSON) and the
short table printed to stdout."""

from typing import Dict, List, Sequence

import numpy as np

from .measure import AnalysisResult, SequenceRecord


def _stats(values: Sequence[float]) -> Dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), "n_samples": int(values.size)}


def _summary(records: List[SequenceRecord], confidence_sum: np.ndarray) -> Dict:
    """Per-layer and overall statistics of ``records``; ``token_mean`` pools their counts (all
    active tokens / all tokens, what training logs as ``act_rate_l{i}``); ``confidence_sum``
    (layers,) is the summed router confidence of their active tokens."""
    rates = np.array([r.rates for r in records])  # (sequences, layers)
    active = np.array([r.active for r in records], dtype=np.float64).sum(0)  # (layers,)
    total = float(sum(r.n_tokens for r in records))
    layers = []
    for i in range(rates.shape[1]):
        entry = {"layer": i, **_stats(rates[:, i]), "token_mean": float(active[i] / max(total, 1))}
        entry["confidence_mean"] = float(confidence_sum[i] / active[i]) if active[i] > 0 else None
        layers.append(entry)
    overall = {**_stats(rates.mean(axis=1)), "token_mean": float(active.sum() / max(total * len(active), 1))}
    return {"layers": layers, "overall": overall}


def summarise(result: AnalysisResult, meta: Dict) -> Dict:
    summary = dict(meta)
    summary["unit"] = "fraction of non-pad tokens that activate the GAU (0..1)"
    summary["num_layers"] = result.num_layers
    summary["documents"] = result.documents
    summary["n_samples"] = len({r.sample for r in result.records})
    summary["n_sequences"] = len(result.records)
    summary.update(_summary(result.records, result.confidence_sum.sum(0)))
    if result.documents > 1:
        summary["per_document"] = {
            str(d): _summary([r for r in result.records if r.document == d], result.confidence_sum[d])
            for d in range(result.documents)}
    labelled = [r for r in result.records if r.label is not None and (r.document or 0) == 0]
    if labelled:
        correct = sum(r.label == r.prediction for r in labelled)
        summary["accuracy"] = correct / len(labelled)
        summary["n_correct"] = correct
    return summary


def format_table(summary: Dict) -> str:
    lines = [f"activation time (% of non-pad tokens running the GAU) | {summary['task']} / {summary['arch']} | "
             f"split {summary['split']} | {summary['n_samples']} samples, {summary['n_sequences']} sequences",
             f"{'layer':>5} {'mean':>7} {'std':>7} {'min':>7} {'max':>7} {'tokens':>7} {'conf':>6}"]
    for e in summary["layers"] + [dict(summary["overall"], layer="all", confidence_mean=None)]:
        conf = "" if e["confidence_mean"] is None else f"{e['confidence_mean']:.3f}"
        lines.append(f"{e['layer']:>5} {100 * e['mean']:7.2f} {100 * e['std']:7.2f} {100 * e['min']:7.2f} "
                     f"{100 * e['max']:7.2f} {100 * e['token_mean']:7.2f} {conf:>6}")
    if "accuracy" in summary:
        lines.append(f"accuracy {100 * summary['accuracy']:.2f}% ({summary['n_correct']}/{summary['n_samples']})")
    return "\n".join(lines)
