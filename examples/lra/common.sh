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
# The paper's text recipes (ListOps, IMDB, AAN): post-norm, softmax attention, dropout 0.1, tau_0 = 0.3 sqrt(D)
TEXT=(--task lra-text --input-type text --attention-activation-fn softmax --dropout 0.1 --init-temp-scale 0.3)
# and its image recipes (CIFAR-10, Pathfinder, Path-X): pre-norm, relu2 attention, absolute positions, no dropout
IMAGE=(--task lra-image --input-type image --encoder-normalize-before --attention-activation-fn relu2 --add-apos
       --dropout 0.0)

# schedule BATCH UPDATE_FREQ UPDATES WARMUP: a recipe's batching and linear-decay schedule flags, in SCHEDULE
schedule() {
  SCHEDULE=(--batch-size "$1" --update-freq "$2" --max-update "$3" --total-num-update "$3" --warmup-updates "$4")
}
