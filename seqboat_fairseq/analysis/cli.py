"""The command line ``python -m seqboat_fairseq.analysis.activation`` (usage and outputs: see
:mod:`seqboat_fairseq.analysis.activation`): parse, load, measure, summarise, write, print."""

import argparse
import logging
import os
import sys
from typing import Dict, Optional, Sequence

import torch

from .load import AnalysisError, load_seqboat_checkpoint, load_split

logger = logging.getLogger("seqboat_fairseq.analysis.activation")

DEFAULT_HEATMAPS = 4


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


def check_out_dir(out_dir: str) -> None:
    """Refuses, before anything runs, an ``--out-dir`` that cannot be created or written (a file
    in the way, a read-only file system, no permission). Writes nothing that stays: a temporary
    file in the directory, or in its nearest existing parent when it does not exist yet."""
    import tempfile

    target = os.path.abspath(out_dir)
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise AnalysisError(f"--out-dir {out_dir}: {existing} is not a directory; expected a directory to write "
                            "the figures, JSON and CSV to")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        where = "" if existing == target else f" (its parent {existing})"
        raise AnalysisError(f"--out-dir {out_dir}{where}: cannot write there ({e.strerror or e}); expected a "
                            "directory this user can write the figures, JSON and CSV to") from None


def check_block_length(loaded, asked: Optional[int]) -> None:
    """Refuses LM blocks longer than a learned ``simple`` bias covers, before anything runs."""
    limit = getattr(getattr(loaded.model, "decoder", None), "position_limit", None)
    length = int(loaded.cfg.task.tokens_per_sample)
    if limit is not None and length > limit:
        flag = f"--tokens-per-sample {asked}" if asked is not None else \
            f"the checkpoint's --tokens-per-sample {length} (give a smaller --tokens-per-sample)"
        raise AnalysisError(f"{flag} exceeds this model's limit of {limit} positions: its learned relative-position "
                            f"bias (--rel-pos-bias simple) covers offsets up to --max-target-positions {limit} - 1; "
                            f"give --tokens-per-sample {limit} or less")


def run(args) -> Dict:
    """Runs the analysis; returns the JSON summary (also written to ``--out-dir``)."""
    from .measure import analyse
    from .output import COLUMNS_NAME, CSV_NAME, JSON_NAME, write_columns, write_csv, write_json
    from .plots import FIGURE_NAME, image_side, plot_activation_time, plot_confidence
    from .summary import format_table, summarise

    path, data = os.path.abspath(args.path), os.path.abspath(args.data)
    check_out_dir(args.out_dir)
    overrides = {}
    if args.tokens_per_sample is not None:
        overrides["tokens_per_sample"] = args.tokens_per_sample
    loaded = load_seqboat_checkpoint(path, data, overrides)
    if loaded.kind != "lm" and args.tokens_per_sample is not None:
        logger.warning("--tokens-per-sample only applies to language models; ignored")
    if loaded.kind == "lm":
        check_block_length(loaded, args.tokens_per_sample)
    dataset = load_split(loaded.task, args.split)
    if args.max_samples is not None and args.max_samples > len(dataset):
        raise AnalysisError(f"--max-samples {args.max_samples}: split {args.split!r} of {data} holds only "
                            f"{len(dataset):,} samples, and no rate is reported over fewer samples than asked for: "
                            f"give --max-samples {len(dataset)} or less, or leave it out to analyse them all")
    task_name = loaded.cfg.task._name
    is_image = loaded.kind == "lra" and loaded.cfg.task.get("input_type", "text") == "image"
    heatmaps = DEFAULT_HEATMAPS if args.heatmaps is None else args.heatmaps
    if heatmaps and not is_image:
        if args.heatmaps:
            logger.warning("confidence heat maps are only drawn for image tasks (lra-image); skipped")
        heatmaps = 0
    if heatmaps:
        length = int(dataset.size(0))  # the pixels of one image
        if image_side(length) is None:
            logger.warning(f"inputs of {length} pixels are not square images; no heat maps")
            heatmaps = 0
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    normalization = tuple(loaded.cfg.task.get("pixel_normalization", None) or (0.5, 0.5))
    result = analyse(loaded, dataset, args.max_samples, args.batch_size, device, heatmaps, normalization,
                     prefix=f"analysing {args.split}")

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
    write_columns(os.path.join(args.out_dir, COLUMNS_NAME), result)
    write_json(os.path.join(args.out_dir, JSON_NAME), summary)
    files += [CSV_NAME, COLUMNS_NAME, JSON_NAME]
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
    from ..quiet import is_refusal, refusal_line

    try:
        run(args)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # a refusal of the plugin's tasks or models: one line too
        if not is_refusal(e):
            raise
        print(refusal_line(e), file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """Console entry point: logging to stderr at ``$LOGLEVEL`` (default INFO), then :func:`main`."""
    import seqboat_fairseq  # noqa: F401  (importing fairseq sets the root logger to DEBUG: reset it)

    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=os.environ.get("LOGLEVEL", "INFO").upper(), stream=sys.stderr, force=True)
    sys.exit(main())
