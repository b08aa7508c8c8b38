#!/usr/bin/env bash
# One GPU check of the plugin, under ten minutes on one CUDA device:
#   1. install the plugin into the current environment (reusing its torch / fairseq if present),
#   2. the module and decoding tests on the device: fp32, bf16 and fp16 (tests/test_precision.py),
#      no host synchronisation in a decode step (torch.cuda.set_sync_debug_mode("error")),
#   3. a few hundred updates of seqboat_lm_enwik8_base with --fp16 and with --bf16,
#   4. the train-step and generation tables, SeqBoat vs transformer_lm, both on the device.
# Usage (repository root):  bash bench/device_check.sh          # CUDA
#                           bash bench/device_check.sh --cpu    # the same steps on the CPU, smaller
# Outputs go to $OUT (default work/device_check/): logs, BENCH lines, a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
[ "${1:-}" = "--cpu" ] && DEVICE=cpu
OUT=${OUT:-work/device_check}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

log "1/4 install ($DEVICE)"
if python -c "import torch, fairseq" 2>/dev/null; then
  # keep the environment's torch and fairseq; the plugin's own deps are small
  pip install -q --no-build-isolation --no-deps -e . >"$OUT/install.log" 2>&1 || pip install -q -e . >>"$OUT/install.log" 2>&1
else
  pip install -q -c constraints.txt -e ".[test,fairseq]" >"$OUT/install.log" 2>&1
fi
python - <<'EOF' | tee -a "$OUT/summary.txt"
import torch, fairseq
print(f"torch {torch.__version__}, fairseq {fairseq.__version__}, cuda available: {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
EOF
if [ "$DEVICE" = cuda ] && ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  log "no CUDA device: rerun with --cpu"; exit 2
fi

log "2/4 module and decoding tests on $DEVICE (fp32; bf16 and fp16 in test_precision.py)"
SEQBOAT_TEST_DEVICE=$DEVICE timeout 240 python -m pytest -q -p no:cacheprovider \
  tests/test_layer.py tests/test_incremental.py tests/test_local_attention.py tests/test_ema.py tests/test_sma.py \
  tests/test_precision.py tests/test_no_host_sync.py tests/test_forced_activation.py tests/test_recompute.py 2>&1 | tee "$OUT/tests.log" | tail -3

log "3/4 training seqboat_lm_enwik8_base (--fp16, --bf16 on a GPU; fp32 tiny run on the CPU)"
DATA=$OUT/data-bin
[ -d "$DATA" ] || python data_prep/enwik8.py --pydoc-demo --max-bytes 2000000 --destdir "$DATA" >"$OUT/prep.log" 2>&1
if [ "$DEVICE" = cuda ]; then
  RUNS="fp16 bf16"; ARCH=seqboat_lm_enwik8_base; UPDATES=300; TOKENS=2048
else
  RUNS="fp32"; ARCH=seqboat_lm_tiny; UPDATES=30; TOKENS=512
fi
for precision in $RUNS; do
  flags=()
  [ "$precision" = fp16 ] && flags=(--fp16)
  [ "$precision" = bf16 ] && flags=(--bf16)
  [ "$DEVICE" = cpu ] && flags+=(--cpu)
  timeout 150 fairseq-train "$DATA" --user-dir seqboat_fairseq --task language_modeling --arch "$ARCH" \
    --criterion seqboat_cross_entropy --tokens-per-sample "$TOKENS" --batch-size 4 --optimizer adam --lr 5e-4 \
    --lr-scheduler linear_decay --warmup-updates 10 --max-update "$UPDATES" --no-save --disable-validation \
    --log-format simple --log-interval 10 --num-workers 0 "${flags[@]}" >"$OUT/train_$precision.log" 2>&1 \
    && status=ok || status="FAILED ($?)"
  last=$(grep -oE "train_inner .*loss=[0-9.]+.*act_rate=[0-9.]+" "$OUT/train_$precision.log" | tail -1 || true)
  log "   $precision: $status; ${last:-no train_inner line}"
done

log "4/4 tables on $DEVICE"
if [ "$DEVICE" = cuda ]; then
  LENS=1024,4096,8192; CONTEXTS=256,1024,4096,16384; LAYERS=14
else
  LENS=512,1024; CONTEXTS=256,1024; LAYERS=2
fi
timeout 180 python bench/train_step.py --device "$DEVICE" --models seqboat,transformer --seq-lens "$LENS" \
  --repeats 3 --wait-quiet 0 >"$OUT/train_step.log" 2>&1 || log "   train_step: FAILED or timed out"
timeout 150 python bench/generation.py --device "$DEVICE" --models seqboat,transformer --contexts "$CONTEXTS" \
  --layers "$LAYERS" --steps 20 --wait-budget 0 >"$OUT/generation.log" 2>&1 || log "   generation: FAILED or timed out"
grep -h "^BENCH" "$OUT"/train_step.log "$OUT"/generation.log >"$OUT/bench_lines.jsonl" || true
grep -vh "^BENCH\|Warning\|warn" "$OUT/train_step.log" | grep -A12 "Training step" | tee -a "$OUT/summary.txt" || true
grep -vh "^BENCH\|Warning\|warn" "$OUT/generation.log" | grep -A8 "ms/tok layer" | tee -a "$OUT/summary.txt" || true
log "done: $OUT/summary.txt"
