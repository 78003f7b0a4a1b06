"""OpenVINO adapter: device names, precision offer and explicit hints, cache directory, AUTO/HETERO, streams."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import pathlib

import numpy as np
import pytest
from _backend_models import random_inputs

from aivmm.backends import Config, _openvino_devices, registry
from aivmm.backends.tensors import validate_feeds
from aivmm.devices._types import Device, DeviceKind, Vendor
from aivmm.dtypes import Precision
from aivmm.errors import BackendUnavailableError, ConfigError, ExecutionError

pytest.importorskip("openvino")
OV = registry.get("openvino")


def device(
    dev_id: str, kind: DeviceKind, vendor: Vendor = Vendor.INTEL, index: int = 0, features: frozenset[str] = frozenset()
) -> Device:
    return Device(dev_id, kind, vendor, dev_id, 16 << 30, 16 << 30, index=index, features=features)


@pytest.mark.parametrize(
    ("dev", "name"),
    [
        (device("cpu:0", DeviceKind.CPU, Vendor.AMD), "CPU"),
        (device("intel-gpu:1", DeviceKind.GPU, index=1), "GPU.1"),
        (device("intel-npu:0", DeviceKind.NPU), "NPU"),
        (device("nvidia:0", DeviceKind.GPU, Vendor.NVIDIA), None),
        (device("amd:0", DeviceKind.GPU, Vendor.AMD), None),
    ],
)
def test_devices_map_to_openvino_names(dev, name):
    assert _openvino_devices.device_name(dev) == name


def test_single_gpu_is_listed_without_index():
    assert _openvino_devices.is_listed("GPU.0", ["CPU", "GPU"])
    assert not _openvino_devices.is_listed("GPU.1", ["CPU", "GPU"])
    assert _openvino_devices.is_listed("GPU.1", ["CPU", "GPU.0", "GPU.1"])


def test_precisions_follow_the_hardware():
    plain = device("cpu:0", DeviceKind.CPU, features=frozenset({"avx2", "fp32"}))
    bf16 = device("cpu:0", DeviceKind.CPU, features=frozenset({"avx512_bf16", "amx_bf16"}))
    assert _openvino_devices.precisions(plain) == {Precision.FP32, Precision.INT8}
    assert Precision.BF16 in _openvino_devices.precisions(bf16)
    assert Precision.FP16 not in _openvino_devices.precisions(bf16)
    npu = _openvino_devices.precisions(device("intel-npu:0", DeviceKind.NPU))
    assert npu == {Precision.FP16, Precision.INT8}
    assert Precision.FP16 not in _openvino_devices.precisions(device("intel-gpu:0", DeviceKind.GPU), ["FP32", "INT8"])


def test_this_cpu_offers_bf16_only_if_its_flags_say_so(cpu):
    has_bf16 = bool(cpu.features & {"bf16", "avx512_bf16", "amx_bf16"})
    assert (Precision.BF16 in OV.device_precisions(cpu)) == has_bf16
    stripped = cpu.with_(features=frozenset({"avx2"}))
    assert Precision.BF16 not in OV.device_precisions(stripped)


def test_devices_openvino_does_not_list_are_refused():
    nvidia = device("nvidia:0", DeviceKind.GPU, Vendor.NVIDIA)
    assert "not nvidia gpu" in OV.drives(nvidia).reasons[0]
    import openvino

    if not any(d.startswith("GPU") for d in openvino.Core().available_devices):
        intel = device("intel-gpu:0", DeviceKind.GPU)
        support = OV.drives(intel)
        assert not support and "does not list GPU.0" in support.reasons[0]


def test_precision_hint_is_always_explicit(cpu, specs):
    # Without a hint, OpenVINO's CPU plugin computes in bf16 on bf16-capable CPUs: fp32 must be pinned.
    with OV.load(specs["small_cnn"], cpu, Config("openvino", cpu.id)) as session:
        assert str(session._compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
        assert "INFERENCE_PRECISION_HINT=f32" in session.report.notes
    if Precision.BF16 in OV.device_precisions(cpu):
        with OV.load(specs["small_cnn"], cpu, Config("openvino", cpu.id, Precision.BF16)) as session:
            assert "bfloat16" in str(session._compiled.get_property("INFERENCE_PRECISION_HINT"))


def test_compiled_models_are_cached_under_aivmm_cache_dir(cpu, specs, tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path))
    with OV.load(specs["small_cnn"], cpu, Config("openvino", cpu.id)) as session:
        session.run(validate_feeds(specs["small_cnn"], random_inputs(specs["small_cnn"])))
    cached = [p for p in (tmp_path / "openvino").rglob("*") if p.is_file()]
    assert cached, "no compiled blob under $AIVMM_CACHE_DIR/openvino"
    other = tmp_path / "nocache"
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(other))
    with OV.load(specs["mlp"], cpu, Config("openvino", cpu.id, options={"cache": False})):
        pass
    assert not (other / "openvino").exists()


def test_performance_hint_streams_and_threads(cpu, specs):
    options = {"performance_hint": "THROUGHPUT", "num_streams": 2}
    with OV.load(specs["mlp"], cpu, Config("openvino", cpu.id, options=options)) as session:
        compiled = session._compiled
        assert str(compiled.get_property("PERFORMANCE_HINT")) in ("PerformanceMode.THROUGHPUT", "THROUGHPUT")
        assert int(compiled.get_property("NUM_STREAMS")) == 2
    # Sessions sharing cores get fewer threads (OpenVINO then caps streams by threads).
    with OV.load(specs["mlp"], cpu, Config("openvino", cpu.id, options={"intra_op_threads": 1})) as session:
        assert int(session._compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_auto_and_hetero_targets():
    cpu = device("cpu:0", DeviceKind.CPU)
    gpu1 = device("intel-gpu:1", DeviceKind.GPU, index=1)
    assert _openvino_devices.target(cpu, {}) == ("CPU", ("CPU",))
    assert _openvino_devices.target(gpu1, {"device_mode": "AUTO"}) == ("AUTO:GPU.1,CPU", ("GPU.1", "CPU"))
    assert _openvino_devices.target(gpu1, {"device_mode": "hetero:GPU.1,CPU"}) == ("HETERO:GPU.1,CPU", ("GPU.1", "CPU"))
    assert _openvino_devices.target(cpu, {"device_mode": "AUTO"}) == ("AUTO:CPU", ("CPU",))
    with pytest.raises(ConfigError, match=r"does not include GPU\.1"):
        _openvino_devices.target(gpu1, {"device_mode": "HETERO:CPU"})
    with pytest.raises(ConfigError, match="device_mode must be"):
        _openvino_devices.target(cpu, {"device_mode": "MULTI:CPU"})


@pytest.mark.parametrize("mode", ["AUTO", "HETERO"])
def test_auto_and_hetero_run_and_report(cpu, specs, mode):
    spec = specs["mlp"]
    feeds = validate_feeds(spec, random_inputs(spec))
    with OV.load(spec, cpu, Config("openvino", cpu.id)) as plain:
        expected = plain.run(feeds)
    with OV.load(spec, cpu, Config("openvino", cpu.id, options={"device_mode": mode})) as session:
        got = session.run(feeds)
        assert f"compiled for {mode}:CPU" in session.report.notes
        assert session.report.fallback_nodes == ()  # everything placed on the CPU that was asked for
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"streams": 2}, "unknown openvino option"),
        ({"performance_hint": "FAST"}, "performance_hint"),
        ({"num_streams": 0}, "num_streams"),
        ({"device_mode": "MULTI"}, "device_mode"),
    ],
)
def test_bad_options_are_refused(cpu, specs, options, message):
    config = Config("openvino", cpu.id, options=options)
    assert not OV.check(specs["one_op"], cpu, config)
    with pytest.raises(ConfigError, match=message):
        OV.load(specs["one_op"], cpu, config)


def test_int8_needs_a_prequantised_model(cpu, specs):
    support = OV.check(specs["mlp"], cpu, Config("openvino", cpu.id, Precision.INT8))
    assert not support and "pre-quantised" in support.reasons[0]
    assert OV.check(specs["qdq"], cpu, Config("openvino", cpu.id, Precision.INT8))


def test_concurrent_runs_use_several_infer_requests(cpu, specs):
    spec = specs["small_cnn"]
    feeds = validate_feeds(spec, random_inputs(spec, batch=1))
    with OV.load(spec, cpu, Config("openvino", cpu.id)) as session:
        expected = session.run(feeds)
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda _: session.run(feeds), range(32)))
        assert session._idle.qsize() >= 1
    for r in results:
        np.testing.assert_array_equal(r["logits"], expected["logits"])


def test_model_from_bytes_and_runtime_errors(cpu, specs, model_dir):
    spec = dataclasses.replace(specs["int_ops"], source=pathlib.Path(model_dir / "int_ops.onnx").read_bytes())
    with OV.load(spec, cpu, Config("openvino", cpu.id)) as session:
        got = session.run(validate_feeds(spec, np.arange(6, dtype=np.int64).reshape(2, 3)))
        np.testing.assert_array_equal(got["res"], np.arange(6).reshape(2, 3) * 3 + 1)
        with pytest.raises(ExecutionError, match="openvino failed running"):
            session.run({"idx": np.zeros((4, 4), np.int64)})  # bypasses validate_feeds on purpose


def test_simulated_devices_are_left_to_the_simulated_backend(cpu, specs):
    simulated = cpu.with_(simulated=True)
    with pytest.raises(BackendUnavailableError, match="simulated"):
        OV.load(specs["one_op"], simulated, Config("openvino", cpu.id))


def test_devices_from_discovery_examples_get_openvino_names_and_precisions():
    from aivmm.devices import discover

    examples = pathlib.Path(__file__).parents[2] / "src/aivmm/devices/examples"
    found = {
        d.id: d.with_(simulated=False)
        for p in sorted(examples.glob("*.json"))
        for d in discover(simulate=str(p))
        if d.simulated
    }
    assert _openvino_devices.device_name(found["intel-gpu:0"]) == "GPU.0"
    assert _openvino_devices.device_name(found["intel-npu:0"]) == "NPU"
    assert _openvino_devices.device_name(found["nvidia:0"]) is None
    assert _openvino_devices.device_name(found["amd:0"]) is None
    assert OV.device_precisions(found["intel-npu:0"]) == {Precision.FP16, Precision.INT8}
    assert {Precision.FP32, Precision.FP16} <= OV.device_precisions(found["intel-gpu:0"])
    assert "not nvidia gpu" in OV.drives(found["nvidia:0"]).reasons[0]
