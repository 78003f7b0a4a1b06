#!/usr/bin/env bash
# GPU pass 3: fixes re-checked (devices int8, residency hooks, runtime GPU tests), fp16 batching, overcommit.
# Usage (repo root on the GPU machine): bash benchmarks/gpu/run_pass3.sh OUTDIR
set -uo pipefail
out=${1:?OUTDIR}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AIVMM_CACHE_DIR=/tmp/aivmm-cache
timeout 120 python3 benchmarks/devices_gpu.py "$out/aivmm_devices_h100.json" 2>&1 | tee "$out/devices_gpu.log" | tail -22
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" --continue-on-collection-errors -m gpu \
    tests/gpu tests/unit/test_models_torch.py tests/unit/test_planner_gpu.py tests/unit/test_telemetry_samplers.py \
    tests/backends/test_gpu_interop.py tests/backends/test_tensors.py 2>&1 | tee "$out/pytest_gpu.log" | tail -15
timeout 150 python3 benchmarks/batching.py --model resnet50 --size full --backend torch --device nvidia:0 \
    --precision fp16 --max-batch 64 --delay-ms 2 --levels 1,2,4,8,16,32,64 --seconds 2 2>&1 | grep -v Warning | tee "$out/batching_gpu_fp16.log" | tail -22
timeout 120 python3 benchmarks/overcommit.py --backend torch --device nvidia:0 --seconds 20 2>&1 | grep -v Warning | tee "$out/overcommit_gpu.log" | tail -25
