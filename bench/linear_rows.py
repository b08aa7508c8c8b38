"""Few-row products on this CPU: ``F.linear`` vs the plugin's ``modules.linear.Linear``.

A decoding step applies each projection to one row per sequence (batch, beams). This times both
routes for the enwik8-base GAU projection (616 -> 2592, ``--in-features`` / ``--out-features``)
at several row counts, cycling through ``--layers`` distinct weights so that, as in a model, the
weights are read from memory rather than cache. ``ratio`` = F.linear time / Linear time (> 1:
the plugin's route is faster); rows above ``linear.MAX_ROWS`` use ``F.linear`` in both.

    python bench/linear_rows.py
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_threads_seed_args, emit, format_table, median, parse_int_list, setup_torch, time_repeats  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1,2,4,8,16,32,64,128")
    p.add_argument("--in-features", type=int, default=616)
    p.add_argument("--out-features", type=int, default=2592)
    p.add_argument("--layers", type=int, default=14, help="distinct weights cycled through")
    p.add_argument("--calls", type=int, default=100, help="products per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    add_threads_seed_args(p)
    args = p.parse_args(argv)
    threads = setup_torch(args.threads, args.seed)

    import torch
    import torch.nn.functional as F

    from seqboat_fairseq.modules.linear import MAX_ROWS, Linear

    layers = [Linear(args.in_features, args.out_features) for _ in range(args.layers)]
    rows_out = []
    with torch.no_grad():
        for rows in parse_int_list(args.rows):
            x = torch.randn(rows, args.in_features)

            def run(product):
                def calls():
                    for i in range(args.calls):
                        layer = layers[i % len(layers)]
                        product(layer, x)
                return calls

            plain = run(lambda layer, inp: F.linear(inp, layer.weight, layer.bias))
            ours = run(lambda layer, inp: layer(inp))
            times = {"f_linear": [], "linear": []}
            for _ in range(args.repeats):  # interleaved, so a noisy phase hits both
                times["f_linear"] += time_repeats(plain, warmup=1, repeats=1)
                times["linear"] += time_repeats(ours, warmup=1, repeats=1)
            f_us, ours_us = (median(times[k]) * 1000.0 / args.calls for k in ("f_linear", "linear"))
            record = {"bench": "linear_rows", "rows": rows, "in_features": args.in_features,
                      "out_features": args.out_features, "f_linear_us": round(f_us, 1), "linear_us": round(ours_us, 1),
                      "ratio": round(f_us / ours_us, 3), "column_route": rows <= MAX_ROWS, "threads": threads}
            emit(record)
            rows_out.append([rows, record["f_linear_us"], record["linear_us"], record["ratio"], record["column_route"]])
    print(format_table(["rows", "F.linear us", "Linear us", "ratio", "column route"], rows_out,
                       title=f"{args.in_features} -> {args.out_features}, {args.layers} weights cycled, {threads} threads"))


if __name__ == "__main__":
    main()
