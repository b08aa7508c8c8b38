"""Streaming evaluation (``--task language_modeling_stream``): every token scored once, with all of
its history, by the stock ``fairseq-eval-lm``; docs/streaming.md.

``fairseq-eval-lm`` cuts a split into blocks of ``--tokens-per-sample`` and starts every block from
an empty state (``--context-window C`` recomputes C tokens of history per block). This task instead

* reads the split as one token sequence (``TokenStream``: every line, its ``</s>`` included, in
  file order, as ``--sample-break-mode none`` does) and cuts it into B contiguous **streams**
  (B = ``--batch-size``, default 1; lengths differ by at most one token);
* walks the streams in lockstep in blocks of ``--tokens-per-sample`` tokens (the last block
  ragged, right-padded where a stream is shorter: pads are never scored), each block a batch
  ``(B, T)`` of the tokens that follow the previous block's;
* passes with every block the same decoding state (``StreamState``, fairseq's
  ``incremental_state``) and ``new_tokens_only=True``, so ``SeqBoatDecoder`` runs each layer's
  ``forward_chunk`` on the block and leaves the state for the next one.

Token t of a stream is predicted from its previous token (``</s>`` before the split's first
token, the token before the stream's start otherwise: fairseq's blocks do the same) and, through
the state, from everything before it in its stream: on a split that fits in one forward pass the
loss equals one parallel forward over the split (tests/test_streaming.py). ``--reset-every R``
drops the state every R tokens of a stream (loss as a function of the history available).
``--reach`` logs, per layer, how far back the working memory reaches (``analysis/reach.py``).

fairseq's ``SequenceScorer`` calls ``model(**net_input)``, and ``eval_lm`` moves each sample to the
device with ``utils.move_to_cuda``, which rebuilds every ``dict`` it finds: the state is therefore
a ``MutableMapping`` that is not a ``dict`` (passed through as it is, updated in place by the layers).
"""

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from ..checkpoint_compat import CheckpointError

logger = logging.getLogger(__name__)

TASK = "language_modeling_stream"


class StreamingError(CheckpointError):
    """A model or option streaming evaluation cannot use; the message names it and what was
    expected. A ``CheckpointError`` so that fairseq's checkpoint loading passes it on unchanged and
    a command-line tool prints only ``error: <message>`` (``checkpoint_compat.py``)."""


@dataclass
class StreamingLanguageModelingConfig(LanguageModelingConfig):
    reset_every: int = field(
        default=0, metadata={"help": "drop every stream's decoding state every R tokens (R > 0): loss with at "
                                     "most R tokens of history; 0: never (all of the history)"})
    reach: bool = field(
        default=False, metadata={"help": "log per layer how far back the working memory reaches (median / p90 / "
                                         "max distance from each active token to the oldest token in its memory)"})


class StreamState(MutableMapping):
    """fairseq's ``incremental_state`` for one set of streams: a mapping, deliberately not a
    ``dict`` (see the module docstring). ``layers_consumed`` is read by the tests."""

    def __init__(self):
        self._entries: Dict[str, Dict] = {}

    def __getitem__(self, key):
        return self._entries[key]

    def __setitem__(self, key, value):
        self._entries[key] = value

    def __delitem__(self, key):
        del self._entries[key]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)


class TokenStream(FairseqDataset):
    """A split as one sequence of N tokens (the lines of a fairseq indexed dataset, each with its
    ``</s>``), read by range without loading it: ``read(a, b)`` -> int64 tensor of tokens [a, b).
    ``len()`` is the number of lines (what ``fairseq-eval-lm`` logs as examples), ``[i]`` line i."""

    def __init__(self, dataset):
        self.dataset = dataset
        sizes = np.asarray(dataset.sizes, dtype=np.int64)
        self.ends = np.cumsum(sizes)  # line i holds tokens [ends[i] - sizes[i], ends[i])
        self.num_tokens = int(self.ends[-1]) if len(self.ends) else 0
        self._cached: Tuple[int, Optional[torch.Tensor]] = (-1, None)  # a long line is read once, not per block

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset[index]

    def _line(self, index: int) -> torch.Tensor:
        if self._cached[0] != index:
            self._cached = (index, self.dataset[index].long())
        return self._cached[1]

    def read(self, start: int, end: int) -> torch.Tensor:
        pieces, position = [], start
        index = int(np.searchsorted(self.ends, start, side="right"))
        while position < end:
            line_start = int(self.ends[index]) - int(self.dataset.sizes[index])
            line = self._line(index)
            take = min(end, int(self.ends[index])) - position
            pieces.append(line[position - line_start:position - line_start + take])
            position += take
            index += 1
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def block_schedule(length: int, block: int, reset_every: int) -> Iterator[Tuple[int, int, bool]]:
    """Blocks ``(start, end, reset)`` covering stream offsets [0, length): blocks of ``block``
    tokens, restarted at every multiple of ``reset_every`` (0: never), where ``reset`` is True
    (and at 0): a fresh decoding state starts there."""
    segment = reset_every if reset_every > 0 else max(length, 1)
    for segment_start in range(0, length, segment):
        segment_end = min(segment_start + segment, length)
        for start in range(segment_start, segment_end, block):
            yield start, min(start + block, segment_end), start == segment_start


class StreamBatches:
    """The batches of one streaming pass over a ``TokenStream`` (see the module docstring).
    Iterable once per ``iter``; ``len`` is the number of blocks."""

    def __init__(self, stream: TokenStream, num_streams: int, block: int, reset_every: int, pad: int, eos: int,
                 tracker=None):
        self.stream, self.block, self.reset_every = stream, block, reset_every
        self.pad, self.eos, self.tracker = pad, eos, tracker
        total = stream.num_tokens
        base, extra = divmod(total, num_streams)
        self.lengths = [base + (row < extra) for row in range(num_streams)]
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64).tolist()
        self.n = 0  # fairseq's progress bars read the iterator's offset

    def __len__(self) -> int:
        return sum(1 for _ in block_schedule(self.lengths[0], self.block, self.reset_every))

    def __iter__(self):
        state = None
        for index, (start, end, reset) in enumerate(block_schedule(self.lengths[0], self.block, self.reset_every)):
            if reset:
                state = StreamState()
                if self.tracker is not None:
                    self.tracker.reset(len(self.lengths))
            yield self._sample(index, start, end, state)
        if self.tracker is not None:
            from ..analysis.reach import format_summary

            for line in format_summary(self.tracker.summary()):
                logger.info(line)

    def _sample(self, index: int, start: int, end: int, state: StreamState) -> Dict:
        rows = len(self.lengths)
        source = torch.full((rows, end - start), self.pad, dtype=torch.long)
        target = torch.full((rows, end - start), self.pad, dtype=torch.long)
        lengths = torch.zeros(rows, dtype=torch.long)
        for row, (first, length) in enumerate(zip(self.starts, self.lengths)):
            real = max(0, min(end, length) - start)
            if real == 0:
                continue
            begin = first + start  # the first token this block scores in this row
            tokens = self.stream.read(max(begin - 1, 0), begin + real)
            if begin == 0:  # the split's first token is predicted from </s>, as in fairseq's blocks
                tokens = torch.cat([tokens.new_tensor([self.eos]), tokens])
            source[row, :real], target[row, :real], lengths[row] = tokens[:-1], tokens[1:], real
        return {
            "id": torch.arange(rows) + index * rows,
            "nsentences": rows,
            "ntokens": int(lengths.sum()),
            "net_input": {"src_tokens": source, "src_lengths": lengths, "incremental_state": state,
                          "new_tokens_only": True},
            "target": target,
        }


def stream_support(model) -> Optional[str]:
    """None if ``model`` can carry its decoding state across blocks, else why not."""
    from ..models.seqboat_lm import SeqBoatDecoder

    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, SeqBoatDecoder):
        return f"it is a {type(model).__name__} ({type(decoder).__name__}), which has no decoding state to carry"
    if any(getattr(layer, "bidirectional", False) for layer in decoder.layers):
        return "its layers are bidirectional"
    return None


@register_task(TASK, dataclass=StreamingLanguageModelingConfig)
class StreamingLanguageModelingTask(LanguageModelingTask):
    """``fairseq-eval-lm DATA --user-dir seqboat_fairseq --task language_modeling_stream --path CK
    [--batch-size B] [--tokens-per-sample T] [--reset-every R] [--reach]``; see the module docstring."""

    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        super().__init__(args, dictionary, output_dictionary, targets)
        if args.reset_every < 0:
            raise StreamingError(f"--reset-every {args.reset_every}: expected R > 0 tokens, or 0 (never)")
        if args.tokens_per_sample < 1:
            raise StreamingError(f"--tokens-per-sample {args.tokens_per_sample}: expected a block of at least 1 token")
        if args.sample_break_mode not in (None, "none"):
            raise StreamingError(f"--sample-break-mode {args.sample_break_mode}: --task {TASK} reads the split as "
                                 "one token sequence; drop the flag (none)")
        if args.add_bos_token:
            raise StreamingError(f"--add-bos-token: --task {TASK} scores streams without a beginning-of-sentence "
                                 "token; drop the flag")
        self.tracker = None
        self.position_limit: Optional[int] = None

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        problem = stream_support(model)
        if problem is not None:
            arch = getattr(cfg, "_name", None) or getattr(cfg, "arch", None)
            raise StreamingError(
                f"--task {TASK} carries each layer's decoding state from block to block, but this checkpoint's model "
                f"(--arch {arch}) cannot: {problem}. Streaming needs a SeqBoat, MEGA-chunk or SPADE language model "
                "(--arch seqboat_lm*, mega_chunk_lm*, spade_lm*); score this one with --task language_modeling "
                "(and --context-window C)")
        decoder = model.decoder
        if any(layer.gau.window is None for layer in decoder.layers):
            logger.warning("this model's working memory is unbounded (SeqBoat-full, --decoder-chunk-size -1): it "
                           "keeps every activated token, so the decoding state, the memory and the time per token "
                           "grow with the stream; use --reset-every R to bound them")
        self.position_limit = decoder.position_limit
        if self.args.reach:
            from ..analysis.reach import ReachTracker, layer_memories

            self.tracker = ReachTracker(layer_memories(decoder))
            decoder.register_forward_hook(self._record_reach, with_kwargs=True)
        return model

    def _record_reach(self, module, args, kwargs, output) -> None:
        if self.tracker is not None and isinstance(kwargs.get("incremental_state"), StreamState):
            extra = output[1]
            self.tracker.update([a.active for a in extra["activations"]], extra["padding_mask"])

    def load_dataset(self, split: str, epoch=1, combine=False, **kwargs) -> None:
        """The split as a ``TokenStream`` (first data directory of ``DATA``)."""
        from fairseq import utils

        path = f"{utils.split_paths(self.args.data)[0]}/{split}"
        dataset = data_utils.load_indexed_dataset(path, self.dictionary, self.args.dataset_impl, combine=combine)
        if dataset is None:
            raise FileNotFoundError(f"Dataset not found: {split} ({path})")
        self.datasets[split] = TokenStream(dataset)

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None, num_shards=1,
                           shard_id=0, num_workers=1, data_buffer_size=10, context_window=0):
        """B = ``--batch-size`` (default 1) contiguous streams in blocks of ``--tokens-per-sample``.
        ``--max-tokens`` is not used: a batch is always (B, T)."""
        if not isinstance(dataset, TokenStream):
            raise StreamingError(f"--task {TASK} evaluates the splits it loads itself (a TokenStream), "
                                 f"not a {type(dataset).__name__}")
        if context_window > 0:
            raise StreamingError(f"--context-window {context_window}: --task {TASK} carries the whole history in "
                                 "the decoding state instead of recomputing a window; drop the flag (or use "
                                 "--reset-every R to limit the history)")
        if num_shards > 1:
            raise StreamingError(f"--num-shards / distributed world size {num_shards}: --task {TASK} evaluates the "
                                 "whole split in one process; run it unsharded")
        if dataset.num_tokens == 0:
            raise StreamingError(f"--task {TASK}: the split {self.args.data} holds no tokens")
        streams = batch_size or 1
        if streams > dataset.num_tokens:
            logger.info(f"{streams} streams requested for {dataset.num_tokens} tokens: using {dataset.num_tokens}")
            streams = dataset.num_tokens
        batches = StreamBatches(dataset, streams, self.args.tokens_per_sample, self.args.reset_every,
                                self.source_dictionary.pad(), self.source_dictionary.eos(), self.tracker)
        history = max(batches.lengths) if self.args.reset_every <= 0 else min(self.args.reset_every,
                                                                              max(batches.lengths))
        if self.position_limit is not None and history > self.position_limit:
            raise StreamingError(
                f"streams of {history} tokens exceed this model's limit of {self.position_limit} positions (its "
                "learned relative-position bias, --rel-pos-bias simple): give --reset-every R <= "
                f"{self.position_limit} or more streams (--batch-size)")
        logger.info(f"streaming {dataset.num_tokens:,} tokens as {streams} stream(s) of {min(batches.lengths):,}-"
                    f"{max(batches.lengths):,} tokens in blocks of {self.args.tokens_per_sample}"
                    + (f", state dropped every {self.args.reset_every} tokens" if self.args.reset_every > 0 else ""))
        return batches
