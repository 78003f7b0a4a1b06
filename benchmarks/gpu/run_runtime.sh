#!/usr/bin/env bash
# GPU pass 2 on the device machine: runtime benchmarks (model load, dynamic batching, CPU+GPU replicas).
# Usage (repo root on the GPU machine): bash benchmarks/gpu/run_runtime.sh OUTDIR
set -uo pipefail
out=${1:?OUTDIR}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AIVMM_CACHE_DIR=/tmp/aivmm-cache
timeout 150 python3 benchmarks/model_load_gpu.py --gib 2 --repeats 3 2>&1 | grep -v Warning | tee "$out/model_load_gpu.log"
timeout 240 python3 benchmarks/batching.py --model resnet50 --size full --backend torch --device nvidia:0 \
    --max-batch 64 --delay-ms 2 --levels 1,2,4,8,16,32,64,128 --seconds 2 2>&1 | grep -v Warning | tee "$out/batching_gpu.log"
timeout 150 python3 benchmarks/multidevice.py --gpu --model resnet50 --size full --seconds 4 2>&1 | grep -v Warning | tee "$out/multidevice_gpu.log"
