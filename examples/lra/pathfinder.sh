#!/usr/bin/env bash
# Pathfinder 32x32: bash examples/lra/pathfinder.sh DATA_DIR SAVE_DIR   (data_prep/lra.py pathfinder --resolution 32 ...)
source "$(dirname "$0")/common.sh"
schedule 128 1 250000 50000
fairseq-train "$DATA" --arch seqboat_lra_pf32 "${IMAGE[@]}" "${COMMON[@]}" "${SCHEDULE[@]}" \
  --encoder-layers 6 --norm-type batchnorm --pixel-normalization 0.5 0.5 --init-temp-scale 1.0 \
  --lr 0.01 --weight-decay 0.01 "${EXTRA[@]}"
