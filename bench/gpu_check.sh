#!/usr/bin/env bash
# Every GPU check in one call on a lent GPU machine (see README "Speed"): step speed of the
# fast settings against eager fp32, the loader against PIL, a short real training run, and the
# CPU test subset under the machine's torch. Needs the data zip at .data/cifar10-jpeg.zip.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/wrn-gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 110 python3 bench/train_step.py --model wrn-16-4 2>&1 | tee "$OUT/bench_wrn16_4.txt"
timeout 110 python3 bench/train_step.py --model wrn-28-10 --steps 20 2>&1 \
    | tee "$OUT/bench_wrn28_10.txt"
timeout 60 python3 bench/loader.py --data-dir .data/cifar10-jpeg.zip --device cuda \
    --workers 4 2>&1 | tee "$OUT/bench_loader.txt"
RUN=/tmp/wrn-gpu-run
rm -rf "$RUN"
timeout 180 python3 -m wideresnet train --model wrn-16-4 --dataset folder \
    --data-dir .data/cifar10-jpeg.zip --out "$RUN" --epochs 15 --milestones 8,12,14 \
    --log-every 100 2>&1 | tee "$OUT/train.txt"
cp "$RUN"/result.json "$RUN"/metrics.jsonl "$OUT"/ 2>/dev/null
timeout 30 python3 -m wideresnet eval "$RUN" --flip 2>&1 | tail -3
CUDA_VISIBLE_DEVICES= timeout 80 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_recipes.py tests/test_train.py -k "sigterm or nesterov or bad_checkpoints" 2>&1 \
    | tail -3
