#!/usr/bin/env python
"""Build a fairseq data-bin for byte-level language modelling on enwik8.

The corpus is split exactly like transformer-xl / awd-lstm ``prep_enwik8.py``
(first 90,000,000 bytes train, next 5,000,000 valid, last 5,000,000 test) and
written in the same text format: one token per byte, the token being the
byte's decimal value, tokens separated by single spaces, and a newline byte
written as an actual line break.  ``fairseq-preprocess --only-source`` then
binarises the three files (its dictionary is built from the train split).

Instead of enwik8, any UTF-8 text can be turned into an enwik8-style byte
corpus (``--text``), or the documentation text shipped with Python
(``--pydoc-demo``, about 0.5 MB) for a quick demo without downloads.

The output appears atomically: everything is built in a temporary directory
next to ``--destdir`` and renamed into place only once complete, so an
interrupted or failed run never leaves a data-bin that looks finished.

Usage examples::

    # the official archive (http://mattmahoney.net/dc/enwik8.zip) or its unzipped content
    python data_prep/enwik8.py --enwik8 enwik8.zip --destdir data-bin/enwik8 --workers 8

    # any UTF-8 text, 5% valid and 5% test bytes, keeping train.txt/valid.txt/test.txt
    python data_prep/enwik8.py --text a.txt b.txt --destdir data-bin/mytext --keep-text

    # small demo corpus from Python's own documentation, capped at 200 kB
    python data_prep/enwik8.py --pydoc-demo --max-bytes 200000 --destdir data-bin/pydoc

Errors are reported on stderr as one line starting with ``enwik8.py: error:``
and exit code 2.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
import zlib

import numpy as np

PROG = "enwik8.py"
ENWIK8_SIZE = 10**8
ENWIK8_MEMBER = "enwik8"
NUM_TEST_BYTES = 5_000_000
NEWLINE = ord("\n")
SPLITS = ("train", "valid", "test")
_CHUNK_BYTES = 1 << 22


class PrepError(Exception):
    """A user-facing error; ``main`` prints it as one line and exits with code 2."""


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
    if _is_zip_path(path):
        return _read_enwik8_zip(path)
    _check_enwik8_size(path, os.path.getsize(path))
    with open(path, "rb") as f:
        data = f.read()
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
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise PrepError(f"{path}: no such file") from None
        except OSError as exc:
            raise PrepError(f"{path}: cannot read: {exc.strerror}") from None
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


def run_preprocess(raw_dir, destdir, workers):
    """Run ``fairseq-preprocess --only-source`` on ``raw_dir/{train,valid,test}.txt`` into ``destdir``.

    Uses the current interpreter; raises PrepError if it fails.
    """
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--only-source"]
    for split in SPLITS:
        cmd += [f"--{split}pref", os.path.join(raw_dir, f"{split}.txt")]
    cmd += ["--destdir", destdir, "--workers", str(workers)]
    returncode = subprocess.run(cmd, check=False).returncode
    if returncode != 0:
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"failed with exit code {returncode}"
        raise PrepError(f"fairseq-preprocess {how} (see its output above)")


def unseen_byte_values(train, others):
    """Byte values (newline excluded) occurring in some of ``others`` but never in ``train``.

    fairseq builds the dictionary from train only, so these map to ``<unk>``.
    """
    seen = np.bincount(np.frombuffer(train, dtype=np.uint8), minlength=256) > 0
    used = np.zeros(256, dtype=bool)
    for part in others:
        used |= np.bincount(np.frombuffer(part, dtype=np.uint8), minlength=256) > 0
    used[NEWLINE] = False
    return np.flatnonzero(used & ~seen).tolist()


def _dictionary_sizes(destdir):
    """Return (byte symbols, total fairseq dictionary size) from ``destdir/dict.txt``."""
    with open(os.path.join(destdir, "dict.txt"), encoding="utf-8") as f:
        entries = [line.split(" ", 1)[0] for line in f if line.strip()]
    byte_symbols = sum(1 for entry in entries if not entry.startswith("madeupword"))
    return byte_symbols, len(entries) + 4  # + <s>, <pad>, </s>, <unk>


def _install(tmpdir, destdir, force):
    """Rename the finished ``tmpdir`` to ``destdir``, replacing an old ``destdir`` if ``force``."""
    if not os.path.lexists(destdir):
        os.rename(tmpdir, destdir)
        return
    if not force:
        raise PrepError(f"output directory {destdir} already exists; pass --force to overwrite")
    trash = tempfile.mkdtemp(dir=os.path.dirname(destdir), prefix=".old-enwik8-")
    old = os.path.join(trash, "old")
    os.rename(destdir, old)
    try:
        os.rename(tmpdir, destdir)
    except BaseException:
        os.rename(old, destdir)
        os.rmdir(trash)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def _current_umask():
    """Return the process umask (reading it requires setting it, so it is restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build_data_bin(splits, destdir, workers, keep_text, force):
    """Write the byte-token texts of ``splits``, binarise them, and move the result to ``destdir``.

    Everything is built in a temporary directory next to ``destdir`` that is
    removed on any failure (including KeyboardInterrupt).
    """
    parent = os.path.dirname(destdir)
    os.makedirs(parent, exist_ok=True)
    tmpdir = tempfile.mkdtemp(dir=parent, prefix=".tmp-enwik8-")
    try:
        os.chmod(tmpdir, 0o777 & ~_current_umask())  # mkdtemp creates it private (0700)
        raw_dir = os.path.join(tmpdir, "raw")
        os.mkdir(raw_dir)
        for name, part in zip(SPLITS, splits):
            write_byte_tokens(part, os.path.join(raw_dir, f"{name}.txt"))
        run_preprocess(raw_dir, tmpdir, workers)
        if not keep_text:
            shutil.rmtree(raw_dir)
        _install(tmpdir, destdir, force)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise


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
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                        help="fairseq-preprocess worker processes (default: CPU count, at most 8)")
    parser.add_argument("--keep-text", action="store_true",
                        help="keep the byte-token train/valid/test.txt files in DIR/raw/")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR if it exists (only once the new one is complete)")
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
    try:
        if args.workers < 1:
            raise PrepError(f"--workers must be at least 1, got {args.workers}")
        if os.path.lexists(destdir):
            if not os.path.isdir(destdir):
                raise PrepError(f"{destdir} exists and is not a directory")
            if not args.force:
                raise PrepError(f"output directory {destdir} already exists; pass --force to overwrite")
        splits = _load_splits(args)
        build_data_bin(splits, destdir, args.workers, args.keep_text, args.force)
    except PrepError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted; partial output removed", file=sys.stderr)
        return 130
    _print_summary(splits, destdir, args.keep_text)
    return 0


def _interrupt_on_sigterm(signum, frame):
    """Turn SIGTERM into KeyboardInterrupt so the temporary directory is cleaned up."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    sys.exit(main())
