#!/usr/bin/env python
"""Build a fairseq data-bin for byte-level language modelling on enwik8.

The corpus is split exactly like transformer-xl / awd-lstm ``prep_enwik8.py``
(first 90,000,000 bytes train, next 5,000,000 valid, last 5,000,000 test).  Each
split is binarised straight into fairseq's indexed format (``{split}.bin/.idx``,
``dict.txt``) with numpy, in this process: the result is byte for byte what
``fairseq-preprocess --only-source`` makes of transformer-xl's byte-token text
(one token per byte, the byte's decimal value, tokens separated by single spaces,
a newline byte written as an actual line break), with the dictionary built by
fairseq's own ``Dictionary`` from the train split's counts.  ``--keep-text``
also writes that text to ``DIR/raw/``.  No child process is started.

Instead of enwik8, any UTF-8 text can be turned into an enwik8-style byte
corpus (``--text``), or the documentation text shipped with Python
(``--pydoc-demo``, about 0.5 MB) for a quick demo without downloads.

The output appears atomically: everything is built in a temporary directory
next to ``--destdir`` and renamed into place only once complete, so an
interrupted or failed run never leaves a data-bin that looks finished.
``--force`` replaces only a directory that a data prep of this project wrote
(see data_prep/common.py); a run killed even with SIGKILL leaves a temporary
directory that the next run next to it removes.

Usage examples::

    # the official archive (http://mattmahoney.net/dc/enwik8.zip) or its unzipped content
    python data_prep/enwik8.py --enwik8 enwik8.zip --destdir data-bin/enwik8

    # any UTF-8 text, 5% valid and 5% test bytes, keeping train.txt/valid.txt/test.txt
    python data_prep/enwik8.py --text a.txt b.txt --destdir data-bin/mytext --keep-text

    # small demo corpus from Python's own documentation, capped at 200 kB
    python data_prep/enwik8.py --pydoc-demo --max-bytes 200000 --destdir data-bin/pydoc

Errors are reported on stderr as one line starting with ``enwik8.py: error:``
and exit code 2.
"""

import argparse
import os
import sys
import zipfile
import zlib
from collections import Counter

import numpy as np

if __name__ == "__main__":  # run as a script: make the data_prep package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import PrepError, build_atomically, check_destdir  # noqa: E402
from data_prep.common import install_signal_handlers, read_input, run_reporting_errors  # noqa: E402

PROG = "enwik8.py"
ENWIK8_SIZE = 10**8
ENWIK8_MEMBER = "enwik8"
NUM_TEST_BYTES = 5_000_000
NEWLINE = ord("\n")
SPLITS = ("train", "valid", "test")
_CHUNK_BYTES = 1 << 22


# --------------------------------------------------------------------------- input


def _check_enwik8_size(name, size):
    """Raise PrepError unless ``size`` is exactly the size of enwik8."""
    if size != ENWIK8_SIZE:
        raise PrepError(
            f"{name}: expected exactly {ENWIK8_SIZE} bytes, got {size} "
            "(truncated download or not the enwik8 file?)"
        )


def _is_zip_path(path):
    """True if ``path`` should be read as a zip archive (by name or by its magic bytes)."""
    if path.lower().endswith(".zip"):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"PK"


def _read_enwik8_zip(path):
    """Return the verified content of member ``enwik8`` of the zip archive ``path``."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise PrepError(f"{path}: not a valid zip archive (truncated download?): {exc}") from None
    with archive:
        try:
            info = archive.getinfo(ENWIK8_MEMBER)
        except KeyError:
            members = ", ".join(repr(n) for n in archive.namelist()[:5]) or "none"
            raise PrepError(
                f"{path}: zip archive has no member {ENWIK8_MEMBER!r} (members: {members})"
            ) from None
        _check_enwik8_size(f"{path}:{ENWIK8_MEMBER}", info.file_size)
        try:
            data = archive.read(info)  # zipfile verifies the CRC-32 while reading
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise PrepError(
                f"{path}: member {ENWIK8_MEMBER!r} is corrupt ({exc}); download the archive again"
            ) from None
    _check_enwik8_size(f"{path}:{ENWIK8_MEMBER}", len(data))
    return data


def read_enwik8(path):
    """Return the 10**8 bytes of enwik8 from ``enwik8.zip`` or the unzipped ``enwik8`` file.

    Raises PrepError if the file is missing, is a broken zip archive, lacks the
    ``enwik8`` member, fails the CRC check, or is not exactly 10**8 bytes.
    """
    if not os.path.isfile(path):
        raise PrepError(f"{path}: no such file")
    try:
        if _is_zip_path(path):
            return _read_enwik8_zip(path)
        _check_enwik8_size(path, os.path.getsize(path))
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise PrepError(f"{path}: cannot read: {exc.strerror or exc}") from None
    _check_enwik8_size(path, len(data))
    return data


def read_text_corpus(paths):
    """Return the concatenated bytes of the UTF-8 text files ``paths`` (in the given order).

    Files are concatenated as they are, with no separator.  Raises PrepError for
    a missing, unreadable or empty file, or one that is not valid UTF-8 (naming
    the byte offset of the first invalid byte).
    """
    parts = []
    for path in paths:
        raw = read_input(path)
        if not raw:
            raise PrepError(f"{path}: file is empty")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PrepError(
                f"{path}: not valid UTF-8: invalid byte 0x{raw[exc.start]:02x} "
                f"at byte offset {exc.start} ({exc.reason})"
            ) from None
        parts.append(raw)
    return b"".join(parts)


def pydoc_demo_corpus():
    """Return Python's bundled documentation topics (``pydoc_data``) as a UTF-8 corpus.

    The values of ``pydoc_data.topics.topics`` are joined in sorted-key order
    with blank lines between them.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise PrepError("--pydoc-demo: this Python installation lacks the pydoc_data package") from None
    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


# --------------------------------------------------------------------------- splitting


def split_enwik8(data, num_test_bytes=NUM_TEST_BYTES):
    """Split like transformer-xl's prep_enwik8.py: returns ``(train, valid, test)``.

    ``test`` is the last ``num_test_bytes`` bytes, ``valid`` the ``num_test_bytes``
    bytes before it, and ``train`` everything before that.
    """
    if len(data) <= 2 * num_test_bytes:
        raise ValueError(f"need more than {2 * num_test_bytes} bytes to split, got {len(data)}")
    return (
        data[: -2 * num_test_bytes],
        data[-2 * num_test_bytes : -num_test_bytes],
        data[-num_test_bytes:],
    )


def split_by_fractions(data, valid_fraction, test_fraction):
    """Split ``data`` into contiguous ``(train, valid, test)``, in that order.

    The valid and test sizes are ``int(len(data) * fraction)``; train gets the rest.
    Raises PrepError if any split would be empty.
    """
    num_valid = int(len(data) * valid_fraction)
    num_test = int(len(data) * test_fraction)
    num_train = len(data) - num_valid - num_test
    if min(num_train, num_valid, num_test) == 0:
        raise PrepError(
            f"corpus of {len(data)} bytes is too small for --valid-fraction {valid_fraction} "
            f"and --test-fraction {test_fraction}: a split would be empty"
        )
    return (
        data[:num_train],
        data[num_train : num_train + num_valid],
        data[num_train + num_valid :],
    )


# --------------------------------------------------------------------------- text output


def _token_table():
    """Per byte value: its token bytes followed by a space, padded to 4, and a keep-mask."""
    table = np.full((256, 4), ord(" "), dtype=np.uint8)
    keep = np.zeros((256, 4), dtype=bool)
    for byte in range(256):
        token = b"\n" if byte == NEWLINE else str(byte).encode("ascii")
        table[byte, : len(token)] = np.frombuffer(token, dtype=np.uint8)
        keep[byte, : len(token) + 1] = True
    return table, keep


_TOKEN_TABLE, _TOKEN_KEEP = _token_table()


def write_byte_tokens(data, path):
    """Write ``data`` in transformer-xl's byte-token text format to ``path``.

    The file content equals
    ``' '.join(str(c) if c != ord('\\n') else '\\n' for c in data)``,
    computed chunk-wise with numpy lookups (about a second for enwik8's train split).
    """
    array = np.frombuffer(data, dtype=np.uint8)
    with open(path, "wb") as f:
        for start in range(0, len(array), _CHUNK_BYTES):
            chunk = array[start : start + _CHUNK_BYTES]
            text = _TOKEN_TABLE[chunk][_TOKEN_KEEP[chunk]]
            if start + _CHUNK_BYTES >= len(array):
                text = text[:-1]  # every token carries a trailing space; ' '.join has none at the end
            f.write(text.tobytes())


# --------------------------------------------------------------------------- binarisation


def byte_counts(data):
    """``np.bincount`` of the byte values of ``data`` (length 256), chunk-wise to keep memory small."""
    array = np.frombuffer(data, dtype=np.uint8)
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, len(array), _CHUNK_BYTES):
        counts += np.bincount(array[start : start + _CHUNK_BYTES], minlength=256)
    return counts


def byte_token_counts(data):
    """What fairseq's dictionary builder counts in the byte-token text of ``data``: ``Counter``
    of the byte tokens (``"0"`` .. ``"255"``, newline excluded) and of ``</s>``, once per line."""
    array = np.frombuffer(data, dtype=np.uint8)
    counts = byte_counts(data)
    counter = Counter({str(b): int(counts[b]) for b in np.flatnonzero(counts) if b != NEWLINE})
    lines = int(counts[NEWLINE]) + (1 if len(array) and array[-1] != NEWLINE else 0)
    if lines:
        counter["</s>"] = lines
    return counter


def _import_fairseq():
    """fairseq's ``Dictionary`` and ``indexed_dataset`` module; PrepError if fairseq is missing."""
    try:
        from fairseq.data import Dictionary, indexed_dataset
    except ImportError as exc:
        raise PrepError(f"binarising needs fairseq 0.12 (pip install fairseq==0.12.*): {exc}") from None
    return Dictionary, indexed_dataset


def build_dictionary(train):
    """The fairseq ``Dictionary`` that ``fairseq-preprocess --only-source`` builds from the train split.

    Same steps as ``Dictionary.add_file_to_dictionary`` + ``finalize`` with fairseq-preprocess's
    defaults (threshold 0, all words, padding factor 8).
    """
    Dictionary, _ = _import_fairseq()
    dictionary = Dictionary()
    for word, count in sorted(byte_token_counts(train).items()):
        dictionary.add_symbol(word, count)
    dictionary.finalize(threshold=0, nwords=-1, padding_factor=8)
    return dictionary


def write_indexed_bytes(data, dictionary, prefix, progress=None):
    """Write ``prefix.bin`` / ``prefix.idx``: ``data`` as fairseq's mmap indexed dataset.

    One sentence per line of the byte-token text (a newline byte ends a line), each followed by
    ``</s>``; bytes missing from ``dictionary`` become ``<unk>``, as in fairseq-preprocess.  The
    token ids are the newline-mapped-to-eos byte stream plus a final eos unless ``data`` ends
    with a newline.  The index is written with fairseq's own ``MMapIndexedDataset.Index.writer``.
    """
    _, indexed_dataset = _import_fairseq()
    dtype = indexed_dataset.best_fitting_int_dtype(len(dictionary))
    table = np.array([dictionary.index(str(b)) for b in range(256)], dtype=dtype)
    table[NEWLINE] = dictionary.eos()
    array = np.frombuffer(data, dtype=np.uint8)
    ends_open = len(array) > 0 and array[-1] != NEWLINE
    with open(prefix + ".bin", "wb") as f:
        for start in range(0, len(array), _CHUNK_BYTES):
            chunk = array[start : start + _CHUNK_BYTES]
            f.write(table[chunk].tobytes())
            if progress is not None:
                progress.update(len(chunk))
        if ends_open:
            f.write(np.array([dictionary.eos()], dtype=dtype).tobytes())
    ends = np.flatnonzero(array == NEWLINE)
    if ends_open:
        ends = np.append(ends, len(array))
    sizes = np.diff(ends, prepend=-1)  # each sentence: its tokens and </s>
    with indexed_dataset.MMapIndexedDataset.Index.writer(prefix + ".idx", dtype) as index:
        index.write(sizes)


def binarize_splits(splits, outdir):
    """Write ``dict.txt`` and ``{train,valid,test}.{bin,idx}`` of the byte splits into ``outdir``."""
    from tqdm import tqdm

    dictionary = build_dictionary(splits[0])
    dictionary.save(os.path.join(outdir, "dict.txt"))
    with tqdm(total=sum(len(part) for part in splits), unit="B", unit_scale=True, desc=f"{PROG} binarising",
              disable=None, leave=False) as progress:
        for name, part in zip(SPLITS, splits):
            write_indexed_bytes(part, dictionary, os.path.join(outdir, name), progress)


def unseen_byte_values(train, others):
    """Byte values (newline excluded) occurring in some of ``others`` but never in ``train``.

    fairseq builds the dictionary from train only, so these map to ``<unk>``.
    """
    seen = byte_counts(train) > 0
    used = np.zeros(256, dtype=bool)
    for part in others:
        used |= byte_counts(part) > 0
    used[NEWLINE] = False
    return np.flatnonzero(used & ~seen).tolist()


def _dictionary_sizes(destdir):
    """Return (byte symbols, total fairseq dictionary size) from ``destdir/dict.txt``."""
    with open(os.path.join(destdir, "dict.txt"), encoding="utf-8") as f:
        entries = [line.split(" ", 1)[0] for line in f if line.strip()]
    byte_symbols = sum(1 for entry in entries if not entry.startswith("madeupword"))
    return byte_symbols, len(entries) + 4  # + <s>, <pad>, </s>, <unk>


def build_data_bin(splits, destdir, keep_text, force, inputs=()):
    """Binarise ``splits`` (and write their byte-token text with ``keep_text``) and install ``destdir``.

    Everything is built in an owned temporary directory next to ``destdir`` that is removed on
    any failure (including KeyboardInterrupt); see data_prep/common.py for what ``force`` may
    replace.  ``inputs``: ``(flag, path)`` of the input files.
    """
    def build(tmpdir):
        if keep_text:
            raw_dir = os.path.join(tmpdir, "raw")
            os.mkdir(raw_dir)
            for name, part in zip(SPLITS, splits):
                write_byte_tokens(part, os.path.join(raw_dir, f"{name}.txt"))
        binarize_splits(splits, tmpdir)

    build_atomically(destdir, force, inputs, build, PROG)


# --------------------------------------------------------------------------- command line


def build_parser():
    """Return the argument parser of the command line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build a fairseq byte-level data-bin from enwik8 or from UTF-8 text.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--enwik8", metavar="PATH", help="enwik8.zip or the unzipped 10**8-byte enwik8 file")
    source.add_argument("--text", metavar="PATH", nargs="+", help="UTF-8 text file(s), concatenated in order")
    source.add_argument("--pydoc-demo", action="store_true", help="use the documentation text shipped with Python")
    parser.add_argument("--destdir", required=True, metavar="DIR", help="output data-bin directory")
    parser.add_argument("--valid-fraction", type=float, default=None, metavar="F",
                        help="fraction of --text/--pydoc-demo bytes for valid (default 0.05)")
    parser.add_argument("--test-fraction", type=float, default=None, metavar="F",
                        help="fraction of --text/--pydoc-demo bytes for test (default 0.05)")
    parser.add_argument("--max-bytes", type=int, default=None, metavar="N",
                        help="keep only the first N bytes of a --text/--pydoc-demo corpus before splitting")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="accepted for compatibility and ignored: binarisation runs in this process")
    parser.add_argument("--keep-text", action="store_true",
                        help="keep the byte-token train/valid/test.txt files in DIR/raw/")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR if it exists and a data prep of this project wrote it "
                             "(only once the new one is complete)")
    return parser


def _load_splits(args):
    """Read the selected corpus and return its ``(train, valid, test)`` byte splits."""
    if args.enwik8 is not None:
        for option in ("valid_fraction", "test_fraction", "max_bytes"):
            if getattr(args, option) is not None:
                flag = "--" + option.replace("_", "-")
                raise PrepError(f"{flag} only applies to --text/--pydoc-demo (enwik8 uses the standard split)")
        return split_enwik8(read_enwik8(args.enwik8))
    valid_fraction = 0.05 if args.valid_fraction is None else args.valid_fraction
    test_fraction = 0.05 if args.test_fraction is None else args.test_fraction
    if not (0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise PrepError("--valid-fraction and --test-fraction must be in (0, 1) and sum to less than 1")
    if args.max_bytes is not None and args.max_bytes <= 0:
        raise PrepError(f"--max-bytes must be positive, got {args.max_bytes}")
    data = pydoc_demo_corpus() if args.pydoc_demo else read_text_corpus(args.text)
    if args.max_bytes is not None:
        data = data[: args.max_bytes]
    return split_by_fractions(data, valid_fraction, test_fraction)


def _print_summary(splits, destdir, keep_text):
    """Print bytes per split, vocabulary size and the output location."""
    byte_symbols, dict_size = _dictionary_sizes(destdir)
    print(f"{PROG}: wrote {destdir}")
    for name, part in zip(SPLITS, splits):
        print(f"  {name + ':':7}{len(part):>13,} bytes")
    print(f"  vocabulary: {byte_symbols} byte symbols (fairseq dictionary size {dict_size} "
          "incl. 4 special and any padding symbols)")
    unseen = unseen_byte_values(splits[0], splits[1:])
    if unseen:
        print(f"  note: byte values {unseen} occur in valid/test but not in train; they map to <unk>")
    if keep_text:
        print(f"  byte-token text: {os.path.join(destdir, 'raw')}")


def main(argv=None):
    """Command line entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    destdir = os.path.abspath(args.destdir)

    def prepare():
        if args.workers < 1:
            raise PrepError(f"--workers must be at least 1, got {args.workers}")
        inputs = [("--enwik8", args.enwik8)] if args.enwik8 is not None else [("--text", p) for p in args.text or ()]
        check_destdir(destdir, args.force, inputs)
        splits = _load_splits(args)
        build_data_bin(splits, destdir, args.keep_text, args.force, inputs)
        return splits

    code, splits = run_reporting_errors(PROG, prepare)
    if code:
        return code
    _print_summary(splits, destdir, args.keep_text)
    return 0


if __name__ == "__main__":
    install_signal_handlers()
    sys.exit(main())
