#!/usr/bin/env bash
# The GPU figures of docs/gpu.md in one run on one GPU (sized for one H100: about 8 minutes,
# each step stopped at its own time limit, 130 + 270 + 80 s, whatever it printed kept).
#
#   1. benchmarks/gpu_pipeline.py --device cuda --models 200: the product end to end through
#      the run directory (train --shard 0/1 -> fit -> estimate TRAK, TracIn -> evaluate) on
#      10,000 synthetic CIFAR-shaped images: models per GPU-hour through the store, fit and
#      estimator seconds, the LDS table.
#   2. benchmarks/gpu_throughput.py on 50,000 synthetic CIFAR-shaped images, 10 epochs,
#      alpha = 1/2 subsets, 16 models per mode, in one process and on the same masks: the
#      airbench package (when importable), grouped K = 1 and K = 16 (CUDA graphs, the default),
#      2 and 4 training processes sharing the GPU (also under CUDA MPS where
#      nvidia-cuda-mps-control is installed), CUDA streams K = 4, 8, 16. Each row: seconds per
#      model, models per GPU-hour, test accuracy, peak memory, GPU utilisation (nvidia-smi).
#   3. benchmarks/gpu_throughput.py --compile: K = 1 with torch.compile, 8 models.
#
# Needs torch, numpy, pyarrow, pandas, scikit-learn, PyYAML, rich and pydantic; not Ray, FFCV,
# DuckDB or a network. Run from anywhere; the output goes to the terminal and to
# $OUT/device_check.log ($OUT, else runs/device_check). The pipeline's run directory,
# runs/device_check/cuda/gpu_pipeline ($RUNS), is made afresh each time.
#
#   bash benchmarks/device_check.sh              # on the GPU machine
#   DEVICE=cpu bash benchmarks/device_check.sh   # tiny sizes on the CPU (a check of the script;
#                                                # the compile step is left out there)
#   DRY_RUN=1 bash benchmarks/device_check.sh    # print the commands, run nothing
set -u -o pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python}
DRY_RUN=${DRY_RUN:-0}
LOGS=${OUT:-runs/device_check}
RUNS=${RUNS:-runs/device_check/$DEVICE}  # the pipeline's run directory goes here
if [ "$DRY_RUN" != 1 ]; then
    mkdir -p "$LOGS" "$RUNS"
    exec > >(tee -a "$LOGS/device_check.log") 2>&1
fi

if [ "$DEVICE" = cpu ]; then
    PIPELINE=(--device cpu --tiny --models 24)
    SIZES=(--device cpu --n-train 64 --n-test 32 --size 16 --width 4 --epochs 2 --batch-size 32)
    MODES=(--models 4 --ks 1,4 --processes 2 --mps --streams 2)
    COMPILE=()  # torch.compile's first build takes minutes on the CPU
    AIRBENCH=(--airbench 0)
else
    PIPELINE=(--device cuda --models 200)
    SIZES=(--device cuda)  # the defaults: 50,000 train / 10,000 test images, width 64, 10 epochs
    MODES=(--models 16 --ks 1,16 --processes 2,4 --mps --streams 4,8,16)
    COMPILE=(--models 8 --ks 1 --compile)
    if "$PYTHON" -c "import airbench" 2>/dev/null; then
        AIRBENCH=(--airbench 6)
    else
        echo "airbench: not importable here, so its row is left out"
        AIRBENCH=(--airbench 0)
    fi
fi

step() {  # step SECONDS ARGS...: one python command, stopped after SECONDS
    local limit=$1
    shift
    echo "\$ $PYTHON $*"
    if [ "$DRY_RUN" = 1 ]; then
        return 0
    fi
    local start=$SECONDS
    timeout -k 15 "$limit" "$PYTHON" "$@"
    local rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "(stopped at its limit of $limit s; the lines above are what it measured)"
    elif [ "$rc" != 0 ]; then
        echo "(exit status $rc)"
    fi
    echo "($((SECONDS - start)) s)"
    echo
}

[ "$DRY_RUN" = 1 ] || echo "device_check on $DEVICE, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ "$DRY_RUN" = 1 ] || rm -rf "$RUNS/gpu_pipeline"  # its images beside it are kept
step 130 benchmarks/gpu_pipeline.py "${PIPELINE[@]}" --out "$RUNS/gpu_pipeline"
step 270 benchmarks/gpu_throughput.py "${SIZES[@]}" "${MODES[@]}" "${AIRBENCH[@]}"
if [ "${#COMPILE[@]}" -gt 0 ]; then
    step 80 benchmarks/gpu_throughput.py "${SIZES[@]}" "${COMPILE[@]}" --airbench 0
fi
