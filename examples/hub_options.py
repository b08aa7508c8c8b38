"""The command-line flags the hub examples share (``examples/enwik8/hub_generate.py``,
``examples/sentencepiece/hub_generate.py``); each adds its own after these."""

import argparse


def hub_parser(doc: str, *, data_help: str, max_len: int, max_len_help: str, topk: int) -> argparse.ArgumentParser:
    """A parser with the checkpoint, data, prompt, length and sampling flags (``doc``: the script's docstring)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--checkpoint-file", default="checkpoint_best.pt")
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--prompt", default="The ")
    parser.add_argument("--max-len", type=int, default=max_len, help=max_len_help)
    parser.add_argument("--topk", type=int, default=topk)
    parser.add_argument("--seed", type=int, default=1)
    return parser
