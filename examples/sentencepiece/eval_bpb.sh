#!/usr/bin/env bash
# fairseq-eval-lm on one split of a data-bin, then bits per byte of the split's original text:
#   bash examples/sentencepiece/eval_bpb.sh DATA_BIN CHECKPOINT [SPLIT [extra fairseq-eval-lm flags]]
# DATA_BIN from data_prep/sentencepiece_lm.py (its splits.json has each split's byte count).
# eval-lm prints the loss per token ("Loss (base 2)"); per byte of text it is
#   bits per byte = Loss (base 2) x N / B
# with N the tokens eval-lm scored ("Evaluated N tokens": pieces and one </s> per line) and B the
# bytes of the split's text. seqboat_fairseq/bits_per_byte.py refuses (exit 2, no number) unless N
# is the split's whole token count. Defaults: 512-token blocks, 256 of them context (override
# with the extra flags, e.g. --tokens-per-sample 2048 --context-window 1536 --cpu).
# The full eval-lm output is kept in $LOG (default: DATA_BIN.eval-SPLIT.log, next to DATA_BIN).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python}
DATA=${1:?usage: eval_bpb.sh DATA_BIN CHECKPOINT [SPLIT [extra fairseq-eval-lm flags]]}
CKPT=${2:?usage: eval_bpb.sh DATA_BIN CHECKPOINT [SPLIT [extra fairseq-eval-lm flags]]}
SPLIT=${3:-test}
shift $(( $# < 3 ? $# : 3 ))
LOG=${LOG:-${DATA%/}.eval-$SPLIT.log}

if ! "$PYTHON" -m fairseq_cli.eval_lm "$DATA" --user-dir "$ROOT/seqboat_fairseq" --path "$CKPT" \
    --gen-subset "$SPLIT" --tokens-per-sample 512 --context-window 256 --batch-size 8 "$@" >"$LOG" 2>&1; then
  tail -n 20 "$LOG" >&2
  echo "eval_bpb.sh: fairseq-eval-lm failed (full output: $LOG)" >&2
  exit 1
fi
grep -E "Evaluated|Loss \(base 2\)" "$LOG" | sed -E 's/.*fairseq_cli\.eval_lm( \| |:)//'
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m seqboat_fairseq.bits_per_byte \
  --eval-log "$LOG" --data "$DATA" --split "$SPLIT"
