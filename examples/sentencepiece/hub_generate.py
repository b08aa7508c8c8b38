"""Generate and score text with a SeqBoat LM trained on a sentencepiece data-bin, through fairseq's hub.

    python examples/sentencepiece/hub_generate.py --checkpoint-dir CKPT --data DATA_BIN --prompt "The "

The model is loaded with ``bpe="sentencepiece"`` and the data-bin's ``spm.model``
(``data_prep/sentencepiece_lm.py`` puts it there); the plugin's sentencepiece decoder
(``seqboat_fairseq/encoders/sentencepiece_text.py``) turns byte-fallback pieces such as ``<0xC3>``
back into text. Every line of the corpus is one sentence, its line break ``</s>``: under
``language_modeling`` (the default) fairseq ends the text at the first ``</s>``. ``--multiline``
loads the model under ``multiline_language_modeling``, which generates across line ends to
``--max-len`` tokens (prompt included), each ``</s>`` decoded as a newline.
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # examples/
from hub_options import hub_parser  # noqa: E402
from seqboat_fairseq.models.seqboat_lm import SeqBoatLanguageModel  # noqa: E402  (works without install)


def main():
    parser = hub_parser(__doc__, data_help="the data-bin directory (dict.txt and spm.model)", max_len=60,
                        max_len_help="tokens in all, prompt included", topk=10)
    parser.add_argument("--multiline", action="store_true", help="continue across line ends")
    args = parser.parse_args()

    spm_model = os.path.join(args.data, "spm.model")
    task = "multiline_language_modeling" if args.multiline else "language_modeling"
    lm = SeqBoatLanguageModel.from_pretrained(args.checkpoint_dir, args.checkpoint_file, data_name_or_path=args.data,
                                              bpe="sentencepiece", sentencepiece_model=spm_model, task=task)
    lm.eval()
    torch.manual_seed(args.seed)
    options = dict(beam=1, sampling=True, sampling_topk=args.topk, max_len_b=args.max_len)
    if args.multiline:
        hypo = lm.generate([lm.encode(args.prompt)[:-1]], **options)[0][0]  # the prompt without its </s>
        text = lm.decode(hypo["tokens"])  # the dictionary keeps </s>, the decoder makes it a newline
    else:
        text = lm.sample(args.prompt, **options)
    print(f"hub sample:\n{text}\n")
    scores = lm.score(args.prompt)["positional_scores"]  # one per piece of the prompt
    bits = -scores.sum().item() / math.log(2)
    num_bytes = len(args.prompt.encode("utf-8"))
    print(f"hub score:  {args.prompt!r} costs {bits:.1f} bits in {len(scores)} tokens "
          f"({bits / num_bytes:.2f} bits per byte, after a line break)")


if __name__ == "__main__":
    main()
