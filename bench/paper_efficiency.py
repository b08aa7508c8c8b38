"""The paper's efficiency comparisons at the paper's shapes: SeqBoat vs MEGA-chunk vs SPADE vs a Transformer.

Three settings, four models each (``--settings``, ``--models``); every (setting, model) row runs in a fresh
subprocess, so its memory belongs to it alone:

``lra_text``  LRA Text, 4,000 byte tokens (``--lra-len``), bidirectional classifiers (``--task lra-text``):
              ``--arch seqboat_lra_imdb`` / ``mega_chunk_lra_imdb`` / ``spade_lra_imdb``; Transformer:
              ``--arch transformer_lra`` (bench/quality_race.py: torch ``nn.TransformerEncoder``, pre-norm,
              full attention, the presets' width/depth D=128 x 4, 2 heads, FFN 2D, the same classifier head).
``sc10``      SC10 raw speech, 16,000 samples (``--sc-len``), ``--task lra-image`` (samples embedded like
              pixels): ``--arch seqboat_sc_raw``; MEGA-chunk = ``seqboat_sc_raw --always-act
              --chunked-attention``; SPADE = ``seqboat_sc_raw --layer-type spade --encoder-ffn-embed-dim F``
              (there are no SC presets of the baselines: these are the flags the LRA presets add, with F solved
              so that SPADE has SeqBoat's parameter count); Transformer: ``transformer_lra`` D=60 x 8, 2 heads.
``enwik8``    causal byte LM, 8,192 tokens (``--lm-len``): ``--arch seqboat_lm_enwik8_base`` /
              ``mega_chunk_lm_enwik8_base`` / ``spade_lm_enwik8_base``; Transformer: fairseq's ``transformer_lm``
              of equal width/depth (D=616 x 14, 8 heads, FFN 4D, as bench/generation.py). Plus decoding
              ms/token at a ``--decode-context`` (default 8,192) token context, with bench/generation.py's
              contestants (SeqBoat / MEGA-chunk / SPADE: one parallel prefill, then ``incremental_state``
              steps; Transformer: its KV cache filled with random keys/values).

Every model is built through fairseq's option parsing (as ``fairseq-train`` would), dropout 0, training mode.
A step = ``zero_grad`` + forward + cross-entropy (LM: next-token; classifiers: the class) + backward, batch 1,
random inputs, no optimizer. ``ms/step``: median of ``--repeats`` timed steps after ``--warmup``;
``alloc_mb``: the peak of torch's allocator over one step on top of parameters and inputs (bench/train_step.py's
``alloc_mb``: the peak activation memory, ``torch.cuda.max_memory_allocated`` on a GPU); ``delta_mb``: peak RSS
minus RSS before the first step. The routers are untrained: the activation rate is measured and reported.

``--dim`` / ``--layers`` / ``--window`` / ``--z-dim`` reduce every model of every setting alike (H = 2D, the
Transformers' FFN and heads follow, SPADE's FFN is re-solved for SeqBoat's parameter count); they are printed.

Ratios (one ``BENCH`` line each): ``speedup`` = baseline ms / SeqBoat ms, ``mem_ratio`` = SeqBoat alloc_mb /
baseline alloc_mb (the paper's conventions), beside the paper's numbers where it has them: vs MEGA-chunk,
SC10 1.32x / 0.44x and enwik8 1.16x / 1.07x; vs the Transformer, LRA Text 10.4x / 0.05x (GPU figures).

Where the time goes, per row (same worker, after the timed steps, same inputs and forced mask): ``gflop``,
the matmul FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions
and fused attention; elementwise work is not counted), and ``gflop_per_s`` = gflop / median step time; then
one step under ``torch.profiler`` with the component labels of bench/profile_step.py (module hooks and
wrappers from the bench side): CPU time split into MD-EMA / routing + compression / projections /
attention / rest, as shares of the profiled step, and as ms (share x the median step time). The ratio table
adds ``flop_ratio`` = baseline gflop / SeqBoat gflop (the speed-up the FLOPs allow) and ``of_flops`` =
speedup / flop_ratio (the fraction of that speed-up reached). ``--seqboat-rate 0.1,0.25,0.5`` measures one
SeqBoat row per forced rate (``router``: the untrained router decides) in one run; the target lines
(``"bench": "paper_efficiency_target"``) check, against MEGA-chunk at each forced rate, of_flops >= 0.85 and,
for SC10 at 25 %, speedup >= 1.3 and mem_ratio <= 0.5. ``--rounds R`` measures every row R times, the
order reversed every other round: ``ms/step`` is then the median over the rounds and each speed-up the median
of the per-round ratios (``speedup_rounds``), which a machine whose speed drifts by tens of percent over minutes
(shared VMs) needs for a ratio worth quoting.

    python bench/paper_efficiency.py                      # the paper's shapes (long on 2 CPU cores, see bench/README.md)
    python bench/paper_efficiency.py --settings enwik8 --dim 256 --layers 4
    python bench/paper_efficiency.py --quick              # smoke run (< 1 min)
    python bench/paper_efficiency.py --settings lra_text,sc10 --models seqboat,mega_chunk --seqboat-rate 0.1,0.25,0.5
    python bench/paper_efficiency.py --settings sc10 --models seqboat,mega_chunk --seqboat-rate 0.25 --rounds 3
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RESULT_PREFIX, ContentionMeter, code_revision, count_parameters, cpu_model,  # noqa: E402
                    emit, format_table, median, peak_rss_mb, quiet_fairseq_logging, rss_mb, run_result_subprocess,
                    setup_torch, timed_when_quiet, wait_until_quiet)
from profile_step import COMPONENTS  # noqa: E402

SETTINGS = ("lra_text", "sc10", "enwik8")
MODELS = ("seqboat", "mega_chunk", "spade", "transformer")
# (setting, baseline) -> (speedup, memory ratio) as the paper reports them (SeqBoat vs the baseline)
PAPER = {("sc10", "mega_chunk"): (1.32, 0.44), ("enwik8", "mega_chunk"): (1.16, 1.07),
         ("lra_text", "transformer"): (10.4, 0.05)}
# the presets' shapes: width D, layers, window w, Transformer heads / FFN (x D), classifier head, classes
SHAPES = {
    "lra_text": dict(dim=128, layers=4, window=128, heads=2, ffn_mult=2, classifier=256, classes=2),
    "sc10": dict(dim=60, layers=8, window=128, heads=2, ffn_mult=2, classifier=120, classes=10),
    "enwik8": dict(dim=616, layers=14, window=1024, heads=8, ffn_mult=4),
}
ARCHS = {
    "lra_text": {"seqboat": ["--arch", "seqboat_lra_imdb"], "mega_chunk": ["--arch", "mega_chunk_lra_imdb"],
                 "spade": ["--arch", "spade_lra_imdb"]},
    "sc10": {"seqboat": ["--arch", "seqboat_sc_raw"],
             "mega_chunk": ["--arch", "seqboat_sc_raw", "--always-act", "--chunked-attention"],
             "spade": ["--arch", "seqboat_sc_raw", "--layer-type", "spade"]},
    "enwik8": {"seqboat": ["--arch", "seqboat_lm_enwik8_base"], "mega_chunk": ["--arch", "mega_chunk_lm_enwik8_base"],
               "spade": ["--arch", "spade_lm_enwik8_base"]},
}
TASKS = {"lra_text": "lra-text", "sc10": "lra-image", "enwik8": "language_modeling"}
# targets of the forced-rate rows against MEGA-chunk: the fraction of the FLOP-allowed speed-up reached,
# and the paper's SC10 point at a 25 % activation rate (speed-up, memory ratio)
FLOP_FRACTION_TARGET = 0.85
SC10_TARGET = (0.25, 1.3, 0.5)


# --------------------------------------------------------------------------- model construction
def overridden(args) -> bool:
    return any(getattr(args, k) is not None for k in ("dim", "layers", "window", "z_dim"))


def shape(setting: str, args) -> Dict:
    s = dict(SHAPES[setting])
    s["dim"] = args.dim or s["dim"]
    s["layers"] = args.layers or s["layers"]
    s["window"] = args.window or s["window"]
    s["heads"] = heads_for(s["dim"], s["heads"])
    return s


def heads_for(dim: int, preferred: int) -> int:
    """The preset's head count if it divides D, else the largest one below it that does."""
    return next(h for h in range(preferred, 0, -1) if dim % h == 0)


def seq_len(setting: str, args) -> int:
    return {"lra_text": args.lra_len, "sc10": args.sc_len, "enwik8": args.lm_len}[setting]


def lm_max_positions(args) -> int:
    return max(args.lm_len, args.decode_context + 2 * (args.decode_warmup + args.decode_steps) + 64)


def shape_flags(setting: str, args) -> List[str]:
    """The flags that shrink the SeqBoat-family presets (none at the paper's shapes)."""
    if not overridden(args):
        return []
    s = shape(setting, args)
    if setting == "enwik8":
        flags = ["--decoder-embed-dim", s["dim"], "--decoder-hidden-dim", 2 * s["dim"], "--decoder-layers",
                 s["layers"], "--decoder-chunk-size", s["window"]]
        flags += ["--decoder-z-dim", args.z_dim] if args.z_dim else []
    else:
        flags = ["--encoder-embed-dim", s["dim"], "--encoder-hidden-dim", 2 * s["dim"], "--encoder-layers",
                 s["layers"], "--chunk-size", s["window"]]
        flags += ["--z-dim", args.z_dim] if args.z_dim else []
    return [str(f) for f in flags]


def common_flags(setting: str, args) -> List[str]:
    if setting == "enwik8":
        n = str(lm_max_positions(args))
        return ["--tokens-per-sample", str(args.lm_len), "--max-target-positions", n, "--dropout", "0",
                "--attention-dropout", "0"]
    flags = ["--criterion", "lra_cross_entropy", "--dropout", "0", "--attention-dropout", "0"]
    if setting == "lra_text" and args.lra_len > 4000:  # the preset's --max-positions is 4002
        flags += ["--max-positions", str(args.lra_len + 2)]
    return flags


def transformer_flags(setting: str, args) -> List[str]:
    s = shape(setting, args)
    if setting == "enwik8":
        # --decoder-input-dim / --decoder-output-dim: transformer_lm's default (512) adds projections
        flags = ["--arch", "transformer_lm", "--decoder-embed-dim", s["dim"], "--decoder-input-dim", s["dim"],
                 "--decoder-output-dim", s["dim"], "--decoder-layers", s["layers"],
                 "--decoder-attention-heads", s["heads"], "--decoder-ffn-embed-dim", s["ffn_mult"] * s["dim"],
                 "--activation-dropout", "0"]
    else:
        flags = ["--arch", "transformer_lra", "--encoder-embed-dim", s["dim"], "--encoder-layers", s["layers"],
                 "--encoder-attention-heads", s["heads"], "--encoder-ffn-embed-dim", s["ffn_mult"] * s["dim"],
                 "--classifier-out-dim", s["classifier"], "--sentence-class-num", s["classes"]]
    return [str(f) for f in flags]


def build(setting: str, cli: List[str], workdir: str):
    """``(model, task)`` built as fairseq-train would, over the dictionaries / data layout of the setting."""
    from quality_race import register_transformer_lra
    from seqboat_fairseq.testing import build_from_cli, write_byte_dictionary, write_lra_dictionaries

    quiet_fairseq_logging()
    register_transformer_lra()
    if setting == "enwik8":
        data = write_byte_dictionary(os.path.join(workdir, "lm"))
    elif setting == "lra_text":
        data = write_lra_dictionaries(os.path.join(workdir, "text"), symbols=tuple(str(i) for i in range(256)),
                                      labels=("0", "1"))
    else:
        data = os.path.join(workdir, "image")
        os.makedirs(os.path.join(data, "input"), exist_ok=True)
    model, task, _ = build_from_cli(data, TASKS[setting], *cli)
    return model, task


def model_cli(setting: str, model: str, args, workdir: str) -> List[str]:
    """The fairseq arguments of one row (SPADE's FFN solved for SeqBoat's parameter count when needed)."""
    from quality_race import solve_width

    common = common_flags(setting, args)
    if model == "transformer":
        return [*transformer_flags(setting, args), *common]
    cli = [*ARCHS[setting][model], *shape_flags(setting, args), *common]
    if model == "spade" and (overridden(args) or setting == "sc10"):
        count = lambda *extra: count_parameters(build(setting, [*cli, *extra], workdir)[0])  # noqa: E731
        reference = count_parameters(build(setting, [*ARCHS[setting]["seqboat"], *shape_flags(setting, args),
                                                     *common], workdir)[0])
        flag = "--decoder-ffn-embed-dim" if setting == "enwik8" else "--encoder-ffn-embed-dim"
        cli += [flag, str(solve_width(lambda f: count(flag, str(f)), reference, flag))]
    return cli


def activation_rate(extra) -> Optional[float]:
    """Mean over layers (and documents) of the fraction of active tokens; None for models without routers."""
    from seqboat_fairseq.modules.seqboat_layer import LayerActivation

    found = []

    def walk(x):
        if isinstance(x, LayerActivation):
            found.append(float(x.active.float().mean()))
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)

    walk(extra.get("activations") if isinstance(extra, dict) else None)
    return sum(found) / len(found) if found else None


# --------------------------------------------------------------------------- worker
def run_worker(args) -> Dict:
    threads = setup_torch(args.threads, args.seed)
    import torch
    import torch.nn.functional as F
    from train_step import allocated_peak_mb, cuda_allocated_peak_mb

    setting, name = args.setting, args.model
    length = seq_len(setting, args)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="paper_efficiency_") as workdir:
        cli = model_cli(setting, name, args, workdir)
        model, task = build(setting, cli, workdir)
    model.to(device).train()
    g = torch.Generator().manual_seed(args.seed)
    if setting == "enwik8":
        vocab = len(task.target_dictionary)
        tokens = torch.randint(task.target_dictionary.nspecial, vocab, (1, length + 1), generator=g).to(device)
        inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    else:
        inputs = (torch.randn(1, length, generator=g) if setting == "sc10"
                  else torch.randint(4, 260, (1, length), generator=g)).to(device)
        lengths = torch.full((1,), length, device=device)
        targets = torch.zeros(1, dtype=torch.long, device=device)
    last = {}
    from seqboat_fairseq.modules.sma import forced_activation

    mask = None
    if args.seqboat_rate is not None and name == "seqboat":
        from activation_rate import random_mask

        mask = random_mask(1, length, args.seqboat_rate, args.seed).to(device)

    def step():
        with (contextlib.nullcontext() if mask is None else
              forced_activation(model, lambda active: mask.expand_as(active))):
            forward_backward()

    def forward_backward():
        model.zero_grad(set_to_none=True)
        if setting == "enwik8":
            logits, extra = model(inputs)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        else:
            logits, extra = model(inputs, lengths)
            loss = F.cross_entropy(logits.float(), targets)
        loss.backward()
        last["extra"], last["loss"] = extra, float(loss.detach())

    base_rss = rss_mb()
    for _ in range(args.warmup):
        step()
    wall, others = [], []
    for _ in range(args.repeats):
        ms, other, _, _ = timed_when_quiet(step, args.quiet_threshold, args.wait_quiet, args.max_tries)
        wall.append(ms)
        others.append(other)
    peak = peak_rss_mb()
    model.zero_grad(set_to_none=True)
    alloc = cuda_allocated_peak_mb(step) if device.type == "cuda" else allocated_peak_mb(step)
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as flop_counter:
        step()
    gflop = flop_counter.get_total_flops() / 1e9
    split = None
    if args.split:
        from profile_step import profile_components

        model.zero_grad(set_to_none=True)
        split = profile_components(model, step)
    s = shape(setting, args)
    record = {
        "bench": "paper_efficiency", "setting": setting, "model": name, "seq_len": length, "batch_size": 1,
        "dim": s["dim"], "layers": s["layers"], "window": s["window"], "args": " ".join(cli),
        "params": count_parameters(model), "act_rate": activation_rate(last["extra"]),
        "forced_rate": args.seqboat_rate if name == "seqboat" else None,
        "ms": round(median(wall), 2), "ms_all": [round(t, 2) for t in wall], "other_cores": round(max(others), 2),
        "alloc_mb": round(alloc, 1), "peak_mb": round(peak, 1), "base_mb": round(base_rss, 1),
        "delta_mb": round(peak - base_rss, 1), "loss": round(last["loss"], 4), "threads": threads,
        "repeats": args.repeats, "warmup": args.warmup, "device": args.device, "rev": code_revision(),
        "gflop": round(gflop, 4), "gflop_per_s": round(gflop / (median(wall) / 1000.0), 3), "cpu": cpu_model(),
    }
    if split is not None:
        record["split_share"] = {c: round(split[c]["share"], 4) for c in COMPONENTS}
        record["split_ms"] = {c: round(split[c]["share"] * record["ms"], 2) for c in COMPONENTS}
        record["split_cpu_ms"] = {c: [round(split[c]["fwd_ms"], 2), round(split[c]["bwd_ms"], 2)] for c in COMPONENTS}
        record["split_labelled"] = split["_found"]
    if record["act_rate"] is not None:
        record["act_rate"] = round(record["act_rate"], 4)
    if setting == "enwik8" and args.decode_steps > 0:
        record.update(decode(model, name, args, device))
    return record


def decode(model, name: str, args, device) -> Dict:
    """ms per generated token (whole model, batch 1, eval, no_grad) at ``--decode-context``, with
    bench/generation.py's contestants and timing loop (not interleaved across models: one model per worker)."""
    import generation
    import torch

    generation.DEVICE = device
    model.eval()
    options = argparse.Namespace(batch_size=1, warmup=args.decode_warmup, steps=args.decode_steps, retries=0)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        kind = generation.TransformerContestant if name == "transformer" else generation.SeqBoatContestant
        contestant = kind(model, args.decode_context, options, g)
        contestant.name = name
        if args.wait_quiet > 0:
            wait_until_quiet(args.wait_quiet, args.quiet_threshold)
        with ContentionMeter() as meter:
            timings = generation.collect([contestant], "model", options)[name]
    out = {"decode_context": args.decode_context, "decode_ms_per_token": round(median(timings["times"]), 3),
           "decode_steps": args.decode_steps, "decode_other_cores": round(meter.other_cores, 2),
           "decode_act_rate": round(timings["active"] / timings["routed"], 4) if timings["routed"] else None}
    if hasattr(contestant, "prefill_ms"):
        out["decode_prefill_ms"] = round(contestant.prefill_ms, 1)
    return out


# --------------------------------------------------------------------------- driver
WORKER_FLAGS = ("lra_len", "sc_len", "lm_len", "decode_context", "decode_steps", "decode_warmup", "repeats", "warmup",
                "dim", "layers", "window", "z_dim", "threads", "seed", "device", "wait_quiet", "quiet_threshold",
                "max_tries")  # and --seqboat-rate, one rate per worker


def measure_row(args, setting: str, model: str, rate: Optional[float] = None) -> Dict:
    if args.in_process:  # --quick: no subprocess start-up per row; RSS figures are then the whole run's
        try:
            record = run_worker(argparse.Namespace(**{**vars(args), "setting": setting, "model": model,
                                                      "seqboat_rate": rate}))
        except Exception as exc:  # noqa: BLE001  (reported as the row's error, as a failed subprocess)
            return {"bench": "paper_efficiency", "setting": setting, "model": model, "forced_rate": rate,
                    "error": f"{type(exc).__name__}: {exc}"}
        record.update(in_process=True, peak_mb=None, base_mb=None, delta_mb=None)
        return record
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--setting", setting, "--model", model]
    for name in WORKER_FLAGS:
        if getattr(args, name) is not None:
            cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    cmd += ["--seqboat-rate", str(rate)] if rate is not None else []
    cmd += [] if args.split else ["--no-split"]
    if args.wait_quiet > 0:
        wait_until_quiet(args.wait_quiet, args.quiet_threshold, log=lambda m: print(m, flush=True))
    return run_result_subprocess(cmd, args.timeout, {"bench": "paper_efficiency", "setting": setting, "model": model,
                                                     "forced_rate": rate})


def run_row(args, setting: str, model: str, rate: Optional[float] = None) -> Dict:
    """One row, measured (subprocess or in-process) and emitted as a BENCH line."""
    record = measure_row(args, setting, model, rate)
    emit(record)
    return record


def combine_rounds(measured: List[Dict]) -> Dict:
    """One row's records from ``--rounds`` rounds -> one record: the first round's (memory and FLOPs
    do not change between rounds), with ``ms`` the median of the rounds' medians (``ms_rounds``, in
    round order), GFLOP/s and the split's ms rescaled to it, ``other_cores`` the worst round's."""
    failed = [r for r in measured if "error" in r]
    if failed:
        return failed[0]
    record = dict(measured[0])
    record["ms_rounds"] = [r["ms"] for r in measured]
    record["ms_all"] = [t for r in measured for t in r["ms_all"]]
    record["ms"] = round(median(record["ms_rounds"]), 2)
    record["rounds"] = len(measured)
    record["other_cores"] = max(r["other_cores"] for r in measured)
    if record.get("gflop"):
        record["gflop_per_s"] = round(record["gflop"] / (record["ms"] / 1000.0), 3)
    if "split_share" in record:
        record["split_ms"] = {c: round(share * record["ms"], 2) for c, share in record["split_share"].items()}
    return record


def round_speedups(baseline: Dict, seqboat: Dict) -> Optional[List[float]]:
    """baseline ms / SeqBoat ms of each ``--rounds`` round (two rows measured minutes apart at most, so
    a slow spell of the machine cancels out), or None for a single-round run."""
    a, b = baseline.get("ms_rounds"), seqboat.get("ms_rounds")
    return [x / y for x, y in zip(a, b)] if a and b and len(a) == len(b) else None


def row_label(r: Dict) -> str:
    """``seqboat@25%`` for a forced-rate SeqBoat row, else the model."""
    rate = r.get("forced_rate")
    return r["model"] if rate is None else f"{r['model']}@{100 * rate:g}%"


def table_row(r: Dict, threshold: float) -> List:
    if "error" in r:
        return [r["setting"], row_label(r), *[None] * 12, r["error"][:70]]
    return [r["setting"], row_label(r), r["seq_len"], r["dim"], r["layers"], r["params"], r["act_rate"], r["ms"],
            r.get("gflop"), r.get("gflop_per_s"), r["alloc_mb"], r["delta_mb"], r.get("decode_ms_per_token"),
            r["other_cores"], "DISTURBED" if r["other_cores"] >= threshold else ""]


def split_row(r: Dict) -> List:
    ms, share = r["split_ms"], r["split_share"]
    return [r["setting"], row_label(r), r["ms"], *[f"{ms[c]:.0f} ({100 * share[c]:.0f}%)" for c in COMPONENTS]]


def ratio_records(records: List[Dict]) -> List[Dict]:
    """SeqBoat (every row of it: one per forced rate) against each baseline of its setting."""
    ok = [r for r in records if "error" not in r]
    out = []
    for sb in (r for r in ok if r["model"] == "seqboat"):
        for r in (x for x in ok if x["setting"] == sb["setting"] and x["model"] != "seqboat"):
            setting, model = sb["setting"], r["model"]
            paper = PAPER.get((setting, model))
            rounds = round_speedups(r, sb)
            x = {"bench": "paper_efficiency_ratio", "setting": setting, "model": "seqboat", "baseline": model,
                 "forced_rate": sb.get("forced_rate"), "act_rate": sb["act_rate"],
                 "seq_len": sb["seq_len"], "speedup": round(median(rounds) if rounds else r["ms"] / sb["ms"], 3),
                 "mem_ratio": round(sb["alloc_mb"] / r["alloc_mb"], 3) if r["alloc_mb"] > 0 else None,
                 "paper_speedup": paper and paper[0], "paper_mem_ratio": paper and paper[1],
                 "disturbed": max(sb["other_cores"], r["other_cores"]) >= 0.25}
            if rounds:
                x["speedup_rounds"] = [round(v, 3) for v in rounds]
            if sb.get("gflop") and r.get("gflop"):
                x["flop_ratio"] = round(r["gflop"] / sb["gflop"], 3)
                x["of_flops"] = round(x["speedup"] / x["flop_ratio"], 3)  # fraction of the FLOP-allowed speed-up
            if sb.get("decode_ms_per_token") and r.get("decode_ms_per_token"):
                x["decode_speedup"] = round(r["decode_ms_per_token"] / sb["decode_ms_per_token"], 3)
            out.append(x)
    return out


def target_records(ratios: List[Dict]) -> List[Dict]:
    """The forced-rate targets against MEGA-chunk (module docstring)."""
    out = []
    for x in ratios:
        if x["baseline"] != "mega_chunk" or x["forced_rate"] is None or "of_flops" not in x:
            continue
        base = {"bench": "paper_efficiency_target", "setting": x["setting"], "forced_rate": x["forced_rate"],
                "disturbed": x["disturbed"]}
        out.append({**base, "check": "of_flops", "value": x["of_flops"], "target": f">= {FLOP_FRACTION_TARGET}",
                    "met": x["of_flops"] >= FLOP_FRACTION_TARGET})
        rate, speed, mem = SC10_TARGET
        if x["setting"] == "sc10" and abs(x["forced_rate"] - rate) < 1e-9:
            out.append({**base, "check": "speedup", "value": x["speedup"], "target": f">= {speed}",
                        "met": x["speedup"] >= speed})
            out.append({**base, "check": "mem_ratio", "value": x["mem_ratio"], "target": f"<= {mem}",
                        "met": x["mem_ratio"] is not None and x["mem_ratio"] <= mem})
    return out


def parse_rates(text: Optional[str]) -> List[Optional[float]]:
    """``--seqboat-rate``: comma-separated fractions in (0, 1], ``router`` for the router's own decisions."""
    if text is None:
        return [None]
    rates = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item == "router":
            rates.append(None)
            continue
        try:
            rate = float(item)
        except ValueError:
            rate = -1.0
        if not 0.0 < rate <= 1.0:
            raise SystemExit(f"error: --seqboat-rate: expected comma-separated fractions in (0, 1] or 'router', "
                             f"got {item!r}")
        rates.append(rate)
    if not rates:
        raise SystemExit("error: --seqboat-rate: expected at least one rate")
    return rates


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {','.join(SETTINGS)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--quick", action="store_true", help="smoke run: D=32, 2 layers, w=32, Z=16, 512 tokens, 1 repeat, "
                   "1 thread, every row in this process (< 1 min)")
    p.add_argument("--lra-len", type=int, default=4000, help="LRA Text tokens (paper: 4000)")
    p.add_argument("--sc-len", type=int, default=16000, help="SC10 raw samples (paper: 16000)")
    p.add_argument("--lm-len", type=int, default=8192, help="enwik8 training tokens (paper: 8192)")
    p.add_argument("--decode-context", type=int, default=8192, help="enwik8 decoding context")
    p.add_argument("--decode-steps", type=int, default=10, help="timed decoding steps (0: no decoding)")
    p.add_argument("--decode-warmup", type=int, default=3)
    p.add_argument("--dim", type=int, default=None, help="width D of every model (default: each preset's)")
    p.add_argument("--layers", type=int, default=None, help="depth of every model (default: each preset's)")
    p.add_argument("--window", type=int, default=None, help="w / chunk c of every model (default: each preset's)")
    p.add_argument("--z-dim", type=int, default=None, help="GAU Z of the SeqBoat-family models (default: presets')")
    p.add_argument("--repeats", type=int, default=2, help="timed steps per row (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="measure every row this many times, in alternating order "
                   "(each a fresh worker); a row's ms/step is the median over the rounds and a speed-up the median "
                   "of the rounds' ratios: steadier on a machine whose speed drifts")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--timeout", type=int, default=7200, help="seconds per row (subprocess)")
    p.add_argument("--wait-quiet", type=float, default=20.0, help="wait up to this many seconds for a quiet CPU "
                   "before each row and timed step")
    p.add_argument("--quiet-threshold", type=float, default=0.25)
    p.add_argument("--max-tries", type=int, default=3, help="re-time a disturbed step up to this many calls")
    p.add_argument("--in-process", action="store_true", help="run every row in this process (default with "
                   "--quick): no subprocess start-up per row, but no per-row RSS (delta_mb)")
    p.add_argument("--seqboat-rate", default=None,
                   help="force the SeqBoat rows' routers to activate this fraction of the tokens in the training "
                        "steps (a random mask, as bench/activation_rate.py; the gate stays the router's own): the "
                        "untrained router activates ~50-70 %%, a trained one fewer. A comma-separated list gives one "
                        "SeqBoat row per rate ('router': the router decides), e.g. 0.1,0.25,0.5. Default: the router "
                        "decides")
    p.add_argument("--no-split", dest="split", action="store_false",
                   help="skip the profiled step of each row (the MD-EMA / routing / projections / attention / rest "
                        "split)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--setting", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    if args.quick:
        args.dim, args.layers, args.window, args.z_dim = args.dim or 32, args.layers or 2, args.window or 32, \
            args.z_dim or 16
        args.lra_len = args.sc_len = args.lm_len = 512
        args.decode_context, args.decode_steps, args.decode_warmup = 128, 3, 1
        args.repeats, args.warmup, args.wait_quiet, args.max_tries = 1, 1, 0.0, 1
        args.in_process = True
        args.threads = args.threads or 1  # a 2-thread pool on a shared machine is far noisier than one thread
    if args.worker:
        args.seqboat_rate = parse_rates(args.seqboat_rate)[0]
        print(RESULT_PREFIX + json.dumps(run_worker(args)), flush=True)
        return 0
    rates = parse_rates(args.seqboat_rate)
    settings = [s for s in args.settings.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    for flag, given, allowed in (("--settings", settings, SETTINGS), ("--models", models, MODELS)):
        if not given or any(x not in allowed for x in given):
            raise SystemExit(f"error: {flag}: expected a subset of {','.join(allowed)}, got {','.join(given)}")
    if args.rounds < 1:
        raise SystemExit(f"error: --rounds: expected a positive number of rounds, got {args.rounds}")
    start_rev = code_revision()
    shapes = "; ".join(f"{s}: L={seq_len(s, args)}, D={shape(s, args)['dim']}, layers={shape(s, args)['layers']}, "
                       f"w={shape(s, args)['window']}" for s in settings)
    print(f"# paper_efficiency: fwd+bwd, batch 1, dropout 0; {shapes}"
          f"{' (REDUCED from the paper: --dim/--layers/--window/--z-dim)' if overridden(args) else ' (paper shapes)'}; "
          f"decode ctx {args.decode_context} x {args.decode_steps} steps; threads "
          f"{args.threads or os.cpu_count()}; repeats {args.repeats} (median) x {args.rounds} round(s); SeqBoat rates "
          f"{', '.join('router' if r is None else f'{r:g}' for r in rates)}; code {start_rev}; "
          f"CPU: {cpu_model()} ({os.cpu_count()} cores)", flush=True)
    plan = [(setting, model, rate) for setting in settings for model in models
            for rate in (rates if model == "seqboat" else [None])]
    if args.rounds == 1:
        records = [run_row(args, *key) for key in plan]
    else:  # every row once per round, the order reversed every other round; one combined record per row
        rounds = []
        for k in range(args.rounds):
            print(f"# round {k + 1} of {args.rounds}", flush=True)
            rounds.append({key: measure_row(args, *key) for key in (plan if k % 2 == 0 else plan[::-1])})
        records = [combine_rounds([r[key] for r in rounds]) for key in plan]
        for record in records:
            emit(record)
    rows = [table_row(r, args.quiet_threshold) for r in records]
    print()
    print(format_table(["setting", "model", "L", "D", "layers", "params", "act_rate", "ms/step", "GFLOP",
                        "GFLOP/s", "alloc_mb", "delta_mb", "decode ms/tok", "others", "note"], rows,
                       title="Training step (fwd+bwd, batch 1) and decoding, median of repeats; GFLOP: matmul "
                             "FLOPs of one step (FlopCounterMode)"))
    split = [split_row(r) for r in records if "split_ms" in r]
    if split:
        print()
        print(format_table(["setting", "model", "ms/step", *COMPONENTS], split,
                           title="Where the time goes: ms (share) of a step by component, from one profiled step "
                                 "(bench/profile_step.py's labels; share x median ms/step)"))
    ratios = ratio_records(records)
    if ratios:
        print()
        print(format_table(["setting", "seqboat", "vs", "speedup", "flop_ratio", "of_flops", "paper", "mem_ratio",
                            "paper", "decode speedup", "note"],
                           [[x["setting"], "router" if x["forced_rate"] is None else f"@{100 * x['forced_rate']:g}%",
                             x["baseline"], x["speedup"], x.get("flop_ratio"), x.get("of_flops"), x["paper_speedup"],
                             x["mem_ratio"], x["paper_mem_ratio"], x.get("decode_speedup"),
                             "DISTURBED" if x["disturbed"] else ""] for x in ratios],
                           title="SeqBoat vs baselines (speedup = baseline ms / SeqBoat ms; flop_ratio = baseline "
                                 "GFLOP / SeqBoat GFLOP; of_flops = speedup / flop_ratio; mem_ratio = SeqBoat "
                                 "alloc_mb / baseline alloc_mb; paper: GPU, the paper's shapes)"))
        for x in ratios:
            emit(x)
        targets = target_records(ratios)
        for t in targets:
            print(f"target {t['setting']} @{100 * t['forced_rate']:g}% vs mega_chunk: {t['check']} {t['value']} "
                  f"(target {t['target']}) {'[target met]' if t['met'] else '[TARGET NOT MET]'}"
                  f"{'  (timings disturbed by other processes)' if t['disturbed'] else ''}")
            emit(t)
    libs = {r["rev"].split("lib:")[-1] for r in records if "rev" in r} | {start_rev.split("lib:")[-1]}
    if len(libs) > 1:
        print(f"# WARNING: the library code changed during the run (lib hashes {', '.join(sorted(libs))})")
    failed = [r for r in records if "error" in r]
    if failed:
        print(f"paper_efficiency: error: {len(failed)} row(s) failed: "
              + "; ".join(f"{r['setting']}/{r['model']}: {r['error'][:200]}" for r in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
