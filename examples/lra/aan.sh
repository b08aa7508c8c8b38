#!/usr/bin/env bash
# Retrieval (AAN, two documents): bash examples/lra/aan.sh DATA_DIR SAVE_DIR   (data_prep/lra.py aan ...)
# 8 sequences x 8 accumulation steps per update, as upstream (on N GPUs use --update-freq 8/N).
source "$(dirname "$0")/common.sh"
fairseq-train "$DATA" --task lra-text --input-type text --arch seqboat_lra_aan "${COMMON[@]}" \
  --encoder-layers 6 --norm-type scalenorm --attention-activation-fn softmax --use-nli \
  --dropout 0.1 --init-temp-scale 0.3 --lr 0.003 --weight-decay 0.04 \
  --batch-size 8 --update-freq 8 --max-update 91960 --total-num-update 91960 --warmup-updates 10000 \
  "${EXTRA[@]}"
