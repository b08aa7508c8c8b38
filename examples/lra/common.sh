# Flags shared by every LRA recipe, sourced by the <task>.sh scripts.
# Upstream fixes (upstream hazard H20, docs/design.md): a non-negative seed (upstream's seed=-1 is rejected by numpy),
# the working memory w is set explicitly (CHUNK; the README left it open), Path-X uses the
# experiment script's 4 layers with w = 256 consistently.
# --required-batch-size-multiple 1 for every task: with fairseq's default of 8 a split smaller than
# 8 examples yields no batch at all ("The dataset is empty") and larger ones lose their last n mod 8.
set -euo pipefail
DATA=${1:?usage: $0 DATA_DIR SAVE_DIR [extra fairseq-train flags]}
SAVE=${2:?usage: $0 DATA_DIR SAVE_DIR [extra fairseq-train flags]}
shift 2
EXTRA=("$@")
SEED=${SEED:-1}
CHUNK=${CHUNK:-128}
COMMON=(
  --user-dir seqboat_fairseq --criterion lra_cross_entropy
  --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 1.0 --sentence-avg
  --lr-scheduler linear_decay --end-learning-rate 0.0 --warmup-init-lr 1e-07
  --attention-dropout 0.0 --act-dropout 0.0 --encoder-ffn-embed-dim -1
  --n-dim 16 --chunk-size "$CHUNK" --activation-fn silu --sen-rep-type mp
  --ddp-backend legacy_ddp --keep-last-epochs 1 --save-dir "$SAVE"
  --log-format simple --log-interval 100 --num-workers 0 --seed "$SEED"
  --required-batch-size-multiple 1
)
