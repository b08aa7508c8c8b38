"""Masked work of the windowed attention at the benchmarks' shapes: products computed vs allowed.

The windowed path (``modules/local_attention.py``) runs the compressed sequence's queries in blocks
of ``b < w`` slots against frames of ``2w + b`` keys (bidirectional) or ``w + b`` (causal); products
outside the window ``|i - j| <= w`` (causal ``0 <= i - j <= w``) are computed and masked. For each
setting of ``bench/paper_efficiency.py`` (its window and direction) and activation rate, this counts
one row's products with ``local_attention.window_products``: the compressed length is the rate's share
of the sequence, rounded up as compression rounds it for the blocking (``GatedAttentionUnit.slot_count``).
``masked_share`` = 1 - allowed / computed; the target is at most 0.15. Pure arithmetic: the numbers
do not depend on the machine.

    python bench/masked_work.py
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, format_table  # noqa: E402

# (setting, sequence length, window w, causal): paper_efficiency.py's shapes
SETTINGS = (("sc10", 16000, 128, False), ("lra_text", 4000, 128, False), ("enwik8", 8192, 1024, True))
MAX_MASKED_SHARE = 0.15


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="0.1,0.25,0.5,1", help="activation rates (share of the sequence's tokens)")
    args = p.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",")]
        if not all(0 < r <= 1 for r in rates):
            raise ValueError
    except ValueError:
        print(f"error: --rates: expected comma-separated rates in (0, 1], got {args.rates!r}", file=sys.stderr)
        return 2

    from seqboat_fairseq.modules.local_attention import window_geometry, window_products

    rows, failures = [], []
    for setting, length, window, causal in SETTINGS:
        for rate in rates:
            active = max(1, math.ceil(rate * length))
            slots = window_geometry(window, active, causal).padded  # compression's rounding (GAU.slot_count)
            computed, allowed = window_products(window, slots, causal, valid=active)
            geometry = window_geometry(window, slots, causal)
            share = round(1.0 - allowed / computed, 4)
            record = {"bench": "masked_work", "setting": setting, "rate": rate, "seq_len": length, "window": window,
                      "causal": causal, "active": active, "slots": slots, "block": geometry.block,
                      "frame": geometry.frame, "computed": computed, "allowed": allowed, "masked_share": share,
                      "met": share <= MAX_MASKED_SHARE}
            emit(record)
            rows.append([setting, f"{100 * rate:g} %", active, slots, geometry.block, geometry.frame, computed,
                         allowed, share, "met" if record["met"] else "NOT MET"])
            if not record["met"]:
                failures.append(f"{setting} at {100 * rate:g} %")
    print(format_table(["setting", "rate", "active", "slots", "block b", "frame", "computed", "allowed",
                        "masked share", f"<= {MAX_MASKED_SHARE}"], rows,
                       title="Windowed attention: products computed vs allowed by the window, one row"))
    print(f"target: masked share <= {MAX_MASKED_SHARE} at every shape: "
          + ("met" if not failures else "NOT MET at " + ", ".join(failures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
