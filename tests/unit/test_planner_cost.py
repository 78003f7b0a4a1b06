"""The roofline cost model and the device-figure reader."""

from __future__ import annotations

import dataclasses
import math

import pytest
from _planner_models import cpu, sim_gpu

from aivmm.backends._base import Config
from aivmm.dtypes import DType, Precision
from aivmm.models._spec import Category, CategoryScore, ModelFormat, ModelSpec, TensorSpec
from aivmm.planner import _figures
from aivmm.planner._cost import predict
from aivmm.planner._figures import Capability, capability


def _spec(flops: int, params: int, acts: int = 0, category: Category = Category.CNN) -> ModelSpec:
    x = TensorSpec("x", DType.FLOAT32, (1, 16))
    return ModelSpec(
        name="m",
        format=ModelFormat.ONNX,
        inputs=(x,),
        outputs=(x,),
        flops=flops,
        parameter_bytes=params,
        peak_activation_bytes=acts,
        categories=(CategoryScore(category, 0.9, ()),),
    )


CAP = Capability(
    {Precision.FP32: 1.0, Precision.FP16: 4.0, Precision.BF16: 4.0, Precision.INT8: 8.0},
    bandwidth_gbs=100.0,
    h2d_gbs=None,
    power_w=None,
    source="test",
)


def test_compute_bound_model_scales_with_flops_and_precision():
    spec = _spec(flops=10**11, params=10**6)
    fp32 = predict(spec, cpu(), Config("onnxruntime", "cpu:0"), CAP)
    assert fp32.bound == "compute"
    assert predict(_spec(2 * 10**11, 10**6), cpu(), Config("onnxruntime", "cpu:0"), CAP).latency_ms > fp32.latency_ms
    fp16 = predict(spec, cpu(), Config("onnxruntime", "cpu:0", Precision.FP16), CAP)
    assert fp16.latency_ms < fp32.latency_ms / 3


def test_memory_bound_model_scales_with_bytes_and_weight_precision():
    spec = _spec(flops=10**6, params=4 * 10**9)
    fp32 = predict(spec, cpu(), Config("onnxruntime", "cpu:0"), CAP)
    assert fp32.bound == "memory"
    assert fp32.latency_ms == pytest.approx(40.0, rel=0.05)  # 4 GB at 100 GB/s
    int8 = predict(spec, cpu(), Config("onnxruntime", "cpu:0"), CAP, precision=Precision.INT8)
    assert int8.latency_ms == pytest.approx(10.0, rel=0.05) and int8.memory_bytes == 10**9


def test_tiny_model_is_overhead_bound_and_backends_differ():
    spec = _spec(flops=100, params=100)
    ort = predict(spec, cpu(), Config("onnxruntime", "cpu:0"), CAP)
    torch = predict(spec, cpu(), Config("torch", "cpu:0"), CAP)
    assert ort.bound == "overhead" and torch.latency_ms > ort.latency_ms


def test_fewer_threads_and_no_graph_optimisation_predict_slower(monkeypatch):
    monkeypatch.setattr("aivmm.planner._cost.physical_cores", lambda: 8)
    spec = _spec(flops=10**11, params=10**6)
    full = predict(spec, cpu(), Config("onnxruntime", "cpu:0", options={"intra_op_threads": 8}), CAP)
    half = predict(spec, cpu(), Config("onnxruntime", "cpu:0", options={"intra_op_threads": 4}), CAP)
    off = predict(spec, cpu(), Config("onnxruntime", "cpu:0", options={"graph_optimization_level": "disable"}), CAP)
    assert half.latency_ms == pytest.approx(2 * full.latency_ms, rel=0.01)
    assert off.latency_ms > full.latency_ms


def test_discrete_device_pays_transfers_and_energy_uses_the_power_limit():
    spec = _spec(flops=10**6, params=10**3)
    gpu = sim_gpu()
    cap = dataclasses.replace(CAP, h2d_gbs=0.001, power_w=300.0)
    p = predict(spec, gpu, Config("simulated", gpu.id), cap, batch=2)
    no_bus = predict(spec, gpu, Config("simulated", gpu.id), dataclasses.replace(cap, h2d_gbs=None), batch=2)
    assert p.latency_ms > no_bus.latency_ms
    assert p.energy_j == pytest.approx(300.0 * p.latency_ms / 1e3 / 2)


def test_capability_prefers_measured_figures(monkeypatch):
    class Fig:
        def to_json(self):
            return {
                "matmul_tflops": {"fp32": 2.0, "bf16": 9.0},
                "memory_bandwidth_gbps": 55.0,
                "h2d_pinned_gbps": 20.0,
                "h2d_pageable_gbps": 5.0,
                "d2h_pinned_gbps": 1.0,
            }

    import aivmm.devices.bench as bench

    monkeypatch.setattr(bench, "figures", lambda device, runtime=None, **kw: Fig())
    cap = capability(sim_gpu(), "simulated")
    assert cap.source == "measured"
    assert cap.tflops[Precision.FP32] == 2.0 and cap.tflops[Precision.BF16] == 9.0
    assert cap.tflops[Precision.FP16] == 8.0  # unmeasured: fp32 x the GPU ratio
    assert cap.bandwidth_gbs == 55.0 and cap.h2d_gbs == 20.0 and cap.power_w == 300.0


def test_capability_defaults_when_nothing_is_measured(monkeypatch):
    import aivmm.devices.bench as bench

    monkeypatch.setattr(bench, "figures", lambda device, runtime=None, **kw: None)
    monkeypatch.setattr(_figures, "physical_cores", lambda: 4)
    cap = capability(cpu(), "onnxruntime")
    assert cap.source == "default" and cap.h2d_gbs is None
    assert cap.tflops[Precision.FP32] == pytest.approx(4 * _figures._CPU_GFLOPS_PER_CORE / 1e3)
    # no bf16 in this CPU's features: emulated bf16 is slower than fp32
    assert cap.tflops[Precision.BF16] < cap.tflops[Precision.FP32]
    with_bf16 = capability(cpu(features=frozenset({"avx512_bf16"})), "onnxruntime")
    assert with_bf16.tflops[Precision.BF16] > with_bf16.tflops[Precision.FP32]


def test_measurements_teach_the_cost_model(tmp_path, monkeypatch):
    from _planner_models import cpu as cpu_device
    from _planner_models import mlp

    from aivmm.models import load
    from aivmm.planner import _calibration, plan

    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))
    spec = load(mlp(tmp_path / "m.onnx"))
    before = plan(spec, [cpu_device()], backends=("onnxruntime",), measure=False, cache=False)
    key = _calibration.group("onnxruntime", cpu_device(), Precision.FP32, spec.primary_category)
    assert _calibration.factor(key) == 1.0
    measured = plan(spec, [cpu_device()], backends=("onnxruntime",), budget_s=0.2, top_k=2, cache=False)
    m = measured.chosen.measurement
    learned = _calibration.factor(key)
    assert learned != 1.0
    after = plan(spec, [cpu_device()], backends=("onnxruntime",), measure=False, cache=False)
    assert after.chosen.prediction.latency_ms == pytest.approx(before.chosen.prediction.latency_ms * learned)
    assert any("learned from earlier measurements" in n for n in after.chosen.notes)
    # the correction moves the prediction toward what was measured
    assert (
        abs(math.log(after.chosen.prediction.latency_ms / m.p50_ms))
        < abs(math.log(before.chosen.prediction.latency_ms / m.p50_ms)) + 1e-9
    )


def test_calibration_clamps_and_ignores_nonsense(tmp_path, monkeypatch):
    from aivmm.planner import _calibration

    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))
    _calibration.record("g", float("nan"), 1.0)
    _calibration.record("g", 1.0, 0.0)
    assert _calibration.factor("g") == 1.0
    _calibration.record("g", 1e9, 1.0)
    assert _calibration.factor("g") == pytest.approx(100.0)
    (tmp_path / "cache" / "planner" / "calibration.json").write_text("{broken")
    assert _calibration.factor("g") == 1.0
