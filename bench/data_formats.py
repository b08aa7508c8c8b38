"""LRA image data formats (CPU): the earlier decimal text vs the memory-mapped ``.npy`` of
``data_prep/lra.py``, on a Path-X-sized synthetic set.

    python bench/data_formats.py [--images 2000] [--pixels 16384] [--read 256] [--repeats 3]

Data: ``--images`` images of ``--pixels`` pixels (Path-X: 128 x 128 = 16,384), uniformly random
values 0..255 (seeded; as text ~3.6 bytes per pixel, close to the ~9 GB of Path-X's text-format train.src for
Path-X's train.src), random labels 0/1. Both formats are written into a temporary directory
(``--workdir``, removed afterwards unless ``--keep``).

Rows, one per format:

* ``text``: ``input/train.src`` (one image per line, space-separated decimal pixels, written with
  ``data_prep/lra.py``'s ``pixel_line``, as the prep wrote it before) + ``label/train.label``;
* ``npy``: ``input/train.npy`` (uint8, (N, L)) + ``label/train.npy`` (int64), written by the prep's
  own ``write_image_split``.

Columns:

* ``prep s``: writing the split from images in memory, ``fsync`` included (PNG decoding, the same
  for both formats, is excluded);
* ``size MB``: bytes on disk of the split's files (input + labels), MiB;
* ``open s``: ``load_image_split`` of ``seqboat_fairseq/tasks/lra.py``, what ``--task lra-image``
  runs per split at start-up (text: parse every line; npy: map the file);
* ``read N ms``: then ``dataset[i]`` of ``--read`` distinct random examples (the task's dataset:
  normalised float pixels);
* ``load s``: ``open + read``, the median over ``--repeats`` runs, each on a cold page cache (the
  files are evicted with ``posix_fadvise(DONTNEED)`` before each run);
* ``proc MB``: private (anonymous) memory the load leaves in the process: every DDP rank and
  spawned data-loader worker holds this much (the npy pages are page cache, shared by all);
* ``others``: cores kept busy by other processes while the loads ran (>= 0.25: disturbed);
* ``...@160k``: extrapolated to Path-X's 160,000 train images, LINEARLY (``x 160000 / images``)
  for everything that grows with the number of images (both preps and sizes, the text load and
  memory). The npy load and memory do not grow with it (opening reads the 128-byte header, the
  reads touch ``--read`` rows, page-cache misses already at 2,000 images): carried over as
  measured, marked ``=``.

Prints a table and one ``BENCH {json}`` line per format (``"bench": "data_formats"``), then one
ratio line (``"bench": "data_formats_ratio"``).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (REPO_ROOT, MB, ContentionMeter, code_revision, emit, format_table, median,  # noqa: E402
                    quiet_fairseq_logging)

PATHX_TRAIN_IMAGES = 160_000  # 80% of Path-X's 200,000 images (data_prep/lra.py's 80/10/10 split)


def rss_anon_mb() -> float:
    """Anonymous (private) resident memory of this process, MiB (``RssAnon`` of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def split_files(root: str, fmt: str):
    if fmt == "text":
        return [os.path.join(root, "input", "train.src"), os.path.join(root, "label", "train.label")]
    return [os.path.join(root, "input", "train.npy"), os.path.join(root, "label", "train.npy")]


def sync_and_evict(paths) -> bool:
    """fsync each file and drop it from the page cache; True if the kernel accepted every request."""
    ok = True
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok


def write_text(root: str, images, labels, progress) -> None:
    """The earlier format, line by line as data_prep/lra.py wrote it."""
    from data_prep import lra

    with open(os.path.join(root, "input", "train.src"), "w", encoding="ascii", newline="\n") as src, \
            open(os.path.join(root, "label", "train.label"), "w", encoding="ascii", newline="\n") as lab:
        for pixels, label in zip(images, labels):
            src.write(lra.pixel_line(pixels))
            src.write("\n")
            lab.write(f"{int(label)}\n")
            progress.update()


def write_npy(root: str, images, labels, progress) -> None:
    from data_prep import lra

    lra.write_image_split(root, "train", images, labels, len(images), images.shape[1], progress)


def prepare(fmt: str, root: str, images, labels) -> float:
    """Write one format into ``root``; returns seconds (fsync included)."""
    from tqdm import tqdm

    os.makedirs(os.path.join(root, "input"))
    os.makedirs(os.path.join(root, "label"))
    writer = write_text if fmt == "text" else write_npy
    with tqdm(total=len(images), unit="img", desc=f"writing {fmt}", disable=None, leave=False) as progress:
        start = time.perf_counter()
        writer(root, images, labels, progress)
        sync_and_evict(split_files(root, fmt))
        return time.perf_counter() - start


def load_once(root: str, indices):
    """What --task lra-image does at start-up, then ``len(indices)`` random examples.

    Returns ``(open_s, read_ms, anon_mb, checksum)``."""
    import gc

    from seqboat_fairseq.tasks.lra import classification_dataset, load_image_split, RealValuedSamplesDataset

    gc.collect()
    anon = rss_anon_mb()
    start = time.perf_counter()
    pixels, targets = load_image_split(root, "train")
    samples = RealValuedSamplesDataset(pixels, mean=0.5, std=0.5)
    dataset = classification_dataset([samples], targets, None, shuffle=False, seed=1)
    opened = time.perf_counter()
    checksum = 0.0
    for i in indices:
        item = dataset[int(i)]
        checksum += float(item["net_input.src_tokens"][0]) + float(item["target"])
    done = time.perf_counter()
    anon_mb = rss_anon_mb() - anon
    del dataset, pixels, targets
    return opened - start, (done - opened) * 1000.0, anon_mb, checksum


def measure(fmt: str, root: str, indices, repeats: int):
    """Median cold-cache load over ``repeats`` runs."""
    from tqdm import tqdm

    runs, others, evicted = [], [], True
    for _ in tqdm(range(repeats), desc=f"loading {fmt}", disable=None, leave=False):
        evicted &= sync_and_evict(split_files(root, fmt))
        with ContentionMeter() as meter:
            runs.append(load_once(root, indices))
        others.append(meter.other_cores)
    checksums = {round(r[3], 3) for r in runs}
    return {
        "open_s": median([r[0] for r in runs]),
        "read_ms": median([r[1] for r in runs]),
        "load_s": median([r[0] + r[1] / 1000.0 for r in runs]),
        "load_s_all": [round(r[0] + r[1] / 1000.0, 4) for r in runs],
        "proc_mb": median([r[2] for r in runs]),
        "others": max(others),
        "cold_cache": evicted,
        "checksum": checksums.pop() if len(checksums) == 1 else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="synthetic images (default 2000)")
    parser.add_argument("--pixels", type=int, default=16384, help="pixels per image (default 16384 = Path-X)")
    parser.add_argument("--read", type=int, default=256, help="distinct random examples read after opening")
    parser.add_argument("--repeats", type=int, default=3, help="cold-cache loads per format (median)")
    parser.add_argument("--target-images", type=int, default=PATHX_TRAIN_IMAGES,
                        help=f"images to extrapolate to (default {PATHX_TRAIN_IMAGES:,}: Path-X train)")
    parser.add_argument("--formats", default="text,npy", help="comma-separated: text, npy")
    parser.add_argument("--workdir", default=None, help="where to write (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the written data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    if any(f not in ("text", "npy") for f in formats) or not formats:
        parser.error(f"--formats: expected a comma-separated subset of text,npy, got {args.formats!r}")
    for flag, value in (("--images", args.images), ("--pixels", args.pixels), ("--read", args.read),
                        ("--repeats", args.repeats), ("--target-images", args.target_images)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.read > args.images:  # never report a read time over fewer examples than asked
        parser.error(f"--read {args.read} exceeds --images {args.images}: cannot read that many distinct examples")

    import numpy as np

    sys.path.insert(0, REPO_ROOT)
    quiet_fairseq_logging()
    import logging

    logging.getLogger("seqboat_fairseq").setLevel(logging.ERROR)  # the text format's re-prep hint
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (args.images, args.pixels), dtype=np.uint8)
    labels = rng.integers(0, 2, args.images).astype(np.int64)
    indices = rng.choice(args.images, size=args.read, replace=False)
    scale = args.target_images / args.images
    workdir = args.workdir or tempfile.mkdtemp(prefix="seqboat_data_formats_")
    os.makedirs(workdir, exist_ok=True)
    rev = code_revision()
    records = []
    try:
        for fmt in formats:
            root = os.path.join(workdir, fmt)
            if os.path.exists(root):
                shutil.rmtree(root)
            prep_s = prepare(fmt, root, images, labels)
            size_bytes = sum(os.path.getsize(p) for p in split_files(root, fmt))
            size_mb = size_bytes / MB
            load = measure(fmt, root, indices, args.repeats)
            grows = fmt == "text"  # the npy load and memory do not grow with the number of images
            record = {
                "bench": "data_formats", "format": fmt, "images": args.images, "pixels": args.pixels,
                "read": args.read, "repeats": args.repeats,
                "prep_s": round(prep_s, 3), "size_mb": round(size_mb, 2), "size_bytes": size_bytes,
                "open_s": round(load["open_s"], 4), "read_ms": round(load["read_ms"], 2),
                "load_s": round(load["load_s"], 4), "load_s_all": load["load_s_all"],
                "proc_mb": round(load["proc_mb"], 1), "cold_cache": load["cold_cache"],
                "others": round(load["others"], 2),
                "target_images": args.target_images, "extrapolation": "linear in images",
                "prep_s_target": round(prep_s * scale, 1), "size_gb_target": round(size_mb * scale / 1024, 2),
                "load_s_target": round(load["load_s"] * (scale if grows else 1.0), 4),
                "load_target_scaled": grows,
                "proc_mb_target": round(load["proc_mb"] * (scale if grows else 1.0), 1),
                "checksum": load["checksum"], "rev": rev,
            }
            records.append(record)
            emit(record)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if len({r["checksum"] for r in records}) > 1:
        raise SystemExit(f"the formats read different examples: checksums {[r['checksum'] for r in records]}")

    target = f"@{args.target_images // 1000}k" if args.target_images % 1000 == 0 else f"@{args.target_images:,}"
    rows = []
    for r in records:
        same = "" if r["load_target_scaled"] else "="

        def cell(value):  # as format_table writes numbers, with the '=' mark
            return f"{same}{value:.3f}" if abs(value) < 10 else f"{same}{value:.1f}"

        rows.append([r["format"], r["images"], r["prep_s"], r["size_mb"], r["open_s"], r["read_ms"], r["load_s"],
                     r["proc_mb"], r["others"], r["prep_s_target"], r["size_gb_target"],
                     cell(r["load_s_target"]), cell(r["proc_mb_target"])])
    print(format_table(
        ["format", "images", "prep s", "size MB", "open s", f"read {args.read} ms", "load s", "proc MB", "others",
         f"prep s{target}", f"size GB{target}", f"load s{target}", f"proc MB{target}"],
        rows,
        title=f"LRA image split formats: {args.images:,} synthetic images x {args.pixels:,} pixels; "
              f"columns {target} extrapolated linearly to {args.target_images:,} images "
              "('=': does not grow with the number of images, carried over as measured)"))
    if not all(r["cold_cache"] for r in records):
        print("note: the kernel refused to evict some files from the page cache: loads ran on a warm cache")
    by = {r["format"]: r for r in records}
    if "text" in by and "npy" in by:
        text, npy = by["text"], by["npy"]
        ratio = {"bench": "data_formats_ratio", "images": args.images, "pixels": args.pixels,
                 "prep_speedup": round(text["prep_s"] / npy["prep_s"], 2),
                 "size_ratio": round(npy["size_mb"] / text["size_mb"], 3),
                 "load_speedup": round(text["load_s"] / npy["load_s"], 1),
                 "load_speedup_target": round(text["load_s_target"] / npy["load_s_target"], 1),
                 "target_images": args.target_images, "rev": rev}
        print(f"npy vs text: prep {ratio['prep_speedup']}x faster, {ratio['size_ratio']}x the size on disk, load "
              f"{ratio['load_speedup']}x faster at {args.images:,} images (the text load grows with the number "
              "of images, the npy load does not)")
        emit(ratio)


if __name__ == "__main__":
    main()
