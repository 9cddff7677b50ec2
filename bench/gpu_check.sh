#!/usr/bin/env bash
# Every GPU check in one call on a lent GPU machine (README "Speed"): `wrn bench` for the three
# networks of issue 11 (ratios against eager fp32 in one process, the whole step compiled,
# real batches), the policies' cost per step, a full-schedule Table 6 row for the ledger, and
# the CPU test subset under the machine's torch. Needs the data zip at .data/cifar10-jpeg.zip.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/wrn-gpu-check}
DATA=.data/cifar10-jpeg.zip
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
for model in wrn-16-4 wrn-40-4 wrn-28-10; do
    timeout 150 python3 -m wideresnet bench "$model" --compile-step --data-dir "$DATA" --json \
        > "$OUT/bench-$model.json" 2> "$OUT/bench-$model.err"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print(sys.argv[2], r['setting'], round(r['images_per_second']), round(r['ratio'], 2)) for r in d['rows']]; print(sys.argv[2], 'end to end', round(d['end_to_end']['images_per_second']))" "$OUT/bench-$model.json" "$model"
done
timeout 60 python3 bench/augment.py --device cuda 2>&1 | tee "$OUT/augment.txt"
timeout 300 python3 -m wideresnet table run table6 --dataset folder --data-dir "$DATA" \
    --paper-dataset cifar10 --rows 16-4 --out "$OUT/exp" 2>&1 | tail -3
python3 -m wideresnet report "$OUT/exp" | tail -3
CUDA_VISIBLE_DEVICES= timeout 80 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_recipes.py tests/test_train.py -k "sigterm or nesterov or bad_checkpoints" 2>&1 \
    | tail -3
