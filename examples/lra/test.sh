#!/usr/bin/env bash
# Test accuracy of a trained LRA model (upstream: fairseq validate.py on the test split).
#   bash examples/lra/test.sh lra-text|lra-image DATA_DIR CHECKPOINT
# Every layer compresses per row, so the result does not depend on the batch size (upstream hazard H1, docs/design.md);
# --required-batch-size-multiple 1 makes fairseq evaluate every example: with its default of 8 it
# silently drops the last (n mod 8) examples of the split (and yields nothing below 8 examples).
set -euo pipefail
TASK=${1:?usage: test.sh lra-text|lra-image DATA_DIR CHECKPOINT}
DATA=${2:?usage: test.sh lra-text|lra-image DATA_DIR CHECKPOINT}
CKPT=${3:?usage: test.sh lra-text|lra-image DATA_DIR CHECKPOINT}
fairseq-validate "$DATA" --user-dir seqboat_fairseq --task "$TASK" --path "$CKPT" \
  --criterion lra_cross_entropy --valid-subset test --batch-size 32 --required-batch-size-multiple 1
