#!/usr/bin/env bash
# Test accuracy of a trained Speech Commands model (upstream: fairseq validate.py on the test split).
#   bash examples/speech/test.sh DATA_DIR CHECKPOINT
# --required-batch-size-multiple 1: every test clip is evaluated (fairseq's default of 8 would
# silently drop the last n mod 8 clips).
set -euo pipefail
DATA=${1:?usage: test.sh DATA_DIR CHECKPOINT}
CKPT=${2:?usage: test.sh DATA_DIR CHECKPOINT}
fairseq-validate "$DATA" --user-dir seqboat_fairseq --task speech_commands --path "$CKPT" \
  --criterion lra_cross_entropy --valid-subset test --batch-size 32 --required-batch-size-multiple 1
