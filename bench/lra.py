"""LRA training-step benchmark (CPU): the Text task shape and Path-X memory.

    python bench/lra.py [--seq-len 4000] [--batch-size 2] [--repeats 3] [--pathx-len 16384]

Rows (one fresh subprocess each, so peak RSS belongs to that model alone):

* ``seqboat`` / ``seqboat_full`` / ``always_active``: ``--arch seqboat_lra_imdb`` (4 layers, D=128,
  H=256, Z=64, w=128, softmax, local_pos) with ``--chunk-size -1`` / ``--always-act`` for the variants;
* ``transformer``: a full-attention encoder of equal size (torch ``nn.TransformerEncoder``, 4 layers,
  d_model 128, 2 heads, FFN 256, token embedding, masked-mean pooling, the same classifier);
* ``seqboat_pathx``: ``--arch seqboat_lra_pf128`` at 16,384 pixels (forward + backward memory).

A step = forward + cross-entropy + backward on random inputs (no optimizer), median of repeats.
Memory = peak RSS of the worker minus its RSS after building the model and inputs (``delta_mb``).
Prints a table, one ``BENCH {json}`` line per row and ratio lines against the Transformer.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (REPO_ROOT, emit, format_table, median, peak_rss_mb, quiet_fairseq_logging,  # noqa: E402
                    rss_mb, setup_torch, time_repeats)

# seqboat_lra_imdb spelled out, for SeqBoat-full (local_pos needs a working memory: plain simple bias)
IMDB = ["--arch", "seqboat_lra", "--encoder-layers", "4", "--encoder-embed-dim", "128", "--encoder-hidden-dim",
        "256", "--z-dim", "64", "--n-dim", "16", "--truncation-length", "1024", "--max-positions", "4002",
        "--norm-type", "scalenorm", "--attention-activation-fn", "softmax", "--init-temp-scale", "0.3",
        "--sentence-class-num", "2", "--classifier-out-dim", "256"]
VARIANTS = {
    "seqboat": ["--arch", "seqboat_lra_imdb"],
    "seqboat_full": IMDB + ["--chunk-size", "-1"],
    "always_active": ["--arch", "seqboat_lra_imdb", "--always-act"],
    "seqboat_pathx": ["--arch", "seqboat_lra_pf128"],
}


def build_seqboat(kind, workdir):
    from seqboat_fairseq.testing import build_from_cli, write_lra_dictionaries

    if kind == "seqboat_pathx":
        os.makedirs(os.path.join(workdir, "input"), exist_ok=True)
        model, _, cfg = build_from_cli(workdir, "lra-image", "--criterion", "lra_cross_entropy", *VARIANTS[kind])
        return model, "image", 2
    data = write_lra_dictionaries(workdir, symbols=tuple(str(i) for i in range(256)), labels=("0", "1"))
    model, _, cfg = build_from_cli(data, "lra-text", "--criterion", "lra_cross_entropy", *VARIANTS[kind])
    return model, "text", 2


def build_transformer(dim=128, layers=4, heads=2, ffn=256, vocab=261, classes=2):
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim, padding_idx=1)
            layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.1, batch_first=True, norm_first=False)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Sequential(nn.Linear(dim, 256), nn.GELU(), nn.Linear(256, classes, bias=False))

        def forward(self, tokens, lengths):
            x = self.encoder(self.embed(tokens))
            return self.head(x.sum(1) / lengths.unsqueeze(-1)), None

    return Encoder()


def worker(args):
    import torch
    import torch.nn.functional as F

    quiet_fairseq_logging()
    setup_torch(args.threads, seed=0)
    with tempfile.TemporaryDirectory() as workdir:
        if args.model == "transformer":
            model, kind = build_transformer(), "text"
        else:
            model, kind, _ = build_seqboat(args.model, workdir)
    model.train()
    length = args.pathx_len if args.model == "seqboat_pathx" else args.seq_len
    batch = 1 if args.model == "seqboat_pathx" else args.batch_size
    if kind == "image":
        src = torch.randn(batch, length)
    else:
        src = torch.randint(4, 260, (batch, length))
    lengths = torch.full((batch,), length)
    target = torch.randint(0, 2, (batch,))
    rates = []

    def step():
        model.zero_grad(set_to_none=True)
        logits, extra = model(src, lengths)
        F.cross_entropy(logits.float(), target).backward()
        if extra is not None:
            rates.append([a.active.float().mean().item() for a in extra["activations"][0]])

    base = rss_mb()  # model and inputs built; everything above this is the step's own memory
    times = time_repeats(step, warmup=1, repeats=args.repeats)
    record = {"bench": "lra_train_step", "model": args.model, "seq_len": length, "batch_size": batch,
              "ms": round(median(times), 1), "ms_all": [round(t, 1) for t in times],
              "peak_mb": round(peak_rss_mb(), 1), "base_mb": round(base, 1),
              "delta_mb": round(peak_rss_mb() - base, 1),
              "params": sum(p.numel() for p in model.parameters()),
              "act_rate": round(sum(rates[-1]) / len(rates[-1]), 3) if rates else None,
              "threads": args.threads}
    print(json.dumps(record))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=4000)
    parser.add_argument("--pathx-len", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--models", default="seqboat,seqboat_full,always_active,transformer,seqboat_pathx")
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    records = []
    for model in args.models.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model, "--seq-len", str(args.seq_len),
               "--pathx-len", str(args.pathx_len), "--batch-size", str(args.batch_size),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
        if out.returncode != 0:
            raise SystemExit(f"worker {model} failed:\n{out.stderr[-3000:]}")
        record = json.loads(out.stdout.strip().splitlines()[-1])
        records.append(record)
        emit(record)

    rows = [[r["model"], r["seq_len"], r["batch_size"], r["ms"], r["delta_mb"], r["peak_mb"], r["params"],
             r["act_rate"]] for r in records]
    print(format_table(["model", "L", "B", "step ms", "delta MB", "peak MB", "params", "act rate"], rows,
                       title="LRA training step (fwd+bwd), Text shape; Path-X memory"))
    by_model = {r["model"]: r for r in records}
    if "transformer" in by_model:
        ref = by_model["transformer"]
        for name in ("seqboat", "seqboat_full", "always_active"):
            if name in by_model:
                r = by_model[name]
                ratio = {"bench": "lra_ratio", "model": name, "vs": "transformer", "seq_len": r["seq_len"],
                         "speedup": round(ref["ms"] / r["ms"], 3), "delta_mem_ratio": round(r["delta_mb"] / ref["delta_mb"], 3)}
                print(f"{name}: {ratio['speedup']}x the Transformer's speed, {ratio['delta_mem_ratio']}x its "
                      f"activation memory (paper, GPU: SeqBoat 10.4x speed, 0.05x memory)")
                emit(ratio)


if __name__ == "__main__":
    main()
