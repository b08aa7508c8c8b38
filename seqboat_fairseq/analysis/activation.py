"""Activation time and router confidence of a trained SeqBoat checkpoint (the paper's RQ2).

Usage::

    python -m seqboat_fairseq.analysis.activation --path CHECKPOINT --data DATA_DIR \\
        [--split valid] --out-dir OUT [--max-samples N] [--batch-size B] [--cpu] [--heatmaps K] \\
        [--tokens-per-sample T]

The model runs in eval mode (no dropout, BatchNorm running statistics, no gradients) over the
first ``N`` samples of ``--split`` (file order; all by default), batched by the task's own batch
iterator (``B`` sequences per forward pass) behind fairseq's progress bar. Every one of the ``N``
samples is measured, or the command fails: no rate over fewer examples is ever reported. For
every sequence and layer it records the *activation time*: the fraction of non-pad tokens the
latent configurator (router) sends through the gated attention unit (the model's own activation
counts, what training logs as ``act_rate_l{i}``). Outputs, in ``--out-dir``:

* ``activation_time.png``: mean activation time per layer (bars, percent) with error bars of
  one standard deviation over sequences, clipped to [0, 100] % (the paper's figure 3);
* ``confidence_<i>.png`` (image tasks, the first ``K`` samples; ``i`` is the sample's index in
  the split): the input image (de-normalised pixels) and, per layer, the router confidence
  (max router probability) of the activated tokens reshaped to the image
  (``sqrt(L) x sqrt(L)``), skipped tokens grey (the paper's figure 4). The colour scale is
  fitted to the data: the 2nd-98th percentile of the sample's active-token confidences, stated
  on the colour bar (``plots.py``);
* ``activation_time.json``: per layer ``mean``/``std``/``min``/``max``/``n_samples`` of the
  per-sequence activation time (fractions in [0, 1]), ``token_mean`` (all activated tokens /
  all tokens, what training logs as ``act_rate_l{i}``) and ``confidence_mean`` (mean router
  confidence of the activated tokens); ``overall`` (the same for each sequence's mean over
  layers); the checkpoint, data, task, arch, split; accuracy for classifiers;
* ``activation_time.csv``: one row per sequence: ``sample`` (index in the split),
  [``document``], ``n_tokens``, [``label``, ``prediction``, ``correct`` (1/0)],
  ``layer_0`` .. ``layer_{N-1}`` (fractions), ``mean``; each column is explained in
  ``activation_time_columns.md``, written beside it.

A short table goes to stdout. Layers are numbered from 0, as in the training metrics.

Models and data:

* ``seqboat_lra`` classifiers (tasks ``lra-text`` and ``lra-image``). Retrieval (two
  documents per sample) treats each document as a sequence of its own: both go through the
  same encoder, so the per-layer statistics are over ``2 N`` documents; the CSV has two rows
  per sample (``document`` 0 and 1) and the JSON adds ``per_document`` statistics. With
  ``--sen-rep-type cls`` the prepended ``<CLS>`` token counts as a token.
* ``seqboat_lm`` language models (task ``language_modeling``): the sequences are the task's
  blocks of ``--tokens-per-sample`` tokens (default: the checkpoint's) in file order; figure
  (a) and the numbers only.

Errors (a missing checkpoint, a checkpoint that is not a SeqBoat model, a missing data
directory or split, an incomplete measurement) exit with status 1 and a one-line message.

The work is split by stage: ``load.py`` (checkpoint and split), ``measure.py`` (batches and
counts), ``summary.py`` (statistics, the table), ``output.py`` (CSV, its column description,
JSON), ``plots.py`` (figures) and ``cli.py`` (the command line); this module is its entry point.
"""

from .cli import build_parser, cli, main, run  # noqa: F401

if __name__ == "__main__":
    cli()
