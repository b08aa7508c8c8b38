#!/usr/bin/env bash
# A tiny SeqBoat language model, end to end on CPU in a few minutes:
#   1. a byte-level corpus from the documentation text that ships with Python,
#   2. fairseq-train (per-layer activation rates in the log and in tensorboard),
#   3. fairseq-eval-lm with a context window: bits per character,
#   4. generation with fairseq-interactive and with the Python hub interface.
# Run from the repository root:  bash examples/demo.sh   (WORK=... to choose the output dir)
set -euo pipefail
WORK=${WORK:-work/demo}
DATA=$WORK/data-bin
CKPT=$WORK/checkpoints
UPDATES=${UPDATES:-600}
mkdir -p "$WORK"

# show LOG PATTERN COMMAND...: runs COMMAND with all its output in LOG and the lines matching
# PATTERN on screen; if it fails, the end of LOG (its error) is shown and the demo stops.
show() {
  local log=$1 pattern=$2 status=0
  shift 2
  "$@" 2>&1 | tee "$log" | { grep --line-buffered -E "$pattern" || true; } || status=$?
  if (( status != 0 )); then
    echo "!! failed with exit status $status: $*" >&2
    echo "!! the end of $log:" >&2
    tail -n 15 "$log" >&2
    exit "$status"
  fi
}

echo "== 1/4 data: Python's pydoc text as an enwik8-style byte corpus"
python data_prep/enwik8.py --pydoc-demo --max-bytes 400000 --destdir "$DATA" --force

echo "== 2/4 train seqboat_lm_tiny for $UPDATES updates (RAdam + linear_decay, as the enwik8 recipe)"
show "$WORK/train.log" "train_inner|valid on|done training" \
  bash examples/train_tiny_lm.sh "$DATA" "$CKPT" "$UPDATES" --tokens-per-sample 512 \
  --tensorboard-logdir "$WORK/tensorboard"

echo "== 3/4 evaluate: bits per character on the test split (256 tokens of context per block)"
show "$WORK/eval.log" "Evaluated|Loss \(base 2\)" \
  fairseq-eval-lm "$DATA" --user-dir seqboat_fairseq --path "$CKPT/checkpoint_best.pt" --gen-subset test \
  --tokens-per-sample 512 --context-window 256 --batch-size 8 --cpu

echo "== 4/4 generate: fairseq-interactive (top-k sampling, then beam search) and the hub"
printf 'The return statement\nA class\n' > "$WORK/prompts.txt"
show "$WORK/sample.log" "^D-" fairseq-interactive "$DATA" --user-dir seqboat_fairseq \
  --task language_modeling --path "$CKPT/checkpoint_best.pt" --bpe enwik8_bytes --input "$WORK/prompts.txt" \
  --sampling --sampling-topk 5 --beam 1 --min-len 40 --max-len-b 120 --seed 2 --cpu
head -n 1 "$WORK/prompts.txt" > "$WORK/prompt.txt"
show "$WORK/beam.log" "^D-" fairseq-interactive "$DATA" --user-dir seqboat_fairseq \
  --task language_modeling --path "$CKPT/checkpoint_best.pt" --bpe enwik8_bytes --input "$WORK/prompt.txt" \
  --beam 4 --max-len-b 80 --cpu
python examples/enwik8/hub_generate.py --checkpoint-dir "$CKPT" --data "$DATA" --prompt "Changed in version"

echo
echo "== summary"
grep -E "^.*\| valid on" "$WORK/train.log" | tail -1 | sed -E 's/.*\| valid on/valid on/'
grep -oE "Loss \(base 2\): [0-9.]+" "$WORK/eval.log" | sed 's/Loss (base 2)/test bits per character/'
