"""The MD-EMA's parallel form: chunked evaluation (``ema.chunked_ema_conv``) vs the FFT convolution.

For each shape ``D x L x B`` (and truncation L_k), times the MD-EMA's convolution with its
kernel-dependent part, as a layer runs it: from the parameters and the input ``u (D, B, L)`` to
the output, forward (no grad) and forward + backward (gradients for the input and every MD-EMA
parameter), for

* ``fft``: the kernel ``K (D, L_k)`` (``MultiHeadEMA.kernel``) and an FFT convolution of size 2L
  (``naive.fft_conv``, torch.fft under autograd: how ``forward`` and ``forward_chunk`` convolved
  before);
* ``chunk32`` / ``chunk64``: ``chunked_ema_conv`` with C = 32 / 64 (``forward`` uses
  ``default_chunk_size``: 64 for an untruncated kernel once B x L >= 8192 tokens, else 32).

With ``--bidirectional`` each shape is a bidirectional EMA of D channels (2D kernel rows):
``fft`` is two FFT convolutions (forward in time, and over the time-reversed input, flipped
back), the chunked rows one ``chunked_ema_conv`` call with ``backward=`` (both directions on the
same chunks, as ``MultiHeadEMA.forward`` runs it).

``ratio`` = fft time / chunked time at the default C (> 1: the chunked form is faster). The
maximum relative difference of the outputs is printed too (both are fp32).

    python bench/ema_conv.py
    python bench/ema_conv.py --shapes 256x4096x1,256x8192x1 --truncations none,2048
    python bench/ema_conv.py --bidirectional --shapes 60x16000x1,128x4000x1 --truncations none
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_threads_seed_args, code_revision, emit, format_table, median, setup_torch, time_repeats  # noqa: E402

DEFAULT_SHAPES = "256x1024x1,256x4096x1,256x8192x1,512x1024x4,64x4000x8"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated D x L x B")
    p.add_argument("--truncations", default="none,1024", help="comma-separated L_k values ('none': untruncated)")
    p.add_argument("--n-dim", type=int, default=16)
    p.add_argument("--bidirectional", action="store_true",
                   help="bidirectional EMAs (D channels, 2D kernel rows), as the LRA/SC10 encoders")
    p.add_argument("--repeats", type=int, default=7)
    add_threads_seed_args(p)
    args = p.parse_args(argv)
    threads = setup_torch(args.threads, args.seed)

    import torch

    from seqboat_fairseq.modules.ema import MultiHeadEMA, chunked_ema_conv, default_chunk_size
    from seqboat_fairseq.modules.naive import fft_conv

    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    truncations = [None if t.strip().lower() == "none" else int(t) for t in args.truncations.split(",")]
    print(f"# ema_conv: MD-EMA convolution{' (bidirectional)' if args.bidirectional else ''}, N={args.n_dim}, {threads} threads, median of {args.repeats}; "
          f"code revision {code_revision()}", flush=True)
    rows = []
    for dim, seq_len, bsz in shapes:
        for truncation in truncations:
            torch.manual_seed(args.seed)
            ema = MultiHeadEMA(dim, args.n_dim, bidirectional=args.bidirectional, truncation=truncation)
            u = torch.randn(dim, bsz, seq_len, requires_grad=True)
            grad = torch.randn(dim, bsz, seq_len)
            kernel_len = seq_len if truncation is None else min(truncation, seq_len)

            def fft():
                kernel = ema.kernel(kernel_len)
                y = fft_conv(u.transpose(0, 1), kernel[:dim]).transpose(0, 1)
                if args.bidirectional:
                    y = y + fft_conv(u.flip(-1).transpose(0, 1), kernel[dim:]).transpose(0, 1).flip(-1)
                return y

            def chunked(chunk):
                def run():
                    coef, log_phi = ema.kernel_terms()
                    if args.bidirectional:
                        return chunked_ema_conv(u, coef[:dim], log_phi[:dim], chunk, truncation,
                                                backward=(coef[dim:], log_phi[dim:]))
                    return chunked_ema_conv(u, coef, log_phi, chunk, truncation)
                return run

            variants = {"fft": fft, "chunk32": chunked(32), "chunk64": chunked(64)}
            default = f"chunk{default_chunk_size(bsz, seq_len, truncation)}"
            with torch.no_grad():
                reference = fft()
                error = max(((v() - reference).abs().max() / reference.abs().max()).item()
                            for k, v in variants.items() if k != "fft")

            def train(fn):
                def run():
                    ema.zero_grad(set_to_none=True)
                    u.grad = None
                    fn().backward(grad)
                return run

            def infer(fn):
                def run():
                    with torch.no_grad():
                        fn()
                return run

            times = {(k, mode): [] for k in variants for mode in ("fwd", "step")}
            for _ in range(args.repeats):  # interleaved, so a noisy phase hits every variant
                for k, fn in variants.items():
                    times[(k, "fwd")] += time_repeats(infer(fn), warmup=1, repeats=1)
                    times[(k, "step")] += time_repeats(train(fn), warmup=1, repeats=1)
            ms = {key: round(median(v), 2) for key, v in times.items()}
            record = {"bench": "ema_conv", "dim": dim, "seq_len": seq_len, "batch_size": bsz,
                      "bidirectional": args.bidirectional,
                      "truncation": truncation, "n_dim": args.n_dim, "default_chunk": default,
                      **{f"{k}_{mode}_ms": ms[(k, mode)] for k, mode in ms},
                      "fwd_ratio": round(ms[("fft", "fwd")] / ms[(default, "fwd")], 2),
                      "step_ratio": round(ms[("fft", "step")] / ms[(default, "step")], 2),
                      "max_rel_diff": float(f"{error:.2e}"), "threads": threads, "rev": code_revision()}
            emit(record)
            rows.append([f"{dim}x{seq_len}x{bsz}", truncation or "none", default,
                         ms[("fft", "fwd")], ms[("chunk32", "fwd")], ms[("chunk64", "fwd")], record["fwd_ratio"],
                         ms[("fft", "step")], ms[("chunk32", "step")], ms[("chunk64", "step")], record["step_ratio"],
                         f"{error:.1e}"])
    print()
    print(format_table(["D x L x B", "L_k", "default", "fft fwd", "c32 fwd", "c64 fwd", "ratio",
                        "fft fwd+bwd", "c32 fwd+bwd", "c64 fwd+bwd", "ratio", "rel diff"], rows,
                       title="ms per call (median); ratio = fft / chunked at the default C"))


if __name__ == "__main__":
    main()
