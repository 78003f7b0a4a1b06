#!/usr/bin/env bash
# Issue 18's GPU targets in ONE device call (repository root; about 4-6 min on an H200):
# the GPU-marked tests of the torch generation path, then benchmarks/llm_gpu.py (tiny Llama / GPT-2
# vs HF generate eager, with and without CUDA graphs; a Llama-2-7B-shaped fp16 model at batch 1 and
# 64 streams; the HBM floor).
#
# 1. Here, where PyPI is reachable (once per checkout): bash benchmarks/gpu/run_issue18.sh --prepare
#    It downloads into .whl/ (ignored through .git/info/exclude) the transformers, tokenizers and
#    huggingface_hub wheels aivmm is tested with (16 MiB): the device image has transformers 5.x and
#    tokenizers 0.23, which aivmm's torch path was not written against.
# 2. One device call: run(command="bash benchmarks/gpu/run_issue18.sh $OUT", carry=[".whl"], timeout_s=600)
#    $OUT gets pytest_gpu.log, llm_gpu.json, llm_gpu.log and gpu.txt.
set -uo pipefail
if [ "${1:-}" = "--prepare" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-common-dir)/info/exclude"
  rm -rf .whl && mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2
  ls -la .whl
  exit
fi
out=${1:?OUTDIR}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PYTHONUNBUFFERED=1
export AIVMM_COMMIT=${AIVMM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}
{ nvidia-smi -L; python3 -c "import torch, transformers, tokenizers; print(torch.__version__, transformers.__version__, tokenizers.__version__)"; } > "$out/gpu.txt" 2>&1
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/gpu/test_llm_torch_gpu.py 2>&1 | tail -40 > "$out/pytest_gpu.log"
timeout 380 python3 benchmarks/llm_gpu.py --out "$out/llm_gpu.json" > "$out/llm_gpu.log" 2>&1
echo "rc=$?" >> "$out/llm_gpu.log"
tail -5 "$out/pytest_gpu.log"; tail -3 "$out/llm_gpu.log"
