#!/usr/bin/env bash
# Speech Commands SC10, raw 16 kHz waveforms (16,000 samples per clip, 10 classes):
#   python data_prep/speech_commands.py --input-dir speech_commands_v0.02 --destdir DATA_DIR
#   bash examples/speech/sc10.sh DATA_DIR SAVE_DIR [extra fairseq-train flags]
# Upstream's experiment/run_sc.sh (renll/SeqBoat; one V100 or two A5000): --arch slag_sc_raw_base with
# these flags, which is --arch seqboat_sc_raw (8 x D60, 298,841 parameters). Batch 20, 250k updates,
# lr 0.01 with linear decay after 10k warm-up updates. Shared LRA flags (optimizer, scheduler, w via
# CHUNK=128, no FFN, --required-batch-size-multiple 1, ...) come from examples/lra/common.sh.
source "$(dirname "$0")/../lra/common.sh"
fairseq-train "$DATA" --task speech_commands --arch seqboat_sc_raw "${COMMON[@]}" \
  --encoder-layers 8 --norm-type batchnorm --encoder-normalize-before --attention-activation-fn relu2 \
  --rel-pos-bias simple --local-pos --truncation-length 4000 --max-positions 16000 --sentence-class-num 10 \
  --dropout 0.0 --init-temp-scale 1.0 --act-bias 0 \
  --lr 0.01 --weight-decay 0.01 \
  --batch-size 20 --update-freq 1 --max-update 250000 --total-num-update 250000 --warmup-updates 10000 \
  "${EXTRA[@]}"
