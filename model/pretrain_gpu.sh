#!/usr/bin/env bash
# Pretraining on one CUDA machine, fitted to a wall-time budget (how the shipped `edge` weights
# were made; model/weights/README.md has the run's figures):
#
#   MOECAST_DATA=../shared/data bash model/pretrain_gpu.sh OUT [SECONDS]
#
# Runs from the repository root without installing it (the GPU machine may be offline and have
# its own torch): the repository is put on PYTHONPATH as the `moecast` package. A 3-step bf16
# smoke run comes first; if it fails the real run trains in float32. The real run warm-starts
# from model/weights/edge, draws batches in all but two CPU cores and ends its cosine schedule
# inside SECONDS (model/train.py, --time-budget). OUT gets run/ (log.jsonl, last/ resumable:
# run this again with the same OUT to continue) and edge/ (float16 weights, exported when the
# schedule ends).
set -euo pipefail
out=${1:?usage: pretrain_gpu.sh OUT [SECONDS]}
budget=${2:-480}
batch=${MOECAST_BATCH:-1024}  # a smaller one for a CPU trial of this script
data=${MOECAST_DATA:-../shared/data}
mkdir -p "$out"
scratch=$(mktemp -d)
mkdir "$scratch/moecast"
cp moecast/__init__.py "$scratch/moecast/"
ln -s "$PWD/model" "$scratch/moecast/model"
export PYTHONPATH=$scratch PYTHONUNBUFFERED=1

train() {
    python3 -P -c 'import argparse, sys
from moecast.model.train import add_arguments, run
parser = argparse.ArgumentParser()
add_arguments(parser)
sys.exit(run(parser.parse_args()))' "$@"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
amp=()
if ! train --preset edge --steps 3 --batch-size 64 --workers 2 --data-root "$data" \
    --run "$scratch/smoke" --log-every 1 >"$scratch/smoke.log" 2>&1; then
    tail -20 "$scratch/smoke.log"
    echo "bf16 smoke run failed: training in float32"
    amp=(--no-amp)
fi
workers=$(($(nproc) - 2))
train --preset edge --init model/weights/edge --batch-size "$batch" --lr 1e-3 --warmup-steps 300 \
    --steps 200000 --time-budget "$budget" --workers "$workers" --real-weight 0.3 --mixup 0.1 \
    --seed 2 --checkpoint-every 500 --log-every 50 --data-root "$data" \
    --run "$out/run" --export "$out/edge" "${amp[@]}"
