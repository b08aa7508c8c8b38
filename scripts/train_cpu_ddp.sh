#!/usr/bin/env bash
# Data-parallel fairseq training on one machine's CPUs: N worker processes, gloo backend.
#
#   bash scripts/train_cpu_ddp.sh N DATA [fairseq-train flags ...]
#
# Stock fairseq cannot do this by itself on CPU (its spawn path asserts CUDA devices, the torchrun
# path divides by torch.cuda.device_count(), and --ddp-backend pytorch_ddp passes device_ids for a
# CPU module), so each rank is started explicitly with --distributed-no-spawn and a TCP rendezvous.
# N workers with --update-freq K see the same data per update as 1 worker with --update-freq N*K.
# On GPUs use fairseq's normal path instead: fairseq-train ... (one process per visible GPU).
set -euo pipefail
N=${1:?usage: train_cpu_ddp.sh N DATA [fairseq-train flags]}
shift
PORT=${PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
THREADS=${OMP_NUM_THREADS:-1}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for ((rank = 0; rank < N; rank++)); do
  OMP_NUM_THREADS=$THREADS python -m fairseq_cli.train "$@" --cpu \
    --distributed-world-size "$N" --distributed-rank "$rank" --distributed-no-spawn \
    --distributed-init-method "tcp://127.0.0.1:$PORT" --distributed-backend gloo \
    --ddp-backend legacy_ddp &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
trap - EXIT
exit "$status"
