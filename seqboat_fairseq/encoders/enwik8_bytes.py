r"""``--bpe enwik8_bytes``: raw text <-> the decimal byte tokens of enwik8-style corpora.

``data_prep/enwik8.py`` (like transformer-xl's ``prep_enwik8.py``) writes every byte as its
decimal value and turns newline bytes into line breaks, i.e. into fairseq's ``</s>``. With
this encoder ``fairseq-interactive`` and the hub interface take and return plain text:

    "Hi!" <-> "72 105 33"        "Hi!\nOk" <- "72 105 33 </s> 79 107"

Under ``--task language_modeling`` fairseq ends every generated text at its first ``</s>``, i.e.
at the first line end; ``--task multiline_language_modeling`` (``seqboat_fairseq/generation.py``)
generates across lines, and this decoder turns each ``</s>`` into ``"\n"``.
"""

from dataclasses import dataclass

from fairseq.data.encoders import register_bpe
from fairseq.dataclass import FairseqDataclass



@dataclass
class Enwik8BytesConfig(FairseqDataclass):
    """No options (a dataclass is what registers the name with fairseq's hydra config)."""


@register_bpe("enwik8_bytes", dataclass=Enwik8BytesConfig)
class Enwik8Bytes:
    def __init__(self, *unused):
        pass

    @staticmethod
    def encode(x: str) -> str:
        """UTF-8 bytes of ``x`` as decimal tokens; a newline is a sentence break (``</s>``)
        in the training data, so it cannot appear inside one encoded line."""
        if "\n" in x:
            raise ValueError("--bpe enwik8_bytes encodes one line at a time (a newline is </s> in the corpus): "
                             "expected a prompt without newlines")
        return " ".join(str(b) for b in x.encode("utf-8"))

    @staticmethod
    def decode(x: str) -> str:
        """Decimal byte tokens back to text; ``</s>`` becomes a newline, anything that is not a
        byte token (``<unk>``, specials) is dropped, invalid UTF-8 is replaced."""
        out = bytearray()
        for token in x.split():
            if token == "</s>":
                out.append(10)
            elif token.isdigit() and int(token) < 256:
                out.append(int(token))
        return out.decode("utf-8", errors="replace")

    @staticmethod
    def is_beginning_of_word(x: str) -> bool:
        return x == "32"
