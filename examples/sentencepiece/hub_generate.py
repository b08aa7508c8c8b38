"""Generate and score text with a SeqBoat LM trained on a sentencepiece data-bin, through fairseq's hub.

    python examples/sentencepiece/hub_generate.py --checkpoint-dir CKPT --data DATA_BIN --prompt "The "

The model is loaded with fairseq's own ``bpe="sentencepiece"`` and the data-bin's ``spm.model``
(``data_prep/sentencepiece_lm.py`` puts it there). Every line of the corpus is one sentence, its
line break ``</s>``: under ``language_modeling`` (the default) fairseq ends the text at the first
``</s>``. ``--multiline`` loads the model under ``multiline_language_modeling``, which generates
across line ends to ``--max-len`` tokens (prompt included); the text is then decoded by
sentencepiece itself, each ``</s>`` becoming a newline (fairseq's sentencepiece decoder would
print ``</s>`` and byte-fallback pieces such as ``<0xC3>`` as they are).
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # examples/
from hub_options import hub_parser  # noqa: E402
from seqboat_fairseq.models.seqboat_lm import SeqBoatLanguageModel  # noqa: E402  (works without install)


def decode_lines(dictionary, processor, tokens):
    """The text of fairseq ids ``tokens``: sentencepiece decodes each line, ``</s>`` joins them with newlines."""
    lines, current = [], []
    for index in tokens.tolist():
        if index == dictionary.eos():
            lines.append(current)
            current = []
        elif index not in (dictionary.pad(), dictionary.bos()):
            current.append(dictionary[index])
    lines.append(current)
    return "\n".join(processor.decode_pieces(pieces) for pieces in lines)


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
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=spm_model)
        hypo = lm.generate([lm.encode(args.prompt)[:-1]], **options)[0][0]  # the prompt without its </s>
        text = decode_lines(lm.task.target_dictionary, processor, hypo["tokens"])
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
