#!/usr/bin/env bash
# The demos' training run (examples/demo.sh, examples/sentencepiece/demo.sh): seqboat_lm_tiny on CPU
# with RAdam + linear_decay, as the enwik8 recipe, validated every 200 updates. The learning rate
# warms up over the first tenth of the updates (WARMUP=N to choose; none below 10 updates).
# Usage: bash examples/train_tiny_lm.sh DATA_BIN SAVE_DIR UPDATES [more fairseq-train flags]
set -euo pipefail
DATA=${1:?usage: $0 DATA_BIN SAVE_DIR UPDATES [fairseq-train flags]}
CKPT=${2:?usage: $0 DATA_BIN SAVE_DIR UPDATES [fairseq-train flags]}
UPDATES=${3:?usage: $0 DATA_BIN SAVE_DIR UPDATES [fairseq-train flags]}
shift 3
WARMUP=${WARMUP:-$(( UPDATES / 10 ))}
WARMUP_FLAGS=()
if (( WARMUP > 0 )); then WARMUP_FLAGS=(--warmup-updates "$WARMUP" --warmup-init-lr 1e-4); fi
exec fairseq-train "$DATA" --user-dir seqboat_fairseq --task language_modeling --arch seqboat_lm_tiny \
  --criterion seqboat_cross_entropy --batch-size 8 \
  --optimizer radam --radam-betas '(0.9, 0.98)' --weight-decay 0.01 --clip-norm 0.25 \
  --lr 4e-3 --lr-scheduler linear_decay "${WARMUP_FLAGS[@]}" \
  --total-num-update "$UPDATES" --max-update "$UPDATES" \
  --save-dir "$CKPT" --no-epoch-checkpoints --validate-interval-updates 200 \
  --log-format simple --log-interval 50 --cpu --num-workers 0 --seed 1 "$@"
