#!/usr/bin/env bash
# The paper's enwik8 recipe: ~39M-parameter SeqBoat, 8192-token samples,
# 400k updates of 8 sequences (the paper used 8 x 40GB A100: one sequence per GPU).
#   bash examples/enwik8/train.sh DATA_BIN SAVE_DIR [extra fairseq-train flags]
# Prepare DATA_BIN with: python data_prep/enwik8.py --enwik8 enwik8.zip --destdir DATA_BIN
# Multi-GPU: fairseq spawns one process per visible GPU; keep 8 sequences per update
# (e.g. on 2 GPUs add --update-freq 4).
set -euo pipefail
DATA=${1:?usage: train.sh DATA_BIN SAVE_DIR [extra flags]}
SAVE=${2:?usage: train.sh DATA_BIN SAVE_DIR [extra flags]}
shift 2
SEED=${SEED:-1}

fairseq-train "$DATA" --user-dir seqboat_fairseq \
  --task language_modeling --arch seqboat_lm_enwik8_base \
  --tokens-per-sample 8192 --max-target-positions 10384 --batch-size 1 --update-freq 1 \
  --optimizer radam --radam-betas '(0.9, 0.98)' --radam-eps 1e-8 --weight-decay 0.1 --clip-norm 0.25 \
  --lr 5e-3 --lr-scheduler linear_decay --warmup-updates 24000 --warmup-init-lr 2e-3 \
  --total-num-update 400000 --end-learning-rate 0 --max-update 400000 \
  --dropout 0.15 --attention-dropout 0.0 --hidden-dropout 0.0 \
  --criterion seqboat_cross_entropy --valid-subset valid --ddp-backend legacy_ddp \
  --save-dir "$SAVE" --no-epoch-checkpoints --log-format simple --log-interval 100 --num-workers 0 \
  --seed "$SEED" "$@"
# seqboat_lm_enwik8_base = upstream slag_lm_enwik8_base_v2 plus the recipe's model flags:
#   --decoder-chunk-size 1024 --rel-pos-bias rotary --normalize-before --no-affine-final-norm
#   --init-temp-scale 1.0 --share-decoder-input-output-embed --decoder-ffn-embed-dim -1
