"""Generate and score text with a trained SeqBoat LM through fairseq's hub interface.

    python examples/enwik8/hub_generate.py --checkpoint-dir CKPT --data DATA_BIN --prompt "The "

The text runs to --max-len bytes (prompt included) across line ends: the model is loaded with
``task="multiline_language_modeling"``, under which ``</s>`` (a newline in enwik8-style data) is an
ordinary token. ``--single-line`` loads it under ``language_modeling`` instead, where fairseq ends
the text at the first newline the model picks.

Decoding is incremental: each new byte costs O(w) per layer (constant-size state), whatever
the prompt length; the prompt itself is processed token by token by fairseq's generator.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # examples/
from hub_options import hub_parser  # noqa: E402
from seqboat_fairseq.models.seqboat_lm import SeqBoatLanguageModel  # noqa: E402  (works without install)


def main():
    parser = hub_parser(__doc__, data_help="the data-bin directory (for dict.txt)", max_len=120,
                        max_len_help="bytes of text in all, prompt included", topk=5)
    parser.add_argument("--single-line", action="store_true",
                        help="stop at the first newline (fairseq's language_modeling task)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    task = "language_modeling" if args.single_line else "multiline_language_modeling"
    lm = SeqBoatLanguageModel.from_pretrained(args.checkpoint_dir, args.checkpoint_file,
                                              data_name_or_path=args.data, bpe="enwik8_bytes", task=task)
    lm.eval()
    text = lm.sample(args.prompt, beam=1, sampling=True, sampling_topk=args.topk, max_len_b=args.max_len)
    print(f"hub sample:\n{text}\n")
    scores = lm.score(args.prompt)["positional_scores"]
    bits = -scores.sum().item() / torch.log(torch.tensor(2.0)).item()
    print(f"hub score:  {args.prompt!r} costs {bits:.1f} bits ({bits / len(scores):.2f} per byte)")


if __name__ == "__main__":
    main()
