"""The planner on a real NVIDIA GPU (run on the device machine; skipped without CUDA).

python -m pytest -q tests/unit/test_planner_gpu.py
"""

from __future__ import annotations

import pytest
from _planner_models import mlp

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def big_spec(tmp_path):
    from aivmm.models import load

    # 2 x (1024 x 4096) matmuls at batch 64: enough work that the GPU must win over 16 CPU cores
    return load(mlp(tmp_path / "big.onnx", d=1024, h=4096, out=1024), shapes={"x": (64, 1024)})


def test_compute_heavy_model_lands_on_the_gpu_with_gpu_figures(big_spec):
    from aivmm.devices import discover
    from aivmm.planner import plan

    devices = discover()
    gpu = next(d for d in devices if d.id.startswith("nvidia:"))
    p = plan(big_spec, devices, {"batch_size": 64}, budget_s=6.0)
    assert p.chosen.config.device == gpu.id, p.explain()
    m = p.chosen.measurement
    assert m is not None and m.p50_ms > 0
    assert m.memory_source in ("torch.cuda", "load-report")
    assert m.energy_source == "nvml" or "pynvml" in m.energy_source or "NVML" in m.energy_source
    print(p.explain())


def test_half_precision_on_the_gpu_is_checked_against_fp32(big_spec):
    from aivmm.devices import discover
    from aivmm.planner import plan

    devices = discover()
    p = plan(big_spec, devices, {"precision": "fp16", "batch_size": 64, "prefer": ["gpu"]}, budget_s=6.0)
    half = [
        c
        for c in (*p.ranked(), *p.rejected)
        if c.config.device.startswith("nvidia:") and c.precision.value in ("fp16", "bf16") and c.measurement is not None
    ]
    assert half, p.explain()
    assert all(c.accuracy is not None for c in half)
    print(p.explain())
