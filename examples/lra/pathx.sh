#!/usr/bin/env bash
# Path-X 128x128 (16,384 pixels): bash examples/lra/pathx.sh DATA_DIR SAVE_DIR
# (data_prep/lra.py pathfinder --resolution 128 ...). Upstream: 8 GPUs x batch 2 x update-freq 8
# with SyncBatchNorm; on fewer GPUs keep 128 images per update (e.g. 1 GPU: --update-freq 64).
CHUNK=${CHUNK:-256}
source "$(dirname "$0")/common.sh"
schedule 2 8 125000 25000
fairseq-train "$DATA" --arch seqboat_lra_pf128 "${IMAGE[@]}" "${COMMON[@]}" "${SCHEDULE[@]}" \
  --encoder-layers 4 --norm-type syncbatchnorm --pixel-normalization 0.5 0.5 --init-temp-scale 1.0 \
  --lr 0.01 --weight-decay 0.01 --warmup-power 2 "${EXTRA[@]}"
