#!/usr/bin/env bash
# Retrieval (AAN, two documents): bash examples/lra/aan.sh DATA_DIR SAVE_DIR   (data_prep/lra.py aan ...)
# 8 sequences x 8 accumulation steps per update, as upstream (on N GPUs use --update-freq 8/N).
source "$(dirname "$0")/common.sh"
schedule 8 8 91960 10000
fairseq-train "$DATA" --arch seqboat_lra_aan "${TEXT[@]}" "${COMMON[@]}" "${SCHEDULE[@]}" \
  --encoder-layers 6 --norm-type scalenorm --use-nli --lr 0.003 --weight-decay 0.04 "${EXTRA[@]}"
