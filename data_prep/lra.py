#!/usr/bin/env python
"""Build the Long Range Arena (LRA) data sets in the layout the plugin's LRA tasks load.

One sub-command per task, each reading the files as they are distributed:

* ``listops``    the LRA release's ``listops-1000/`` (``basic_{train,val,test}.tsv``, header
                 ``Source<TAB>Target``).  Tokens are the whitespace-separated tokens of Source
                 with the round brackets ``(`` and ``)`` deleted, as in the LRA/S4 ListOps
                 pipelines (``[MAX``, ``[MIN``, ``[MED``, ``[SM``, ``]`` and the digits remain),
                 truncated to ``--max-length`` (2000) tokens.  Labels 0-9.
* ``imdb``       the unpacked IMDB archive ``aclImdb/{train,test}/{neg,pos}/*.txt`` (``unsup/``
                 is ignored).  Byte level (see below), truncated to ``--max-length`` (4000)
                 bytes; neg = 0, pos = 1.  Order: neg then pos, each in sorted file-name order,
                 then shuffled with ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``
                 (``--seed``, 42), separately for train and test.  valid is a copy of test
                 (LRA and MEGA's imdb-4000 evaluate on test), unless ``--valid-from-train N``
                 moves the first N reviews of the shuffled train list to valid.
* ``aan``        the LRA release's ``tsv_data/new_aan_pairs.{train,eval,test}.tsv``: no header
                 (a first line whose label column reads ``label`` is skipped), 5 tab-separated
                 columns label (``1`` or ``1.0``), id1, id2, text1, text2.  The two texts are
                 taken byte for byte as they stand in the file (the release writes them as
                 Python ``b'...'`` literals; like LRA and S4 we do not decode those), each
                 truncated to ``--max-length`` (4000) bytes.  eval -> valid.
* ``cifar10``    CIFAR-10, python version (``cifar-10-batches-py/data_batch_1..5``,
                 ``test_batch``).  Grayscale exactly as Pillow's ``convert("L")``:
                 ``(R*19595 + G*38470 + B*7471 + 0x8000) >> 16``.  The 50,000 train images
                 (batches 1-5 in order) are split like S4/MEGA's
                 ``random_split(train, [45000, 5000], generator=torch.Generator().manual_seed(42))``:
                 ``perm = torch.randperm(50000, generator=...)``, train = ``perm[:45000]``,
                 valid = ``perm[45000:]`` (in general valid is a tenth of the images).
* ``pathfinder`` the release's ``pathfinder{32,128}/curv_contour_length_14/`` (``--resolution
                 128`` is Path-X).  Samples are read from ``metadata/<k>.npy`` (whitespace-
                 separated text despite the name) in numeric order of k, line by line: image
                 ``<difficulty>/<field 0>/<field 1>``, label = field 3.  Images are read with
                 Pillow ``convert("L")`` and must be R x R.  Split like S4's
                 ``random_split(range(n), [n - 2*(n//10), n//10, n//10], generator=manual_seed(42))``
                 into train, valid, test.

Byte-level text: every byte becomes a token, its decimal value ("72 101 ..."), one document per
line; a newline byte inside a document is kept as the token ``10`` (it never breaks the line).

Output layout (``--destdir DEST``):

* text tasks, binarised with ``fairseq-preprocess --only-source``: ``DEST/src-bin/dict.txt`` and
  ``DEST/src-bin/{train,valid,test}.{bin,idx}``; for AAN also ``DEST/src1-bin/`` (text2) with the
  SAME dictionary, which this script writes from the byte counts of both train texts and passes
  to both runs as ``--srcdict``; and ``DEST/label-bin/dict.txt`` + ``{split}.{bin,idx}`` with one
  label token per line (fairseq orders ``dict.txt`` by frequency).  ListOps and IMDB let
  fairseq-preprocess build ``src-bin/dict.txt`` from train.  ``--keep-text`` keeps the token text
  in ``DEST/raw/{src,src1,label}/{split}.txt``.
* image tasks: ``DEST/input/{train,valid,test}.npy``, NumPy ``uint8`` arrays of shape (N, pixels),
  one grayscale image per row in row-major order, and ``DEST/label/{split}.npy``, ``int64`` arrays
  of shape (N,).  The task memory-maps them (``np.load(mmap_mode="r")``): nothing is parsed at
  start-up and all DDP ranks share one copy in the page cache.  (Earlier versions wrote
  ``input/{split}.src``, one image per line as decimal text, and ``label/{split}.label``; the task
  still reads those, with a warning.  ``python bench/data_formats.py`` compares the two.)

The output appears atomically: everything is built in a temporary directory next to DEST and
renamed into place only once complete; it is removed on any failure or interruption.  ``--force``
replaces only a DEST that a data prep of this project wrote and that does not hold the input; a run
killed even with SIGKILL takes its fairseq-preprocess child (and that one's workers) with it, and
the next run next to DEST removes its temporary directory (see data_prep/common.py).

ListOps tokens outside the ListOps vocabulary, and tokens of valid/test that never occur in train
(fairseq maps them to ``<unk>``), are reported as a warning with their count and a few examples.

Usage examples::

    python data_prep/lra.py listops    --input-dir lra_release/listops-1000 --destdir data-bin/lra/listops
    python data_prep/lra.py imdb       --input-dir aclImdb --destdir data-bin/lra/imdb-4000
    python data_prep/lra.py aan        --input-dir lra_release/tsv_data --destdir data-bin/lra/aan
    python data_prep/lra.py cifar10    --input-dir cifar-10-batches-py --destdir data-bin/lra/cifar10
    python data_prep/lra.py pathfinder --input-dir lra_release --resolution 32 --destdir data-bin/lra/pathfinder
    python data_prep/lra.py pathfinder --input-dir lra_release --resolution 128 --destdir data-bin/lra/path-x

Common options: ``--force`` (replace a DEST written by a prep, once the new one is complete); text tasks also take
``--workers N`` and ``--keep-text``.  The seeded tasks take ``--seed`` (default 42).

Errors are reported on stderr as one line starting with ``lra.py: error:`` and exit code 2.
"""

import argparse
import contextlib
import os
import pickle
import shutil
import struct
import sys
import zlib
from collections import Counter

import numpy as np
from tqdm import tqdm

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":  # run as a script: make the data_prep package importable
    sys.path.insert(0, _REPO_ROOT)

from data_prep.common import (  # noqa: E402
    PrepError,
    build_atomically,
    check_destdir,
    install_signal_handlers,
    open_input,
    run_guarded,
    warn,
    run_reporting_errors,
)
from data_prep.enwik8 import _dictionary_sizes  # noqa: E402

PROG = "lra.py"
SPLITS = ("train", "valid", "test")
DEFAULT_SEED = 42

LISTOPS_FILES = {"train": "basic_train.tsv", "valid": "basic_val.tsv", "test": "basic_test.tsv"}
LISTOPS_HEADER = ["Source", "Target"]
LISTOPS_MAX_LENGTH = 2000
# the LRA generator's operators (``[FIRST``/``[LAST`` are defined there but unused), ``]`` and the digits
LISTOPS_VOCABULARY = frozenset(["[MAX", "[MIN", "[MED", "[SM", "[FIRST", "[LAST", "]", *map(str, range(10))])
AAN_FILES = {
    "train": "new_aan_pairs.train.tsv",
    "valid": "new_aan_pairs.eval.tsv",
    "test": "new_aan_pairs.test.tsv",
}
AAN_COLUMNS = ("label", "id1", "id2", "text1", "text2")
BYTE_MAX_LENGTH = 4000
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_DIRNAME = "cifar-10-batches-py"
CIFAR_PIXELS = 32 * 32
PATHFINDER_RESOLUTIONS = (32, 128)
PATHFINDER_DIFFICULTY = "curv_contour_length_14"

_PAREN_DELETE = str.maketrans("", "", "()")


# --------------------------------------------------------------------------- small helpers


def _require_dir(path, what):
    """Raise PrepError unless ``path`` is a directory; ``what`` says what it should hold."""
    if not os.path.isdir(path):
        reason = "is not a directory" if os.path.exists(path) else "no such directory"
        raise PrepError(f"{path}: {reason} (expected {what})")


def _require_file(path, what):
    """Raise PrepError unless ``path`` is a regular file."""
    if not os.path.isfile(path):
        raise PrepError(f"{path}: no such file (expected {what})")


def parse_label(text, num_classes, where, allow_float=False):
    """Return the integer label written as ``text``; ``where`` (``file:line``) prefixes errors.

    With ``allow_float``, integral floats such as ``1.0`` are accepted too.  Raises PrepError
    for a non-integer or a label outside ``0 .. num_classes-1``.
    """
    text = text.strip()
    try:
        value = int(text)
    except ValueError:
        value = None
        if allow_float:
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                value = int(number)
    if value is None:
        raise PrepError(f"{where}: label {text!r} is not an integer")
    if not 0 <= value < num_classes:
        expected = "0 or 1" if num_classes == 2 else f"0-{num_classes - 1}"
        raise PrepError(f"{where}: label {value} is outside the expected set {expected}")
    return value


def _strip_eol(raw):
    """``raw`` without its trailing ``\\n`` or ``\\r\\n``."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
    return raw


def _decode(raw, where):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrepError(f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None


def seeded_permutation(n, seed):
    """``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` as a list of ints."""
    try:
        import torch
    except ImportError:
        raise PrepError("the seeded splits need PyTorch (it comes with fairseq)") from None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def random_split_indices(n, lengths, seed):
    """The index lists of ``torch.utils.data.random_split(range(n), lengths, generator=manual_seed(seed))``.

    Like torch: one ``randperm(n)`` from a fresh generator seeded with ``seed``, cut into
    consecutive pieces of the given lengths.
    """
    if sum(lengths) != n:
        raise ValueError(f"lengths {lengths} do not sum to {n}")
    perm = seeded_permutation(n, seed)
    pieces, offset = [], 0
    for length in lengths:
        pieces.append(perm[offset : offset + length])
        offset += length
    return pieces


def _check_split_sizes(sizes, what):
    empty = [name for name, size in zip(SPLITS, sizes) if size == 0]
    if empty:
        raise PrepError(f"{what}: too few examples, split {', '.join(empty)} would be empty")


# --------------------------------------------------------------------------- tokenisation


def listops_tokens(source):
    """ListOps tokens of a Source string: whitespace tokens with ``(`` and ``)`` deleted."""
    return source.translate(_PAREN_DELETE).split()


def _byte_token_table():
    """Per byte value: its decimal digits followed by a space, padded to 4, and a keep-mask."""
    table = np.full((256, 4), ord(" "), dtype=np.uint8)
    keep = np.zeros((256, 4), dtype=bool)
    for byte in range(256):
        digits = str(byte).encode("ascii")
        table[byte, : len(digits)] = np.frombuffer(digits, dtype=np.uint8)
        keep[byte, : len(digits) + 1] = True
    return table, keep


_BYTE_TABLE, _BYTE_KEEP = _byte_token_table()


def byte_tokens(data):
    """``' '.join(str(b) for b in data)``: one decimal token per byte, newlines included (``10``)."""
    array = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if array.size == 0:
        return ""
    return _BYTE_TABLE[array][_BYTE_KEEP[array]][:-1].tobytes().decode("ascii")


def pixel_line(pixels):
    """Space-separated decimal values of a flat uint8 array (an image row-major): one line of the
    earlier image text format (``input/{split}.src``), kept for ``bench/data_formats.py``."""
    return byte_tokens(np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1))


# --------------------------------------------------------------------------- ListOps


def _split_paths(input_dir, files, folder, expected):
    """``{split: path}`` of ``files`` (``{split: file name}``) in ``input_dir``; raises PrepError
    (naming ``folder``, or ``expected`` for a missing file) if the folder or any file is missing."""
    _require_dir(input_dir, folder)
    paths = {split: os.path.join(input_dir, name) for split, name in files.items()}
    for path in paths.values():
        _require_file(path, expected)
    return paths


def listops_paths(input_dir):
    """``{split: path}`` of the ListOps tsv files; raises PrepError if any is missing."""
    return _split_paths(input_dir, LISTOPS_FILES, "the LRA release's listops-1000/ folder",
                        "the LRA release's listops-1000/ folder with basic_train.tsv, basic_val.tsv, basic_test.tsv")


def read_listops(path):
    """Yield ``((tokens,), label, 'file:line')`` for each example of a ListOps tsv file (header ``Source\\tTarget``)."""
    with open_input(path) as f:
        header = _decode(_strip_eol(f.readline()), f"{path}:1")
        if header.split("\t") != LISTOPS_HEADER:
            raise PrepError(f"{path}:1: expected the header 'Source<TAB>Target', got {header[:60]!r}")
        for lineno, raw in enumerate(f, start=2):
            where = f"{path}:{lineno}"
            line = _decode(_strip_eol(raw), where)
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise PrepError(f"{where}: expected 2 tab-separated columns (Source, Target), got {len(fields)}")
            label = parse_label(fields[1], 10, where)
            tokens = listops_tokens(fields[0])
            if not tokens:
                raise PrepError(f"{where}: empty Source")
            yield (tokens,), label, where


# --------------------------------------------------------------------------- IMDB


def imdb_root(input_dir):
    """The ``aclImdb`` folder: ``input_dir`` itself or its sub-folder ``aclImdb``."""
    _require_dir(input_dir, "the unpacked IMDB archive (aclImdb/ or the folder holding it)")
    for root in (input_dir, os.path.join(input_dir, "aclImdb")):
        if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "test")):
            return root
    raise PrepError(
        f"{input_dir}: expected the unpacked IMDB archive: an aclImdb/ folder (or aclImdb itself) "
        "with train/{pos,neg}/*.txt and test/{pos,neg}/*.txt"
    )


def list_imdb_reviews(root, split):
    """``[(path, label)]`` of ``root/split``: neg (0) then pos (1), each in sorted file-name order."""
    reviews = []
    for name, label in (("neg", 0), ("pos", 1)):
        folder = os.path.join(root, split, name)
        _require_dir(folder, f"the IMDB reviews {split}/{name}/*.txt")
        files = sorted(n for n in os.listdir(folder) if n.endswith(".txt"))
        if not files:
            raise PrepError(f"{folder}: no reviews (*.txt)")
        reviews += [(os.path.join(folder, n), label) for n in files]
    return reviews


def read_reviews(reviews):
    """Yield ``((bytes,), label)`` for each ``(path, label)``."""
    for path, label in reviews:
        with open_input(path) as f:
            yield (f.read(),), label


# --------------------------------------------------------------------------- AAN


def aan_paths(input_dir):
    """``{split: path}`` of the AAN tsv files; raises PrepError if any is missing."""
    return _split_paths(input_dir, AAN_FILES, "the LRA release's tsv_data/ folder",
                        "the LRA release's tsv_data/ folder with new_aan_pairs.{train,eval,test}.tsv")


def read_aan(path):
    """Yield ``((text1, text2), label)`` (texts as raw bytes) for each line of an AAN tsv file."""
    with open_input(path) as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            line = _strip_eol(raw)
            if not line.strip():
                continue
            fields = line.split(b"\t")
            if len(fields) != len(AAN_COLUMNS):
                raise PrepError(
                    f"{where}: expected {len(AAN_COLUMNS)} tab-separated columns "
                    f"({', '.join(AAN_COLUMNS)}), got {len(fields)}"
                )
            label_text = fields[0].decode("utf-8", errors="replace")
            if lineno == 1 and label_text.strip().lower() == "label":
                continue  # a header line
            label = parse_label(label_text, 2, where, allow_float=True)
            yield (fields[3], fields[4]), label


# --------------------------------------------------------------------------- CIFAR-10


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays (what the CIFAR-10 batches hold) and refuses other globals."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("__builtin__", "bytes"),  # protocol 2 pickles an empty array's buffer as bytes()
        ("builtins", "bytes"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def cifar_root(input_dir):
    """The folder holding the CIFAR-10 batches: ``input_dir`` or ``input_dir/cifar-10-batches-py``."""
    _require_dir(input_dir, f"CIFAR-10's {CIFAR_DIRNAME}/ folder (python version)")
    for root in (input_dir, os.path.join(input_dir, CIFAR_DIRNAME)):
        if os.path.isfile(os.path.join(root, CIFAR_TRAIN_BATCHES[0])):
            return root
    return input_dir  # the missing files are reported by name


def load_cifar_batch(path):
    """Return ``(data, labels)`` of a CIFAR-10 python batch: uint8 (N, 3072) and int64 (N,).

    Raises PrepError for a missing, truncated or corrupt pickle, unexpected content, or a
    label outside 0-9.
    """
    _require_file(path, "a CIFAR-10 python batch")
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise PrepError(f"{path}: cannot read: {exc.strerror}") from None
    except Exception as exc:  # pickle reports damage through many exception types
        raise PrepError(f"{path}: not a readable CIFAR-10 python batch (truncated or corrupt pickle?): "
                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(batch, dict):
        raise PrepError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in batch)
        raise PrepError(f"{path}: expected the keys b'data' and b'labels', got {keys}")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * CIFAR_PIXELS):
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise PrepError(f"{path}: expected b'data' to be a uint8 array of shape (N, {3 * CIFAR_PIXELS}), got {got}")
    if len(data) == 0:
        raise PrepError(f"{path}: the batch holds 0 images; expected at least one row of {3 * CIFAR_PIXELS} "
                        "bytes (the real batches hold 10000 each; download the archive again?)")
    labels = list(labels)
    if len(labels) != len(data):
        raise PrepError(f"{path}: {len(data)} images but {len(labels)} labels")
    for index, label in enumerate(labels):
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise PrepError(f"{path}: label of image {index} is not an integer: {label!r}")
        if not 0 <= label < 10:
            raise PrepError(f"{path}: label of image {index}: {int(label)} is outside the expected set 0-9")
    return data, np.asarray(labels, dtype=np.int64)


def rgb_planes_to_gray(data):
    """Grayscale (N, 1024) uint8 of CIFAR rows (N, 3072) = R plane, G plane, B plane, each 32x32.

    Exactly Pillow's ``convert("L")``: ``(R*19595 + G*38470 + B*7471 + 0x8000) >> 16``.
    """
    planes = np.asarray(data, dtype=np.uint32).reshape(len(data), 3, CIFAR_PIXELS)
    gray = planes[:, 0] * 19595 + planes[:, 1] * 38470 + planes[:, 2] * 7471 + 0x8000
    return (gray >> 16).astype(np.uint8)


# --------------------------------------------------------------------------- Pathfinder


def pathfinder_dir(input_dir, resolution, difficulty=PATHFINDER_DIFFICULTY):
    """``input_dir/pathfinder{R}/{difficulty}`` (or ``input_dir/{difficulty}`` when given pathfinder{R}/)."""
    _require_dir(input_dir, f"the LRA release folder holding pathfinder{resolution}/")
    for candidate in (os.path.join(input_dir, f"pathfinder{resolution}", difficulty),
                      os.path.join(input_dir, difficulty)):
        if os.path.isdir(candidate):
            return candidate
    raise PrepError(
        f"{os.path.join(input_dir, f'pathfinder{resolution}', difficulty)}: no such directory "
        f"(expected the release layout DIR/pathfinder{resolution}/{difficulty}/ with imgs/ and metadata/)"
    )


def read_pathfinder_metadata(difficulty_dir):
    """``[(image_path, label, 'metadata_file:line')]`` in numeric order of the metadata files."""
    meta_dir = os.path.join(difficulty_dir, "metadata")
    _require_dir(meta_dir, "Pathfinder metadata files <k>.npy")
    numbered = []
    for name in os.listdir(meta_dir):
        if not name.endswith(".npy"):
            continue
        stem = name[: -len(".npy")]
        if not stem.isdigit():
            raise PrepError(f"{os.path.join(meta_dir, name)}: expected metadata files named <integer>.npy")
        numbered.append((int(stem), name))
    if not numbered:
        raise PrepError(f"{meta_dir}: no metadata files (<integer>.npy)")
    samples = []
    for _, name in sorted(numbered):
        path = os.path.join(meta_dir, name)
        with open_input(path) as f:
            content = f.read()
        if content.startswith(b"\x93NUMPY"):
            raise PrepError(f"{path}: a binary NumPy file; expected the LRA release's text metadata")
        for lineno, raw in enumerate(content.split(b"\n"), start=1):
            where = f"{path}:{lineno}"
            fields = _decode(raw, where).split()
            if not fields:
                continue
            if len(fields) < 4:
                raise PrepError(
                    f"{where}: expected at least 4 whitespace-separated fields "
                    f"(image folder, file name, ..., label), got {len(fields)}"
                )
            label = parse_label(fields[3], 2, where)
            samples.append((os.path.join(difficulty_dir, fields[0], fields[1]), label, where))
    return samples


def read_gray_image(path, size, listed_at=None):
    """The ``size`` x ``size`` image at ``path`` as Pillow ``convert("L")`` pixels, flat uint8 row-major."""
    try:
        from PIL import Image
    except ImportError:
        raise PrepError("reading Pathfinder images needs Pillow (pip install pillow)") from None
    origin = f" (listed in {listed_at})" if listed_at else ""
    try:
        with Image.open(path) as image:
            gray = image.convert("L")
    except FileNotFoundError:
        raise PrepError(f"{path}: no such file{origin}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
            Image.DecompressionBombError) as exc:
        raise PrepError(f"{path}: cannot read image (truncated or corrupt PNG?): {exc}") from None
    if gray.size != (size, size):
        raise PrepError(f"{path}: expected a {size}x{size} image, got {gray.size[0]}x{gray.size[1]}")
    return np.asarray(gray, dtype=np.uint8).reshape(-1)


# --------------------------------------------------------------------------- writing


class SplitStats:
    """Examples, labels and (truncated) lengths per input of one split."""

    def __init__(self, num_inputs=1):
        self.count = 0
        self.labels = Counter()
        self.max_length = [0] * num_inputs
        self.total_length = [0] * num_inputs
        self.truncated = [0] * num_inputs
        self.byte_counts = np.zeros((num_inputs, 256), dtype=np.int64)
        self.token_counts = [Counter() for _ in range(num_inputs)]  # token-level (not byte) inputs
        self.token_where = [{} for _ in range(num_inputs)]  # token -> where it first occurs

    def mean_length(self, k):
        return self.total_length[k] / self.count if self.count else 0.0


def write_text_split(examples, out_paths, label_path, max_length, byte_level, source):
    """Write token lines of ``examples`` (``(docs, label[, where])``) to ``out_paths`` (one per doc) and labels.

    Documents are truncated to ``max_length`` tokens; byte documents are written with
    ``byte_tokens``, token lists space-joined (and counted, with where each token first occurs).
    Raises PrepError if there is no example.
    """
    stats = SplitStats(len(out_paths))
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(open(p, "w", encoding="utf-8", newline="\n")) for p in out_paths]
        label_out = stack.enter_context(open(label_path, "w", encoding="utf-8", newline="\n"))
        for example in examples:
            docs, label = example[0], example[1]
            where = example[2] if len(example) > 2 else f"{source} example {stats.count + 1}"
            for k, (out, doc) in enumerate(zip(outs, docs)):
                if len(doc) > max_length:
                    doc = doc[:max_length]
                    stats.truncated[k] += 1
                if byte_level:
                    out.write(byte_tokens(doc))
                    stats.byte_counts[k] += np.bincount(np.frombuffer(doc, dtype=np.uint8), minlength=256)
                else:
                    out.write(" ".join(doc))
                    counts = Counter(doc)
                    stats.token_counts[k].update(counts)
                    for token in counts:
                        stats.token_where[k].setdefault(token, where)
                out.write("\n")
                stats.max_length[k] = max(stats.max_length[k], len(doc))
                stats.total_length[k] += len(doc)
            label_out.write(f"{label}\n")
            stats.count += 1
            stats.labels[label] += 1
    if stats.count == 0:
        raise PrepError(f"{source}: no examples")
    return stats


def write_byte_dictionary(counts, path):
    """Write a fairseq ``dict.txt`` of the byte tokens with nonzero ``counts``, most frequent first."""
    order = sorted(np.flatnonzero(counts).tolist(), key=lambda b: (-int(counts[b]), b))
    with open(path, "w", encoding="utf-8") as f:
        for byte in order:
            f.write(f"{byte} {int(counts[byte])}\n")


def run_preprocess(raw_dir, destdir, workers, srcdict=None):
    """``fairseq-preprocess --only-source`` on ``raw_dir/{train,valid,test}.txt`` into ``destdir``.

    Without ``srcdict`` fairseq builds the dictionary from train; with it, the given dictionary is
    used.  The child (and its workers) die with this process (``common.run_guarded``).  Raises
    PrepError if fairseq-preprocess fails.
    """
    args = ["--only-source"] + (["--srcdict", srcdict] if srcdict else [])
    for split in SPLITS:
        args += [f"--{split}pref", os.path.join(raw_dir, f"{split}.txt")]
    args += ["--destdir", destdir, "--workers", str(workers)]
    returncode = run_guarded("fairseq_cli.preprocess", args)
    if returncode != 0:
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"failed with exit code {returncode}"
        raise PrepError(f"fairseq-preprocess {how} (see its output above)")


def _examples(where_by_token, tokens, limit=3):
    """``'tok' at file:line`` for the first ``limit`` of ``tokens`` in the order of ``where_by_token``."""
    chosen = [t for t in where_by_token if t in tokens]
    shown = [f"{t!r} at {where_by_token[t]}" for t in chosen[:limit]]
    return ", ".join(shown) + (", ..." if len(chosen) > limit else "")


def warn_unknown_listops_tokens(stats):
    """Warn (stderr) about tokens outside the ListOps vocabulary, and valid/test tokens missing from train.

    The latter are what fairseq maps to ``<unk>`` (its dictionary is built from train).  Each
    warning gives the number of occurrences and a few examples with file and line.
    """
    where = {}  # first occurrence, in reading order train, valid, test
    for split in SPLITS:
        for token, where_t in stats[split].token_where[0].items():
            where.setdefault(token, where_t)
    counts = {split: stats[split].token_counts[0] for split in SPLITS}
    foreign = {t for c in counts.values() for t in c if t not in LISTOPS_VOCABULARY}
    if foreign:
        n = sum(c[t] for c in counts.values() for t in foreign)
        warn(PROG, f"{n:,} tokens ({len(foreign)} distinct) are not ListOps tokens "
                   f"([MAX [MIN [MED [SM [FIRST [LAST ] 0-9), e.g. {_examples(where, foreign)}")
    held_out = {}
    for split in ("valid", "test"):
        for t, where_t in stats[split].token_where[0].items():
            held_out.setdefault(t, where_t)
    unseen = {t for t in held_out if t not in counts["train"]}
    if unseen:
        n = sum(counts[split][t] for split in ("valid", "test") for t in unseen)
        warn(PROG, f"{n:,} tokens of valid/test ({len(unseen)} distinct) never occur in train and are mapped "
                   f"to <unk>, e.g. {_examples(held_out, unseen)}")


def write_image_split(outdir, split, images, labels, count, pixels_per_image, progress=None):
    """Write ``input/{split}.npy`` (uint8, ``(count, pixels_per_image)``, one image per row, written
    row by row through a memory map: the split is never held in memory) and ``label/{split}.npy``
    (int64, ``(count,)``); returns SplitStats. ``progress``: a tqdm bar advanced per image."""
    stats = SplitStats(1)
    path = os.path.join(outdir, "input", f"{split}.npy")
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, pixels_per_image))
    targets = np.empty(count, dtype=np.int64)
    try:
        for index, (pixels, label) in enumerate(zip(images, labels)):
            if index >= count or pixels.size != pixels_per_image:
                raise ValueError(f"{split}: image {index} of {count} has {pixels.size} pixels, "
                                 f"expected {pixels_per_image}")  # a bug of the caller, not of the input
            rows[index] = pixels.reshape(-1)
            targets[index] = int(label)
            stats.labels[int(label)] += 1
            stats.count += 1
            if progress is not None:
                progress.update()
        if stats.count != count:
            raise ValueError(f"{split}: {stats.count} images written, expected {count}")
        rows.flush()
    finally:
        del rows  # unmap before the directory is renamed or removed
    np.save(os.path.join(outdir, "label", f"{split}.npy"), targets)
    stats.max_length[0] = pixels_per_image
    stats.total_length[0] = pixels_per_image * count
    return stats


# --------------------------------------------------------------------------- tasks


class TextPlan:
    """What a text task writes: per split an iterable of ``(docs, label)`` (or ``"test"`` to copy test)."""

    def __init__(self, inputs, splits, sources, max_length, byte_level, shared_dictionary=False,
                 check_listops_tokens=False):
        self.inputs = inputs  # e.g. ("src",) or ("src", "src1")
        self.splits = splits
        self.sources = sources
        self.max_length = max_length
        self.byte_level = byte_level
        self.shared_dictionary = shared_dictionary
        self.check_listops_tokens = check_listops_tokens


def plan_listops(args):
    paths = listops_paths(args.input_dir)
    splits = {split: read_listops(path) for split, path in paths.items()}
    return TextPlan(("src",), splits, paths, args.max_length, byte_level=False, check_listops_tokens=True)


def plan_imdb(args):
    root = imdb_root(args.input_dir)
    train = list_imdb_reviews(root, "train")
    test = list_imdb_reviews(root, "test")
    train = [train[i] for i in seeded_permutation(len(train), args.seed)]
    test = [test[i] for i in seeded_permutation(len(test), args.seed)]
    sources = {"train": os.path.join(root, "train"), "valid": os.path.join(root, "test"),
               "test": os.path.join(root, "test")}
    valid = "test"
    if args.valid_from_train is not None:
        if not 0 < args.valid_from_train < len(train):
            raise PrepError(f"--valid-from-train must be between 1 and {len(train) - 1} "
                            f"(there are {len(train)} train reviews), got {args.valid_from_train}")
        valid, train = read_reviews(train[: args.valid_from_train]), train[args.valid_from_train :]
        sources["valid"] = os.path.join(root, "train")
    splits = {"train": read_reviews(train), "valid": valid, "test": read_reviews(test)}
    return TextPlan(("src",), splits, sources, args.max_length, byte_level=True)


def plan_aan(args):
    paths = aan_paths(args.input_dir)
    splits = {split: read_aan(path) for split, path in paths.items()}
    return TextPlan(("src", "src1"), splits, paths, args.max_length, byte_level=True, shared_dictionary=True)


def build_text_task(plan, outdir, workers, keep_text):
    """Write the token text of ``plan`` under ``outdir/raw`` and binarise it; returns ``{split: SplitStats}``."""
    raw = os.path.join(outdir, "raw")
    for name in plan.inputs + ("label",):
        os.makedirs(os.path.join(raw, name))
    stats = {}
    for split in ("train", "test", "valid"):  # valid may be a copy of test
        examples = plan.splits[split]
        if isinstance(examples, str):
            for name in plan.inputs + ("label",):
                shutil.copyfile(os.path.join(raw, name, f"{examples}.txt"), os.path.join(raw, name, f"{split}.txt"))
            stats[split] = stats[examples]
            continue
        stats[split] = write_text_split(
            examples,
            [os.path.join(raw, name, f"{split}.txt") for name in plan.inputs],
            os.path.join(raw, "label", f"{split}.txt"),
            plan.max_length,
            plan.byte_level,
            plan.sources[split],
        )
    if plan.check_listops_tokens:
        warn_unknown_listops_tokens(stats)
    srcdict = None
    if plan.shared_dictionary:
        srcdict = os.path.join(raw, "dict.txt")
        write_byte_dictionary(stats["train"].byte_counts.sum(axis=0), srcdict)
    for name in plan.inputs:
        run_preprocess(os.path.join(raw, name), os.path.join(outdir, f"{name}-bin"), workers, srcdict=srcdict)
    run_preprocess(os.path.join(raw, "label"), os.path.join(outdir, "label-bin"), workers)
    if not keep_text:
        shutil.rmtree(raw)
    return {split: stats[split] for split in SPLITS}


def _make_image_dirs(outdir):
    os.mkdir(os.path.join(outdir, "input"))
    os.mkdir(os.path.join(outdir, "label"))


def build_cifar10(args, outdir):
    """CIFAR-10 grayscale images: seeded 90/10 train/valid split of the official train set, official test."""
    root = cifar_root(args.input_dir)
    paths = [os.path.join(root, name) for name in CIFAR_TRAIN_BATCHES + (CIFAR_TEST_BATCH,)]
    for path in paths:
        _require_file(path, f"CIFAR-10's python batches {', '.join(CIFAR_TRAIN_BATCHES)}, {CIFAR_TEST_BATCH}")
    batches = [load_cifar_batch(path) for path in paths]
    train_gray = rgb_planes_to_gray(np.concatenate([data for data, _ in batches[:-1]]))
    train_labels = np.concatenate([labels for _, labels in batches[:-1]])
    test_gray, test_labels = rgb_planes_to_gray(batches[-1][0]), batches[-1][1]
    n = len(train_gray)
    num_valid = n // 10
    _check_split_sizes((n - num_valid, num_valid, len(test_gray)), root)
    train_idx, valid_idx = random_split_indices(n, [n - num_valid, num_valid], args.seed)
    _make_image_dirs(outdir)
    stats = {}
    for split, gray, labels in (("train", train_gray[train_idx], train_labels[train_idx]),
                                ("valid", train_gray[valid_idx], train_labels[valid_idx]),
                                ("test", test_gray, test_labels)):
        stats[split] = write_image_split(outdir, split, gray, labels, len(gray), CIFAR_PIXELS)
    return stats


def pathfinder_split_sizes(n):
    """``(train, valid, test)`` sizes: a tenth (rounded down) each for valid and test, like S4."""
    return n - 2 * (n // 10), n // 10, n // 10


def build_pathfinder(args, outdir):
    """Pathfinder / Path-X grayscale images with a seeded 80/10/10 split."""
    difficulty_dir = pathfinder_dir(args.input_dir, args.resolution, args.difficulty)
    samples = read_pathfinder_metadata(difficulty_dir)
    sizes = pathfinder_split_sizes(len(samples))
    _check_split_sizes(sizes, os.path.join(difficulty_dir, "metadata"))
    pieces = random_split_indices(len(samples), list(sizes), args.seed)
    _make_image_dirs(outdir)
    stats = {}
    with tqdm(total=len(samples), unit="img", desc=f"{PROG} reading images", disable=None, leave=False) as progress:
        for split, indices in zip(SPLITS, pieces):
            chosen = [samples[i] for i in indices]
            images = (read_gray_image(path, args.resolution, where) for path, _, where in chosen)
            stats[split] = write_image_split(outdir, split, images, [label for _, label, _ in chosen], len(chosen),
                                             args.resolution ** 2, progress)
    return stats


# --------------------------------------------------------------------------- output


def _format_labels(labels):
    return ", ".join(f"{label}: {count:,}" for label, count in sorted(labels.items()))


def _unseen_bytes(stats):
    """Byte values used in valid/test but absent from train (they map to <unk>)."""
    seen = stats["train"].byte_counts.sum(axis=0) > 0
    used = (stats["valid"].byte_counts.sum(axis=0) + stats["test"].byte_counts.sum(axis=0)) > 0
    return np.flatnonzero(used & ~seen).tolist()


def print_summary(task, destdir, stats, inputs=None, unit="tokens", byte_level=False):
    """Print examples, labels and lengths per split, and the vocabulary of text tasks."""
    print(f"{PROG}: wrote {destdir} ({task})")
    width = max(len(f"{s:,}") for s in (st.count for st in stats.values()))
    for split in SPLITS:
        st = stats[split]
        parts = [f"  {split + ':':7}{st.count:>{width},} examples", f"labels {_format_labels(st.labels)}"]
        if unit == "pixels":
            parts.append(f"{st.max_length[0]:,} pixels each")
        for k, name in enumerate(inputs or ()):
            prefix = f"{name} " if len(inputs) > 1 else ""
            length = f"{prefix}{unit} max {st.max_length[k]:,} mean {st.mean_length(k):,.1f}"
            if st.truncated[k]:
                length += f" ({st.truncated[k]:,} truncated)"
            parts.append(length)
        print(" | ".join(parts))
    if inputs:
        byte_symbols, dict_size = _dictionary_sizes(os.path.join(destdir, "src-bin"))
        print(f"  vocabulary: {byte_symbols} symbols (fairseq dictionary size {dict_size} "
              "incl. 4 special and any padding symbols)")
        train_labels = set(stats["train"].labels)
        missing = sorted((set(stats["valid"].labels) | set(stats["test"].labels)) - train_labels)
        if missing:
            print(f"  note: labels {missing} occur in valid/test but not in train; they map to <unk>")
        if byte_level:
            unseen = _unseen_bytes(stats)
            if unseen:
                print(f"  note: byte values {unseen} occur in valid/test but not in train; they map to <unk>")


# --------------------------------------------------------------------------- command line


def build_parser():
    """Return the argument parser of the command line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build the Long Range Arena data sets for the plugin's LRA tasks.",
    )
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    def add(name, help_text, input_help, text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--input-dir", required=True, metavar="DIR", help=input_help)
        p.add_argument("--destdir", required=True, metavar="DIR", help="output directory")
        p.add_argument("--force", action="store_true",
                       help="replace DIR if it exists and a data prep of this project wrote it "
                            "(only once the new one is complete)")
        if text:
            p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                           help="fairseq-preprocess worker processes (default: CPU count, at most 8)")
            p.add_argument("--keep-text", action="store_true",
                           help="keep the token text in DIR/raw/{src,src1,label}/{split}.txt")
        return p

    p = add("listops", "ListOps (LRA release listops-1000/)",
            "folder with basic_train.tsv, basic_val.tsv, basic_test.tsv", text=True)
    p.add_argument("--max-length", type=int, default=LISTOPS_MAX_LENGTH, metavar="N",
                   help=f"truncate to N tokens (default {LISTOPS_MAX_LENGTH})")

    p = add("imdb", "IMDB byte-level text classification (aclImdb archive)",
            "aclImdb/ or the folder that holds it", text=True)
    p.add_argument("--max-length", type=int, default=BYTE_MAX_LENGTH, metavar="N",
                   help=f"truncate to N bytes (default {BYTE_MAX_LENGTH})")
    p.add_argument("--valid-from-train", type=int, default=None, metavar="N",
                   help="hold out N seeded-random train reviews as valid (default: valid = test)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"shuffling seed (default {DEFAULT_SEED})")

    p = add("aan", "AAN byte-level document matching (LRA release tsv_data/)",
            "folder with new_aan_pairs.{train,eval,test}.tsv", text=True)
    p.add_argument("--max-length", type=int, default=BYTE_MAX_LENGTH, metavar="N",
                   help=f"truncate each document to N bytes (default {BYTE_MAX_LENGTH})")

    p = add("cifar10", "CIFAR-10 grayscale pixel sequences (python version)",
            f"{CIFAR_DIRNAME}/ or the folder that holds it", text=False)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"train/valid split seed (default {DEFAULT_SEED})")

    p = add("pathfinder", "Pathfinder (--resolution 32) and Path-X (--resolution 128)",
            "the LRA release folder holding pathfinder{32,128}/", text=False)
    p.add_argument("--resolution", type=int, required=True, choices=PATHFINDER_RESOLUTIONS,
                   help="image size: 32 (Pathfinder) or 128 (Path-X)")
    p.add_argument("--difficulty", default=PATHFINDER_DIFFICULTY, metavar="NAME",
                   help=f"difficulty folder (default {PATHFINDER_DIFFICULTY}, the LRA setting)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"split seed (default {DEFAULT_SEED})")
    return parser


_TEXT_PLANS = {"listops": plan_listops, "imdb": plan_imdb, "aan": plan_aan}
_IMAGE_BUILDERS = {"cifar10": build_cifar10, "pathfinder": build_pathfinder}


def main(argv=None):
    """Command line entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    destdir = os.path.abspath(args.destdir)
    args.input_dir = os.path.abspath(args.input_dir)
    text = args.task in _TEXT_PLANS
    def prepare():
        if text and args.workers < 1:
            raise PrepError(f"--workers must be at least 1, got {args.workers}")
        if text and args.max_length < 1:
            raise PrepError(f"--max-length must be positive, got {args.max_length}")
        inputs = [("--input-dir", args.input_dir)]
        check_destdir(destdir, args.force, inputs)
        if text:
            plan = _TEXT_PLANS[args.task](args)
            build = lambda tmpdir: build_text_task(plan, tmpdir, args.workers, args.keep_text)  # noqa: E731
        else:
            plan = None
            build = lambda tmpdir: _IMAGE_BUILDERS[args.task](args, tmpdir)  # noqa: E731
        return plan, build_atomically(destdir, args.force, inputs, build, PROG)

    code, result = run_reporting_errors(PROG, prepare)
    if code:
        return code
    plan, stats = result
    if text:
        print_summary(args.task, destdir, stats, inputs=plan.inputs,
                      unit="bytes" if plan.byte_level else "tokens", byte_level=plan.byte_level)
    else:
        print_summary(args.task, destdir, stats, unit="pixels")
    if text and args.keep_text:
        print(f"  token text: {os.path.join(destdir, 'raw')}")
    return 0


if __name__ == "__main__":
    install_signal_handlers()
    sys.exit(main())
