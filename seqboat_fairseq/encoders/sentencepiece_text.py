r"""``--bpe sentencepiece`` that decodes with the sentencepiece model: byte pieces become text.

fairseq's own ``SentencepieceBPE.decode`` only joins the pieces and turns ``▁`` into spaces, so
a model trained with ``byte_fallback`` (what ``data_prep/sentencepiece_lm.py`` writes) prints
every character outside its vocabulary as its byte pieces, prompt included::

    fairseq:  "▁Gr <0xC3> <0xB6> ße"  ->  "Gr<0xC3><0xB6>ße"
    here:     "▁Gr <0xC3> <0xB6> ße"  ->  "Größe"

Importing this module puts :class:`SentencepieceTextBPE` in fairseq's ``--bpe`` registry under
the name ``sentencepiece`` (same options, same ``encode``), so ``fairseq-interactive``,
``fairseq-generate`` and the hub's ``sample`` / ``decode`` print text with the stock flags.
``decode`` is sentencepiece's own ``decode_pieces`` line by line: the exact inverse of
``encode`` (runs of spaces, leading and trailing spaces kept, where fairseq strips them); a
``</s>`` in the token string (``--task multiline_language_modeling`` keeps them) is a line
break, as in the data-bin; ``<unk>`` is sentencepiece's `` ⁇ ``; a token that is not a piece of
the model is kept as it is.
"""

from fairseq.data.encoders import BPE_REGISTRY
from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE

from ..patches import enabled

LINE_BREAK = "</s>"


class SentencepieceTextBPE(SentencepieceBPE):
    """fairseq's ``SentencepieceBPE`` (``self.sp``: the loaded ``SentencePieceProcessor``) whose
    :meth:`decode` is sentencepiece's."""

    def decode(self, x: str) -> str:
        """Space-separated pieces (``Dictionary.string``) -> text; ``</s>`` -> ``"\n"``."""
        lines, current = [], []
        for token in x.split(" "):
            if token == LINE_BREAK:
                lines.append(current)
                current = []
            elif token:
                current.append(token)
        lines.append(current)
        return "\n".join(self.sp.decode_pieces(pieces) for pieces in lines)


# Replace, not register: fairseq refuses a second registration of a name, and the flag users
# already pass (with its SentencepieceConfig options) should decode correctly.
if enabled("sentencepiece"):
    BPE_REGISTRY["sentencepiece"] = SentencepieceTextBPE
