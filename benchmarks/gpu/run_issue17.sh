#!/usr/bin/env bash
# Issue 17 on the GPU machine (repository root): aivmm auto against hand-written PyTorch, one process per model.
# Usage: bash benchmarks/gpu/run_issue17.sh OUTDIR   (about 4 min for ResNet-50, 5 for BERT-base on an H200)
set -uo pipefail
out=${1:?OUTDIR}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AIVMM_COMMIT=${AIVMM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}
mkdir -p "$out/resnet50" "$out/bert"
python3 benchmarks/gpu/issue17.py --out "$out/resnet50" --models resnet50 --second-deploy 2>&1 | grep -vi warn > "$out/resnet50/log.txt"
python3 benchmarks/gpu/issue17.py --out "$out/bert" --models bert --second-deploy 2>&1 | grep -vi warn > "$out/bert/log.txt"
python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/gpu 2>&1 | tail -5 > "$out/pytest_gpu.log"
