"""Every pass over a split keeps its last batch, whatever ``--batch-size`` and
``--required-batch-size-multiple``.

fairseq 0.12's ``data_utils.batch_by_size`` ends with ``if bsz_mult > 1 and len(b[-1]) % bsz_mult
!= 0: b = b[:-1]`` (facebookresearch/fairseq#5036): with the default
``--required-batch-size-multiple 8`` it silently drops the last batch unless its size is a multiple
of 8. Every caller would lose examples: ``fairseq-validate --batch-size 32`` would score 56 of 60
examples, 96 of 100; an LM at ``--batch-size 3`` (batches of 3 blocks, never a multiple of 8) its
last batch of blocks; validation during training the same; a training epoch the same few
examples every epoch.

``FairseqDataset.batch_by_size`` calls ``data_utils.batch_by_size`` through the module, so
replacing that attribute reaches every task (``language_modeling`` included) and every tool. The
batches are fairseq's own (``batch_by_size_vec``/``_fn`` cut ``indices`` into consecutive slices,
each a multiple of the required size where it can be); what fairseq dropped, the tail of
``indices`` after the last batch it kept, becomes the last batch again. That batch obeys
``--max-tokens`` / ``--batch-size`` (it is the batch fairseq built before dropping it)."""

import numpy as np
from fairseq.data import data_utils

from ..patches import enabled

_fairseq_batch_by_size = data_utils.batch_by_size


def batch_by_size(indices, num_tokens_fn, num_tokens_vec=None, max_tokens=None, max_sentences=None,
                  required_batch_size_multiple=1, fixed_shapes=None):
    """``fairseq.data.data_utils.batch_by_size``, with the last batch kept (see the module)."""
    if not isinstance(indices, np.ndarray):
        indices = np.fromiter(indices, dtype=np.int64, count=-1)
    batches = _fairseq_batch_by_size(indices, num_tokens_fn, num_tokens_vec=num_tokens_vec, max_tokens=max_tokens,
                                     max_sentences=max_sentences,
                                     required_batch_size_multiple=required_batch_size_multiple,
                                     fixed_shapes=fixed_shapes)
    if fixed_shapes is not None:  # fairseq never drops with fixed shapes
        return batches
    batches = list(batches)
    covered = sum(len(batch) for batch in batches)
    if covered < len(indices):
        batches.append(np.asarray(indices[covered:], dtype=np.int64))
    return batches


if enabled("batch_by_size"):
    data_utils.batch_by_size = batch_by_size
