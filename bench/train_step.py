"""Training-step benchmark: SeqBoat LM variants vs fairseq's stock ``transformer_lm`` (CPU).

One step = ``model.zero_grad(set_to_none=True)`` + forward + next-token cross-entropy on random
byte tokens (batch 1) + backward. ``--optimizer-step`` adds an Adam step (not by default).

Every (model, sequence length) pair runs in a *fresh subprocess*, so its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that pair alone:

* ``base_mb``   RSS after importing, building the model and the input tokens (before any step);
* ``peak_mb``   peak RSS of the process after warm-up + timed steps (absolute);
* ``delta_mb``  ``peak_mb - base_mb``: activations, gradients and temporaries of one step.

Run from the repository root::

    python bench/train_step.py                      # defaults: D=256, 4 layers, 1k..8k
    python bench/train_step.py --seq-lens 1024,4096 --models seqboat,transformer --repeats 5
    python bench/train_step.py --seq-lens 4096,8192 --models seqboat,seqboat+ckpt,transformer,transformer+ckpt

A model name with the suffix ``+ckpt`` is that model built with ``--checkpoint-activations``
(each layer keeps only its input and is recomputed in the backward pass); ``+rgau`` (SeqBoat
models) with ``--recompute-gau`` (each GAU keeps only its compressed input and is recomputed);
both combine (``seqboat+rgau+ckpt``).

Output: a table, one ``BENCH {json}`` line per row, then ratio lines (``BENCH`` too) comparing
every model with the Transformer at each length, and the target lines (at 4k; the training-memory
target at 4k and 8k).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    MB, MODEL_KINDS, RESULT_PREFIX, add_model_shape_args, add_quiet_args, add_threads_seed_args, build_model,
    count_parameters, emit, format_table, median, code_revision, model_label, parse_int_list, peak_rss_mb,
    resolve_model_shape, rss_mb, run_result_subprocess, setup_torch, timed_when_quiet, wait_until_quiet,
)

CHECKPOINT_SUFFIX = "+ckpt"  # <kind>+ckpt: the model built with --checkpoint-activations
RECOMPUTE_SUFFIX = "+rgau"  # <kind>+rgau: a SeqBoat model built with --recompute-gau
SUFFIX_FLAGS = {CHECKPOINT_SUFFIX: "--checkpoint-activations", RECOMPUTE_SUFFIX: "--recompute-gau"}
DEFAULT_MODELS = (*MODEL_KINDS, "seqboat" + CHECKPOINT_SUFFIX, "transformer" + CHECKPOINT_SUFFIX)


def split_kind(kind: str):
    """``"seqboat+rgau+ckpt"`` -> ``("seqboat", ["--recompute-gau", "--checkpoint-activations"])``;
    ``"seqboat"`` -> ``("seqboat", [])``. Raises ``ValueError`` for an unknown kind or suffix."""
    base, *suffixes = kind.split("+")
    if base not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; expected one of {MODEL_KINDS}, each optionally with the "
                         f"suffixes {CHECKPOINT_SUFFIX} and (SeqBoat models) {RECOMPUTE_SUFFIX}")
    flags = []
    for suffix in suffixes:
        flag = SUFFIX_FLAGS.get("+" + suffix)
        if flag is None or (flag == "--recompute-gau" and base == "transformer"):
            raise ValueError(f"model {kind!r}: unknown or inapplicable suffix +{suffix}; expected "
                             f"{CHECKPOINT_SUFFIX} or (SeqBoat models) {RECOMPUTE_SUFFIX}")
        flags.append(flag)
    return base, flags


def cuda_allocated_peak_mb(step) -> float:
    """``torch.cuda.max_memory_allocated`` over one call of ``step``, on top of what was allocated before."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / MB


def allocated_peak_mb(step) -> float:
    """Peak of the bytes torch's CPU allocator holds for one call of ``step`` on top of what was
    allocated before it (parameters, inputs): activations kept for backward, gradients and
    temporaries, as ``torch.cuda.max_memory_allocated`` counts them on a GPU. One extra step under
    ``torch.profiler(profile_memory=True)``; its allocation events, summed in time order."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, pending = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        if event.typed[0] == _EventType.Allocation:
            events.append((event.start_time_ns, event.typed[1].alloc_size))
        pending.extend(event.children)
    total = peak = 0
    for _, size in sorted(events):
        total += size
        peak = max(peak, total)
    return peak / MB


def row_label(kind: str, window: int) -> str:
    base, _ = split_kind(kind)
    return model_label(base, window) + kind[len(base):]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", default="1024,2048,4096,8192", help="comma-separated sequence lengths")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated subset of {','.join(MODEL_KINDS)}, each optionally with the suffix "
                        f"{CHECKPOINT_SUFFIX} (built with --checkpoint-activations) and, SeqBoat models, "
                        f"{RECOMPUTE_SUFFIX} (--recompute-gau)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per (model, length); median reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per (model, length)")
    add_model_shape_args(p)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU: times include a synchronize; "
                                                   "alloc_mb is torch.cuda.max_memory_allocated)")
    p.add_argument("--optimizer-step", action="store_true", help="include an Adam step in each timed step")
    add_threads_seed_args(p)
    p.add_argument("--timeout", type=int, default=900, help="seconds allowed per (model, length) subprocess")
    add_quiet_args(p, wait_quiet=20.0, before="timed step")
    p.add_argument("--retries", type=int, default=0,
                   help="re-run a whole row (new subprocess) still disturbed after that, up to this many times")
    p.add_argument("--baseline", default="transformer", help="model kind the ratios compare against")
    # internal: run one (model, length) pair in this process and print a RESULT line
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seq-len", type=int, default=None, help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------- worker
def run_worker(args) -> dict:
    import resource

    threads = setup_torch(args.threads, args.seed)
    import torch
    import torch.nn.functional as F

    max_len = max(parse_int_list(args.seq_lens) + [args.seq_len])
    kind, flags = split_kind(args.model)
    checkpointed = "--checkpoint-activations" in flags
    model, task = build_model(args, kind, max_len, *flags)
    device = torch.device(args.device)
    model.to(device).train()  # dropout is 0 anyway; training mode as in fairseq-train
    # layers wrapped by --checkpoint-activations (fairseq's checkpoint_wrapper marks them)
    wrapped = sum(hasattr(layer, "precheckpoint_forward") for layer in model.decoder.layers)
    dictionary = task.target_dictionary
    lo = dictionary.nspecial  # byte symbols follow bos/pad/eos/unk
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(lo, len(dictionary), (args.batch_size, args.seq_len + 1), generator=g)
    inputs, targets = tokens[:, :-1].contiguous().to(device), tokens[:, 1:].contiguous().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4) if args.optimizer_step else None

    base_rss = rss_mb()
    base_peak = peak_rss_mb()
    last = {}

    def step():
        model.zero_grad(set_to_none=True)
        logits, extra = model(inputs)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        last["extra"], last["loss"] = extra, float(loss.detach())  # (a synchronize on a GPU)

    def usage():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime, r.ru_minflt

    for _ in range(args.warmup):
        step()
    wall, cpu, faults, others, tries = [], [], [], [], []

    def measured_step():
        c0, f0 = usage()
        step()
        c1, f1 = usage()
        return (c1 - c0) * 1000.0, f1 - f0

    for _ in range(args.repeats):
        ms, other, n, (cpu_ms, minflt) = timed_when_quiet(
            measured_step, args.quiet_threshold, args.wait_quiet, args.max_tries)
        wall.append(ms)
        cpu.append(cpu_ms)
        faults.append(minflt)
        others.append(other)
        tries.append(n)
    peak = peak_rss_mb()
    # after the RSS peak is read (the profiler's own memory stays out of it); gradients freed first,
    # so the step's zero_grad frees nothing and the count starts from parameters + inputs
    model.zero_grad(set_to_none=True)
    alloc_peak = cuda_allocated_peak_mb(step) if device.type == "cuda" else allocated_peak_mb(step)

    rates = None
    activations = last["extra"].get("activations") if isinstance(last["extra"], dict) else None
    if activations:
        rates = [float(a.active.float().mean()) for a in activations]
    return {
        "bench": "train_step", "model": row_label(args.model, args.window), "kind": args.model,
        "checkpoint_activations": checkpointed, "checkpointed_layers": wrapped,
        "recompute_gau": "--recompute-gau" in flags,
        "seq_len": args.seq_len, "batch_size": args.batch_size,
        "step": "fwd+bwd+adam" if args.optimizer_step else "fwd+bwd",
        "ms": round(median(wall), 2), "ms_all": [round(t, 2) for t in wall],
        "cpu_ms": round(median(cpu), 2), "minflt": int(median(faults)),
        "other_cores": round(median(others), 2), "timed_calls": sum(tries),
        "peak_mb": round(peak, 1), "base_mb": round(base_rss, 1), "delta_mb": round(peak - base_rss, 1),
        "base_peak_mb": round(base_peak, 1), "alloc_mb": round(alloc_peak, 1),
        "act_rate": None if rates is None else round(sum(rates) / len(rates), 4),
        "act_rate_layers": None if rates is None else [round(r, 4) for r in rates],
        "params": count_parameters(model), "loss": round(last["loss"], 4),
        "threads": threads, "repeats": args.repeats, "warmup": args.warmup,
        "dim": args.dim, "layers": args.layers, "rev": code_revision(), "device": args.device,
    }


# --------------------------------------------------------------------------- driver
def run_pair(args, kind: str, seq_len: int) -> dict:
    """Runs one row (retrying when other processes disturbed it); keeps the least disturbed run."""
    best = None
    for attempt in range(args.retries + 1):
        if args.wait_quiet > 0:
            wait_until_quiet(args.wait_quiet, args.quiet_threshold, log=lambda m: print(m, flush=True))
        record = run_pair_once(args, kind, seq_len)
        if "error" in record:
            return record
        record["attempts"] = attempt + 1
        if best is None or record["other_cores"] < best["other_cores"]:
            best = record
        if record["other_cores"] < args.quiet_threshold:
            break
        print(f"# {record['model']} @ {seq_len}: other processes used {record['other_cores']:.2f} cores "
              f"while timing ({record['ms']:.0f} ms/step)" + (", retrying" if attempt < args.retries else ""),
              flush=True)
    return best


def run_pair_once(args, kind: str, seq_len: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", kind, "--seq-len", str(seq_len)]
    for name in ("seq_lens", "repeats", "warmup", "wait_quiet", "quiet_threshold", "max_tries", "dim", "layers", "hidden_dim", "z_dim", "n_dim", "window",
                 "truncation", "rel_pos", "ffn_dim", "heads", "batch_size", "threads", "seed", "device"):
        cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.optimizer_step:
        cmd.append("--optimizer-step")
    failure = {"bench": "train_step", "model": row_label(kind, args.window), "kind": kind, "seq_len": seq_len}
    return run_result_subprocess(cmd, args.timeout, failure)


def main():
    args = resolve_model_shape(get_parser().parse_args())
    if args.worker:
        record = run_worker(args)
        print(RESULT_PREFIX + json.dumps(record), flush=True)
        return

    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    for k in kinds:
        try:
            split_kind(k)
        except ValueError as e:
            raise SystemExit(f"--models: {e}")
    seq_lens = parse_int_list(args.seq_lens)
    threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
    load = os.getloadavg()
    print(f"# train_step: {'fwd+bwd+adam' if args.optimizer_step else 'fwd+bwd'} of the LM loss, batch "
          f"{args.batch_size}, random byte tokens; D={args.dim}, layers={args.layers}; SeqBoat H={args.hidden_dim} "
          f"Z={args.z_dim} N={args.n_dim} w={args.window} rel_pos={args.rel_pos} truncation={args.truncation or 'none'}; "
          f"Transformer ffn={args.ffn_dim} heads={args.heads}; threads={threads}; warmup={args.warmup} "
          f"repeats={args.repeats} (median); one subprocess per row", flush=True)
    start_rev = code_revision()
    print(f"# code revision: {start_rev}", flush=True)
    print(f"# load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores"
          + ("  (WARNING: other processes are using the CPU; wall times are inflated/noisy)"
             if load[0] > 0.5 else ""), flush=True)

    records = []
    for seq_len in seq_lens:
        for kind in kinds:
            record = run_pair(args, kind, seq_len)
            records.append(record)
            emit(record)
    load_end = os.getloadavg()

    headers = ["model", "seq_len", "params", "act_rate", "ms/step", "cpu_ms", "cpu/wall",
               "peak_mb", "base_mb", "delta_mb", "alloc_mb", "others", "note"]
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["model"], r["seq_len"], None, None, None, None, None, None, None, None, None, None,
                         r["error"][:60]])
            continue
        rows.append([r["model"], r["seq_len"], r["params"], r["act_rate"], r["ms"], r["cpu_ms"],
                     round(r["cpu_ms"] / r["ms"], 2) if r["ms"] else None,
                     r["peak_mb"], r["base_mb"], r["delta_mb"], r.get("alloc_mb"), r["other_cores"],
                     "DISTURBED" if r["other_cores"] >= args.quiet_threshold else ""])
    print()
    print(format_table(headers, rows, title="Training step (median of repeats)"))
    print(f"# load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    libs = sorted({r["rev"].split("lib:")[-1] for r in records if "rev" in r}
                  | {start_rev.split("lib:")[-1], code_revision().split("lib:")[-1]})
    if len(libs) > 1:
        print(f"# WARNING: the library code changed during the run (lib hashes {', '.join(libs)}); "
              f"see 'rev' in the BENCH lines")

    # ratios vs the baseline
    by_key = {(r["kind"], r["seq_len"]): r for r in records if "error" not in r}
    ratio_rows = []
    for seq_len in seq_lens:
        base = by_key.get((args.baseline, seq_len))
        if base is None:
            continue
        for kind in kinds:
            r = by_key.get((kind, seq_len))
            if kind == args.baseline or r is None:
                continue
            ratio = {
                "bench": "train_step_ratio", "model": r["model"], "baseline": base["model"], "seq_len": seq_len,
                "speedup": round(base["ms"] / r["ms"], 3),
                "cpu_speedup": round(base["cpu_ms"] / r["cpu_ms"], 3) if r["cpu_ms"] else None,
                "delta_mem_ratio": round(r["delta_mb"] / base["delta_mb"], 3) if base["delta_mb"] > 0 else None,
                "peak_mem_ratio": round(r["peak_mb"] / base["peak_mb"], 3),
                "alloc_mem_ratio": round(r["alloc_mb"] / base["alloc_mb"], 3) if base.get("alloc_mb") else None,
            }
            ratio_rows.append(ratio)
    if ratio_rows:
        print()
        print(format_table(
            ["model", "vs", "seq_len", "speedup", "cpu_speedup", "delta_mem_ratio", "peak_mem_ratio",
             "alloc_mem_ratio"],
            [[x["model"], x["baseline"], x["seq_len"], x["speedup"], x["cpu_speedup"], x["delta_mem_ratio"],
              x["peak_mem_ratio"], x["alloc_mem_ratio"]] for x in ratio_rows],
            title=f"Ratios vs {args.baseline} (speedup = baseline ms / model ms; mem ratio = model / baseline)"))
        for x in ratio_rows:
            emit(x)

    # the paper's claims as targets: SeqBoat >= 10x faster and <= 0.05x memory of the Transformer at 4k
    target = next((x for x in ratio_rows if x["seq_len"] == 4096 and x["model"] == model_label("seqboat", args.window)), None)
    if target is not None and args.baseline == "transformer":
        speed_ok = target["speedup"] >= 10.0
        mem_ok = target["delta_mem_ratio"] is not None and target["delta_mem_ratio"] <= 0.05
        print()
        print(f"TARGET seqboat >= 10x faster than transformer at 4096: {'MET' if speed_ok else 'NOT MET'} "
              f"(measured {target['speedup']:.3f}x)")
        print(f"TARGET seqboat <= 0.05x activation memory of transformer at 4096: {'MET' if mem_ok else 'NOT MET'} "
              f"(measured {target['delta_mem_ratio']}x delta, {target['peak_mem_ratio']}x absolute peak)")
        emit({"bench": "train_step_target", "seq_len": 4096, "model": target["model"],
              "speedup": target["speedup"], "speedup_target": 10.0, "speedup_met": speed_ok,
              "delta_mem_ratio": target["delta_mem_ratio"], "mem_target": 0.05, "mem_met": mem_ok})

    # training-memory target: peak activation memory of SeqBoat <= 1.0x the Transformer's without checkpointing,
    # and <= 0.25x with --checkpoint-activations (both against the Transformer without it); judged on the
    # allocator's peak (alloc_mb) and, separately, on the RSS increase (delta_mb)
    if args.baseline == "transformer":
        seqboat = model_label("seqboat", args.window)
        for seq_len in (4096, 8192):
            for label, bound in ((seqboat, 1.0), (seqboat + RECOMPUTE_SUFFIX, 1.0), (seqboat + CHECKPOINT_SUFFIX, 0.25),
                                 (seqboat + RECOMPUTE_SUFFIX + CHECKPOINT_SUFFIX, 0.25)):
                x = next((x for x in ratio_rows if x["seq_len"] == seq_len and x["model"] == label), None)
                if x is None:
                    continue
                met = {name: x[name] is not None and x[name] <= bound
                       for name in ("alloc_mem_ratio", "delta_mem_ratio")}
                print(f"TARGET {label} <= {bound}x peak activation memory of transformer at {seq_len}: allocator "
                      f"{'MET' if met['alloc_mem_ratio'] else 'NOT MET'} ({x['alloc_mem_ratio']}x alloc_mb), RSS "
                      f"{'MET' if met['delta_mem_ratio'] else 'NOT MET'} ({x['delta_mem_ratio']}x delta_mb)")
                emit({"bench": "train_step_memory_target", "seq_len": seq_len, "model": label,
                      "baseline": x["baseline"], "mem_target": bound, "alloc_mem_ratio": x["alloc_mem_ratio"],
                      "alloc_met": met["alloc_mem_ratio"], "delta_mem_ratio": x["delta_mem_ratio"],
                      "delta_met": met["delta_mem_ratio"], "peak_mem_ratio": x["peak_mem_ratio"]})


if __name__ == "__main__":
    main()
