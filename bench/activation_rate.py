"""Cost of one SeqBoat layer vs its activation rate (CPU).

A single causal ``SeqBoatLayer`` (SeqBoat, working memory w) on random inputs ``x (L, B, D)``;
its router's hard decision is fixed (``seqboat_fairseq.modules.sma.forced_activation``) to a
*random mask* with exactly ``round(rate * L)`` active tokens per row (10%, 25%, 50%, 100% by
default). The gate stays differentiable: it is the router's own confidence times the forced
mask, so the backward pass reaches ``hx_proj`` and the temperature exactly as in training.

Timed per rate (median of repeats; the repeats are interleaved across rates so slow
phases of a shared machine hit every rate alike):

* ``layer_fwd_ms``   layer forward under ``torch.no_grad()`` (inference);
* ``layer_step_ms``  layer forward + backward (x requires grad, fixed random output grad);
* ``gau_fwd_ms`` / ``gau_step_ms``  the sparse part alone on a fixed SSM output ``s``:
  ``plan_compression`` + ``compress`` + ``GatedAttentionUnit`` + ``extract`` (no grad / + backward);
* ``rest_step_ms`` = layer_step - gau_step: MD-EMA, norm, projections, router, combine.

Also an ``always_active`` row: the same layer built with ``always_active=True`` (no router).

Run from the repository root::

    python bench/activation_rate.py
    python bench/activation_rate.py --seq-len 8192 --rates 0.1,0.25,1 --repeats 5
"""

import argparse
import contextlib
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    add_model_shape_args, add_quiet_args, add_threads_seed_args, code_revision, emit, format_table, median,
    parse_float_list, resolve_model_shape, setup_torch, timed_when_quiet, wait_until_quiet,
)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=4096, help="sequence length L")
    p.add_argument("--batch-size", type=int, default=1)
    add_model_shape_args(p, layers=False, transformer=False)
    p.add_argument("--rates", default="0.1,0.25,0.5,1.0", help="forced activation rates")
    p.add_argument("--no-always-active", action="store_true", help="skip the always_active reference row")
    p.add_argument("--no-gau", action="store_true", help="skip the GAU-only timings")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per measurement")
    add_threads_seed_args(p)
    add_quiet_args(p, wait_quiet=30.0, before="round")
    p.add_argument("--target-rate", type=float, default=0.25, help="rate of the target check (vs 100%%)")
    p.add_argument("--target-ratio", type=float, default=0.45, help="target: time(target rate) <= this x time(100%%)")
    return p


def build_layer(args, always_active: bool):
    import torch

    from seqboat_fairseq.modules.seqboat_layer import SeqBoatLayer

    torch.manual_seed(args.seed)  # identical parameters for every variant
    layer = SeqBoatLayer(
        args.dim, args.z_dim, args.hidden_dim, args.n_dim, bidirectional=False,
        window=args.window, truncation=args.truncation if args.truncation > 0 else None,
        prenorm=True, rel_pos=args.rel_pos, max_positions=args.seq_len, always_active=always_active,
        dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
    )
    return layer.train()


def random_mask(batch: int, length: int, rate: float, seed: int):
    """(B, L) bool with exactly round(rate * L) True per row, at random positions."""
    import torch

    g = torch.Generator().manual_seed(seed)
    k = min(max(int(round(rate * length)), 0), length)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        mask[b, torch.randperm(length, generator=g)[:k]] = True
    return mask


class Measurement:
    def __init__(self, name, fn):
        self.name, self.fn, self.times, self.others = name, fn, [], []


def main():
    args = resolve_model_shape(get_parser().parse_args())
    threads = setup_torch(args.threads, args.seed)
    import torch

    from seqboat_fairseq.modules.sma import forced_activation

    rates = parse_float_list(args.rates)
    L, B, D = args.seq_len, args.batch_size, args.dim
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(L, B, D, generator=g)
    grad_y = torch.randn(L, B, D, generator=g)
    s = torch.randn(B, L, D, generator=g)  # stand-in SSM output for the GAU-only timings
    grad_g = torch.randn(B, L, D, generator=g)

    configs = []  # (name, rate, layer, mask or None)
    forced = contextlib.ExitStack()  # every layer's router fixed to its mask for the whole run
    for i, rate in enumerate(rates):
        layer = build_layer(args, always_active=False)
        mask = random_mask(B, L, rate, args.seed + 100 + i)
        forced.enter_context(forced_activation(layer, lambda active, mask=mask: mask))
        configs.append((f"seqboat_w{args.window}" if args.window > 0 else "seqboat_full", rate, layer, mask))
    if not args.no_always_active:
        configs.append(("always_active", 1.0, build_layer(args, always_active=True), None))

    def layer_fwd(layer):
        def run():
            with torch.no_grad():
                layer(x)
        return run

    def layer_step(layer):
        xg = x.clone().requires_grad_(True)

        def run():
            layer.zero_grad(set_to_none=True)
            xg.grad = None
            y, _ = layer(xg)
            y.backward(grad_y)
        return run

    def gau_part(layer, mask, grad):
        gau = layer.gau
        full = torch.ones(B, L, dtype=torch.bool) if mask is None else mask
        sg = s.clone().requires_grad_(grad)

        def run():
            with torch.set_grad_enabled(grad):
                out = gau(sg, full)  # compress, attend, extract
                if grad:
                    gau.zero_grad(set_to_none=True)
                    sg.grad = None
                    out.backward(grad_g)
        return run

    measurements = {}
    for name, rate, layer, mask in configs:
        key = (name, rate)
        measurements[key] = [Measurement("layer_fwd", layer_fwd(layer)),
                             Measurement("layer_step", layer_step(layer))]
        if not args.no_gau:
            measurements[key] += [Measurement("gau_fwd", gau_part(layer, mask, False)),
                                  Measurement("gau_step", gau_part(layer, mask, True))]

    print(f"# activation_rate: one causal SeqBoatLayer, L={L} B={B} D={D} H={args.hidden_dim} Z={args.z_dim} "
          f"N={args.n_dim} w={args.window} rel_pos={args.rel_pos} truncation={args.truncation or 'none'}; "
          f"forced router masks; threads={threads}; warmup={args.warmup} repeats={args.repeats} (median, "
          f"interleaved across rates); code revision {code_revision()}", flush=True)
    if args.wait_quiet > 0:
        load = wait_until_quiet(args.wait_quiet, args.quiet_threshold, log=lambda m: print(m, flush=True))
        print(f"# other processes use {load:.2f} cores before timing", flush=True)

    all_ms = [m for ms in measurements.values() for m in ms]
    for m in all_ms:  # warm-up
        for _ in range(args.warmup):
            m.fn()
    for _ in range(args.repeats):  # interleaved timed runs: one round = every measurement once
        if args.wait_quiet > 0:
            wait_until_quiet(args.wait_quiet, args.quiet_threshold, probe=0.5)
        for m in all_ms:
            ms, other, _, _ = timed_when_quiet(m.fn, args.quiet_threshold, args.wait_quiet, args.max_tries,
                                            wait_first=False)
            m.times.append(ms)
            m.others.append(other)

    records = []
    for (name, rate), ms in measurements.items():
        by = {m.name: m for m in ms}
        rec = {"bench": "activation_rate", "model": name, "rate": rate,
               "active_tokens": int(round(rate * L)) if name != "always_active" else L,
               "seq_len": L, "batch_size": B, "dim": D, "window": args.window}
        for m in ms:
            rec[f"{m.name}_ms"] = round(median(m.times), 2)
        if "gau_step" in by:
            rec["rest_step_ms"] = round(rec["layer_step_ms"] - rec["gau_step_ms"], 2)
            rec["rest_fwd_ms"] = round(rec["layer_fwd_ms"] - rec["gau_fwd_ms"], 2)
        rec["other_cores"] = round(median([o for m in ms for o in m.others]), 2)
        rec["threads"], rec["repeats"], rec["rev"] = threads, args.repeats, code_revision()
        records.append(rec)
        emit(rec)

    headers = ["model", "rate", "active", "layer_fwd_ms", "layer_step_ms"]
    if not args.no_gau:
        headers += ["gau_fwd_ms", "gau_step_ms", "rest_fwd_ms", "rest_step_ms"]
    headers += ["others"]
    rows = []
    for r in records:
        row = [r["model"], r["rate"], r["active_tokens"], r["layer_fwd_ms"], r["layer_step_ms"]]
        if not args.no_gau:
            row += [r["gau_fwd_ms"], r["gau_step_ms"], r["rest_fwd_ms"], r["rest_step_ms"]]
        row += [r["other_cores"]]
        rows.append(row)
    print()
    print(format_table(headers, rows, title="SeqBoatLayer time vs forced activation rate (median)"))

    # ratios vs 100% (the forced-100% SeqBoat row; the always_active row is reported separately)
    full = next((r for r in records if r["model"] != "always_active" and math.isclose(r["rate"], 1.0)), None)
    ratio_rows = []
    if full is not None:
        for r in records:
            if r is full:
                continue
            ratio = {"bench": "activation_rate_ratio", "model": r["model"], "rate": r["rate"], "vs_rate": 1.0,
                     "layer_step_ratio": round(r["layer_step_ms"] / full["layer_step_ms"], 3),
                     "layer_fwd_ratio": round(r["layer_fwd_ms"] / full["layer_fwd_ms"], 3)}
            if "gau_step_ms" in r:
                ratio["gau_step_ratio"] = round(r["gau_step_ms"] / full["gau_step_ms"], 3)
                ratio["gau_fwd_ratio"] = round(r["gau_fwd_ms"] / full["gau_fwd_ms"], 3)
            ratio_rows.append(ratio)
        cols = ["layer_fwd_ratio", "layer_step_ratio"] + ([] if args.no_gau else ["gau_fwd_ratio", "gau_step_ratio"])
        print()
        print(format_table(["model", "rate"] + cols, [[x["model"], x["rate"]] + [x[c] for c in cols] for x in ratio_rows],
                           title="Ratios: time at this rate / time of the forced-100% SeqBoat layer"))
        for x in ratio_rows:
            emit(x)
        target = next((x for x in ratio_rows if x["model"] != "always_active"
                       and math.isclose(x["rate"], args.target_rate)), None)
        if target is not None:
            ok = target["layer_step_ratio"] <= args.target_ratio
            print()
            print(f"TARGET layer fwd+bwd at {args.target_rate:.0%} <= {args.target_ratio}x of 100%: "
                  f"{'MET' if ok else 'NOT MET'} (measured {target['layer_step_ratio']:.3f}x; "
                  f"forward-only {target['layer_fwd_ratio']:.3f}x"
                  + ("" if args.no_gau else f"; GAU part fwd+bwd {target['gau_step_ratio']:.3f}x") + ")")
            emit({"bench": "activation_rate_target", "rate": args.target_rate,
                  "layer_step_ratio": target["layer_step_ratio"], "target": args.target_ratio, "met": ok})
    disturbed = [r for r in records if r["other_cores"] >= args.quiet_threshold]
    if disturbed:
        print(f"# WARNING: other processes used >= {args.quiet_threshold} cores during "
              f"{len(disturbed)} row(s); their times are inflated (see the 'others' column)")


if __name__ == "__main__":
    main()
