#!/usr/bin/env bash
# Text (IMDB, bytes): bash examples/lra/imdb.sh DATA_DIR SAVE_DIR   (data_prep/lra.py imdb ...)
source "$(dirname "$0")/common.sh"
fairseq-train "$DATA" --task lra-text --input-type text --arch seqboat_lra_imdb "${COMMON[@]}" \
  --encoder-layers 4 --norm-type scalenorm --attention-activation-fn softmax --local-pos \
  --dropout 0.1 --init-temp-scale 0.3 --lr 0.004 --weight-decay 0.01 \
  --batch-size 50 --update-freq 1 --max-update 25000 --total-num-update 25000 --warmup-updates 10000 \
  "${EXTRA[@]}"
