"""Streaming evaluation (``fairseq-eval-lm --task language_modeling_stream``, docs/streaming.md)
measured: memory, speed against fairseq's recomputation, and the loss against the history.

Run from the repository root::

    python bench/streaming.py            # ~30-40 min on 2 shared cores: trains three tiny models
    python bench/streaming.py --quick    # ~3 min: smaller splits, a few training updates

Three tiny language models, ``seqboat_lm_tiny`` (SeqBoat, w = 32), ``mega_chunk_lm_tiny``
(MEGA-chunk, c = 32) and ``spade_lm_tiny`` (SPADE, w = 32), are trained alike by ``fairseq-train``
(examples/train_tiny_lm.sh's recipe, ``--updates`` updates, blocks of 512 tokens) on a byte corpus
that ``data_prep/enwik8.py --pydoc-demo`` makes of Python's documentation text, ``--test-fraction``
of it held out. Every measurement is one ``fairseq-eval-lm`` process (``--cpu``, ``--threads``
threads); its ``Evaluated N tokens in S s (R tokens/s)`` and ``Loss (base 2)`` lines are read back,
and its peak RSS (``ru_maxrss``) is reported by the process itself.

``memory`` rows (one per model)
    streaming, ``--batch-size 1 --tokens-per-sample 2048``, over a split of ``--small`` and one of
    ``--large`` random tokens (lines of 100 tokens, the corpus's dictionary): peak RSS of each
    process, their ratio (target: within 10 %), and tokens/s of each (time linear in the split:
    the two rates equal).
``speed`` rows (one per model and C)
    tokens/s of stock ``fairseq-eval-lm --context-window C --tokens-per-sample 2C`` (C new tokens
    per block, each after C to 2C - 1 tokens of recomputed history) and of streaming
    (``--tokens-per-sample 2048``: every token after all of its history), both ``--batch-size 1``
    on the ``--small`` split, side by side in this run.
``curve`` rows (one per model and R)
    loss (bits per byte: one token per byte) on the held-out split with ``--reset-every R`` for
    ``--resets`` (0: never), and a PNG of it (``--plot``).

Each row is printed in a table and as ``BENCH {json}`` (bench/common.py ``emit``).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PLUGIN_DIR, REPO_ROOT, emit, format_table, results_dir, run_result_subprocess  # noqa: E402

MODELS = (("SeqBoat", "seqboat_lm_tiny"), ("MEGA-chunk", "mega_chunk_lm_tiny"), ("SPADE", "spade_lm_tiny"))
TASK = "language_modeling_stream"
STREAM_BLOCK = 2048
_EVALUATED = re.compile(r"Evaluated ([\d,]+) tokens in ([\d.]+)s \(([\d.]+) tokens/s\)")
_LOSS = re.compile(r"Loss \(base 2\): ([\d.]+)")


# --------------------------------------------------------------------------- worker
def worker(eval_args) -> None:
    """Runs fairseq-eval-lm in this process and prints ``RESULT {json}``: tokens, seconds,
    tokens_per_s, loss, peak_rss_mb."""
    import logging
    import resource

    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logging.getLogger("fairseq_cli.eval_lm").addHandler(Keep())
    from fairseq_cli import eval_lm

    sys.argv = ["fairseq-eval-lm", *eval_args]
    eval_lm.cli_main()
    text = "\n".join(lines)
    evaluated, loss = _EVALUATED.search(text), _LOSS.search(text)
    print("RESULT " + json.dumps({
        "tokens": int(evaluated.group(1).replace(",", "")), "seconds": float(evaluated.group(2)),
        "tokens_per_s": float(evaluated.group(3)), "loss": float(loss.group(1)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}), flush=True)


def evaluate(args, data, checkpoint, *flags):
    """One fairseq-eval-lm process over ``data``'s test split; its RESULT record (or an ``error``)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", data, "--user-dir", PLUGIN_DIR, "--path",
           checkpoint, "--gen-subset", "test", "--cpu", "--num-workers", "0", "--log-format", "simple",
           *map(str, flags)]
    env_threads = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = env_threads
    os.environ["MKL_NUM_THREADS"] = env_threads
    result = run_result_subprocess(cmd, timeout=args.timeout, failure={})
    if "error" in result:
        print(f"  failed: {' '.join(map(str, flags))}: {result['error']}", file=sys.stderr, flush=True)
    return result


# --------------------------------------------------------------------------- data and models
def run(cmd, log):
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-2000:]
        raise SystemExit(f"streaming.py: error: {' '.join(map(str, cmd[:4]))} ... failed (exit {proc.returncode}); "
                         f"see {log}:\n{tail}")


def prepare_corpus(args, work):
    data = os.path.join(work, "corpus")
    if not os.path.isfile(os.path.join(data, "test.idx")):
        run([sys.executable, "data_prep/enwik8.py", "--pydoc-demo", "--test-fraction", str(args.test_fraction),
             *(["--max-bytes", str(args.max_bytes)] if args.max_bytes else []), "--destdir", data, "--force"],
            os.path.join(work, "prep.log"))
    return data


def random_split(work, corpus, tokens, name):
    """A data directory with the corpus's dictionary and a test split of ``tokens`` random symbols
    (lines of 100 tokens, the last ends the split)."""
    import numpy as np
    import torch
    from fairseq.data import Dictionary, indexed_dataset

    data = os.path.join(work, name)
    if os.path.isfile(os.path.join(data, "test.idx")):
        return data
    os.makedirs(data, exist_ok=True)
    shutil.copy(os.path.join(corpus, "dict.txt"), data)
    dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
    rng = np.random.default_rng(0)
    builder = indexed_dataset.make_builder(os.path.join(data, "test.bin"), impl="mmap", vocab_size=len(dictionary))
    for start in range(0, tokens, 100):
        length = min(100, tokens - start)
        line = np.append(rng.integers(dictionary.nspecial, len(dictionary), length - 1), dictionary.eos())
        builder.add_item(torch.from_numpy(line).int())
    builder.finalize(os.path.join(data, "test.idx"))
    return data


def train(args, work, corpus, arch):
    save = os.path.join(work, f"ck_{arch}")
    checkpoint = os.path.join(save, "checkpoint_last.pt")
    if os.path.isfile(checkpoint):
        return checkpoint
    warmup = args.updates // 10
    run(["fairseq-train", corpus, "--user-dir", PLUGIN_DIR, "--task", "language_modeling", "--arch", arch,
         "--criterion", "seqboat_cross_entropy", "--batch-size", "8", "--tokens-per-sample", "512",
         "--optimizer", "radam", "--radam-betas", "(0.9, 0.98)", "--weight-decay", "0.01", "--clip-norm", "0.25",
         "--lr", "4e-3", "--lr-scheduler", "linear_decay",
         *(["--warmup-updates", str(warmup), "--warmup-init-lr", "1e-4"] if warmup else []),
         "--total-num-update", str(args.updates), "--max-update", str(args.updates), "--save-dir", save,
         "--no-epoch-checkpoints", "--disable-validation", "--log-format", "simple", "--log-interval", "50",
         "--cpu", "--num-workers", "0", "--seed", "1"], os.path.join(work, f"train_{arch}.log"))
    return checkpoint


# --------------------------------------------------------------------------- measurements
def measure_memory(args, work, corpus, checkpoints):
    small = random_split(work, corpus, args.small, "random_small")
    large = random_split(work, corpus, args.large, "random_large")
    rows = []
    for name, arch in MODELS:
        flags = ("--task", TASK, "--batch-size", 1, "--tokens-per-sample", STREAM_BLOCK)
        a, b = evaluate(args, small, checkpoints[arch], *flags), evaluate(args, large, checkpoints[arch], *flags)
        record = {"bench": "streaming_memory", "model": name, "arch": arch, "small_tokens": a.get("tokens"),
                  "large_tokens": b.get("tokens"), "small_peak_rss_mb": a.get("peak_rss_mb"),
                  "large_peak_rss_mb": b.get("peak_rss_mb"), "small_tokens_per_s": a.get("tokens_per_s"),
                  "large_tokens_per_s": b.get("tokens_per_s"), "threads": args.threads}
        if "peak_rss_mb" in a and "peak_rss_mb" in b:
            record["rss_ratio"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
            record["within_10pct"] = record["rss_ratio"] <= 1.10
            record["rate_ratio"] = round(b["tokens_per_s"] / a["tokens_per_s"], 3)
        emit(record)
        rows.append(record)
    print(format_table(
        ["model", "tokens", "peak RSS MiB", "tokens", "peak RSS MiB", "RSS ratio", "<=10%", "tok/s small",
         "tok/s large"],
        [[r["model"], r["small_tokens"], r["small_peak_rss_mb"], r["large_tokens"], r["large_peak_rss_mb"],
          r.get("rss_ratio"), r.get("within_10pct"), r["small_tokens_per_s"], r["large_tokens_per_s"]] for r in rows],
        title=f"memory: streaming, batch 1, blocks of {STREAM_BLOCK}, {args.threads} thread(s)"), flush=True)


def measure_speed(args, work, corpus, checkpoints):
    small = random_split(work, corpus, args.small, "random_small")
    rows = []
    for name, arch in MODELS:
        stream = evaluate(args, small, checkpoints[arch], "--task", TASK, "--batch-size", 1,
                          "--tokens-per-sample", STREAM_BLOCK)
        for context in args.contexts:
            stock = evaluate(args, small, checkpoints[arch], "--batch-size", 1, "--tokens-per-sample", 2 * context,
                             "--context-window", context, "--max-tokens", 2 * context)
            record = {"bench": "streaming_speed", "model": name, "arch": arch, "context": context,
                      "tokens": stream.get("tokens"), "stock_tokens": stock.get("tokens"),
                      "stock_tokens_per_s": stock.get("tokens_per_s"), "stream_tokens_per_s": stream.get("tokens_per_s"),
                      "stock_loss": stock.get("loss"), "stream_loss": stream.get("loss"), "threads": args.threads}
            if stock.get("tokens_per_s") and stream.get("tokens_per_s"):
                record["speedup"] = round(stream["tokens_per_s"] / stock["tokens_per_s"], 2)
            emit(record)
            rows.append(record)
    print(format_table(
        ["model", "C", "tokens", "stock tok/s", "stream tok/s", "speed-up"],
        [[r["model"], r["context"], r["tokens"], r["stock_tokens_per_s"], r["stream_tokens_per_s"], r.get("speedup")]
         for r in rows],
        title=f"speed: stock --context-window C (--tokens-per-sample 2C) vs streaming, batch 1, "
              f"{args.threads} thread(s), same run"), flush=True)


def measure_curve(args, work, corpus, checkpoints):
    rows, curves = [], {}
    for name, arch in MODELS:
        for reset in args.resets:
            result = evaluate(args, corpus, checkpoints[arch], "--task", TASK, "--batch-size", 1,
                              "--tokens-per-sample", STREAM_BLOCK, "--reset-every", reset)
            record = {"bench": "streaming_curve", "model": name, "arch": arch, "reset_every": reset,
                      "history": "unbounded" if reset == 0 else reset, "tokens": result.get("tokens"),
                      "bits_per_byte": result.get("loss"), "updates": args.updates}
            emit(record)
            rows.append(record)
            if result.get("loss") is not None:
                curves.setdefault(name, []).append((reset, result["loss"]))
    labels = [("unbounded" if r == 0 else r) for r in args.resets]
    table = {(r["model"], r["reset_every"]): r["bits_per_byte"] for r in rows}
    print(format_table(["model", *map(str, labels)],
                       [[name, *[table.get((name, r)) for r in args.resets]] for name, _ in MODELS],
                       title=f"curve: test bits per byte with the state dropped every R tokens "
                             f"({rows[0]['tokens'] if rows else '?'} tokens, {args.updates} training updates)"),
          flush=True)
    plot(args, curves)


def plot(args, curves):
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # importing fairseq set the root logger to DEBUG
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = sorted(r for r in args.resets if r > 0)
    unbounded_x = (finite[-1] * 4) if finite else 1
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, points in curves.items():
        xs = [unbounded_x if r == 0 else r for r, _ in points]
        order = sorted(range(len(xs)), key=xs.__getitem__)
        ax.plot([xs[i] for i in order], [points[i][1] for i in order], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ticks = finite + ([unbounded_x] if 0 in args.resets else [])
    ax.set_xticks(ticks)
    ax.set_xticklabels([("unbounded" if t == unbounded_x and 0 in args.resets else str(t)) for t in ticks])
    ax.set_xlabel("history: state dropped every R tokens")
    ax.set_ylabel("test bits per byte")
    ax.set_title("Streaming evaluation: loss against available history")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    plt.close(fig)
    print(f"curve plot: {args.plot}", flush=True)


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small splits and 20 training updates (for tests): --small 20000 --large 60000 "
                        "--updates 20 --max-bytes 60000 --contexts 512 --resets 256,0")
    p.add_argument("--parts", default="memory,speed,curve", help="which measurements (comma-separated)")
    p.add_argument("--work-dir", default=None, help="data and checkpoints (default: a temporary directory, removed); "
                                                   "an existing one is reused")
    p.add_argument("--small", type=int, default=100_000, help="tokens of the small random split")
    p.add_argument("--large", type=int, default=2_000_000, help="tokens of the large random split")
    p.add_argument("--contexts", default="512,2048", help="stock --context-window values")
    p.add_argument("--resets", default="256,1024,4096,16384,0", help="--reset-every values (0: never)")
    p.add_argument("--updates", type=int, default=600, help="training updates per model")
    p.add_argument("--max-bytes", type=int, default=None, help="cap on the corpus (data_prep/enwik8.py --max-bytes)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction of the corpus")
    p.add_argument("--threads", type=int, default=1, help="OMP threads of each eval process")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per eval process")
    p.add_argument("--plot", default=None, help="PNG of the curve (default: bench/results/streaming_curve.png, or "
                                                "the work directory where records are not saved)")
    args = p.parse_args(argv)
    if args.quick:
        args.small, args.large, args.updates = 20_000, 60_000, 20
        args.max_bytes = args.max_bytes or 60_000
        args.contexts, args.resets = "512", "256,0"
    try:
        args.contexts = [int(c) for c in args.contexts.split(",")]
        args.resets = [int(r) for r in args.resets.split(",")]
    except ValueError:
        p.error("--contexts / --resets: expected comma-separated integers")
    args.parts = [part.strip() for part in args.parts.split(",")]
    unknown = set(args.parts) - {"memory", "speed", "curve"}
    if unknown:
        p.error(f"--parts: unknown {sorted(unknown)}; expected memory, speed, curve")
    return args


def main(argv=None):
    args = parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="seqboat_streaming_")
    os.makedirs(work, exist_ok=True)
    args.plot = args.plot or os.path.join(results_dir() or work, "streaming_curve.png")
    try:
        start = time.time()
        corpus = prepare_corpus(args, work)
        checkpoints = {arch: train(args, work, corpus, arch) for _, arch in MODELS}
        print(f"trained {len(MODELS)} models ({args.updates} updates each) in {time.time() - start:.0f}s", flush=True)
        if "memory" in args.parts:
            measure_memory(args, work, corpus, checkpoints)
        if "speed" in args.parts:
            measure_speed(args, work, corpus, checkpoints)
        if "curve" in args.parts:
            measure_curve(args, work, corpus, checkpoints)
    finally:
        if args.work_dir is None and not os.path.abspath(args.plot).startswith(os.path.abspath(work) + os.sep):
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        sys.exit(main())
