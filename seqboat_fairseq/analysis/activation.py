"""Activation time and router confidence of a trained SeqBoat checkpoint (the paper's RQ2).

Usage::

    python -m seqboat_fairseq.analysis.activation --path CHECKPOINT --data DATA_DIR \\
        [--split valid] --out-dir OUT [--max-samples N] [--batch-size B] [--cpu] [--heatmaps K] \\
        [--tokens-per-sample T]

The model runs in eval mode (no dropout, BatchNorm running statistics, no gradients) over the
first ``N`` samples of ``--split`` in file order. For every sequence and layer it records the
*activation time*: the fraction of non-pad tokens the latent configurator (router) sends
through the gated attention unit. Outputs, in ``--out-dir``:

* ``activation_time.png``: mean activation time per layer (bars, percent) with error bars of
  one standard deviation over sequences (the paper's figure 3);
* ``confidence_<i>.png`` (image tasks, the first ``K`` samples; ``i`` is the sample's index in
  the split): the input image (de-normalised pixels) and, per layer, the router confidence
  reshaped to the image (``sqrt(L) x sqrt(L)``; max router probability for activated tokens,
  0 for skipped ones) (the paper's figure 4);
* ``activation_time.json``: per layer ``mean``/``std``/``min``/``max``/``n_samples`` of the
  per-sequence activation time (fractions in [0, 1]), ``token_mean`` (all activated tokens /
  all tokens, what training logs as ``act_rate_l{i}``) and ``confidence_mean`` (mean router
  confidence of the activated tokens); ``overall`` (the same for each sequence's mean over
  layers); the checkpoint, data, task, arch, split; accuracy for classifiers;
* ``activation_time.csv``: one row per sequence: ``sample`` (index in the split),
  [``document``], ``n_tokens``, [``label``, ``prediction``, ``correct`` (1/0)],
  ``layer_0`` .. ``layer_{N-1}`` (fractions), ``mean``.

A short table goes to stdout. Layers are numbered from 0, as in the training metrics.

Models and data:

* ``seqboat_lra`` classifiers (tasks ``lra-text`` and ``lra-image``). Retrieval (two
  documents per sample) treats each document as a sequence of its own: both go through the
  same encoder, so the per-layer statistics are over ``2 N`` documents; the CSV has two rows
  per sample (``document`` 0 and 1) and the JSON adds ``per_document`` statistics. With
  ``--sen-rep-type cls`` the prepended ``<CLS>`` token counts as a token.
* ``seqboat_lm`` language models (task ``language_modeling``): the sequences are the task's
  blocks of ``--tokens-per-sample`` tokens (default: the checkpoint's) in file order; figures
  (a) and the numbers only.

Errors (a missing checkpoint, a checkpoint that is not a SeqBoat model, a missing data
directory or split) exit with status 1 and a one-line message.
"""

import argparse
import csv
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

logger = logging.getLogger("seqboat_fairseq.analysis.activation")

JSON_NAME, CSV_NAME, FIGURE_NAME = "activation_time.json", "activation_time.csv", "activation_time.png"
DEFAULT_HEATMAPS = 4


class AnalysisError(RuntimeError):
    """A problem with the inputs (checkpoint, data, split): reported without a traceback."""


# --------------------------------------------------------------------------- loading
@dataclass
class LoadedModel:
    model: torch.nn.Module
    task: object
    cfg: object
    kind: str  # "lra" or "lm"
    arch: str


def seqboat_kind(arch: str) -> Optional[str]:
    """``"lra"`` / ``"lm"`` for SeqBoat architectures (or model names), else None."""
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    from ..models.seqboat_lm import SeqBoatLanguageModel
    from ..models.seqboat_lra import SeqBoatLRAModel

    cls = ARCH_MODEL_REGISTRY.get(arch) or MODEL_REGISTRY.get(arch)
    if isinstance(cls, type) and issubclass(cls, SeqBoatLRAModel):
        return "lra"
    if isinstance(cls, type) and issubclass(cls, SeqBoatLanguageModel):
        return "lm"
    return None


def _checkpoint_arch(state: Dict) -> Optional[str]:
    cfg = state.get("cfg")
    if cfg is not None and cfg.get("model") is not None:
        return cfg["model"].get("_name") or cfg["model"].get("arch")
    args = state.get("args")
    return getattr(args, "arch", None) if args is not None else None


def _is_fairseq_state(state) -> bool:
    return isinstance(state, dict) and "model" in state and (state.get("cfg") is not None or
                                                              state.get("args") is not None)


def _is_plain_torch_file(path: str) -> bool:
    """Whether ``path`` loads with ``torch.load`` but is not laid out like a fairseq checkpoint
    (called only after fairseq's loader failed, to tell the two errors apart)."""
    try:
        state = torch.load(path, map_location="cpu")
    except Exception:
        return False
    return not _is_fairseq_state(state)


def load_seqboat_checkpoint(path: str, data: str, overrides: Optional[Dict] = None) -> LoadedModel:
    """Loads a fairseq checkpoint of a SeqBoat model, with its task set up on ``data``."""
    import seqboat_fairseq  # noqa: F401  (registers the models and tasks)
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise AnalysisError(f"checkpoint not found: {path}")
    if not os.path.isdir(data):
        raise AnalysisError(f"data directory not found: {data}")
    arg_overrides = {"data": data, **(overrides or {})}
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides)
    except Exception as e:  # not a torch file, truncated, not fairseq's layout, unknown pickled objects
        if _is_plain_torch_file(path):
            raise AnalysisError(f"{path} is not a fairseq checkpoint (it needs 'model' and 'cfg' or 'args' "
                                f"entries)") from e
        raise AnalysisError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not _is_fairseq_state(state):
        raise AnalysisError(f"{path} is not a fairseq checkpoint (it needs 'model' and 'cfg' or 'args' entries)")
    arch = _checkpoint_arch(state)
    kind = seqboat_kind(arch) if arch else None
    if kind is None:
        raise AnalysisError(
            f"{path} is not a SeqBoat checkpoint: its architecture is {arch!r}; expected a seqboat_lra* / "
            f"slag_lra_* classifier or a seqboat_lm* / slag_lm* language model")
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides, state=state)
    except FileNotFoundError as e:
        raise AnalysisError(f"cannot set up the checkpoint's task on {data}: {e}") from e
    return LoadedModel(models[0], task, cfg, kind, arch)


def load_split(task, split: str):
    """Loads ``split`` into ``task`` and returns the dataset."""
    try:
        task.load_dataset(split)
    except FileNotFoundError as e:
        raise AnalysisError(f"split {split!r} not found: {e}") from e
    dataset = task.dataset(split)
    if len(dataset) == 0:
        raise AnalysisError(f"split {split!r} is empty")
    return dataset


# --------------------------------------------------------------------------- measuring
def sequence_activation_times(activations, padding_mask: Optional[torch.Tensor]):
    """``(rates (B, layers) float64, ntokens (B,) int64, active (layers, B, L) bool)`` for
    one document's per-layer :class:`LayerActivation` list; pads never count."""
    active = torch.stack([a.active for a in activations]).bool()  # (layers, B, L)
    if padding_mask is not None:
        active = active & ~padding_mask.unsqueeze(0)
        ntokens = (~padding_mask).sum(dim=-1)
    else:
        ntokens = torch.full(active.shape[1:2], active.size(-1), dtype=torch.long, device=active.device)
    rates = active.sum(dim=-1).double() / ntokens.clamp(min=1).double().unsqueeze(0)
    return rates.t(), ntokens, active


@dataclass
class SequenceRecord:
    sample: int
    document: Optional[int]
    n_tokens: int
    rates: List[float]
    label: Optional[int] = None
    prediction: Optional[int] = None


@dataclass
class HeatmapInput:
    sample: int
    pixels: np.ndarray  # (L,) de-normalised, 0..255
    confidence: np.ndarray  # (layers, L)
    rates: List[float]
    label: Optional[int]
    prediction: Optional[int]


@dataclass
class AnalysisResult:
    records: List[SequenceRecord] = field(default_factory=list)
    heatmaps: List[HeatmapInput] = field(default_factory=list)
    num_layers: int = 0
    documents: int = 1
    # pooled over sequences, per document then layer
    active_tokens: Optional[np.ndarray] = None
    total_tokens: Optional[np.ndarray] = None
    confidence_sum: Optional[np.ndarray] = None

    def accumulate(self, document: int, active: torch.Tensor, confidence: torch.Tensor, ntokens: torch.Tensor):
        layers = active.size(0)
        if self.active_tokens is None:
            self.num_layers = layers
            self.active_tokens = np.zeros((self.documents, layers))
            self.total_tokens = np.zeros(self.documents)
            self.confidence_sum = np.zeros((self.documents, layers))
        self.active_tokens[document] += active.flatten(1).sum(-1).double().cpu().numpy()
        self.total_tokens[document] += float(ntokens.sum())
        self.confidence_sum[document] += (confidence.double() * active).flatten(1).sum(-1).cpu().numpy()


def _to_device(sample, device):
    from fairseq import utils

    return utils.apply_to_sample(lambda t: t.to(device), sample)


def batches(dataset, count: int, batch_size: int):
    """Collated batches of samples ``0 .. count-1`` in file order."""
    for start in range(0, count, batch_size):
        yield dataset.collater([dataset[i] for i in range(start, min(start + batch_size, count))])


@torch.no_grad()
def analyse(loaded: LoadedModel, dataset, max_samples: Optional[int] = None, batch_size: int = 8,
            device: str = "cpu", heatmaps: int = 0, pixel_normalization=(0.5, 0.5)) -> AnalysisResult:
    """Runs the model over the first ``max_samples`` samples of ``dataset`` (file order)."""
    model = loaded.model.to(device).eval()
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    two_tower = loaded.kind == "lra" and getattr(model, "two_tower", False)
    result = AnalysisResult(documents=2 if two_tower else 1)
    for batch in batches(dataset, count, batch_size):
        batch = _to_device(batch, device)
        net_input = batch["net_input"]
        ids = batch["id"].tolist()
        if loaded.kind == "lm":
            _, extra = model(net_input["src_tokens"], features_only=True)
            docs = [extra["activations"]]
            pads = [net_input["src_tokens"].eq(model.decoder.padding_idx)]
            labels = predictions = [None] * len(ids)
        else:
            logits, extra = model(**net_input)
            docs, pads = extra["activations"], extra["padding_mask"]
            labels = batch["target"].tolist()
            predictions = logits.argmax(dim=-1).tolist()
        for document, (activations, padding_mask) in enumerate(zip(docs, pads)):
            rates, ntokens, active = sequence_activation_times(activations, padding_mask)
            confidence = torch.stack([a.confidence for a in activations]).float() * active
            result.accumulate(document, active, confidence, ntokens)
            for row, sample in enumerate(ids):
                result.records.append(SequenceRecord(
                    sample, document if two_tower else None, int(ntokens[row]), rates[row].tolist(),
                    labels[row], predictions[row]))
                if document == 0 and loaded.kind == "lra" and len(result.heatmaps) < heatmaps:
                    mean, std = pixel_normalization
                    pixels = (net_input["src_tokens"][row].double().cpu().numpy() * std + mean) * 255.0
                    result.heatmaps.append(HeatmapInput(
                        sample, np.clip(pixels, 0, 255), confidence[:, row].cpu().numpy(), rates[row].tolist(),
                        labels[row], predictions[row]))
    result.records.sort(key=lambda r: (r.sample, r.document or 0))
    return result


# --------------------------------------------------------------------------- summarising
def _stats(values: Sequence[float]) -> Dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), "n_samples": int(values.size)}


def _summary(records: List[SequenceRecord], active, total, conf_sum) -> Dict:
    """Per-layer and overall statistics; ``active``/``conf_sum`` (layers,), ``total`` scalar."""
    rates = np.array([r.rates for r in records])  # (sequences, layers)
    layers = []
    for i in range(rates.shape[1]):
        entry = {"layer": i, **_stats(rates[:, i]), "token_mean": float(active[i] / max(total, 1))}
        entry["confidence_mean"] = float(conf_sum[i] / active[i]) if active[i] > 0 else None
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
    summary.update(_summary(result.records, result.active_tokens.sum(0), result.total_tokens.sum(),
                            result.confidence_sum.sum(0)))
    if result.documents > 1:
        summary["per_document"] = {
            str(d): _summary([r for r in result.records if r.document == d], result.active_tokens[d],
                             result.total_tokens[d], result.confidence_sum[d])
            for d in range(result.documents)}
    labelled = [r for r in result.records if r.label is not None and (r.document or 0) == 0]
    if labelled:
        correct = sum(r.label == r.prediction for r in labelled)
        summary["accuracy"] = correct / len(labelled)
        summary["n_correct"] = correct
    return summary


# --------------------------------------------------------------------------- writing
def write_csv(path: str, result: AnalysisResult) -> None:
    two_docs = result.documents > 1
    classifier = any(r.label is not None for r in result.records)
    header = ["sample"] + (["document"] if two_docs else []) + ["n_tokens"]
    header += (["label", "prediction", "correct"] if classifier else [])
    header += [f"layer_{i}" for i in range(result.num_layers)] + ["mean"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in result.records:
            row = [r.sample] + ([r.document] if two_docs else []) + [r.n_tokens]
            if classifier:
                row += [r.label, r.prediction, int(r.label == r.prediction)]
            row += [f"{x:.6f}" for x in r.rates] + [f"{float(np.mean(r.rates)):.6f}"]
            writer.writerow(row)


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no display, no global state (Agg on save)

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_activation_time(path: str, summary: Dict, title: str) -> None:
    layers = summary["layers"]
    x = np.arange(len(layers))
    means = np.array([e["mean"] for e in layers]) * 100
    stds = np.array([e["std"] for e in layers]) * 100
    fig = _new_figure(max(6.0, 0.7 * len(layers) + 2.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x, means, yerr=stds, capsize=4, color="#4C72B0", edgecolor="black", linewidth=0.6,
           error_kw={"elinewidth": 1.0, "ecolor": "black"})
    for xi, m, s in zip(x, means, stds):
        ax.text(xi, min(m + s + 1.5, 103), f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    overall = summary["overall"]["mean"] * 100
    ax.axhline(overall, color="#C44E52", linestyle="--", linewidth=1, label=f"mean over layers {overall:.1f}%")
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) for i in x])
    ax.set_xlabel("layer")
    ax.set_ylabel("activation time (% of tokens)")
    ax.set_ylim(0, 110)
    ax.set_yticks(range(0, 101, 20))
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.savefig(path)


def image_side(length: int) -> Optional[int]:
    side = math.isqrt(length)
    return side if side * side == length else None


def plot_confidence(path: str, item: HeatmapInput, title: str) -> None:
    side = image_side(item.pixels.size)
    layers = item.confidence.shape[0]
    panels = layers + 1
    rows = math.ceil(panels / 5)
    cols = math.ceil(panels / rows)
    fig = _new_figure(2.6 * cols + 1.0, 2.6 * rows + 0.7)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    axes[0].imshow(item.pixels.reshape(side, side), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    image = None
    for i in range(layers):
        image = axes[i + 1].imshow(item.confidence[i].reshape(side, side), cmap="viridis", vmin=0.0, vmax=1.0,
                                   interpolation="nearest")
        axes[i + 1].set_title(f"layer {i} ({100 * item.rates[i]:.1f}% active)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    outcome = ""
    if item.label is not None:
        outcome = f" | label {item.label}, predicted {item.prediction}"
    fig.suptitle(f"{title}\nsample {item.sample}{outcome}: router confidence (0 = skipped)", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, label="router confidence")
    fig.savefig(path)


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


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m seqboat_fairseq.analysis.activation",
        description="Per-layer activation time and router confidence of a SeqBoat checkpoint (paper RQ2).")
    parser.add_argument("--path", required=True, help="fairseq checkpoint (seqboat_lra* or seqboat_lm*)")
    parser.add_argument("--data", required=True, help="data directory of the checkpoint's task")
    parser.add_argument("--split", default="valid", help="split to analyse (default: valid)")
    parser.add_argument("--out-dir", required=True, help="where the figures, JSON and CSV go")
    parser.add_argument("--max-samples", type=int, default=None,
                        help="analyse the first N samples of the split, in file order (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: 8)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is available")
    parser.add_argument("--heatmaps", type=int, default=None,
                        help=f"image tasks: confidence heat maps of the first K samples (default: "
                             f"{DEFAULT_HEATMAPS}; 0: none)")
    parser.add_argument("--tokens-per-sample", type=int, default=None,
                        help="language models: block length (default: the checkpoint's)")
    return parser


def run(args) -> Dict:
    """Runs the analysis; returns the JSON summary (also written to ``--out-dir``)."""
    path, data = os.path.abspath(args.path), os.path.abspath(args.data)
    overrides = {}
    if args.tokens_per_sample is not None:
        overrides["tokens_per_sample"] = args.tokens_per_sample
    loaded = load_seqboat_checkpoint(path, data, overrides)
    if loaded.kind != "lm" and args.tokens_per_sample is not None:
        logger.warning("--tokens-per-sample only applies to language models; ignored")
    dataset = load_split(loaded.task, args.split)
    task_name = loaded.cfg.task._name
    is_image = loaded.kind == "lra" and loaded.cfg.task.get("input_type", "text") == "image"
    heatmaps = DEFAULT_HEATMAPS if args.heatmaps is None else args.heatmaps
    if heatmaps and not is_image:
        if args.heatmaps:
            logger.warning("confidence heat maps are only drawn for image tasks (lra-image); skipped")
        heatmaps = 0
    if heatmaps:
        length = dataset[0]["source"].numel()
        if image_side(length) is None:
            logger.warning(f"inputs of {length} pixels are not square images; no heat maps")
            heatmaps = 0
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    normalization = tuple(loaded.cfg.task.get("pixel_normalization", None) or (0.5, 0.5))
    result = analyse(loaded, dataset, args.max_samples, args.batch_size, device, heatmaps, normalization)

    os.makedirs(args.out_dir, exist_ok=True)
    meta = {"checkpoint": path, "data": data, "split": args.split, "task": task_name, "arch": loaded.arch,
            "model": loaded.kind}
    if loaded.kind == "lm":
        meta["tokens_per_sample"] = int(loaded.cfg.task.tokens_per_sample)
    summary = summarise(result, meta)
    name = os.path.basename(data.rstrip(os.sep)) or data
    title = f"{name} | {task_name} | {loaded.arch} | split {args.split}"
    files = [FIGURE_NAME]
    plot_activation_time(os.path.join(args.out_dir, FIGURE_NAME), summary,
                         f"Activation time per layer (mean ± std over {summary['n_sequences']} sequences)\n{title}")
    for item in result.heatmaps:
        files.append(f"confidence_{item.sample}.png")
        plot_confidence(os.path.join(args.out_dir, files[-1]), item, title)
    summary["heatmaps"] = files[1:]
    write_csv(os.path.join(args.out_dir, CSV_NAME), result)
    with open(os.path.join(args.out_dir, JSON_NAME), "w") as f:
        json.dump(summary, f, indent=2)
    files += [CSV_NAME, JSON_NAME]
    print(format_table(summary))
    print(f"wrote {', '.join(os.path.join(args.out_dir, f) for f in files)}")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_samples is not None and args.max_samples <= 0:
        parser.error("--max-samples must be positive")
    if args.batch_size <= 0:
        parser.error("--batch-size must be positive")
    if args.heatmaps is not None and args.heatmaps < 0:
        parser.error("--heatmaps must be >= 0")
    try:
        run(args)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """Console entry point: logging to stderr at ``$LOGLEVEL`` (default INFO), then :func:`main`."""
    import seqboat_fairseq  # noqa: F401  (importing fairseq sets the root logger to DEBUG: reset it)

    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=os.environ.get("LOGLEVEL", "INFO").upper(), stream=sys.stderr, force=True)
    sys.exit(main())


if __name__ == "__main__":
    cli()
