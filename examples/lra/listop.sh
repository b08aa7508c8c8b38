#!/usr/bin/env bash
# ListOps: bash examples/lra/listop.sh DATA_DIR SAVE_DIR   (DATA_DIR from: python data_prep/lra.py listops ...)
source "$(dirname "$0")/common.sh"
schedule 64 1 90000 27000
fairseq-train "$DATA" --arch seqboat_lra_listop "${TEXT[@]}" "${COMMON[@]}" "${SCHEDULE[@]}" \
  --encoder-layers 6 --norm-type layernorm --lr 0.004 --weight-decay 0.001 "${EXTRA[@]}"
