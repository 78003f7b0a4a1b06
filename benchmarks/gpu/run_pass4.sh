#!/usr/bin/env bash
# GPU pass 4: CPU+GPU replicas with launch-friendly options, GPU+CPU split, CUDA conformance, residency test.
# Usage (repo root on the GPU machine): bash benchmarks/gpu/run_pass4.sh OUTDIR
set -uo pipefail
out=${1:?OUTDIR}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AIVMM_CACHE_DIR=/tmp/aivmm-cache
timeout 100 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/gpu/test_torch_residency_gpu.py \
    tests/gpu/test_runtime_gpu.py tests/conformance 2>&1 | tee "$out/pytest_gpu_pass4.log" | tail -6
timeout 120 python3 benchmarks/multidevice.py --gpu --gpu-precision fp16 --gpu-cuda-graphs --cpu-threads 8 \
    --seconds 4 --rounds 30 2>&1 | grep -v Warning | tee "$out/multidevice_gpu_fp16.log" | tail -16
timeout 80 python3 benchmarks/multidevice.py --gpu --no-replicas --model bert-base --rounds 30 2>&1 \
    | grep -v Warning | tee "$out/split_gpu_bert.log" | tail -6
timeout 240 python3 benchmarks/conformance.py --device CUDA --runners auto,torch --jobs 6 \
    --out "$out/conformance-cuda.md" 2>&1 | tail -15
