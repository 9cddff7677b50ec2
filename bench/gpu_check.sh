#!/usr/bin/env bash
# Every GPU check in one call on a lent GPU machine (README "Speed"), most valuable first, each
# bounded by what is left of a deadline so that a slow step cannot starve the rest:
#   1. `wrn bench wrn-16-4 --compile-step`: step rates against eager fp32, same process;
#   2. Table 6's WRN-16-4 row on the full 200-epoch schedule (the ledger's full-schedule row,
#      and WRN-16-4's training img/s in real epochs, eval included, from its metrics.jsonl);
#   3. real epochs of WRN-40-4 and WRN-28-10 (`wrn train`, 2 epochs, real loader and eval);
#   4. bench/augment.py: each policy's cost as a fraction of a WRN-16-4 step on the GPU;
#   5. the "beyond" table's TrivialAugment row (preset cifar-trivialaugment, full 200-epoch
#      schedule) trained as WRN-16-4, flagged as such (the row is WRN-28-10's);
#   6. `wrn bench wrn-28-10 --compile-step`, if time is left.
# Needs the data zip at .data/cifar10-jpeg.zip. Small files come back as $OUT/gpu-check.tar.gz.
#     bash bench/gpu_check.sh [SECONDS]       (the deadline; default 570)
# GPU_CHECK_ONLY="bench-wrn-16-4 augment ..." runs the steps named there alone.
# GPU_CHECK_QUICK=1 shrinks every step (1 epoch, 512 images, small models) to try the script.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 WRN_CACHE_DIR=/tmp/wrn-cache
OUT=${OUT:-/tmp/wrn-gpu-check}
WORK=/tmp/wrn-gpu-work
DATA=.data/cifar10-jpeg.zip
END=$(($(date +%s) + ${1:-570}))
mkdir -p "$OUT" "$WORK"
EPOCHS=() LIMITS=() SMALL=wrn-40-4 LARGE=wrn-28-10 TINY=wrn-16-4 STEPS=50
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
    EPOCHS=(--epochs 1) LIMITS=(--train-limit 512 --eval-limit 512) SMALL=wrn-10-1 LARGE=wrn-10-2
    TINY=wrn-10-1
    STEPS=3
fi

selected() {  # selected NAME: whether GPU_CHECK_ONLY (if set) names that step
    case " ${GPU_CHECK_ONLY:-$1} " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}

step() {  # step NAME CAP COMMAND...: run for at most CAP seconds and at most until the deadline
    local name=$1 cap=$2 left=$((END - $(date +%s)))
    shift 2
    selected "$name" || return
    [ "$left" -lt "$cap" ] && cap=$left
    if [ "$cap" -lt 20 ]; then echo "== $name: skipped, ${left}s left"; return; fi
    echo "== $(date +%T) $name (at most ${cap}s)"
    local start=$SECONDS
    timeout -s TERM -k 15 "$cap" "$@" > "$WORK/$name.log" 2>&1
    echo "== $name: exit $?, $((SECONDS - start))s"
    tail -n 9 "$WORK/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
step bench-wrn-16-4 150 python3 -m wideresnet bench wrn-16-4 --compile-step --steps "$STEPS"
step table6-16-4 400 python3 -m wideresnet table run table6 --dataset folder --data-dir "$DATA" \
    --paper-dataset cifar10 --rows 16-4 --out "$WORK/exp" "${EPOCHS[@]}" -- "${LIMITS[@]}"
for model in "$SMALL" "$LARGE"; do
    step "epochs-$model" 110 python3 -m wideresnet train --model "$model" --dataset folder \
        --data-dir "$DATA" --epochs 2 --milestones 1 --out "$WORK/$model" "${LIMITS[@]}"
    selected "epochs-$model" && python3 - "$WORK/$model/metrics.jsonl" <<'EOF'
import json, sys
try:
    for line in open(sys.argv[1]):
        m = json.loads(line)
        print(f"   epoch {m['epoch']}: {m['train_images_per_second']:.0f} train img/s, "
              f"{m['epoch_seconds']:.1f} s with eval, test error {m['test_error']:.2f}%")
except OSError as error:
    print("   no metrics:", error)
EOF
done
step augment 200 python3 bench/augment.py --device cuda
step trivialaugment-16-4 560 python3 -m wideresnet table run beyond --dataset folder \
    --data-dir "$DATA" --paper-dataset cifar10 --rows trivialaugment --out "$WORK/exp" \
    "${EPOCHS[@]}" -- --model "$TINY" "${LIMITS[@]}"
step "bench-$LARGE" 200 python3 -m wideresnet bench "$LARGE" --compile-step --steps "$STEPS"
python3 -m wideresnet report "$WORK/exp" 2>&1 | tail -n 4
python3 -m wideresnet table save "$WORK/exp" --to "$WORK/ledger" > /dev/null 2>&1
tar czf "$OUT/gpu-check.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.ckpt' \
    --exclude='checkpoints' .
ls -la "$OUT"
