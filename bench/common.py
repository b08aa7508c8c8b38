"""Shared helpers for the benchmarks in ``bench/`` (CPU only, nothing here touches the library).

* model construction through fairseq's own option parsing (as ``fairseq-train`` does),
* memory probes (current RSS from ``/proc/self/statm``, peak RSS from ``getrusage``),
* timing (warm-up + median of repeats) and the ``BENCH {json}`` output convention.
"""

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
PLUGIN_DIR = os.path.join(REPO_ROOT, "seqboat_fairseq")

MB = 1024.0 * 1024.0


# --------------------------------------------------------------------------- environment
def setup_torch(threads: int, seed: int = 0):
    """Thread count (<= 0: every core) and fixed seeds. Returns the thread count used."""
    import random

    import numpy as np
    import torch

    if threads <= 0:
        threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return threads


def quiet_fairseq_logging():
    import logging

    for name in ("fairseq", "fairseq.tasks", "fairseq.models", "fairseq.utils", "root"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- memory
def rss_mb() -> float:
    """Current resident set size of this process, in MiB."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / MB


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- models
def build_from_cli(*cli_args: str):
    """Builds a model exactly as fairseq-train would (``--task language_modeling`` over a
    byte dictionary in a temporary data dir). Returns ``(model, task)``."""
    from seqboat_fairseq.testing import build_from_cli as build, write_byte_dictionary

    quiet_fairseq_logging()
    model, task, _ = build(write_byte_dictionary(tempfile.mkdtemp(prefix="seqboat_bench_")),
                           "language_modeling", *cli_args)
    return model, task


def add_model_shape_args(p) -> None:
    """The model-shape flags of the profiling scripts (defaults: train_step.py's table)."""
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden-dim", type=int, default=None)
    p.add_argument("--z-dim", type=int, default=128)
    p.add_argument("--n-dim", type=int, default=16)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--truncation", type=int, default=0)
    p.add_argument("--rel-pos", default="rotary", choices=["rotary", "simple"])
    p.add_argument("--ffn-dim", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)


MODEL_KINDS = ("seqboat", "seqboat_full", "always_active", "transformer")


def model_cli_args(kind: str, *, dim: int, layers: int, hidden: int, zdim: int, ndim: int,
                   window: int, ffn: int, heads: int, max_len: int, truncation: int,
                   rel_pos: str) -> List[str]:
    """fairseq command-line arguments of one benchmark model (dropout 0 everywhere)."""
    common = ["--tokens-per-sample", str(max_len), "--max-target-positions", str(max_len),
              "--dropout", "0", "--attention-dropout", "0"]
    if kind == "transformer":
        return ["--arch", "transformer_lm", "--decoder-embed-dim", str(dim),
                "--decoder-layers", str(layers), "--decoder-ffn-embed-dim", str(ffn),
                "--decoder-attention-heads", str(heads), "--activation-dropout", "0", *common]
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
    args = ["--arch", "seqboat_lm", "--decoder-embed-dim", str(dim), "--decoder-layers", str(layers),
            "--decoder-hidden-dim", str(hidden), "--decoder-z-dim", str(zdim),
            "--decoder-n-dim", str(ndim), "--truncation-length", str(truncation),
            "--rel-pos-bias", rel_pos, "--normalize-before", "--hidden-dropout", "0", *common]
    if kind == "seqboat":
        args += ["--decoder-chunk-size", str(window)]
    elif kind == "seqboat_full":
        args += ["--decoder-chunk-size", "-1"]
    elif kind == "always_active":
        args += ["--decoder-chunk-size", str(window), "--always-act"]
    return args


def model_label(kind: str, window: int) -> str:
    return {"seqboat": f"seqboat_w{window}", "seqboat_full": "seqboat_full",
            "always_active": f"always_active_w{window}", "transformer": "transformer"}[kind]


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- timing / output
def time_repeats(fn: Callable[[], None], warmup: int, repeats: int) -> List[float]:
    """Runs ``fn`` ``warmup`` times untimed, then ``repeats`` times; milliseconds per run."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def bench_line(record: Dict) -> str:
    return "BENCH " + json.dumps(record, sort_keys=False)


def emit(record: Dict) -> None:
    print(bench_line(record), flush=True)


def format_table(headers: Sequence[str], rows: Sequence[Sequence], title: str = "") -> str:
    cells = [[str(h) for h in headers]] + [[format_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [title] if title else []
    lines.append("  ".join(c.rjust(w) for c, w in zip(cells[0], widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)


def format_cell(value) -> str:
    """A table cell: None / NaN as "-", booleans as yes / NO, floats with 3 decimals below 10."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def parse_int_list(text: str) -> List[int]:
    return [int(x) for x in text.replace(",", " ").split() if x]


def parse_float_list(text: str) -> List[float]:
    return [float(x) for x in text.replace(",", " ").split() if x]


# --------------------------------------------------------------------------- CPU contention
# Other processes on a small machine distort CPU timings badly: with every core given to
# torch's OpenMP pool, one busy core elsewhere can slow a step down many times (threads
# wait on a descheduled peer). We therefore measure how much CPU *other* processes used
# while we timed (system busy time from /proc/stat minus this process's own CPU time) and,
# optionally, wait for the machine to be quiet before a measurement.
def system_busy_seconds() -> float:
    """CPU seconds spent busy (all cores, all processes) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


class ContentionMeter:
    """``with ContentionMeter() as m: ...`` -> ``m.other_cores``: average number of cores that
    other processes kept busy during the block (0 = quiet machine)."""

    def __enter__(self):
        self._t, self._busy, self._own = time.perf_counter(), system_busy_seconds(), own_cpu_seconds()
        return self

    def __exit__(self, *exc):
        wall = max(time.perf_counter() - self._t, 1e-9)
        others = (system_busy_seconds() - self._busy) - (own_cpu_seconds() - self._own)
        self.other_cores = max(others, 0.0) / wall
        return False


def other_load(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes over ``seconds`` (we sleep meanwhile)."""
    with ContentionMeter() as m:
        time.sleep(seconds)
    return m.other_cores


def wait_until_quiet(max_wait: float, threshold: float = 0.25, probe: float = 1.0, log=None) -> float:
    """Waits (up to ``max_wait`` seconds) until other processes use < ``threshold`` cores.
    Returns the last measured load of other processes."""
    deadline = time.perf_counter() + max_wait
    load = other_load(probe)
    announced = False
    while load >= threshold and time.perf_counter() < deadline:
        if log is not None and not announced:
            log(f"# waiting for a quiet CPU (other processes use {load:.2f} cores) ...")
            announced = True
        time.sleep(2.0)
        load = other_load(probe)
    return load


def timed_when_quiet(fn: Callable[[], object], threshold: float = 0.25, max_wait: float = 0.0,
                     max_tries: int = 1, probe: float = 0.5, wait_first: bool = True):
    """Times one call of ``fn`` (ms), gated on a quiet machine: waits (up to ``max_wait`` s)
    for other processes to use < ``threshold`` cores, times ``fn``, and re-times it (up to
    ``max_tries`` calls in all, waiting again before each) while other processes disturbed the
    call; ``wait_first=False`` skips the wait before the first call. Returns
    ``(ms, other_cores, tries, value)`` of the least disturbed call (``value``: what ``fn``
    returned in that call)."""
    best = None
    tries = 0
    for tries in range(1, max(max_tries, 1) + 1):
        if max_wait > 0 and (wait_first or tries > 1):
            wait_until_quiet(max_wait, threshold, probe=probe)
        with ContentionMeter() as meter:
            start = time.perf_counter()
            value = fn()
            ms = (time.perf_counter() - start) * 1000.0
        if best is None or meter.other_cores < best[1]:
            best = (ms, meter.other_cores, value)
        if meter.other_cores < threshold:
            break
    return best[0], best[1], tries, best[2]


# --------------------------------------------------------------------------- provenance
def library_hash() -> str:
    """Short hash of the contents of every ``seqboat_fairseq/**/*.py`` in the working tree: the
    code a measurement actually ran (HEAD alone misses uncommitted edits)."""
    import hashlib

    digest = hashlib.sha1()
    root = os.path.join(REPO_ROOT, "seqboat_fairseq")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()[:10]


def code_revision() -> str:
    """``<short HEAD> lib:<library_hash>``: rows measured on different library code (committed
    or not) are told apart by the ``lib:`` part."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        head = "unknown"
    return f"{head} lib:{library_hash()}"
