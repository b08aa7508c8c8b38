#!/usr/bin/env bash
# ListOps: bash examples/lra/listop.sh DATA_DIR SAVE_DIR   (DATA_DIR from: python data_prep/lra.py listops ...)
source "$(dirname "$0")/common.sh"
fairseq-train "$DATA" --task lra-text --input-type text --arch seqboat_lra_listop "${COMMON[@]}" \
  --encoder-layers 6 --norm-type layernorm --attention-activation-fn softmax \
  --dropout 0.1 --init-temp-scale 0.3 --lr 0.004 --weight-decay 0.001 \
  --batch-size 64 --update-freq 1 --max-update 90000 --total-num-update 90000 --warmup-updates 27000 \
  "${EXTRA[@]}"
