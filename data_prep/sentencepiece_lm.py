#!/usr/bin/env python
"""Build a fairseq data-bin for subword language modelling with a sentencepiece model.

The corpus is UTF-8 text with one sentence (or paragraph) per line: every line becomes one
fairseq sentence, its pieces followed by ``</s>`` (which thus stands for the line break), byte
for byte what ``fairseq-preprocess --only-source --srcdict DIR/dict.txt`` makes of the
``spm_encode``-d text (except that a piece holding white space other than the space, e.g. a tab,
stays one token here, where fairseq's text format would split it).  A sentencepiece model is
trained on the train split (``--vocab-size``, ``--model-type unigram|bpe``), or an existing one
is used (``--spm-model X.model``).  The data-bin holds

    dict.txt                  fairseq's dictionary: every sentencepiece piece, in the model's
                              order (the model's <unk>, <s>, </s> and other control pieces
                              are fairseq's own specials), count = occurrences in train,
                              padded to a multiple of 8 like fairseq-preprocess
    {train,valid,test}.bin/.idx   fairseq's mmap indexed dataset (written with numpy and
                              fairseq's own index writer, in this process)
    spm.model                 the sentencepiece model, for ``--bpe sentencepiece
                              --sentencepiece-model DIR/spm.model``
    splits.json               per split: bytes of the original text, lines, tokens (with one
                              </s> per line), <unk> tokens, lines the model does not reproduce
                              exactly; what ``python -m seqboat_fairseq.bits_per_byte`` reads

Bits per byte need a lossless tokenizer: a trained model therefore normalises nothing
(``normalization_rule_name=identity``, runs of spaces kept) and falls back to UTF-8 bytes for
characters outside its vocabulary (``byte_fallback``; ``--no-byte-fallback`` maps them to
<unk>), so decode(encode(line)) == line for every line.  (sentencepiece's default NFKC
normalisation collapses runs of spaces: it changes 42% of the lines of Python's documentation
text, whose bits per byte would then be computed on text the model never had to produce.)
A model given with ``--spm-model`` is used as it is; the prep counts the lines it does not
reproduce and the <unk> tokens, and says so.

Inputs (UTF-8; a missing, empty or non-UTF-8 file is refused):

    --train-text T --valid-text V --test-text S    three files, one split each
    --text A [B ...]                               concatenated, then cut into train / valid /
                                                   test at line ends (--valid-fraction and
                                                   --test-fraction of the bytes, 5% each)
    --pydoc-demo                                   Python's own documentation text (~0.5 MB)

The output appears atomically and ``--force`` replaces only a data-bin a prep of this project
wrote (see data_prep/common.py).  Usage::

    python data_prep/sentencepiece_lm.py --train-text train.txt --valid-text valid.txt \\
        --test-text test.txt --vocab-size 8000 --destdir data-bin/mytext
    python data_prep/sentencepiece_lm.py --text corpus.txt --spm-model my.model --destdir data-bin/mytext
    python data_prep/sentencepiece_lm.py --pydoc-demo --vocab-size 1000 --destdir data-bin/pydoc-spm

Errors are reported on stderr as one line starting with ``sentencepiece_lm.py: error:`` and
exit code 2.
"""

import argparse
import io
import itertools
import json
import os
import re
import sys

import numpy as np

if __name__ == "__main__":  # run as a script: make the data_prep package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import PrepError, build_atomically, check_destdir  # noqa: E402
from data_prep.common import install_signal_handlers, read_input, run_reporting_errors, warn  # noqa: E402
from data_prep.enwik8 import pydoc_demo_corpus, read_text_corpus  # noqa: E402

PROG = "sentencepiece_lm.py"
SPLITS = ("train", "valid", "test")
MODEL_FILE = "spm.model"
STATS_FILE = "splits.json"
STATS_FORMAT = 1
MODEL_TYPES = ("unigram", "bpe")
DEFAULT_VOCAB_SIZE = 8000
DEFAULT_FRACTION = 0.05
MAX_SENTENCE_BYTES = 1 << 16  # longer lines are left out of the model's training (encoded all the same)
_BATCH_LINES = 4096
_FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


# --------------------------------------------------------------------------- input


def read_text_file(path):
    """The bytes of one UTF-8 text file; PrepError if missing, unreadable, empty or not UTF-8."""
    return read_text_corpus([path])


def trim_to_lines(data, max_bytes):
    """The first ``max_bytes`` bytes of ``data``, cut back to the last complete line."""
    if len(data) <= max_bytes:
        return data
    end = data.rfind(b"\n", 0, max_bytes)
    if end < 0:
        raise PrepError(f"--max-bytes {max_bytes} keeps no complete line (the first line is longer)")
    return data[: end + 1]


def _next_line_start(data, offset):
    """``offset`` if a line starts there, else the start of the next line (``len(data)`` if none)."""
    if offset <= 0 or data[offset - 1 : offset] == b"\n":
        return max(offset, 0)
    end = data.find(b"\n", offset)
    return len(data) if end < 0 else end + 1


def split_at_line_ends(data, valid_fraction, test_fraction):
    """Split ``data`` into contiguous ``(train, valid, test)``, in that order, at line ends.

    Nominal sizes as data_prep/enwik8.py's ``split_by_fractions`` (valid and test
    ``int(len * fraction)`` bytes, train the rest); each cut then moves forward to the next
    line start, so no line (or UTF-8 character) is split.  PrepError if a split would be empty.
    """
    num_valid = int(len(data) * valid_fraction)
    num_test = int(len(data) * test_fraction)
    first = _next_line_start(data, len(data) - num_valid - num_test)
    second = _next_line_start(data, max(first, len(data) - num_test))
    if not 0 < first < second < len(data) or num_valid == 0 or num_test == 0:
        lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        raise PrepError(
            f"corpus of {len(data)} bytes in {lines} line(s) is too small for --valid-fraction {valid_fraction} "
            f"and --test-fraction {test_fraction}: a split would be empty (splits are cut at line ends)")
    return data[:first], data[first:second], data[second:]


def split_lines(data):
    """The lines of ``data`` (bytes, without their ``\\n``), as fairseq reads a text file: a
    final line without ``\\n`` counts, an empty string after the last ``\\n`` does not."""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return lines


# --------------------------------------------------------------------------- sentencepiece


def _import_sentencepiece():
    try:
        import sentencepiece
    except ImportError as exc:
        raise PrepError(f"this prep needs the sentencepiece package (pip install sentencepiece): {exc}") from None
    return sentencepiece


def _spm_message(exc):
    """sentencepiece's error text without its ``INTERNAL: src/file.cc(123) [check]`` prefix."""
    text = str(exc).strip()
    text = re.sub(r"^[A-Z_]+: ", "", text)
    text = re.sub(r"^src/\S+\(\d+\) \[.*?\]\s*", "", text)
    return text or type(exc).__name__


def train_model(train_lines, vocab_size, model_type, character_coverage, byte_fallback,
                input_sentence_size, workers, seed):
    """Train a lossless sentencepiece model on ``train_lines`` (bytes) and return its bytes."""
    spm = _import_sentencepiece()
    if not any(line.strip() for line in train_lines):
        raise PrepError("the train text has no line with anything but white space; nothing to train on")
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(line.decode("utf-8") for line in train_lines if line),
            model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, byte_fallback=byte_fallback,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
            num_threads=workers, minloglevel=2)
    except RuntimeError as exc:
        message = _spm_message(exc)
        too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
        too_low = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", message)
        if too_high:
            raise PrepError(f"--vocab-size {vocab_size} is too large for this train text: sentencepiece finds at "
                            f"most {int(too_high.group(2)):,} pieces in it; pass --vocab-size "
                            f"{too_high.group(2)} or less, or a larger corpus") from None
        if too_low:
            extra = " (256 byte-fallback pieces, which --no-byte-fallback drops, 3 specials and every character)" \
                if byte_fallback else " (3 specials and every character kept by --character-coverage)"
            raise PrepError(f"--vocab-size {vocab_size} is too small for this train text: sentencepiece needs at "
                            f"least {too_low.group(2)} pieces{extra}") from None
        raise PrepError(f"training the sentencepiece model failed: {message}") from None
    return model.getvalue()


def read_model(path):
    """The bytes of an existing sentencepiece model (checked by loading it)."""
    data = read_input(path, f"--spm-model {path}")
    load_processor(data, f"--spm-model {path}")
    return data


def load_processor(model_bytes, what="the sentencepiece model"):
    spm = _import_sentencepiece()
    try:
        return spm.SentencePieceProcessor(model_proto=model_bytes)
    except (RuntimeError, OSError, TypeError) as exc:
        raise PrepError(f"{what}: not a sentencepiece model ({_spm_message(exc)})") from None


def _kept(sp, i):
    """Whether piece ``i`` gets its own dictionary symbol (the others never appear in encoded text
    or are fairseq's own specials): control pieces (<s>, </s>, <pad>), unused ones and <unk> do not."""
    return not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))


def build_dictionary(sp):
    """fairseq's ``Dictionary`` of the model's pieces and the lookup table sentencepiece id -> fairseq id.

    Every kept piece (see ``_kept``) in the model's order, then padding symbols up to a multiple
    of 8 as fairseq-preprocess does; the model's <unk> (and anything not kept) maps to fairseq's
    <unk>.  PrepError for a piece that fairseq's dict.txt cannot hold.
    """
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    table = np.full(sp.get_piece_size(), dictionary.unk(), dtype=np.int64)
    reserved = set(_FAIRSEQ_SPECIALS)
    for i in range(sp.get_piece_size()):
        if not _kept(sp, i):
            continue
        piece = sp.id_to_piece(i)
        if not piece or "\n" in piece or "\r" in piece:  # (a trained model spells "\r" in byte pieces)
            raise PrepError(f"sentencepiece piece {i} ({piece!r}) is empty or holds a line break: it cannot be "
                            "a line of fairseq's dict.txt")
        if piece in reserved or re.fullmatch(r"madeupword\d{4}", piece):
            raise PrepError(f"sentencepiece piece {i} ({piece!r}) is a symbol fairseq reserves; "
                            "train the model without it")
        table[i] = dictionary.add_symbol(piece, n=0)
    dictionary.pad_to_multiple_(8)
    return dictionary, table


# --------------------------------------------------------------------------- binarisation


def encode_split(sp, lines, table, eos, prefix, dtype, workers, progress=None):
    """Encode ``lines`` (bytes) and write ``prefix.bin`` / ``prefix.idx``; return the split's statistics.

    Each line becomes its pieces' fairseq ids followed by ``eos``.  Also counts, per sentencepiece
    id, the pieces (``counts``), the <unk> tokens and the lines that decode(encode(line)) does not
    give back exactly.
    """
    from fairseq.data import indexed_dataset

    counts = np.zeros(len(table), dtype=np.int64)
    sizes = np.empty(len(lines), dtype=np.int64)
    unk_id = sp.unk_id()
    not_reproduced = 0
    with open(prefix + ".bin", "wb") as f:
        for start in range(0, len(lines), _BATCH_LINES):
            raw = lines[start : start + _BATCH_LINES]
            text = [line.decode("utf-8") for line in raw]
            ids = sp.encode(text, out_type=int, num_threads=workers)
            decoded = sp.decode(ids, num_threads=workers)
            not_reproduced += sum(a != b for a, b in zip(decoded, text))
            lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
            sizes[start : start + len(ids)] = lengths
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()) - len(ids))
            counts += np.bincount(flat, minlength=len(table))
            out = np.full(int(lengths.sum()), eos, dtype=dtype)
            is_piece = np.ones(len(out), dtype=bool)
            is_piece[np.cumsum(lengths) - 1] = False
            out[is_piece] = table[flat]
            f.write(out.tobytes())
            if progress is not None:
                progress.update(sum(len(line) + 1 for line in raw))
    with indexed_dataset.MMapIndexedDataset.Index.writer(prefix + ".idx", dtype) as index:
        index.write(sizes)
    return {
        "lines": len(lines),
        "tokens": int(sizes.sum()),
        "unk_tokens": int(counts[unk_id]) if unk_id >= 0 else 0,
        "lines_not_reproduced": int(not_reproduced),
        "counts": counts,
    }


def build_data_bin(splits, model_bytes, destdir, force, inputs, workers, model_info):
    """Binarise the byte ``splits`` with the model ``model_bytes`` and install ``destdir``; return the stats."""
    from fairseq.data import Dictionary, indexed_dataset
    from tqdm import tqdm

    sp = load_processor(model_bytes)
    dictionary, table = build_dictionary(sp)
    dtype = indexed_dataset.best_fitting_int_dtype(len(dictionary))

    def build(tmpdir):
        stats = {}
        with tqdm(total=sum(len(part) for part in splits), unit="B", unit_scale=True,
                  desc=f"{PROG} encoding", disable=None, leave=False) as progress:
            for name, part in zip(SPLITS, splits):
                stats[name] = encode_split(sp, split_lines(part), table, dictionary.eos(),
                                           os.path.join(tmpdir, name), dtype, workers, progress)
                stats[name]["bytes"] = len(part)
        train_counts = np.zeros(len(dictionary), dtype=np.int64)
        np.add.at(train_counts, table, stats["train"].pop("counts"))
        for name in SPLITS[1:]:
            stats[name].pop("counts")
        for index in range(dictionary.nspecial, len(dictionary)):
            dictionary.count[index] = int(train_counts[index])
        dict_path = os.path.join(tmpdir, "dict.txt")
        dictionary.save(dict_path)
        if Dictionary.load(dict_path).symbols != dictionary.symbols:  # a piece fairseq would read back differently
            raise PrepError("the model's pieces do not survive fairseq's dict.txt format; nothing was installed")
        with open(os.path.join(tmpdir, MODEL_FILE), "wb") as f:
            f.write(model_bytes)
        content = {
            "format": STATS_FORMAT,
            "written_by": f"data_prep/{PROG}",
            "sentencepiece_model": MODEL_FILE,
            "model": dict(model_info, pieces=sp.get_piece_size()),
            "fairseq_dictionary_size": len(dictionary),
            "note": "bytes: size of the split's original UTF-8 text; tokens: what fairseq-eval-lm scores "
                    "(pieces and one </s> per line); bits per byte = Loss (base 2) x tokens / bytes",
            "splits": {name: {key: stats[name][key] for key in
                              ("bytes", "lines", "tokens", "unk_tokens", "lines_not_reproduced")}
                       for name in SPLITS},
        }
        with open(os.path.join(tmpdir, STATS_FILE), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=1)
            f.write("\n")
        return content

    return build_atomically(destdir, force, inputs, build, PROG)


# --------------------------------------------------------------------------- command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build a fairseq data-bin for subword language modelling with a sentencepiece model "
                    "(trained on the train split, or given).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--train-text", metavar="PATH", help="UTF-8 train text (with --valid-text and --test-text)")
    source.add_argument("--text", metavar="PATH", nargs="+",
                        help="UTF-8 text file(s), concatenated in order and cut into train/valid/test at line ends")
    source.add_argument("--pydoc-demo", action="store_true", help="use the documentation text shipped with Python")
    parser.add_argument("--valid-text", metavar="PATH", help="UTF-8 valid text (with --train-text)")
    parser.add_argument("--test-text", metavar="PATH", help="UTF-8 test text (with --train-text)")
    parser.add_argument("--destdir", required=True, metavar="DIR", help="output data-bin directory")
    parser.add_argument("--valid-fraction", type=float, default=None, metavar="F",
                        help=f"fraction of --text/--pydoc-demo bytes for valid (default {DEFAULT_FRACTION})")
    parser.add_argument("--test-fraction", type=float, default=None, metavar="F",
                        help=f"fraction of --text/--pydoc-demo bytes for test (default {DEFAULT_FRACTION})")
    parser.add_argument("--max-bytes", type=int, default=None, metavar="N",
                        help="keep only the complete lines in the first N bytes of a --text/--pydoc-demo corpus")
    model = parser.add_argument_group("sentencepiece model (trained on the train split unless --spm-model)")
    model.add_argument("--spm-model", metavar="PATH", help="use this existing sentencepiece .model instead of training")
    model.add_argument("--vocab-size", type=int, default=None, metavar="N",
                       help=f"pieces of the trained model, specials included (default {DEFAULT_VOCAB_SIZE})")
    model.add_argument("--model-type", choices=MODEL_TYPES, default=None, help="default unigram")
    model.add_argument("--character-coverage", type=float, default=None, metavar="F",
                       help="share of the train text's characters that get their own piece (default 1.0; "
                            "the rest are spelled in byte pieces, or <unk> with --no-byte-fallback)")
    model.add_argument("--no-byte-fallback", dest="byte_fallback", action="store_false", default=None,
                       help="map characters outside the vocabulary to <unk> instead of their UTF-8 bytes "
                            "(smaller minimum vocabulary, but <unk> makes bits per byte optimistic)")
    model.add_argument("--input-sentence-size", type=int, default=None, metavar="N",
                       help="train the model on at most N randomly chosen lines (default 10,000,000)")
    model.add_argument("--seed", type=int, default=1, help="sentencepiece's random seed (default 1)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads for training and encoding (default: the CPUs available, at most 16)")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR if it exists and a data prep of this project wrote it "
                             "(only once the new one is complete)")
    return parser


_TRAINING_OPTIONS = ("vocab_size", "model_type", "character_coverage", "byte_fallback", "input_sentence_size")


def _flag(option):
    return {"byte_fallback": "--no-byte-fallback"}.get(option, "--" + option.replace("_", "-"))


def check_args(args):
    """PrepError for options that contradict each other or are out of range."""
    if args.train_text is not None:
        if args.valid_text is None or args.test_text is None:
            raise PrepError("--train-text needs --valid-text and --test-text too "
                            "(to cut valid and test out of one corpus, use --text)")
        for option in ("valid_fraction", "test_fraction", "max_bytes"):
            if getattr(args, option) is not None:
                raise PrepError(f"{_flag(option)} only applies to --text/--pydoc-demo "
                                "(--train-text comes with its own --valid-text and --test-text)")
    elif args.valid_text is not None or args.test_text is not None:
        raise PrepError("--valid-text and --test-text go with --train-text "
                        "(--text/--pydoc-demo cut valid and test out of the corpus)")
    if args.spm_model is not None:
        for option in _TRAINING_OPTIONS:
            if getattr(args, option) is not None:
                raise PrepError(f"{_flag(option)} only applies when training a model (not with --spm-model)")
    vf = DEFAULT_FRACTION if args.valid_fraction is None else args.valid_fraction
    tf = DEFAULT_FRACTION if args.test_fraction is None else args.test_fraction
    if not (0 < vf < 1 and 0 < tf < 1 and vf + tf < 1):
        raise PrepError("--valid-fraction and --test-fraction must be in (0, 1) and sum to less than 1")
    if args.max_bytes is not None and args.max_bytes <= 0:
        raise PrepError(f"--max-bytes must be positive, got {args.max_bytes}")
    if args.vocab_size is not None and args.vocab_size < 2:
        raise PrepError(f"--vocab-size must be at least 2, got {args.vocab_size}")
    if args.character_coverage is not None and not 0.98 <= args.character_coverage <= 1.0:
        raise PrepError(f"--character-coverage must be in [0.98, 1], got {args.character_coverage}")
    if args.input_sentence_size is not None and args.input_sentence_size < 1:
        raise PrepError(f"--input-sentence-size must be positive, got {args.input_sentence_size}")
    if args.workers is not None and args.workers < 1:
        raise PrepError(f"--workers must be at least 1, got {args.workers}")


def load_splits(args):
    """The ``(train, valid, test)`` bytes of the selected corpus."""
    if args.train_text is not None:
        return tuple(read_text_file(path) for path in (args.train_text, args.valid_text, args.test_text))
    data = pydoc_demo_corpus() if args.pydoc_demo else read_text_corpus(args.text)
    if args.max_bytes is not None:
        data = trim_to_lines(data, args.max_bytes)
    vf = DEFAULT_FRACTION if args.valid_fraction is None else args.valid_fraction
    tf = DEFAULT_FRACTION if args.test_fraction is None else args.test_fraction
    return split_at_line_ends(data, vf, tf)


def _inputs(args):
    paths = [("--train-text", args.train_text), ("--valid-text", args.valid_text), ("--test-text", args.test_text),
             ("--spm-model", args.spm_model)] + [("--text", p) for p in args.text or ()]
    return [(flag, os.path.abspath(path)) for flag, path in paths if path is not None]


def _workers(args):
    if args.workers is not None:
        return args.workers
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, min(16, available))


def prepare(args, destdir):
    """The whole prep; returns the content of splits.json."""
    check_args(args)
    inputs = _inputs(args)
    check_destdir(destdir, args.force, inputs)
    workers = _workers(args)
    if args.spm_model is not None:
        model_bytes = read_model(args.spm_model)
        splits = load_splits(args)
        info = {"source": os.path.abspath(args.spm_model)}
    else:
        splits = load_splits(args)
        options = {
            "vocab_size": DEFAULT_VOCAB_SIZE if args.vocab_size is None else args.vocab_size,
            "model_type": args.model_type or "unigram",
            "character_coverage": 1.0 if args.character_coverage is None else args.character_coverage,
            "byte_fallback": True if args.byte_fallback is None else args.byte_fallback,
            "input_sentence_size": 10_000_000 if args.input_sentence_size is None else args.input_sentence_size,
        }
        train_lines = split_lines(splits[0])
        print(f"{PROG}: training a {options['model_type']} sentencepiece model with {options['vocab_size']:,} "
              f"pieces on {len(train_lines):,} train lines ({len(splits[0]):,} bytes)", flush=True)
        model_bytes = train_model(train_lines, workers=workers, seed=args.seed, **options)
        info = dict(options, source="trained on the train split", normalization="identity", seed=args.seed)
    return build_data_bin(splits, model_bytes, destdir, args.force, inputs, workers, info)


def print_summary(content, destdir):
    stats = content["splits"]
    model = content["model"]
    print(f"{PROG}: wrote {destdir}")
    kind = f"{model['model_type']}, " if "model_type" in model else ""
    print(f"  model: {kind}{model['pieces']:,} pieces ({model['source']}) -> {os.path.join(destdir, MODEL_FILE)}")
    print(f"  fairseq dictionary size {content['fairseq_dictionary_size']:,} (4 specials and padding included)")
    for name in SPLITS:
        s = stats[name]
        print(f"  {name + ':':7}{s['bytes']:>13,} bytes {s['lines']:>10,} lines {s['tokens']:>12,} tokens "
              f"({s['bytes'] / s['tokens']:.2f} bytes/token)")
    for name in SPLITS:
        s = stats[name]
        if s["unk_tokens"]:
            warn(PROG, f"{name}: {s['unk_tokens']:,} <unk> tokens (characters the model cannot spell): "
                       "bits per byte will be optimistic")
        if s["lines_not_reproduced"]:
            warn(PROG, f"{name}: the model does not reproduce {s['lines_not_reproduced']:,} of "
                       f"{s['lines']:,} lines exactly (its normalisation changes them): bits per byte "
                       "will count the original bytes but score the normalised text")


def main(argv=None):
    """Command line entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    destdir = os.path.abspath(args.destdir)
    code, content = run_reporting_errors(PROG, lambda: prepare(args, destdir))
    if code:
        return code
    print_summary(content, destdir)
    return 0


if __name__ == "__main__":
    install_signal_handlers()
    sys.exit(main())
