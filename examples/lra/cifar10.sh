#!/usr/bin/env bash
# Image (CIFAR-10, grayscale): bash examples/lra/cifar10.sh DATA_DIR SAVE_DIR   (data_prep/lra.py cifar10 ...)
source "$(dirname "$0")/common.sh"
schedule 50 1 180000 9000
fairseq-train "$DATA" --arch seqboat_lra_cifar10 "${IMAGE[@]}" "${COMMON[@]}" "${SCHEDULE[@]}" \
  --encoder-layers 8 --norm-type batchnorm --pixel-normalization 0.48 0.24 --init-temp-scale 0.4 \
  --lr 0.01 --weight-decay 0.02 "${EXTRA[@]}"
