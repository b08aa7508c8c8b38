"""``--task multiline_language_modeling``: text generation that continues across line ends.

Byte-level corpora (``data_prep/enwik8.py``) store every line as one fairseq sentence, so the
newline byte *is* ``</s>``. fairseq's ``SequenceGenerator`` ends a hypothesis at ``</s>`` and
``Dictionary.string`` drops every ``</s>``, so with ``--task language_modeling``
fairseq-interactive, fairseq-generate and the hub's ``sample`` end each text at its first line
end (or at the prompt, when the model picks a newline first).

This task is ``language_modeling`` in every other respect (same options, data, training and
scoring; any checkpoint trained with ``language_modeling`` loads under it). For generation it

* treats ``</s>`` as an ordinary token, a line break: hypotheses run on to exactly the requested
  length, ``--max-len-a`` x prompt length + ``--max-len-b`` tokens, the prompt included
  (default ``--max-len-a 0``: ``--max-len-b`` bytes of text in all);
* keeps ``</s>`` in the token strings (H- lines), which ``--bpe enwik8_bytes`` decodes to
  ``"\\n"`` (D- lines; ``sample`` in the hub).

Scores are the model's own log-probabilities: ``positional_scores`` holds one per token of the
text (there is no end-of-text decision to score) and ``score`` is their sum divided by
``len ** --lenpen`` (their mean by default). Beam search, sampling (top-k / top-p) and
``fairseq-generate`` (whose language-modeling prefixes contain ``</s>``) all work.

    fairseq-interactive DATA --user-dir seqboat_fairseq --task multiline_language_modeling \\
        --path CKPT --bpe enwik8_bytes --max-len-b 200 --sampling --sampling-topk 5
    SeqBoatLanguageModel.from_pretrained(DIR, CKPT, data_name_or_path=DATA, bpe="enwik8_bytes",
                                         task="multiline_language_modeling").sample("The ", max_len_b=200)
"""

import math
import os
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from fairseq import utils
from fairseq.data import Dictionary, TruncatedDictionary
from fairseq.sequence_generator import EnsembleModel, SequenceGenerator
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
from torch import Tensor

from .patches import enabled

TASK_NAME = "multiline_language_modeling"


class LineBreakDictionary(Dictionary):
    """A fairseq dictionary whose ``</s>`` is a line break inside the text: :meth:`string`
    keeps it (``include_eos`` defaults to True) instead of dropping it."""

    def string(self, tensor, bpe_symbol=None, escape_unk=False, extra_symbols_to_ignore=None,
               unk_string=None, include_eos=True, separator=" "):
        return super().string(tensor, bpe_symbol, escape_unk, extra_symbols_to_ignore, unk_string,
                              include_eos=include_eos, separator=separator)


class _StopAtLengthEnsemble(EnsembleModel):
    """fairseq's ensemble, plus the stop symbol's column: impossible (-inf) before the length
    limit, certain (log-prob 0) at it. The stop symbol is ``<s>``, which a language model never
    predicts (it is at most an input, with ``--add-bos-token``)."""

    def __init__(self, models, stop: int):
        super().__init__(models)
        self.stop = stop
        self.stop_step: Optional[int] = None  # set by MultilineSequenceGenerator per batch

    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature: float = 1.0):
        lprobs, attn = super().forward_decoder(tokens, encoder_outs, incremental_states, temperature)
        step = tokens.size(1) - 1  # the generator passes tokens[:, :step + 1]
        lprobs[:, self.stop] = 0.0 if step >= self.stop_step else -math.inf
        return lprobs, attn


class MultilineSequenceGenerator(SequenceGenerator):
    """``SequenceGenerator`` whose ``</s>`` is an ordinary token (a line break): every hypothesis
    runs to the length limit. The returned hypotheses hold only the text's tokens (no trailing
    ``</s>``): ``positional_scores`` has one model log-probability per token and ``score`` is their
    sum over ``len ** len_penalty`` (or just their sum with ``--unnormalized``)."""

    def __init__(self, models, tgt_dict, **kwargs):
        if kwargs.get("lm_model") is not None:
            raise ValueError(f"--lm-path (shallow fusion with a second LM) is not supported by --task {TASK_NAME}")
        if kwargs.get("match_source_len"):
            raise ValueError(f"--match-source-len is not supported by --task {TASK_NAME}: the output length is "
                             "--max-len-a x prompt length + --max-len-b")
        if kwargs.get("eos") is not None:
            raise ValueError(f"--task {TASK_NAME} chooses its own stop symbol (eos= cannot be given)")
        stop = tgt_dict.bos()
        if stop in (tgt_dict.eos(), tgt_dict.pad()):
            raise ValueError(f"--task {TASK_NAME} needs a dictionary whose <s> differs from </s> and <pad>")
        super().__init__(_StopAtLengthEnsemble(models, stop), tgt_dict, eos=stop, **kwargs)
        self.line_break = tgt_dict.eos()

    @torch.no_grad()
    def _generate(self, sample: Dict[str, Dict[str, Tensor]], prefix_tokens: Optional[Tensor] = None,
                  constraints: Optional[Tensor] = None, bos_token: Optional[int] = None):
        src_len = sample["net_input"]["src_tokens"].size(1)
        requested = int(self.max_len_a * src_len + self.max_len_b)  # SequenceGenerator's own formula
        if requested < 1:
            raise ValueError(f"--max-len-a {self.max_len_a} / --max-len-b {self.max_len_b} ask for {requested} "
                             "tokens: expected a length of at least 1 (the prompt included)")
        if requested > self.max_len - 1:
            raise ValueError(f"--max-len-a {self.max_len_a} / --max-len-b {self.max_len_b} ask for {requested} "
                             f"tokens, but the model generates at most {self.max_len - 1} (its max positions - 1)")
        if prefix_tokens is not None and prefix_tokens.numel():
            prompt = int(prefix_tokens.ne(self.pad).sum(1).max())
            if prompt >= requested:
                raise ValueError(f"--max-len-a {self.max_len_a} / --max-len-b {self.max_len_b} ask for {requested} "
                                 f"tokens in all, prompt included, but a prompt has {prompt}: expected a length of "
                                 f"more than {prompt}")
        self.model.stop_step = requested
        if bos_token is None:  # the context starts at a line start, not at the stop symbol
            bos_token = self.line_break
        finalized = super()._generate(sample, prefix_tokens=prefix_tokens, constraints=constraints,
                                      bos_token=bos_token)
        return [[self._drop_stop(hypo) for hypo in hypos] for hypos in finalized]

    def _drop_stop(self, hypo: Dict[str, Tensor]) -> Dict[str, Tensor]:
        tokens = hypo["tokens"]
        assert int(tokens[-1]) == self.eos, "every hypothesis ends with the stop symbol"
        positional_scores = hypo["positional_scores"][:-1]
        score = positional_scores.sum()
        if self.normalize_scores:
            score = score / max(len(positional_scores), 1) ** self.len_penalty
        attention = hypo["attention"]
        if attention is not None and attention.dim() == 2 and attention.size(-1) == len(tokens):
            attention = attention[:, :-1]
        return {**hypo, "tokens": tokens[:-1], "positional_scores": positional_scores,
                "score": score.to(hypo["score"]), "attention": attention}


@dataclass
class MultilineLanguageModelingConfig(LanguageModelingConfig):
    """The options of ``--task language_modeling``."""


@register_task(TASK_NAME, dataclass=MultilineLanguageModelingConfig)
class MultilineLanguageModelingTask(LanguageModelingTask):
    """``language_modeling`` whose ``</s>`` is a line break: see the module docstring."""

    @classmethod
    def setup_dictionary(cls, args, **kwargs):
        dictionary, output_dictionary = None, None
        if args.data:
            paths = utils.split_paths(args.data)
            dictionary = LineBreakDictionary.load(os.path.join(paths[0], "dict.txt"))
            output_dictionary = dictionary
            if args.output_dictionary_size >= 0:
                output_dictionary = TruncatedDictionary(dictionary, args.output_dictionary_size)
        return dictionary, output_dictionary

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        return super().build_generator(
            models, args, seq_gen_cls=seq_gen_cls or MultilineSequenceGenerator,
            extra_gen_cls_kwargs=extra_gen_cls_kwargs, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)


# --------------------------------------------------------------------------- prompt length
def position_limit(models) -> Optional[int]:
    """The smallest learned position limit (``decoder.position_limit``) of an ensemble, or None."""
    limits = [getattr(getattr(m, "decoder", None), "position_limit", None) for m in models]
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def check_prompt_length(models, prefix_tokens: Optional[Tensor], pad: int) -> None:
    """Refuses, before decoding, a prompt that a learned ``simple`` bias cannot hold: the model
    reads the start symbol and every prompt token before it predicts the first new one (fairseq
    would feed the prompt one token at a time and fail at the limit, counting the tokens fed so
    far instead of the prompt's)."""
    limit = position_limit(models)
    if limit is None or prefix_tokens is None or not prefix_tokens.numel():
        return
    prompt = int(prefix_tokens.ne(pad).sum(1).max())
    if prompt + 1 > limit:
        raise ValueError(
            f"a prompt of {prompt} tokens (plus the start symbol: {prompt + 1} positions) exceeds this model's "
            f"limit of {limit} positions: its learned relative-position bias (--rel-pos-bias simple) covers "
            f"offsets up to --max-target-positions {limit} - 1. Give a prompt of at most {limit - 1} tokens and "
            f"prompt + --max-len-b of at most {limit}, or use a model trained with rotary positions "
            "(--rel-pos-bias rotary) or --local-pos, which have no limit")


_fairseq_generate = SequenceGenerator._generate


def _generate_checked(self, sample, prefix_tokens=None, constraints=None, bos_token=None):
    check_prompt_length(self.model.models, prefix_tokens, self.pad)
    return _fairseq_generate(self, sample, prefix_tokens=prefix_tokens, constraints=constraints, bos_token=bos_token)


if enabled("generate"):
    SequenceGenerator._generate = _generate_checked  # fairseq-interactive, fairseq-generate and the hub


def hub_task_override(kwargs: Dict) -> Dict:
    """For ``from_pretrained(..., task="NAME")``: fairseq's checkpoint overrides replace a config
    *group* only from a dict and silently ignore a plain string, so turn ``task="NAME"`` into
    ``task={"_name": "NAME"}`` (after checking that NAME is a registered task)."""
    task = kwargs.get("task")
    if task is None or isinstance(task, dict):
        return kwargs
    from fairseq.tasks import TASK_REGISTRY

    if not isinstance(task, str) or task not in TASK_REGISTRY:
        raise ValueError(f"from_pretrained(task={task!r}): expected the name of a registered fairseq task, e.g. "
                         f"{TASK_NAME!r} or 'language_modeling'")
    return {**kwargs, "task": {"_name": task}}
