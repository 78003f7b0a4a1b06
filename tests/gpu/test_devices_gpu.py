"""Discovery and capability figures on the H100 machine (run there: ``pytest -m gpu tests/gpu``).

The recorded facts (tests/fixtures/devices/nvidia/nvml_pynvml__h100-80gb-hbm3_driver580__recorded.json)
fix the shape of what NVML must report; the figures must be positive and plausible against the
H100 datasheet (bf16 dense 989 TFLOP/s, HBM3 3.35 TB/s, PCIe Gen5 ~63 GB/s per direction).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aivmm.devices import bench, discover_report

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def gpu():
    report = discover_report(include_runtimes=False, refresh=True)
    nvidia = report.probe("nvidia")
    assert nvidia.devices, f"no NVIDIA GPU found: {nvidia.reason}"
    device = nvidia.devices[0]
    assert device.source == "nvml", (
        f"NVML not used ({nvidia.reason}); install nvidia-ml-py on this machine (pip install nvidia-ml-py)"
    )
    return device


def test_discover_finds_the_h100_with_the_recorded_facts_shape(gpu) -> None:
    assert gpu.id == "nvidia:0"
    assert "H100" in gpu.name
    assert gpu.properties["compute_capability"] == "9.0"
    assert gpu.properties["architecture"] == "hopper"
    assert 79e9 < gpu.memory_total_bytes < 86e9
    assert 0 < gpu.memory_free_bytes <= gpu.memory_total_bytes
    assert {"fp16", "bf16", "int8", "tensor-cores", "fp8"} <= gpu.features
    assert gpu.properties["uuid"].startswith("GPU-")
    assert gpu.properties["pci_bus_id"]
    assert gpu.properties["power_limit_w"] > 100
    assert gpu.properties.get("pcie_gen_max", 5) >= 4


def test_discovery_creates_no_cuda_context() -> None:
    code = (
        "import aivmm.devices as d; devs = d.discover(include_runtimes=False);"
        "assert any(x.id == 'nvidia:0' for x in devs), devs;"
        "import torch; print(torch.cuda.is_initialized())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_measured_figures_are_positive_plausible_and_bounded(gpu, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path))
    figures = bench.measure(gpu)
    tf = figures.matmul_tflops
    assert 200 < tf["bf16"] < 1000, tf  # dense bf16 peak 989 on SXM (756 on PCIe)
    assert 200 < tf["fp16"] < 1000, tf
    assert 10 < tf["fp32"] < 70, tf  # IEEE fp32 (TF32 off): 67 peak
    assert tf["tf32"] > tf["fp32"], tf
    # torch._int_mm's speed depends on cuBLASLt's kernel choice: row-major B gave 130 TOPS on this
    # H100 (2026-11-24 run); column-major B is the tensor-core layout. Plausible: above fp32, below peak.
    assert tf["fp32"] < tf["int8"] < 2000, tf
    assert 1000 < figures.memory_bandwidth_gbps < 3500, figures
    assert 5 < figures.h2d_pinned_gbps < 70, figures
    assert figures.h2d_pageable_gbps > 0, figures
    assert figures.seconds < 60, figures.seconds  # ~30 s budget per device, plus CUDA start-up
    assert bench.figures(gpu) == figures  # cached under the device's fingerprint


def test_benchmark_script_records_json_with_figures(tmp_path) -> None:
    out = tmp_path / "aivmm_devices_h100.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/devices_gpu.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "AIVMM_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert out.exists(), proc.stderr
    devices = {d["id"]: d for d in json.loads(out.read_text())}
    assert devices["nvidia:0"]["figures"]["matmul_tflops"]["bf16"] > 0
    assert "check" in devices["nvidia:0"]
