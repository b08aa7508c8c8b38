#!/usr/bin/env bash
# The paper's enwik8 evaluation: test bits per character with 7000 tokens
# of context for every scored token, 1192 new tokens per 8192-token forward pass.
#   bash examples/enwik8/eval.sh DATA_BIN CHECKPOINT
# Upstream's README expects ~1.0233 ("Loss (base 2)" is bits per character for bytes).
set -euo pipefail
DATA=${1:?usage: eval.sh DATA_BIN CHECKPOINT}
CKPT=${2:?usage: eval.sh DATA_BIN CHECKPOINT}

fairseq-eval-lm "$DATA" --user-dir seqboat_fairseq --path "$CKPT" --gen-subset test \
  --max-tokens 8192 --tokens-per-sample 8192 --context-window 7000 \
  --model-overrides '{"decoder_chunk_size": 1024}'
