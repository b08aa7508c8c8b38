"""Quality against speed at the rates trained routers reach: SeqBoat vs MEGA-chunk vs SPADE vs a Transformer.

For each task, every model is trained at equal parameters (within 5 % of SeqBoat's) for the same wall time
by fairseq's own loop (bench/quality_race.py's ``train``: ``fairseq_cli.train`` in a fresh subprocess,
``--stop-time-hours``, ``OMP_NUM_THREADS=--threads``), once per ``--seeds`` seed, and evaluated on the test
split (every token / example counted). Then ONE timing process per task loads every trained checkpoint and
times, interleaved (a burst of load on the machine hits every model alike), one training step
(fairseq's criterion forward + backward, train mode, no optimizer) on the same first test batch at the
training batch size, with the routers deciding as they learned; it reports the median ms, the peak of
torch's allocator over the step (``alloc_mb``, bench/train_step.py), and each layer's activation rate on
that batch in eval mode (the learned rates). Tasks:

``lm``       the byte corpus of examples/demo.sh (``data_prep/enwik8.py --pydoc-demo``), the ``*_lm_tiny``
             presets and a Transformer LM (bench/quality_race.py); test bits per byte (lower is better).
``listops``  generated ListOps (``data_prep/listops_generate.py``), the ``*_lra_listop`` presets shrunk as in
             quality_race.py, ``transformer_lra``; test accuracy (%).
``speech``   a SYNTHETIC raw-speech set written in the Speech Commands format that ``--task speech_commands``
             loads (``input/{split}.npy`` int16 clips, ``label/{split}.npy``, ``meta.json``), 10 classes of
             ``--speech-samples`` samples (default 2,000, not the real 16,000: CPU budget): each clip holds two
             tone bursts at random onsets, the class is the ordered pair of tones (12 tones, 10 pairs), plus
             noise. ``seqboat_sc_raw`` shrunk (2 layers, D=32, H=64, Z=16, w=64), MEGA-chunk = the same with
             ``--always-act --chunked-attention``, SPADE = ``--layer-type spade`` (FFN solved), ``transformer_lra``;
             test accuracy (%).

Results: per (task, model): quality mean +- std over seeds, step ms and alloc_mb (mean +- std over the
seeds' checkpoints), speed-up vs the Transformer of the same task, learned per-layer activation rates (mean
over seeds); one PNG per task (``<work-dir>/tradeoff_<task>.png``: quality against training steps per
second, marker area proportional to alloc_mb, error bars = std over seeds), one ``BENCH`` line per run and
per (task, model) summary.

The knobs (``--sweep-task``, default listops): SeqBoat is trained again with each value of the router's
knobs in ``--sweep`` (default ``act_bias=0.5,1,2;init_temp_scale=0.1,1``: ``--act-bias`` is added to the
router's skip logit, > 0 skips more; ``--init-temp-scale`` sets the router's initial temperature
tau_0 = scale * sqrt(D)), same seeds and budget, timed in the same process as the race's checkpoints of that
task, and drawn as a quality/speed curve (``<work-dir>/tradeoff_sweep.png``, each point labelled with its
knob value and learned rate).

``--jobs 2`` trains two runs at a time (each ``--threads`` threads): on 2 idle cores the default run (3 tasks
x 4 models x 3 seeds + 5 knob values x 3 seeds, 1.25 min each) takes about an hour. A run that fails, does
not stop on its time limit, evaluates fewer tokens/examples than its split or has more than 5 % more or fewer
parameters than SeqBoat gives no number (its (task, model) row is FAILED) and the script exits 1.

    python bench/tradeoff.py                            # ~60 min on 2 idle cores
    python bench/tradeoff.py --tasks listops --minutes 3 --seeds 1,2,3
    python bench/tradeoff.py --quick                    # smoke run (the test)
"""

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PLUGIN_DIR, RESULT_PREFIX, code_revision, cpu_model, emit, format_table,  # noqa: E402
                    exit_status_for_failures, median, quiet_fairseq_logging)
import quality_race as qr  # noqa: E402

TASKS = ("lm", "listops", "speech")
MODELS = qr.MODELS
DEFAULT_SWEEP = "act_bias=0.5,1,2;init_temp_scale=0.1,1"
KNOB_FLAGS = {"act_bias": "--act-bias", "init_temp_scale": "--init-temp-scale"}
SPEECH_CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SPEECH_FORMAT = "seqboat-fairseq speech_commands raw 1"  # what tasks/speech_commands.py reads
SPEECH_SIZES = dict(num_train=2000, num_valid=100, num_test=500)
SPEECH_SIZES_QUICK = dict(num_train=200, num_valid=20, num_test=60)
LISTOPS_SIZES_QUICK = dict(qr.LISTOPS_SIZES, num_train=500, num_valid=20, num_test=100)


class Refused(Exception):
    """Bad input: reported as one ``error:`` line."""


# --------------------------------------------------------------------------- synthetic speech
def write_speech_data(root: str, samples: int, sizes: Dict, seed: int) -> str:
    """A synthetic 10-class raw-speech set in the Speech Commands format (module docstring)."""
    import numpy as np

    data = os.path.join(root, "data")
    rng = np.random.default_rng(seed)
    tones = [math.pi * (0.02 + 0.035 * k) for k in range(12)]  # radians per sample
    pairs = [(a, b) for a in range(12) for b in range(12) if a != b]
    pairs = [pairs[i] for i in rng.choice(len(pairs), size=len(SPEECH_CLASSES), replace=False)]
    burst = max(samples // 8, 16)
    arrays = {}
    for split in ("train", "valid", "test"):
        n = sizes[f"num_{split}"]
        labels = rng.integers(0, len(SPEECH_CLASSES), n)
        clips = rng.normal(0.0, 0.05, (n, samples))
        t = np.arange(burst)
        for i, c in enumerate(labels):
            first = rng.integers(0, samples // 2 - burst)
            second = rng.integers(samples // 2, samples - burst)
            for start, tone in ((first, tones[pairs[c][0]]), (second, tones[pairs[c][1]])):
                clips[i, start:start + burst] += rng.uniform(0.3, 0.8) * np.sin(tone * t + rng.uniform(0, 6.3))
        arrays[split] = (np.clip(clips * 32768.0, -32768, 32767).astype(np.int16), labels.astype(np.int64))
    for sub in ("input", "label"):
        os.makedirs(os.path.join(data, sub), exist_ok=True)
    for split, (clips, labels) in arrays.items():
        np.save(os.path.join(data, "input", f"{split}.npy"), clips)
        np.save(os.path.join(data, "label", f"{split}.npy"), labels)
    train = arrays["train"][0].astype(np.float64) / 32768.0
    meta = {"format": SPEECH_FORMAT, "classes": list(SPEECH_CLASSES), "sample_rate": 16000, "clip_samples": samples,
            "sample_scale": 32768.0, "train_mean": float(train.mean()), "train_std": float(train.std(ddof=1)),
            "clips": {s: len(a[1]) for s, a in arrays.items()}, "padded": {s: 0 for s in arrays},
            "synthetic": "bench/tradeoff.py: two tone bursts per clip, class = the ordered pair of tones"}
    with open(os.path.join(data, "meta.json"), "w") as f:
        json.dump(meta, f)
    labels = arrays["test"][1].tolist()
    majority = 100.0 * max(labels.count(c) for c in set(labels)) / len(labels)
    return data, majority


def speech_shrink(samples: int) -> List[str]:
    return ["--encoder-layers", "2", "--encoder-embed-dim", "32", "--encoder-hidden-dim", "64", "--z-dim", "16",
            "--n-dim", "16", "--chunk-size", "64", "--truncation-length", str(samples), "--max-positions",
            str(samples), "--classifier-out-dim", "64"]


def speech_runs(data: str, models: List[str], samples: int) -> List[qr.Run]:
    count = lambda *a: qr.parameter_count(data, "speech_commands", list(a))  # noqa: E731
    base = ["--arch", "seqboat_sc_raw", *speech_shrink(samples)]
    runs = {"seqboat": qr.Run("speech", "seqboat", "seqboat_sc_raw", base),
            "mega_chunk": qr.Run("speech", "mega_chunk", "seqboat_sc_raw --always-act --chunked-attention",
                                 [*base, "--always-act", "--chunked-attention"])}
    reference = count(*base)
    if "spade" in models:
        spade = [*base, "--layer-type", "spade"]
        ffn = qr.solve_width(lambda f: count(*spade, "--encoder-ffn-embed-dim", str(f)), reference,
                             "--encoder-ffn-embed-dim")
        runs["spade"] = qr.Run("speech", "spade", "seqboat_sc_raw --layer-type spade",
                               [*spade, "--encoder-ffn-embed-dim", str(ffn)])
    if "transformer" in models:
        tr = ["--arch", "transformer_lra", "--encoder-embed-dim", "32", "--encoder-layers", "2",
              "--encoder-attention-heads", "2", "--classifier-out-dim", "64", "--sentence-class-num", "10",
              "--dropout", "0.0", "--max-positions", str(samples)]
        ffn = qr.solve_width(lambda f: count(*tr, "--encoder-ffn-embed-dim", str(f)), reference,
                             "--encoder-ffn-embed-dim")
        runs["transformer"] = qr.Run("speech", "transformer", "transformer_lra",
                                     [*tr, "--encoder-ffn-embed-dim", str(ffn)], via_wrapper=True)
    out = [runs[m] for m in models]
    for run in out:
        run.params = count(*run.train_args)
    return out


# --------------------------------------------------------------------------- one run
def run_one(job: Dict, args) -> Dict:
    """Trains and evaluates one (task, model, seed[, knob]) run; the record carries an ``error`` instead of a
    number when it cannot vouch for one."""
    run, record = job["run"], dict(job["record"])
    try:
        if not qr.param_ratio_ok(run.params, job["reference"]):
            raise qr.RunFailed(f"{run.params:,} parameters, more than {qr.PARAM_TOLERANCE:.0%} off seqboat's "
                               f"{job['reference']:,}: not an equal-parameter race")
        os.makedirs(job["dir"], exist_ok=True)
        options = argparse.Namespace(minutes=args.minutes, threads=args.threads, seed=record["seed"],
                                     timeout=args.timeout)
        record.update(qr.train(run, job["data"], os.path.join(job["dir"], "checkpoints"), options))
        evaluate = qr.evaluate_lm if run.task == "lm" else qr.evaluate_listops
        record.update(evaluate(job["data"], record["checkpoint"], os.path.join(job["dir"], "eval.log"), options))
    except qr.RunFailed as exc:
        record["error"] = str(exc)
    return record


# --------------------------------------------------------------------------- timing worker
def time_worker(spec_path: str) -> None:
    """Loads every checkpoint of one task (``spec``: task, data, checkpoints, repeats, warmup) and prints one
    ``RESULT`` line per checkpoint: median ms of a training step (interleaved), alloc_mb, learned rates."""
    import torch
    from fairseq import checkpoint_utils, utils
    from train_step import allocated_peak_mb

    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    quiet_fairseq_logging()
    utils.import_user_module(argparse.Namespace(user_dir=PLUGIN_DIR))
    qr.register_transformer_lra()
    entries = []
    for checkpoint in spec["checkpoints"]:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint],
                                                                          arg_overrides={"data": spec["data"]})
        model = models[0]
        criterion = task.build_criterion(cfg.criterion)
        task.load_dataset("test")
        batch = cfg.dataset.batch_size or 8
        iterator = task.get_batch_iterator(dataset=task.dataset("test"), max_sentences=batch,
                                           max_positions=task.max_positions(), ignore_invalid_inputs=False,
                                           required_batch_size_multiple=1, seed=1,
                                           num_workers=0).next_epoch_itr(shuffle=False)
        sample = next(iter(iterator))
        entries.append(dict(checkpoint=checkpoint, model=model, criterion=criterion, sample=sample, times=[]))

    def step_of(entry):
        def step():
            entry["model"].train()
            entry["model"].zero_grad(set_to_none=True)
            loss, _, _ = entry["criterion"](entry["model"], entry["sample"])
            loss.backward()
        return step

    for entry in entries:
        for _ in range(spec["warmup"]):
            step_of(entry)()
    for r in range(spec["repeats"]):  # interleaved, the order alternating
        for entry in entries if r % 2 == 0 else entries[::-1]:
            start = time.perf_counter()
            step_of(entry)()
            entry["times"].append((time.perf_counter() - start) * 1000.0)
    for entry in entries:
        model, sample = entry["model"], entry["sample"]
        model.zero_grad(set_to_none=True)
        alloc = allocated_peak_mb(step_of(entry))
        model.eval()
        with torch.no_grad():
            net_input = sample["net_input"]
            if hasattr(model, "decoder"):  # a language model
                _, extra = model(net_input["src_tokens"])
            else:
                _, extra = model(net_input["src_tokens"], net_input["src_lengths"])
        rates = layer_rates(extra)
        print(RESULT_PREFIX + json.dumps({
            "checkpoint": entry["checkpoint"], "step_ms": round(median(entry["times"]), 2),
            "step_ms_all": [round(t, 2) for t in entry["times"]], "alloc_mb": round(alloc, 2),
            "layer_rates": rates, "act_rate": round(sum(rates) / len(rates), 4) if rates else None,
            "batch_shape": list(sample["net_input"]["src_tokens"].shape)}), flush=True)


def layer_rates(extra) -> List[float]:
    """Per-layer fraction of the real (not padding) tokens that are active, from a forward's
    ``extra["activations"]`` ([] for models without routers)."""
    import torch

    from seqboat_fairseq.modules.seqboat_layer import LayerActivation

    found = []
    pad = extra.get("padding_mask") if isinstance(extra, dict) else None
    if isinstance(pad, (list, tuple)):  # one per layer (the same mask)
        pad = next((p for p in pad if p is not None), None)

    def walk(x):
        if isinstance(x, LayerActivation):
            active = x.active
            real = (~pad).reshape(active.shape) if pad is not None and pad.numel() == active.numel() \
                else torch.ones_like(active)
            found.append(round(float(active[real].float().mean()), 4))
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)

    walk(extra.get("activations") if isinstance(extra, dict) else None)
    return found


def time_checkpoints(task: str, data: str, checkpoints: List[str], work: str, args) -> Dict[str, Dict]:
    """Runs :func:`time_worker` in a subprocess; ``{checkpoint: result}``."""
    spec = os.path.join(work, f"timing_{task}.json")
    with open(spec, "w") as f:
        json.dump({"task": task, "data": data, "checkpoints": checkpoints, "repeats": args.time_repeats,
                   "warmup": 1, "threads": args.threads}, f)
    cmd = [sys.executable, os.path.abspath(__file__), "--time-worker", spec]
    out = qr.run_command(cmd, os.path.join(work, f"timing_{task}.log"), args.threads, args.timeout)
    results = [json.loads(line[len(RESULT_PREFIX):]) for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
    return {r["checkpoint"]: r for r in results}


# --------------------------------------------------------------------------- summaries and plots
def mean_std(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(records: List[Dict], seeds: List[int]) -> List[Dict]:
    """One summary per (task, model, knob): mean +- std over seeds; FAILED unless every seed vouches."""
    groups: Dict[Tuple, List[Dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["model"], r.get("knob"), r.get("knob_value")), []).append(r)
    out = []
    for (task, model, knob, value), rs in groups.items():
        ok = [r for r in rs if "error" not in r and "step_ms" in r]
        s = {"bench": "tradeoff_summary", "task": task, "model": model, "knob": knob, "knob_value": value,
             "params": rs[0]["params"], "seeds": sorted(r["seed"] for r in ok), "metric": ok[0]["metric"] if ok else None}
        if len(ok) != len(seeds):
            s["error"] = f"{len(seeds) - len(ok)} of {len(seeds)} seeds gave no number"
            out.append(s)
            continue
        for key, values in (("value", [r["value"] for r in ok]), ("step_ms", [r["step_ms"] for r in ok]),
                            ("alloc_mb", [r["alloc_mb"] for r in ok]), ("updates", [r["updates"] for r in ok])):
            m, sd = mean_std(values)
            s[key], s[key + "_std"] = round(m, 4), round(sd, 4)
        rates = [r["layer_rates"] for r in ok if r.get("layer_rates")]
        s["layer_rates"] = [round(statistics.fmean(x), 3) for x in zip(*rates)] if rates else None
        s["act_rate"] = round(statistics.fmean(s["layer_rates"]), 3) if rates else None
        s["steps_per_s"] = round(1000.0 / s["step_ms"], 3)
        out.append(s)
    for s in out:  # speed relative to the Transformer of the task (the race's, not a knob run)
        ref = next((x for x in out if x["task"] == s["task"] and x["model"] == "transformer" and x["knob"] is None
                    and "error" not in x), None)
        if ref is not None and "error" not in s:
            s["speedup_vs_transformer"] = round(ref["step_ms"] / s["step_ms"], 3)
            s["mem_vs_transformer"] = round(s["alloc_mb"] / ref["alloc_mb"], 3) if ref["alloc_mb"] > 0 else None
    return out


COLORS = {"seqboat": "tab:red", "mega_chunk": "tab:blue", "spade": "tab:green", "transformer": "tab:gray"}


def plot_task(task: str, summaries: List[Dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    rows = [s for s in summaries if s["task"] == task and s["knob"] is None and "error" not in s]
    biggest = max((s["alloc_mb"] for s in rows), default=1.0) or 1.0
    for s in rows:
        ax.errorbar(s["steps_per_s"], s["value"], yerr=s["value_std"],
                    xerr=s["steps_per_s"] * s["step_ms_std"] / s["step_ms"], fmt="none", ecolor=COLORS[s["model"]],
                    alpha=0.6)
        ax.scatter([s["steps_per_s"]], [s["value"]], s=60 + 900 * s["alloc_mb"] / biggest, color=COLORS[s["model"]],
                   alpha=0.7, label=f"{s['model']} ({s['alloc_mb']:.0f} MB" +
                   (f", rate {s['act_rate']:.2f})" if s["act_rate"] is not None and s["model"] == "seqboat" else ")"))
    ax.set_xlabel("training steps per second (trained checkpoint, learned rates)")
    ax.set_ylabel(rows[0]["metric"] if rows else "")
    if rows and rows[0]["metric"] == "test_bpc":
        ax.invert_yaxis()  # up = better
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, markerscale=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(task: str, summaries: List[Dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    base = [s for s in summaries if s["task"] == task and s["model"] == "seqboat" and s["knob"] is None
            and "error" not in s]
    points = [s for s in summaries if s["task"] == task and s["knob"] is not None and "error" not in s]
    for knob, marker in (("act_bias", "o"), ("init_temp_scale", "s")):
        pts = sorted([s for s in points if s["knob"] == knob] + base, key=lambda s: s["steps_per_s"])
        if not [s for s in pts if s["knob"] == knob]:
            continue
        ax.errorbar([s["steps_per_s"] for s in pts], [s["value"] for s in pts], yerr=[s["value_std"] for s in pts],
                    marker=marker, label=knob, capsize=3)
        for s in pts:
            label = "preset" if s["knob"] is None else f"{s['knob_value']:g}"
            ax.annotate(f"{label} (rate {s['act_rate']:.2f})" if s["act_rate"] is not None else label,
                        (s["steps_per_s"], s["value"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    for s in summaries:
        if s["task"] == task and s["knob"] is None and s["model"] != "seqboat" and "error" not in s:
            ax.scatter([s["steps_per_s"]], [s["value"]], color=COLORS[s["model"]], marker="x", label=s["model"])
    ax.set_xlabel("training steps per second (trained checkpoint, learned rates)")
    ax.set_ylabel(base[0]["metric"] if base else "")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- driver
def parse_sweep(text: str) -> List[Tuple[str, float]]:
    """``act_bias=0.5,1;init_temp_scale=0.1`` -> [(knob, value), ...]; '' or 'none': no sweep."""
    if text.strip().lower() in ("", "none"):
        return []
    out = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        knob, _, values = part.partition("=")
        knob = knob.strip().replace("-", "_")
        if knob not in KNOB_FLAGS or not values:
            raise Refused(f"--sweep: expected 'knob=v1,v2;...' with knobs {', '.join(KNOB_FLAGS)}, got {part!r}")
        for v in values.split(","):
            try:
                value = float(v)
            except ValueError:
                raise Refused(f"--sweep: {knob}: expected numbers, got {v!r}") from None
            if knob == "init_temp_scale" and value <= 0:
                raise Refused(f"--sweep: init_temp_scale must be positive, got {v!r}")
            out.append((knob, value))
    return out


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=1.25, help="training budget per run (fairseq --stop-time-hours)")
    p.add_argument("--seeds", default="1,2,3", help="training seeds (at least 1; the summaries need all of them)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--sweep", default=DEFAULT_SWEEP, help="router knob values for SeqBoat, 'knob=v1,v2;knob=...' "
                   f"(knobs: {', '.join(KNOB_FLAGS)}; 'none': no sweep)")
    p.add_argument("--sweep-task", default="listops", choices=["listops", "speech"],
                   help="the task of the knob sweep (an LRA-style classifier: --act-bias exists there)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every training / timing process")
    p.add_argument("--time-repeats", type=int, default=5, help="timed steps per checkpoint (median)")
    p.add_argument("--lm-bytes", type=int, default=400000)
    p.add_argument("--speech-samples", type=int, default=2000, help="samples per synthetic clip")
    p.add_argument("--work-dir", default="work/tradeoff")
    p.add_argument("--timeout", type=float, default=None, help="seconds per subprocess (default 3 x budget + 900)")
    p.add_argument("--quick", action="store_true", help="smoke run: 0.1 min per run, small data, 2 seeds")
    p.add_argument("--time-worker", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv):
    args = get_parser().parse_args(argv)
    if args.time_worker:
        return args
    if args.quick:
        args.minutes, args.lm_bytes, args.time_repeats = 0.1, min(args.lm_bytes, 60000), 2
        args.speech_samples = min(args.speech_samples, 512)
        if args.seeds == "1,2,3":
            args.seeds = "1,2"
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise Refused(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    args.task_list = [t for t in args.tasks.split(",") if t]
    args.model_list = [m for m in args.models.split(",") if m]
    for flag, given, allowed in (("--tasks", args.task_list, TASKS), ("--models", args.model_list, MODELS)):
        if not given or any(x not in allowed for x in given):
            raise Refused(f"{flag}: expected a subset of {','.join(allowed)}, got {','.join(given) or 'nothing'}")
    if not args.seed_list:
        raise Refused("--seeds: expected at least one seed")
    if args.minutes <= 0 or args.jobs < 1 or args.threads < 1 or args.time_repeats < 1:
        raise Refused("--minutes must be > 0, --jobs, --threads and --time-repeats >= 1")
    if args.speech_samples < 256:
        raise Refused(f"--speech-samples: at least 256, got {args.speech_samples}")
    args.knobs = parse_sweep(args.sweep)
    if args.knobs and args.sweep_task not in args.task_list:
        raise Refused(f"--sweep-task {args.sweep_task} is not among --tasks {args.tasks} (or pass --sweep none)")
    if "seqboat" not in args.model_list:
        args.model_list = ["seqboat", *args.model_list]
    args.timeout = args.timeout or 3 * 60 * args.minutes + 900
    return args


def prepare(task: str, root: str, args):
    if task == "lm":
        data = qr.prepare_lm_data(root, args.lm_bytes, args.threads, args.timeout)
        return data, None, qr.lm_runs(data, args.model_list)
    if task == "listops":
        sizes = LISTOPS_SIZES_QUICK if args.quick else qr.LISTOPS_SIZES
        data, majority = qr.prepare_listops_data(root, sizes, 1, args.threads, args.timeout)
        return data, majority, qr.listops_runs(data, args.model_list)
    data, majority = write_speech_data(root, args.speech_samples, SPEECH_SIZES_QUICK if args.quick else SPEECH_SIZES, 1)
    return data, majority, speech_runs(data, args.model_list, args.speech_samples)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.time_worker:
        time_worker(args.time_worker)
        return 0
    work = os.path.abspath(args.work_dir)
    rev = code_revision()
    print(f"# tradeoff: {args.minutes:g} min of training per run, seeds {args.seed_list}, {args.jobs} run(s) at a "
          f"time x {args.threads} thread(s); tasks {args.task_list}; models {args.model_list}; sweep "
          f"{args.sweep if args.knobs else 'none'} on {args.sweep_task}; work dir {work}; code {rev}; "
          f"CPU: {cpu_model()} ({os.cpu_count()} cores)", flush=True)
    start = time.perf_counter()
    jobs, failures, data_of, majority_of = [], [], {}, {}
    for task in args.task_list:
        root = os.path.join(work, task)
        try:
            data, majority, runs = prepare(task, root, args)
        except (qr.RunFailed, ValueError) as exc:
            failures.append(f"{task}: data preparation failed: {exc}")
            continue
        data_of[task], majority_of[task] = data, majority
        reference = next(r.params for r in runs if r.model == "seqboat")
        variants = [(run, None, None) for run in runs]
        if task == args.sweep_task:
            base = next(r for r in runs if r.model == "seqboat")
            for knob, value in args.knobs:
                run = qr.Run(task, "seqboat", base.arch, [*base.train_args, KNOB_FLAGS[knob], repr(value)],
                             params=base.params)
                variants.append((run, knob, value))
        for run, knob, value in variants:
            print(f"# {task} {run.model}{'' if knob is None else f' {knob}={value:g}'}: {run.arch}, "
                  f"{run.params:,} parameters ({100.0 * (run.params / reference - 1):+.1f} % vs seqboat)", flush=True)
            for seed in args.seed_list:
                name = run.model if knob is None else f"{run.model}_{knob}_{value:g}"
                record = {"bench": "tradeoff", "task": task, "model": run.model, "knob": knob, "knob_value": value,
                          "arch": run.arch, "params": run.params, "params_vs_seqboat": round(run.params / reference, 4),
                          "seed": seed, "minutes": args.minutes, "threads": args.threads, "jobs": args.jobs,
                          "rev": rev, "cpu": cpu_model(), "train_args": " ".join(run.train_args)}
                if majority is not None:
                    record["majority_acc"] = round(majority, 2)
                jobs.append({"run": run, "record": record, "data": data, "reference": reference,
                             "dir": os.path.join(root, name, f"seed{seed}")})
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(lambda job: run_one(job, args), jobs))
    print(f"# trained {len(records)} runs in {time.perf_counter() - start:.0f} s", flush=True)

    for task in data_of:  # one timing process per task: every checkpoint interleaved
        done = [r for r in records if r["task"] == task and "error" not in r]
        try:
            timed = time_checkpoints(task, data_of[task], [r["checkpoint"] for r in done], os.path.join(work, task),
                                     args) if done else {}
        except qr.RunFailed as exc:
            timed = {}
            failures.append(f"{task}: timing failed: {exc}")
        for r in done:
            if r["checkpoint"] in timed:
                r.update({k: v for k, v in timed[r["checkpoint"]].items() if k != "checkpoint"})
            else:
                r["error"] = "the checkpoint was not timed"
    for r in records:
        emit(r)
        if "error" in r:
            failures.append(f"{r['task']} {r['model']} {r['knob'] or ''}{'' if r['knob'] is None else '='}"
                            f"{'' if r['knob'] is None else r['knob_value']} seed {r['seed']}: {r['error']}")

    summaries = summarise(records, args.seed_list)
    for s in summaries:
        emit(s)
    print()
    table = []
    for s in summaries:
        ok = "error" not in s
        label = s["model"] if s["knob"] is None else f"seqboat {s['knob']}={s['knob_value']:g}"
        table.append([s["task"], label, s["params"], s.get("updates") if ok else None,
                      f"{s['value']:.3f} +- {s['value_std']:.3f}" if ok else None,
                      f"{s['step_ms']:.1f} +- {s['step_ms_std']:.1f}" if ok else None,
                      s.get("speedup_vs_transformer"), s.get("alloc_mb"), s.get("mem_vs_transformer"),
                      " ".join(f"{x:.2f}" for x in s["layer_rates"]) if ok and s.get("layer_rates") else "-",
                      "" if ok else f"FAILED (no number): {s['error']}"])
    print(format_table(["task", "model", "params", "updates", "quality (mean +- std)", "step ms", "speed vs tr",
                        "alloc_mb", "mem vs tr", "learned rate per layer", "note"], table,
                       title=f"Quality vs speed after {args.minutes:g} min of training, seeds {args.seed_list} "
                             f"(test_bpc lower is better, test_acc % higher; step: fwd+bwd of a training batch "
                             f"of the test split, trained checkpoint, {args.threads} thread(s))"))
    for task in data_of:
        path = os.path.join(work, f"tradeoff_{task}.png")
        plot_task(task, summaries, path, f"{task}: {args.minutes:g} min of training, {len(args.seed_list)} seeds, "
                                         f"{cpu_model()}")
        print(f"# plot: {path}")
    if args.knobs and args.sweep_task in data_of:
        path = os.path.join(work, "tradeoff_sweep.png")
        plot_sweep(args.sweep_task, summaries, path, f"SeqBoat router knobs on {args.sweep_task}: quality vs speed")
        print(f"# plot: {path}")
    print(f"# total wall time {time.perf_counter() - start:.0f} s")
    return exit_status_for_failures("tradeoff", failures)


if __name__ == "__main__":
    sys.exit(main())
