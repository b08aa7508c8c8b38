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


def add_model_shape_args(p, *, layers: bool = True, transformer: bool = True) -> None:
    """The model-shape flags of the benchmarks (defaults: train_step.py's table); ``layers``: with
    ``--layers``, ``transformer``: with the Transformer's ``--ffn-dim`` / ``--heads``."""
    p.add_argument("--dim", type=int, default=256, help="model width D")
    if layers:
        p.add_argument("--layers", type=int, default=4, help="number of layers")
    p.add_argument("--hidden-dim", type=int, default=None, help="SeqBoat GAU value dim H (default 2D)")
    p.add_argument("--z-dim", type=int, default=128, help="SeqBoat shared query/key dim Z")
    p.add_argument("--n-dim", type=int, default=16, help="SeqBoat MD-EMA expansion dim N")
    p.add_argument("--window", type=int, default=128,
                   help="SeqBoat working memory w (--decoder-chunk-size; -1: SeqBoat-full)")
    p.add_argument("--truncation", type=int, default=0, help="SeqBoat MD-EMA --truncation-length (0: none)")
    p.add_argument("--rel-pos", default="rotary", choices=["rotary", "simple"], help="SeqBoat --rel-pos-bias")
    if transformer:
        p.add_argument("--ffn-dim", type=int, default=None, help="Transformer FFN dim (default 2D)")
        p.add_argument("--heads", type=int, default=None, help="Transformer heads (default D/64)")


def resolve_model_shape(args):
    """Fills the shape defaults that depend on ``--dim``: H = 2D, and (with the Transformer's
    flags) FFN = 2D and D/64 heads. Returns ``args``."""
    args.hidden_dim = args.hidden_dim or 2 * args.dim
    if hasattr(args, "ffn_dim"):
        args.ffn_dim = args.ffn_dim or 2 * args.dim
        args.heads = args.heads or max(args.dim // 64, 1)
    return args


def add_threads_seed_args(p) -> None:
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0)


def add_quiet_args(p, *, wait_quiet: float, before: str, retime: bool = True) -> None:
    """``--wait-quiet`` (wait for other processes to leave the CPU before each ``before``) and,
    with ``retime``, ``--max-tries`` / ``--quiet-threshold`` (see :func:`timed_when_quiet`)."""
    p.add_argument("--wait-quiet", type=float, default=wait_quiet,
                   help=f"before each {before}, wait up to this many seconds for other processes to leave the CPU "
                        "(0: do not wait)")
    if retime:
        p.add_argument("--max-tries", type=int, default=3,
                       help="re-time a call disturbed by other processes (after waiting), up to this many calls")
        p.add_argument("--quiet-threshold", type=float, default=0.25,
                       help="cores used by other processes above which a call counts as disturbed")


def build_model(args, kind: str, max_len: int, *extra_cli: str):
    """One benchmark model (:func:`model_cli_args`) of the shape flags in ``args``
    (:func:`add_model_shape_args`, resolved), built as fairseq-train would. Returns ``(model, task)``."""
    cli = model_cli_args(kind, dim=args.dim, layers=args.layers, hidden=args.hidden_dim, zdim=args.z_dim,
                         ndim=args.n_dim, window=args.window, ffn=args.ffn_dim, heads=args.heads, max_len=max_len,
                         truncation=args.truncation, rel_pos=args.rel_pos)
    return build_from_cli(*cli, *extra_cli)


def lm_loss_backward(model, tokens) -> None:
    """Forward + next-token cross-entropy + backward of one LM step over ``tokens (B, L + 1)``."""
    import torch.nn.functional as F

    logits, _ = model(tokens[:, :-1])
    F.cross_entropy(logits.float().view(-1, logits.size(-1)), tokens[:, 1:].reshape(-1)).backward()


def random_tokens(task, seq_len: int, seed: int = 0):
    """``(1, seq_len + 1)`` random byte tokens of the task's dictionary (no special symbols)."""
    import torch

    d = task.target_dictionary
    return torch.randint(d.nspecial, len(d), (1, seq_len + 1), generator=torch.Generator().manual_seed(seed))


def add_profile_args(p) -> None:
    """The flags the two profilers share after ``--model``: the length, the model shape, warm-up,
    threads, seed and table size."""
    p.add_argument("--seq-len", type=int, default=4096)
    add_model_shape_args(p)
    p.add_argument("--warmup", type=int, default=1)
    add_threads_seed_args(p)
    p.add_argument("--top", type=int, default=15, help="rows per table")


MODEL_KINDS = ("seqboat", "seqboat_full", "always_active", "transformer")


def model_cli_args(kind: str, *, dim: int, layers: int, hidden: int, zdim: int, ndim: int,
                   window: int, ffn: int, heads: int, max_len: int, truncation: int,
                   rel_pos: str) -> List[str]:
    """fairseq command-line arguments of one benchmark model (dropout 0 everywhere)."""
    common = ["--tokens-per-sample", str(max_len), "--max-target-positions", str(max_len),
              "--dropout", "0", "--attention-dropout", "0"]
    if kind == "transformer":
        # input/output dims default to 512 in fairseq's config, not to the embedding dim: without
        # them the Transformer gets two extra projections
        return ["--arch", "transformer_lm", "--decoder-embed-dim", str(dim),
                "--decoder-input-dim", str(dim), "--decoder-output-dim", str(dim),
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


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """The machine's memory read bandwidth as torch sees it (GB/s): median time of ``sum`` over a
    ``megabytes`` fp32 tensor, far larger than any cache. A floor for memory-bound work: a step
    that must read ``b`` bytes takes at least ``b / bandwidth`` (bench/generation.py)."""
    import torch

    data = torch.ones(megabytes * 2 ** 20 // 4)
    data.sum()  # first touch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return data.numel() * 4 / median(times) / 1e9


def matvec_bandwidth_gbs(megabytes: int = 128, columns: int = 616, repeats: int = 9) -> float:
    """The rate (GB/s) at which torch's one-row ``F.linear`` reads its weight on this machine: the median
    time of a 1 x ``columns`` input against weights totalling ``megabytes`` fp32 (several matrices of
    4 MiB-16 MiB, taken in turn, so none stays in cache). A decoding step at batch 1 is a few such
    products: the bytes it must read, divided by this rate, is what the library's own kernel would
    take for them, often well below ``read_bandwidth_gbs`` (a streaming ``sum``)."""
    import torch
    import torch.nn.functional as F

    rows = 16 * 2 ** 20 // (4 * columns)  # about 16 MiB per matrix
    weights = [torch.randn(rows, columns) for _ in range(max(2, megabytes // 16))]
    x = torch.randn(1, columns)
    for w in weights:  # first touch
        F.linear(x, w)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for w in weights:
            F.linear(x, w)
        times.append(time.perf_counter() - start)
    return sum(w.numel() for w in weights) * 4 / median(times) / 1e9


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def bench_line(record: Dict) -> str:
    return "BENCH " + json.dumps(record, sort_keys=False)


def emit(record: Dict) -> None:
    """Prints ``BENCH {json}`` and appends the record, stamped with its run (:func:`run_stamp`), to
    ``<results dir>/<script>.jsonl`` (:func:`results_dir`; nothing is saved where that is ``None``)."""
    print(bench_line(record), flush=True)
    save_record(record)


# --------------------------------------------------------------------------- stored results
# Every emitted record is also appended to bench/results/<script>.jsonl, one JSON object a line:
# {"run": run_stamp(), "record": {...}}. `python bench/report.py` turns these files into
# docs/results.md, so a published figure is always a stored measurement with its provenance.
RESULTS_ENV = "SEQBOAT_BENCH_RESULTS"
DEFAULT_RESULTS_DIR = os.path.join(REPO_ROOT, "bench", "results")
_RUN_STAMP: Dict = {}


def results_dir():
    """Where :func:`emit` saves records: ``$SEQBOAT_BENCH_RESULTS`` if set (empty, ``0``, ``off`` or
    ``none``: nowhere), else ``bench/results/``, except under pytest (``PYTEST_CURRENT_TEST``, which
    subprocesses inherit), where nothing is saved unless the variable names a directory: a test must
    never add measurements to the repository."""
    value = os.environ.get(RESULTS_ENV)
    if value is None:
        return None if "PYTEST_CURRENT_TEST" in os.environ else DEFAULT_RESULTS_DIR
    if value.strip().lower() in ("", "0", "off", "none", "false", "no"):
        return None
    return value


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``) or ``platform.processor()``."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def script_name() -> str:
    """The running bench script's name without ``.py`` (the results file's stem)."""
    return os.path.splitext(os.path.basename(_script_path()))[0] or "interactive"


def _script_path() -> str:
    if sys.argv and sys.argv[0] and sys.argv[0] != "-c":
        return sys.argv[0]
    return getattr(sys.modules.get("__main__"), "__file__", None) or "interactive"


def run_stamp() -> Dict:
    """Provenance shared by every record of this process: ``run_id``, ``script``, ``commit`` (short
    HEAD), ``lib`` (:func:`library_hash`: the library code that actually ran), ``dirty`` (uncommitted
    changes under ``seqboat_fairseq/`` or ``bench/``, the stored results in ``bench/results/`` aside), ``date`` (UTC, ISO 8601), ``machine`` (CPU
    model, cores, OS, and the first GPU where CUDA is available), ``torch`` version and ``command`` (the command line, from the repository root)."""
    if _RUN_STAMP:
        return _RUN_STAMP
    import datetime
    import platform
    import shlex
    import subprocess

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    gpu = ""
    try:
        import torch
        torch_version = torch.__version__
        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        torch_version = None
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    script = os.path.relpath(os.path.abspath(_script_path()), REPO_ROOT)
    _RUN_STAMP.update({
        "run_id": f"{now.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}-{os.urandom(3).hex()}",
        "script": script_name(),
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "lib": library_hash(),
        # the stored results are data, not code: a run after another run's records is not dirty
        "dirty": bool(git("status", "--porcelain", "--", "seqboat_fairseq", "bench", ":(exclude)bench/results")),
        "date": now.isoformat().replace("+00:00", "Z"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}{gpu}",
        "torch": torch_version,
        "command": shlex.join(["python", script, *sys.argv[1:]]),
    })
    return _RUN_STAMP


def save_record(record: Dict, directory=None) -> None:
    """Appends ``{"run": run_stamp(), "load_1m": ..., "record": record}`` (plus ``lib_now`` where the
    library's hash is no longer the run's) to ``<directory>/<script>.jsonl``
    (``directory``: :func:`results_dir` by default; ``None`` there: nothing is written)."""
    directory = directory or results_dir()
    if directory is None:
        return
    stamp = run_stamp()
    os.makedirs(directory, exist_ok=True)
    # the machine's 1-minute load average when the record was made: on a shared machine, a record
    # taken while other processes ran is told apart (bench/report.py prints the run's maximum)
    entry = {"run": stamp, "load_1m": round(os.getloadavg()[0], 2), "record": record}
    lib = library_hash()
    if lib != stamp["lib"]:  # the library was edited while this run went on: this record ran other code
        entry["lib_now"] = lib
    line = json.dumps(entry, sort_keys=False) + "\n"
    with open(os.path.join(directory, f"{stamp['script']}.jsonl"), "a") as f:
        f.write(line)  # one write of one line: records of concurrent runs never interleave


def exit_status_for_failures(script: str, failures: Sequence[str]) -> int:
    """0 when every run gave its number; otherwise names each run that gave none on stderr and
    returns 1, so that a script never ends with status 0 after leaving a number out."""
    if not failures:
        return 0
    print(f"\n{script}: error: no number is reported for these runs:", file=sys.stderr)
    for failure in failures:
        print(f"  {failure}", file=sys.stderr)
    return 1


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


# --------------------------------------------------------------------------- worker subprocesses
RESULT_PREFIX = "RESULT "


def run_result_subprocess(cmd: Sequence[str], timeout: float, failure: Dict) -> Dict:
    """Runs a benchmark worker (``cmd``, from the repository root) and returns the JSON object of its line
    ``RESULT {json}`` plus ``wall_s_total``; or ``failure`` with an ``error`` saying why there is none
    (timeout, killed, exit status and the tail of its output)."""
    import subprocess

    start = time.perf_counter()
    try:
        proc = subprocess.run(list(cmd), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**failure, "error": f"timeout after {timeout}s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            record = json.loads(line[len(RESULT_PREFIX):])
            record["wall_s_total"] = round(time.perf_counter() - start, 1)
            return record
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit {proc.returncode}"
    return {**failure, "error": f"{why}: {' | '.join(tail)}"}
