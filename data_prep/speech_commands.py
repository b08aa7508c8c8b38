#!/usr/bin/env python
"""Build the Speech Commands SC10 raw-waveform data set that ``--task speech_commands`` loads.

Input: the Speech Commands v0.02 release as distributed (``speech_commands_v0.02.tar.gz``
unpacked): one folder per word holding 16-bit PCM mono 16 kHz ``.wav`` files, and the release's
``validation_list.txt`` and ``testing_list.txt`` (one ``<word>/<file>.wav`` per line, relative to
the release folder).  Only the ten SC10 words are read, in this order, as classes 0-9:

    yes, no, up, down, left, right, on, off, stop, go

(the order of upstream's ``SpeechCommandsDataset.SUBSET_CLASSES``).  The other words and
``_background_noise_`` are ignored, and so are the list entries naming them.

Splits: valid = the clips of the ten words named in ``validation_list.txt``, test = those named
in ``testing_list.txt``, train = every other ``.wav`` of the ten word folders (the release's
official split).  Within a split: class by class, file names sorted.  A list entry of the ten words
that names a missing file, or a clip named in both lists, is an error.

Clips: every file of a word folder whose name ends in ``.wav`` in any case (``X.WAV`` too), read
by a RIFF reader here (no torchaudio): the header's format is PCM, either format tag 1 or
``WAVE_FORMAT_EXTENSIBLE`` with the PCM sub-format (what sox and many recorders write).  A clip must
be mono, 16-bit, 16,000 Hz and complete (as many samples as its header announces).  Clips shorter than
1 s are zero-padded at the end to 16,000 samples (as upstream's all-classes pipeline pads them);
clips longer than 16,000 samples are refused (the release has none; cutting one would silently drop
speech).  The summary says how many clips of each split were padded.

Output (``--destdir DEST``; the task memory-maps the arrays with ``np.load(mmap_mode="r")``, so
nothing is parsed at start-up and every DDP rank shares one copy in the page cache):

* ``DEST/input/{train,valid,test}.npy``: ``int16`` arrays of shape (N, 16000), the raw samples;
* ``DEST/label/{train,valid,test}.npy``: ``int64`` arrays of shape (N,), the class ids;
* ``DEST/meta.json``: the classes, the sample rate, the clip length, the number of clips (and of
  zero-padded clips) per split, and ``train_mean`` / ``train_std``: mean and standard deviation
  (unbiased) of ``sample / 32768`` over every sample of the padded train clips.  The task feeds the
  model ``(sample / 32768 - train_mean) / (train_std + 1e-5)``, upstream's normalisation
  (``normalize_all_data``: statistics of the train split, padding included).

The output appears atomically, as with the other preps (data_prep/common.py): it is built in a
temporary directory next to DEST, renamed into place only once complete, and removed on any failure
or interruption; ``--force`` replaces only a DEST that a data prep of this project wrote.

Differences from the paper's data: upstream (the S4 pipeline) keeps only the 34,975 clips of exactly
16,000 samples and splits them at random 70/15/15 (sklearn, stratified, seeds 0 and 1), ignoring the
release's lists; this prep uses the release's official lists and pads the short clips, so its test
set is the official one.  Accuracies of the two set-ups are close but not the same experiment.

Usage::

    python data_prep/speech_commands.py --input-dir speech_commands_v0.02 --destdir data-bin/sc10

Errors are reported on stderr as one line starting with ``speech_commands.py: error:`` and exit code 2.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
from tqdm import tqdm

if __name__ == "__main__":  # run as a script: make the data_prep package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import PrepError, build_atomically, check_destdir  # noqa: E402
from data_prep.common import install_signal_handlers, run_reporting_errors  # noqa: E402

PROG = "speech_commands.py"
CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SPLITS = ("train", "valid", "test")
LISTS = {"valid": "validation_list.txt", "test": "testing_list.txt"}
SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000
SAMPLE_SCALE = 32768.0  # int16 -> [-1, 1)
FORMAT = "seqboat-fairseq speech_commands raw 1"
META = "meta.json"
RELEASE = ("the Speech Commands v0.02 release (one folder per word of .wav files, validation_list.txt, "
           "testing_list.txt)")


# --------------------------------------------------------------------------- reading the release


def _require_dir(path, what):
    if not os.path.isdir(path):
        reason = "is not a directory" if os.path.exists(path) else "no such directory"
        raise PrepError(f"{path}: {reason} (expected {what})")


def read_list(path, root):
    """``{"<word>/<file>.wav": "list:line"}`` of the SC10 entries of a split list (other words skipped).

    Raises PrepError for a missing list, a malformed line, or an entry naming a missing file."""
    if not os.path.isfile(path):
        raise PrepError(f"{path}: no such file (expected {RELEASE})")
    entries = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                entry = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise PrepError(f"{where}: not valid UTF-8; expected one <word>/<file>.wav per line") from None
            if not entry:
                continue
            word, _, name = entry.partition("/")
            if not name or "/" in name or not name.lower().endswith(".wav"):
                raise PrepError(f"{where}: {entry!r}; expected one <word>/<file>.wav per line")
            if word not in CLASSES:
                continue
            if not os.path.isfile(os.path.join(root, word, name)):
                raise PrepError(f"{where}: names {entry}, but {os.path.join(root, word, name)} does not exist "
                                "(incomplete copy of the release?)")
            entries.setdefault(entry, where)
    return entries


def plan_splits(root):
    """``{split: [(path, label, entry)]}`` of the official SC10 split; raises PrepError if the release is incomplete."""
    _require_dir(root, RELEASE)
    listed = {split: read_list(os.path.join(root, name), root) for split, name in LISTS.items()}
    both = sorted(set(listed["valid"]) & set(listed["test"]))
    if both:
        raise PrepError(f"{both[0]} is named in both {listed['valid'][both[0]]} and {listed['test'][both[0]]}; "
                        "a clip belongs to one split")
    splits = {split: [] for split in SPLITS}
    for label, word in enumerate(CLASSES):
        folder = os.path.join(root, word)
        _require_dir(folder, f"the word folder {word}/ of {RELEASE}")
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".wav"))
        if not names:
            raise PrepError(f"{folder}: no .wav files (expected the clips of the word {word!r})")
        for name in names:
            entry = f"{word}/{name}"
            split = "valid" if entry in listed["valid"] else "test" if entry in listed["test"] else "train"
            splits[split].append((os.path.join(folder, name), label, entry))
    empty = [split for split in SPLITS if not splits[split]]
    if empty:
        raise PrepError(f"{root}: split {', '.join(empty)} would be empty (the lists name none of the ten words' "
                        "clips, or every clip)")
    return splits


WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_PCM: the sub-format GUID of integer PCM (bytes as stored in the file)
PCM_SUBFORMAT = bytes.fromhex("0100000000001000800000aa00389b71")


def _not_pcm(path, reason):
    return PrepError(f"{path}: not a 16-bit PCM WAV file ({reason})")


def read_wav(path):
    """``(channels, bits per sample, sample rate, frames announced, data bytes)`` of a PCM WAV file.

    Accepts the format tag WAVE_FORMAT_PCM (1) and WAVE_FORMAT_EXTENSIBLE (0xFFFE) with the PCM
    sub-format (what sox and many recorders write; Python's ``wave`` reads it only from 3.12).
    Chunks other than ``fmt `` and ``data`` (LIST, fact, ...) are skipped; the data chunk is read
    up to the end of the file (the caller compares it with the frames announced)."""
    with open(path, "rb") as f:
        riff = f.read(12)
        if len(riff) < 12:
            raise EOFError
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise _not_pcm(path, "no RIFF/WAVE header")
        fmt = None
        while True:
            header = f.read(8)
            if len(header) < 8:
                raise EOFError  # no data chunk
            chunk_id, size = header[:4], int.from_bytes(header[4:], "little")
            if chunk_id == b"fmt ":
                body = f.read(size)
                if len(body) < size:
                    raise EOFError
                if size < 16:
                    raise _not_pcm(path, f"a fmt chunk of {size} bytes")
                tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
                if tag == WAVE_FORMAT_EXTENSIBLE:
                    if size < 40:
                        raise _not_pcm(path, f"a WAVE_FORMAT_EXTENSIBLE fmt chunk of {size} bytes; expected 40")
                    if body[24:40] != PCM_SUBFORMAT:
                        sub = int.from_bytes(body[24:26], "little")
                        raise _not_pcm(path, f"WAVE_FORMAT_EXTENSIBLE with sub-format {sub}, not PCM")
                elif tag != WAVE_FORMAT_PCM:
                    raise _not_pcm(path, f"unknown format: {tag}")
                if channels == 0 or bits == 0:
                    raise _not_pcm(path, f"{channels} channels of {bits}-bit samples")
                fmt = (channels, bits, rate)
                f.seek(size & 1, os.SEEK_CUR)  # chunks are word-aligned
            elif chunk_id == b"data":
                if fmt is None:
                    raise _not_pcm(path, "the data chunk comes before the fmt chunk")
                channels, bits, rate = fmt
                frames = size // (channels * ((bits + 7) // 8))
                return channels, bits, rate, frames, f.read(size)
            else:
                f.seek(size + (size & 1), os.SEEK_CUR)


def read_clip(path):
    """The samples of a mono 16-bit PCM 16 kHz WAV file as int16, at most CLIP_SAMPLES of them."""
    try:
        channels, bits, rate, frames, data = read_wav(path)
    except FileNotFoundError:
        raise PrepError(f"{path}: no such file") from None
    except (EOFError, struct.error):
        raise PrepError(f"{path}: truncated WAV file (the header ends early)") from None
    except OSError as exc:
        raise PrepError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if bits != 16:
        raise PrepError(f"{path}: {bits}-bit samples; expected 16-bit PCM")
    if channels != 1:
        raise PrepError(f"{path}: {channels} channels; expected mono")
    if rate != SAMPLE_RATE:
        raise PrepError(f"{path}: sample rate {rate:,} Hz; expected {SAMPLE_RATE:,} Hz "
                        "(the release's; resampling is not done here)")
    if frames > CLIP_SAMPLES:
        raise PrepError(f"{path}: {frames:,} samples ({frames / SAMPLE_RATE:.2f} s); expected at most "
                        f"{CLIP_SAMPLES:,} (1 s): longer clips are refused, not truncated")
    if len(data) < 2 * frames:
        raise PrepError(f"{path}: truncated: the header announces {frames:,} samples, the file holds "
                        f"{len(data) // 2:,}")
    if frames == 0:
        raise PrepError(f"{path}: holds no samples; expected up to {CLIP_SAMPLES:,}")
    return np.frombuffer(data[: 2 * frames], dtype="<i2")


# --------------------------------------------------------------------------- writing


def write_split(outdir, split, clips, progress):
    """Write ``input/{split}.npy`` (int16, (N, 16000), zero-padded; filled through a memory map, so
    the split is never held in memory) and ``label/{split}.npy`` (int64).

    Returns ``{"count", "padded", "labels": [per class], "sum", "sum_squares"}`` (sums of
    ``sample / 32768`` over the padded clips, in float64)."""
    rows = np.lib.format.open_memmap(os.path.join(outdir, "input", f"{split}.npy"), mode="w+", dtype=np.int16,
                                     shape=(len(clips), CLIP_SAMPLES))
    labels = np.empty(len(clips), dtype=np.int64)
    stats = {"count": len(clips), "padded": 0, "labels": [0] * len(CLASSES), "sum": 0.0, "sum_squares": 0.0}
    try:
        for index, (path, label, _) in enumerate(clips):
            samples = read_clip(path)
            rows[index, : len(samples)] = samples
            rows[index, len(samples):] = 0
            labels[index] = label
            stats["labels"][label] += 1
            stats["padded"] += len(samples) < CLIP_SAMPLES
            values = samples.astype(np.float64) / SAMPLE_SCALE  # padding zeros add nothing to either sum
            stats["sum"] += float(values.sum())
            stats["sum_squares"] += float(np.dot(values, values))
            progress.update()
        rows.flush()
    finally:
        del rows  # unmap before the directory is renamed or removed
    np.save(os.path.join(outdir, "label", f"{split}.npy"), labels)
    return stats


def build(splits, outdir):
    """Write every split and ``meta.json`` into ``outdir``; returns the per-split stats."""
    os.mkdir(os.path.join(outdir, "input"))
    os.mkdir(os.path.join(outdir, "label"))
    stats = {}
    with tqdm(total=sum(len(c) for c in splits.values()), unit="clip", desc=f"{PROG} reading clips",
              disable=None, leave=False) as progress:
        for split in SPLITS:
            stats[split] = write_split(outdir, split, splits[split], progress)
    train = stats["train"]
    n = train["count"] * CLIP_SAMPLES
    mean = train["sum"] / n
    std = float(np.sqrt(max(train["sum_squares"] - n * mean * mean, 0.0) / max(n - 1, 1)))
    meta = {
        "format": FORMAT,
        "classes": list(CLASSES),
        "sample_rate": SAMPLE_RATE,
        "clip_samples": CLIP_SAMPLES,
        "sample_scale": SAMPLE_SCALE,
        "train_mean": mean,
        "train_std": std,
        "splits": {split: {"clips": s["count"], "zero_padded": s["padded"], "per_class": s["labels"]}
                   for split, s in stats.items()},
    }
    with open(os.path.join(outdir, META), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return stats, meta


def print_summary(destdir, stats, meta):
    print(f"{PROG}: wrote {destdir} (Speech Commands SC10, raw 16 kHz, {CLIP_SAMPLES:,} samples per clip)")
    width = max(len(f"{s['count']:,}") for s in stats.values())
    for split in SPLITS:
        s = stats[split]
        per_class = ", ".join(f"{word} {count:,}" for word, count in zip(CLASSES, s["labels"]))
        print(f"  {split + ':':7}{s['count']:>{width},} clips ({s['padded']:,} zero-padded) | {per_class}")
    print(f"  train samples / 32768: mean {meta['train_mean']:.6g}, std {meta['train_std']:.6g}")


# --------------------------------------------------------------------------- command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Build the Speech Commands SC10 raw-waveform data set for --task speech_commands.")
    parser.add_argument("--input-dir", required=True, metavar="DIR",
                        help="the unpacked Speech Commands v0.02 release (word folders, validation_list.txt, "
                             "testing_list.txt)")
    parser.add_argument("--destdir", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR if it exists and a data prep of this project wrote it "
                             "(only once the new one is complete)")
    return parser


def main(argv=None):
    """Command line entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    destdir = os.path.abspath(args.destdir)
    root = os.path.abspath(args.input_dir)
    def prepare():
        inputs = [("--input-dir", root)]
        check_destdir(destdir, args.force, inputs)
        splits = plan_splits(root)
        return build_atomically(destdir, args.force, inputs, lambda tmpdir: build(splits, tmpdir), PROG)

    code, result = run_reporting_errors(PROG, prepare)
    if code:
        return code
    stats, meta = result
    print_summary(destdir, stats, meta)
    return 0


if __name__ == "__main__":
    install_signal_handlers()
    sys.exit(main())
