#!/usr/bin/env bash
# Image (CIFAR-10, grayscale): bash examples/lra/cifar10.sh DATA_DIR SAVE_DIR   (data_prep/lra.py cifar10 ...)
source "$(dirname "$0")/common.sh"
fairseq-train "$DATA" --task lra-image --input-type image --arch seqboat_lra_cifar10 "${COMMON[@]}" \
  --encoder-layers 8 --norm-type batchnorm --encoder-normalize-before --attention-activation-fn relu2 \
  --add-apos --pixel-normalization 0.48 0.24 --dropout 0.0 --init-temp-scale 0.4 \
  --lr 0.01 --weight-decay 0.02 \
  --batch-size 50 --update-freq 1 --max-update 180000 --total-num-update 180000 --warmup-updates 9000 \
  "${EXTRA[@]}"
