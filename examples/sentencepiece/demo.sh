#!/usr/bin/env bash
# A subword SeqBoat language model, end to end on CPU in a few minutes:
#   1. a sentencepiece model trained on Python's pydoc text, and the fairseq data-bin it encodes,
#   2. fairseq-train (--task language_modeling, seqboat_lm_tiny),
#   3. fairseq-eval-lm: loss per token, then bits per byte of the original test text,
#   4. generation with fairseq-interactive (--bpe sentencepiece) and with the hub.
# Run from the repository root:  bash examples/sentencepiece/demo.sh   (WORK=... for the output dir)
# Compare with examples/demo.sh (the same text, byte level): both report bits per byte.
set -euo pipefail
WORK=${WORK:-work/demo-spm}
DATA=$WORK/data-bin
CKPT=$WORK/checkpoints
UPDATES=${UPDATES:-600}
VOCAB=${VOCAB:-2000}
mkdir -p "$WORK"

echo "== 1/4 data: a $VOCAB-piece unigram sentencepiece model on Python's pydoc text"
python data_prep/sentencepiece_lm.py --pydoc-demo --max-bytes 400000 --vocab-size "$VOCAB" --destdir "$DATA" --force

echo "== 2/4 train seqboat_lm_tiny for $UPDATES updates"
bash examples/train_tiny_lm.sh "$DATA" "$CKPT" "$UPDATES" --tokens-per-sample 256 2>&1 \
  | tee "$WORK/train.log" | grep -E "train_inner|valid on|done training"

echo "== 3/4 evaluate: loss per token and bits per byte of the test text (128 tokens of context per block)"
LOG=$WORK/eval.log bash examples/sentencepiece/eval_bpb.sh "$DATA" "$CKPT/checkpoint_best.pt" test \
  --tokens-per-sample 256 --context-window 128 --cpu | tee "$WORK/bpb.txt"

echo "== 4/4 generate: fairseq-interactive with fairseq's sentencepiece BPE, then the hub"
printf 'The return statement\nA class\n' | fairseq-interactive "$DATA" --user-dir seqboat_fairseq \
  --task language_modeling --path "$CKPT/checkpoint_best.pt" \
  --bpe sentencepiece --sentencepiece-model "$DATA/spm.model" \
  --sampling --sampling-topk 10 --beam 1 --min-len 8 --max-len-b 40 --seed 2 --cpu 2>/dev/null | grep -E "^D-"
python examples/sentencepiece/hub_generate.py --checkpoint-dir "$CKPT" --data "$DATA" \
  --prompt "Changed in version" --multiline --max-len 60 2>/dev/null
