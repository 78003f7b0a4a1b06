#!/usr/bin/env bash
# GPU pass 1 on the device machine: discovery + bench record, every GPU-marked test.
# Usage (repo root on the GPU machine): bash benchmarks/gpu/run_tests.sh OUTDIR
set -uo pipefail
out=${1:?OUTDIR}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AIVMM_CACHE_DIR=/tmp/aivmm-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia-smi.txt"
python3 -c "import torch, onnx, onnxruntime; print('torch', torch.__version__, 'onnx', onnx.__version__, 'ort', onnxruntime.__version__)" | tee -a "$out/nvidia-smi.txt"
timeout 180 python3 benchmarks/devices_gpu.py "$out/aivmm_devices_h100.json" 2>&1 | tee "$out/devices_gpu.log"
timeout 300 python3 -m pytest -q -p no:cacheprovider -o addopts="" --continue-on-collection-errors -m "gpu" tests/gpu tests/backends tests/unit 2>&1 | tee "$out/pytest_gpu.log" | tail -40
timeout 200 python3 -m pytest -q -p no:cacheprovider -o addopts="" --continue-on-collection-errors tests/backends/test_contract.py -k "nvidia" 2>&1 | tee "$out/pytest_contract_gpu.log" | tail -15
