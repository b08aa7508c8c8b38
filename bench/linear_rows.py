"""Few-row products on this CPU: ``F.linear`` vs the column route ``(W x^T)^T`` vs the plugin's ``Linear``.

A decoding step applies each projection to one row per sequence (batch, beams). ``modules.linear.Linear``
chooses between ``F.linear`` and the column route by timing both once per shape on the machine at hand
(cached). This times the two routes side by side and the plugin's ``Linear`` (whatever route it chose)
for the enwik8-base GAU projection (616 -> 2592, ``--in-features`` / ``--out-features``) at several row
counts, cycling through ``--layers`` distinct weights so that, as in a model, the weights are read from
memory rather than cache. ``column speed-up`` = F.linear time / column-route time (> 1: the column route
is faster here); ``chosen``: the route ``Linear`` took (its decision is made in an untimed warm-up call);
``vs best``: Linear time / the faster route's time (1 = it chose well). Rows above ``linear.MAX_ROWS``
always take ``F.linear``.

    python bench/linear_rows.py
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_threads_seed_args, cpu_model, emit, format_table, median, parse_int_list,  # noqa: E402
                    setup_torch, time_repeats)


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

    from seqboat_fairseq.modules import linear as linear_module
    from seqboat_fairseq.modules.linear import MAX_ROWS, Linear

    print(f"# linear_rows: {args.in_features} -> {args.out_features}, {args.layers} weights cycled, {threads} "
          f"threads, torch {torch.__version__}; CPU: {cpu_model()} ({os.cpu_count()} cores)", flush=True)
    layers = [Linear(args.in_features, args.out_features) for _ in range(args.layers)]
    rows_out = []
    with torch.no_grad():
        for rows in parse_int_list(args.rows):
            x = torch.randn(rows, args.in_features)
            layers[0](x)  # Linear's one-off measurement for this shape, outside the timed calls
            key = (rows, args.in_features, args.out_features, True, x.dtype, torch.get_num_threads())
            chosen = "column" if linear_module.route_decisions().get(key) else "F.linear"

            def run(product):
                def calls():
                    for i in range(args.calls):
                        layer = layers[i % len(layers)]
                        product(layer, x)
                return calls

            routes = {"f_linear": run(lambda layer, inp: F.linear(inp, layer.weight, layer.bias)),
                      "column": run(lambda layer, inp: linear_module.column_product(inp, layer.weight, layer.bias)),
                      "linear": run(lambda layer, inp: layer(inp))}
            times = {k: [] for k in routes}
            for _ in range(args.repeats):  # interleaved, so a noisy phase hits all three
                for name, fn in routes.items():
                    times[name] += time_repeats(fn, warmup=1, repeats=1)
            us = {k: median(v) * 1000.0 / args.calls for k, v in times.items()}
            record = {"bench": "linear_rows", "rows": rows, "in_features": args.in_features,
                      "out_features": args.out_features, "f_linear_us": round(us["f_linear"], 1),
                      "column_us": round(us["column"], 1), "linear_us": round(us["linear"], 1),
                      "column_speedup": round(us["f_linear"] / us["column"], 3),
                      "linear_vs_best": round(us["linear"] / min(us["f_linear"], us["column"]), 3),
                      "chosen": chosen if rows <= MAX_ROWS else "F.linear (> MAX_ROWS)", "threads": threads,
                      "cpu": cpu_model()}
            emit(record)
            rows_out.append([rows, record["f_linear_us"], record["column_us"], record["column_speedup"],
                             record["chosen"], record["linear_us"], record["linear_vs_best"]])
    print(format_table(["rows", "F.linear us", "column us", "column speed-up", "chosen", "Linear us", "vs best"],
                       rows_out, title=f"{args.in_features} -> {args.out_features}, {args.layers} weights cycled, "
                                       f"{threads} threads, {cpu_model()}"))


if __name__ == "__main__":
    main()
