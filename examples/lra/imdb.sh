#!/usr/bin/env bash
# Text (IMDB, bytes): bash examples/lra/imdb.sh DATA_DIR SAVE_DIR   (data_prep/lra.py imdb ...)
source "$(dirname "$0")/common.sh"
schedule 50 1 25000 10000
fairseq-train "$DATA" --arch seqboat_lra_imdb "${TEXT[@]}" "${COMMON[@]}" "${SCHEDULE[@]}" \
  --encoder-layers 4 --norm-type scalenorm --local-pos --lr 0.004 --weight-decay 0.01 "${EXTRA[@]}"
