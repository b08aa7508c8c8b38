#!/usr/bin/env bash
# Pathfinder 32x32: bash examples/lra/pathfinder.sh DATA_DIR SAVE_DIR   (data_prep/lra.py pathfinder --resolution 32 ...)
source "$(dirname "$0")/common.sh"
fairseq-train "$DATA" --task lra-image --input-type image --arch seqboat_lra_pf32 "${COMMON[@]}" \
  --encoder-layers 6 --norm-type batchnorm --encoder-normalize-before --attention-activation-fn relu2 \
  --add-apos --pixel-normalization 0.5 0.5 --dropout 0.0 --init-temp-scale 1.0 \
  --lr 0.01 --weight-decay 0.01 \
  --batch-size 128 --update-freq 1 --max-update 250000 --total-num-update 250000 --warmup-updates 50000 \
  "${EXTRA[@]}"
