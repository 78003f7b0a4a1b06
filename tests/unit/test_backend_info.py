"""BackendInfo: option effects as data, read by the cost model without naming a backend."""

from __future__ import annotations

import pytest
from _planner_models import cpu

from aivmm.backends import BackendInfo, Config, OptionEffect, registry
from aivmm.dtypes import DType, Precision
from aivmm.models import ModelFormat, ModelSpec, TensorSpec
from aivmm.planner._cost import predict
from aivmm.planner._figures import Capability

COMPILE = OptionEffect(compute=0.5, overhead=0.5, load_s=20.0, compiles=True, runner=True)
INFO = BackendInfo(
    "vendor-x",
    frozenset({ModelFormat.ONNX}),
    frozenset(),
    frozenset({Precision.FP32}),
    options={"level": ("fast", "safe")},
    call_overhead_ms=1.0,
    thread_option="workers",
    effects={
        "compile": {True: COMPILE},
        "level": {"SAFE": OptionEffect(compute=2.0)},
        "graphs": {True: OptionEffect(load_s=1.0, compiles=True, runner=True)},
    },
)
CAP = Capability({p: 1.0 for p in Precision}, bandwidth_gbs=100.0, h2d_gbs=None, power_w=None, source="test")


def test_effects_match_exact_values_case_blind_and_any_set_value():
    assert INFO.effect_of("level", "safe").compute == 2.0  # strings without case
    assert INFO.effect_of("level", "fast") == OptionEffect()  # not listed: neutral
    assert INFO.effect_of("compile", "max-autotune") is COMPILE  # any set value takes the True entry
    assert INFO.effect_of("compile", None) == OptionEffect() == INFO.effect_of("compile", False)
    combined = INFO.effect({"compile": True, "graphs": True, "level": "safe"})
    assert combined.compute == pytest.approx(1.0) and combined.load_s == pytest.approx(21.0)
    assert combined.compiles and combined.runner


def test_compiling_and_runner_options_come_from_the_effects():
    opts = {"compile": "default", "graphs": False, "level": "safe"}
    assert INFO.compiling(opts) == ("compile",)
    assert INFO.runner_options == frozenset({"compile", "graphs"})
    assert INFO.without_runner(opts) == {"level": "safe"}


def test_the_cost_model_reads_overhead_effects_and_threads_from_the_info(monkeypatch):
    x = TensorSpec("x", DType.FLOAT32, (1, 16))
    spec = ModelSpec(
        name="m",
        format=ModelFormat.ONNX,
        inputs=(x,),
        outputs=(x,),
        flops=2 * 10**9,
        parameter_bytes=10**6,
        peak_activation_bytes=0,
    )
    monkeypatch.setattr("aivmm.planner._cost.physical_cores", lambda: 8)

    def run(**options: object):
        return predict(spec, cpu(), Config("vendor-x", "cpu:0", options=options), CAP, info=INFO)

    plain = run()
    assert plain.latency_ms > 1.0  # the stated 1 ms per call is in it
    assert run(level="safe").latency_ms > plain.latency_ms
    assert run(compile=True).latency_ms < plain.latency_ms
    assert run(compile=True).load_s == pytest.approx(plain.load_s + 20.0)
    assert run(workers=4).latency_ms > run(workers=8).latency_ms  # its own thread option


def test_builtins_state_their_figures():
    ort, ov, torch = (registry.get(n).info() for n in ("onnxruntime", "openvino", "torch"))
    assert ort.call_overhead_ms < ov.call_overhead_ms < torch.call_overhead_ms
    assert ort.compiling({"execution_provider": "tensorrt"}) == ("execution_provider",)
    assert torch.runner_options == frozenset({"compile", "cuda_graphs"})
    sim = registry.get("simulated").info()
    assert sim.effects == ort.effects and sim.call_overhead_ms == ort.call_overhead_ms
