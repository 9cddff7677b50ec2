#!/usr/bin/env bash
# Every GPU check of the speed work in one 10-minute call on a lent GPU machine (README
# "Speed"), each bounded by what is left of a deadline so that a slow step cannot starve the
# rest, then one short table (bench/gpu_summary.py):
#   1. trivialaugment-16-4: the "beyond" table's TrivialAugment row (preset
#      cifar-trivialaugment, the full 200-epoch schedule) trained as WRN-16-4, flagged as such
#      (the row is WRN-28-10's); first, as it is the longest and goes into results/;
#   2. profile: bench/profile_epoch.py, WRN-16-4, 3 real epochs with the run's loader and
#      evaluation, the last profiled, then the same compiled step on a held batch;
#   3. fp16: the same 3 epochs, same seed, with --precision fp16 (loss curve beside 2's);
#   4. augment: bench/augment.py, each policy's cost as a fraction of a WRN-16-4 step;
#   5. max-autotune: the same 3 epochs with --compile-mode max-autotune (its compile is long:
#      last, with what time is left).
# A second call measures the other targets' real epochs:
#     GPU_CHECK_ONLY="epochs-wrn-40-4 epochs-wrn-28-10 bench-wrn-16-4" bash bench/gpu_check.sh 280
# Needs the data zip at .data/cifar10-jpeg.zip. Small files come back as $OUT/gpu-check.tar.gz.
#     bash bench/gpu_check.sh [SECONDS]       (the deadline; default 575)
# GPU_CHECK_ONLY="profile fp16 ..." runs the steps named there alone.
# GPU_CHECK_QUICK=1 shrinks every step (1-3 short epochs, 512 images, small models) to try the
# script on a CPU.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 WRN_CACHE_DIR=/tmp/wrn-cache
OUT=${OUT:-/tmp/wrn-gpu-check}
WORK=/tmp/wrn-gpu-work
DATA=.data/cifar10-jpeg.zip
END=$(($(date +%s) + ${1:-575}))
mkdir -p "$OUT" "$WORK"
EPOCHS=() LIMITS=() MODEL=wrn-16-4 SMALL=wrn-40-4 LARGE=wrn-28-10 STEPS=50 SHORT=3
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
    EPOCHS=(--epochs 1) LIMITS=(--train-limit 512 --eval-limit 512) MODEL=wrn-10-1
    SMALL=wrn-10-1 LARGE=wrn-10-2 STEPS=3 SHORT=2
fi

# SHORT epochs of MODEL with the profile's seed and recipe, for the opt-ins' loss curves
short_run() { echo python3 -m wideresnet train --model "$MODEL" --dataset folder --data-dir \
    "$DATA" --epochs "$SHORT" --milestones "$((SHORT + 1))" --seed 0 "${LIMITS[@]}"; }

selected() {  # selected NAME: whether GPU_CHECK_ONLY (if set) names that step
    case " ${GPU_CHECK_ONLY:-$1} " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}

step() {  # step NAME CAP COMMAND...: run for at most CAP seconds and at most until the deadline
    local name=$1 cap=$2 left=$((END - $(date +%s)))
    shift 2
    selected "$name" || return
    [ "$left" -lt "$cap" ] && cap=$left
    if [ "$cap" -lt 20 ]; then echo "== $name: skipped, ${left}s left" | tee "$WORK/$name.skipped"; return; fi
    echo "== $(date +%T) $name (at most ${cap}s)"
    local start=$SECONDS
    timeout -s TERM -k 15 "$cap" "$@" > "$WORK/$name.log" 2>&1
    echo "$? $((SECONDS - start))" > "$WORK/$name.exit"
    echo "== $name: exit $(cut -d' ' -f1 "$WORK/$name.exit"), $((SECONDS - start))s"
    tail -n 12 "$WORK/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
step trivialaugment-16-4 340 python3 -m wideresnet table run beyond --dataset folder \
    --data-dir "$DATA" --paper-dataset cifar10 --rows trivialaugment --out "$WORK/exp" \
    "${EPOCHS[@]}" -- --model "$MODEL" "${LIMITS[@]}"
step profile 90 python3 bench/profile_epoch.py --data-dir "$DATA" --model "$MODEL" \
    --epochs "$SHORT" --held-steps "$STEPS" --json "$WORK/profile.json" -- "${LIMITS[@]}"
step fp16 70 $(short_run) --out "$WORK/fp16" --precision fp16
step augment 90 python3 bench/augment.py
step max-autotune 300 $(short_run) --out "$WORK/max-autotune" --compile-mode max-autotune
for model in "$SMALL" "$LARGE"; do
    step "epochs-$model" 120 python3 -m wideresnet train --model "$model" --dataset folder \
        --data-dir "$DATA" --epochs 2 --milestones 3 --out "$WORK/epochs-$model" "${LIMITS[@]}"
done
step bench-wrn-16-4 120 python3 -m wideresnet bench "$MODEL" --compile-step --steps "$STEPS"
python3 -m wideresnet table save "$WORK/exp" --to "$WORK/ledger" > /dev/null 2>&1
python3 bench/gpu_summary.py "$WORK" | tee "$WORK/summary.txt"
tar czf "$OUT/gpu-check.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.ckpt' \
    --exclude='checkpoints' --exclude='tensorboard' .
ls -la "$OUT"
