r"""Bits per byte of the original text from a ``fairseq-eval-lm`` log.

``fairseq-eval-lm`` reports the loss per *token*: a subword model and a byte model of the same
text are not comparable that way. Both are, per byte of the original text:

    bits per byte = Loss (base 2) x N / B

* ``Loss (base 2)``: eval-lm's mean negative log2-probability per scored token;
* ``N``: the tokens eval-lm scored (its line ``Evaluated N tokens``): every piece of the split and
  one ``</s>`` per line, the code of the line break;
* ``B``: the bytes of the split's original UTF-8 text, line breaks included
  (``splits.json`` of the data-bin, written by ``data_prep/sentencepiece_lm.py``).

``Loss x N`` is the cost in bits of the whole split, so the ratio is what an arithmetic coder
driven by the model would need per byte (plus at most one ``</s>`` for a text that does not end
in a line break). For a byte-level data-bin (``data_prep/enwik8.py``: one token per byte, the
newline being ``</s>``) N is B (+1), so its ``Loss (base 2)`` already is bits per byte; pass
``--bytes B`` for such a data-bin, which has no ``splits.json``.

The result is printed only when it is right. Exit status 2 and one ``bits_per_byte: error:`` line,
no number, when

* N differs from the split's token count (``SPLIT.idx``): a sharded or partial evaluation
  (``--num-shards``), another data-bin or split, or a ``--post-process`` that merges tokens;
* the log holds no, or more than one, evaluation (``Evaluated``/``Loss (base 2)`` lines), names
  another subset than ``--split``, or eval-lm skipped tokens with infinite scores (its loss
  then averages over fewer tokens than N);
* the loss is not a finite number.

eval-lm prints the loss to 4 decimals: the bits per byte carry an error of at most
0.00005 x N / B (at most 0.00005 when tokens average a byte or more), and the bits per byte are
printed to the decimals that error leaves exact: 4, fewer only for tokens shorter than a byte.

    fairseq-eval-lm DATA --user-dir seqboat_fairseq --path CKPT --gen-subset test ... 2>&1 | tee eval.log
    python -m seqboat_fairseq.bits_per_byte --eval-log eval.log --data DATA --split test

(``examples/sentencepiece/eval_bpb.sh`` does both.)
"""

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Optional

PROG = "bits_per_byte"
STATS_FILE = "splits.json"
LOSS_DECIMALS = 4

_LOGGER = re.compile(r"fairseq_cli\.eval_lm(?: \| |:)(?P<message>.*)$")
_EVALUATED = re.compile(r"^Evaluated (?P<tokens>[\d,]+) tokens in ")
_LOSS = re.compile(r"^Loss \(base 2\): (?P<loss>\S+?),? Perplexity")
_SUBSET = re.compile(r"^(?P<data>.+) (?P<subset>\S+) (?P<examples>[\d,]+) examples$")
_INF_SKIP = "skipping tokens with inf scores"


class BitsPerByteError(Exception):
    """Why no bits-per-byte number can be given (one line)."""


@dataclass
class EvalLmResult:
    tokens: int  # ``Evaluated N tokens``
    loss: float  # ``Loss (base 2)``, bits per token
    subset: Optional[str] = None  # from ``DATA SUBSET N examples``, when logged
    data: Optional[str] = None


def parse_eval_log(text: str) -> EvalLmResult:
    """The one evaluation in ``text`` (fairseq-eval-lm's stdout and stderr)."""
    if _INF_SKIP in text:
        raise BitsPerByteError("eval-lm skipped tokens with infinite scores: its loss averages over fewer tokens "
                               "than it reports evaluating")
    evaluated, losses, subsets = [], [], []
    for line in text.splitlines():
        match = _LOGGER.search(line.rstrip())
        if not match:
            continue
        message = match.group("message").strip()
        if _EVALUATED.match(message):
            evaluated.append(int(_EVALUATED.match(message).group("tokens").replace(",", "")))
        elif _LOSS.match(message):
            losses.append(_LOSS.match(message).group("loss"))
        elif _SUBSET.match(message):
            subsets.append(_SUBSET.match(message))
    if not evaluated or not losses:
        missing = "'Evaluated N tokens'" if not evaluated else "'Loss (base 2)'"
        raise BitsPerByteError(f"no {missing} line of fairseq-eval-lm in the log (an unfinished or failed run, "
                               "or not an eval-lm log?)")
    if len(evaluated) > 1 or len(losses) > 1 or len(subsets) > 1:
        raise BitsPerByteError(f"the log holds {max(len(evaluated), len(losses), len(subsets))} evaluations; "
                               "give the log of one fairseq-eval-lm run")
    try:
        loss = float(losses[0])
    except ValueError:
        raise BitsPerByteError(f"eval-lm's loss {losses[0]!r} is not a number") from None
    if not math.isfinite(loss) or loss < 0:
        raise BitsPerByteError(f"eval-lm's loss is {losses[0]}: no finite bits per byte")
    subset = subsets[0] if subsets else None
    return EvalLmResult(tokens=evaluated[0], loss=loss, subset=subset and subset.group("subset"),
                        data=subset and subset.group("data"))


def split_token_count(data: str, split: str) -> int:
    """Tokens of ``data/split`` (the sum of the sizes in its ``.idx``)."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    path = os.path.join(data, split + ".idx")
    if not os.path.isfile(path):
        raise BitsPerByteError(f"{path}: no such file (is --data a data-bin with a '{split}' split?)")
    try:
        index = MMapIndexedDataset.Index(path)  # held while its sizes are read: closing it unmaps them
        total = int(index.sizes.sum(dtype="int64"))
        del index
        return total
    except Exception as exc:  # noqa: BLE001  (a foreign or corrupt index: one line)
        raise BitsPerByteError(f"{path}: cannot read fairseq's mmap index ({exc})") from None


def split_stats(data: str, split: str) -> Optional[dict]:
    """The ``splits.json`` entry of ``split`` (None without a splits.json)."""
    path = os.path.join(data, STATS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
        return content["splits"][split]
    except (OSError, ValueError, KeyError, TypeError):
        raise BitsPerByteError(f"{path}: no byte count of split '{split}' in it") from None


def bits_per_byte(loss_bits_per_token: float, tokens: int, num_bytes: int) -> float:
    """Loss (base 2) x N / B: the split's total bits over its bytes."""
    if num_bytes <= 0:
        raise BitsPerByteError(f"the split has {num_bytes} bytes")
    return loss_bits_per_token * tokens / num_bytes


@dataclass
class Report:
    split: str
    bits_per_byte: float
    loss: float
    tokens: int
    bytes: int
    notes: tuple = ()

    @property
    def max_rounding_error(self) -> float:
        return 0.5 * 10 ** -LOSS_DECIMALS * self.tokens / self.bytes

    @property
    def decimals(self) -> int:
        """Decimals the loss's rounding leaves exact (4, fewer when tokens are shorter than 1 byte)."""
        return max(0, min(LOSS_DECIMALS, math.floor(-math.log10(2 * self.max_rounding_error) + 1e-9)))

    def lines(self):
        yield f"bits per byte ({self.split}): {self.bits_per_byte:.{self.decimals}f}"
        yield (f"  = Loss (base 2) {self.loss:.{LOSS_DECIMALS}f} bits/token x {self.tokens:,} tokens / "
               f"{self.bytes:,} bytes ({self.bytes / self.tokens:.3f} bytes/token; eval-lm's 4-decimal loss: "
               f"+-{self.max_rounding_error:.1e})")
        for text in self.notes:
            yield f"  note: {text}"


def _same_dir(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def compute(log_text: str, data: str, split: str, num_bytes: Optional[int] = None) -> Report:
    """The checked bits per byte of ``split`` of data-bin ``data`` from an eval-lm log."""
    result = parse_eval_log(log_text)
    if result.subset is not None and result.subset != split:
        raise BitsPerByteError(f"the log evaluates subset '{result.subset}', not --split {split}")
    if result.data is not None and os.path.isdir(result.data) and not _same_dir(result.data, data):
        raise BitsPerByteError(f"the log evaluates data-bin {result.data}, not --data {data}")
    expected = split_token_count(data, split)
    stats = split_stats(data, split)
    if stats is not None and int(stats.get("tokens", expected)) != expected:
        raise BitsPerByteError(f"{os.path.join(data, STATS_FILE)} counts {stats['tokens']:,} tokens in '{split}' but "
                               f"{split}.idx holds {expected:,}: the data-bin was changed after its prep")
    if result.tokens != expected:
        raise BitsPerByteError(
            f"eval-lm evaluated {result.tokens:,} tokens but split '{split}' of {data} has {expected:,}: not a "
            "complete evaluation of this split (--num-shards, another data-bin or split, or --post-process); "
            "no bits per byte")
    if num_bytes is None:
        if stats is None:
            raise BitsPerByteError(f"{data} has no {STATS_FILE} (written by data_prep/sentencepiece_lm.py); pass "
                                   "--bytes B, the size in bytes of the split's original text")
        num_bytes = int(stats["bytes"])
    notes = []
    if stats is not None and stats.get("unk_tokens"):
        notes.append(f"{stats['unk_tokens']:,} <unk> tokens stand for characters the model cannot spell: "
                     "optimistic")
    if stats is not None and stats.get("lines_not_reproduced"):
        notes.append(f"the sentencepiece model changes {stats['lines_not_reproduced']:,} lines (normalisation): "
                     "the model was scored on the normalised text")
    value = bits_per_byte(result.loss, result.tokens, num_bytes)
    return Report(split, value, result.loss, result.tokens, num_bytes, tuple(notes))


def build_parser():
    parser = argparse.ArgumentParser(
        prog=f"python -m seqboat_fairseq.{PROG}",
        description="Bits per byte of the original text of a data-bin split, from a fairseq-eval-lm log: "
                    "Loss (base 2) x evaluated tokens / bytes of the split's text.")
    parser.add_argument("--eval-log", required=True, metavar="LOG",
                        help="fairseq-eval-lm's output (stdout and stderr) of one run, '-' for stdin")
    parser.add_argument("--data", required=True, metavar="DIR", help="the data-bin that was evaluated")
    parser.add_argument("--split", default="test", help="the evaluated split (eval-lm's --gen-subset; default test)")
    parser.add_argument("--bytes", type=int, default=None, metavar="B",
                        help="bytes of the split's original text (default: from DIR/splits.json)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.eval_log == "-":
            text = sys.stdin.read()
        else:
            try:
                with open(args.eval_log, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError as exc:
                raise BitsPerByteError(f"--eval-log {args.eval_log}: {exc.strerror or exc}") from None
        if not os.path.isdir(args.data):
            raise BitsPerByteError(f"--data {args.data}: not a directory")
        if args.bytes is not None and args.bytes <= 0:
            raise BitsPerByteError(f"--bytes must be positive, got {args.bytes}")
        report = compute(text, args.data, args.split, args.bytes)
    except BitsPerByteError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"split": report.split, "bits_per_byte": report.bits_per_byte, "loss_base2": report.loss,
                          "tokens": report.tokens, "bytes": report.bytes,
                          "max_rounding_error": report.max_rounding_error, "notes": list(report.notes)}))
    else:
        print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
