#!/usr/bin/env bash
# Final GPU pass: every GPU-marked test after the last changes.
# Usage (repo root on the GPU machine): bash benchmarks/gpu/run_final.sh OUTDIR
set -uo pipefail
out=${1:?OUTDIR}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
timeout 400 python3 -m pytest -q -p no:cacheprovider -o addopts="" --continue-on-collection-errors -m gpu \
    tests/gpu tests/unit/test_models_torch.py tests/unit/test_planner_gpu.py tests/unit/test_telemetry_samplers.py \
    tests/backends/test_gpu_interop.py tests/backends/test_tensors.py tests/conformance 2>&1 \
    | tee "$out/pytest_gpu_final.log" | tail -8
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/backends/test_contract.py -k nvidia 2>&1 \
    | tee "$out/pytest_contract_gpu_final.log" | tail -3
