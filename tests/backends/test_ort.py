"""ONNX Runtime adapter: EP mapping, session options, operator coverage, fallback reporting, IOBinding."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnxruntime
import pytest
from _backend_models import random_inputs, spec_of
from onnx import TensorProto, helper

from aivmm.backends import Config, _ort_ops, _ort_providers, registry
from aivmm.backends.ort import _fallback_nodes, _translate_load_error
from aivmm.backends.tensors import validate_feeds
from aivmm.devices._types import Device, DeviceKind, Vendor
from aivmm.dtypes import Precision
from aivmm.errors import ConfigError, ExecutionError, FallbackError, UnsupportedModelError

ORT = registry.get("onnxruntime")


def gpu(vendor: Vendor, index: int = 0, kind: DeviceKind = DeviceKind.GPU, prefix: str = "") -> Device:
    prefix = prefix or vendor.value
    return Device(f"{prefix}:{index}", kind, vendor, f"{vendor.value} accelerator", 80 << 30, 80 << 30, index=index)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (gpu(Vendor.NVIDIA), ["cuda", "tensorrt"]),
        (gpu(Vendor.AMD), ["migraphx", "rocm"]),
        (gpu(Vendor.INTEL, prefix="intel-gpu"), ["openvino"]),
        (gpu(Vendor.INTEL, kind=DeviceKind.NPU, prefix="intel-npu"), ["openvino"]),
        (gpu(Vendor.APPLE), ["coreml"]),
        (gpu(Vendor.OTHER), []),
    ],
)
def test_devices_map_to_execution_providers(device, expected):
    assert [c.short for c in _ort_providers.choices_for(device)] == expected


def test_gpus_are_offered_only_when_their_ep_is_installed(cpu):
    assert ORT.drives(cpu)
    nvidia = gpu(Vendor.NVIDIA)
    support = ORT.drives(nvidia)
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert support
    else:
        assert not support and "onnxruntime-gpu" in support.reasons[0]
    simulated = nvidia.with_(simulated=True)
    assert not ORT.drives(simulated) and "simulated" in ORT.drives(simulated).reasons[0]
    assert "no execution provider" in ORT.drives(gpu(Vendor.OTHER)).reasons[0]


def test_provider_options_follow_device_index_and_precision(tmp_path):
    nvidia3 = gpu(Vendor.NVIDIA, index=3)
    cuda = _ort_providers.provider_options(_ort_providers.CUDA, nvidia3, Precision.FP32, {"arena": False}, tmp_path)
    assert cuda["device_id"] == "3" and cuda["arena_extend_strategy"] == "kSameAsRequested"
    trt = _ort_providers.provider_options(_ort_providers.TENSORRT, nvidia3, Precision.FP16, {}, tmp_path)
    assert (trt["device_id"], trt["trt_fp16_enable"], trt["trt_int8_enable"]) == ("3", "1", "0")
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path))
    intel = _ort_providers.provider_options(
        _ort_providers.OPENVINO, gpu(Vendor.INTEL, 1, prefix="intel-gpu"), Precision.FP16, {}, tmp_path
    )
    assert (intel["device_type"], intel["precision"]) == ("GPU.1", "FP16")
    npu = _ort_providers.provider_options(
        _ort_providers.OPENVINO, gpu(Vendor.INTEL, kind=DeviceKind.NPU), Precision.FP16, {}, tmp_path
    )
    assert npu["device_type"] == "NPU"


def test_asking_for_an_ep_that_cannot_drive_the_device(cpu, specs):
    config = Config("onnxruntime", cpu.id, options={"execution_provider": "cuda"})
    support = ORT.check(specs["one_op"], cpu, config)
    assert not support and "cannot drive cpu:0" in support.reasons[0]
    with pytest.raises(ConfigError, match="cannot drive"):
        ORT.load(specs["one_op"], cpu, config)


def test_session_options_threads_spinning_and_optimisation(cpu, specs):
    options = {
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "allow_spinning": False,
        "graph_optimization_level": "basic",
    }
    with ORT.load(specs["mlp"], cpu, Config("onnxruntime", cpu.id, options=options)) as session:
        so = session._sess.get_session_options()
        assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert so.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        assert session.providers == ["CPUExecutionProvider"]
    with ORT.load(specs["mlp"], cpu, Config("onnxruntime", cpu.id)) as session:
        so = session._sess.get_session_options()
        assert so.intra_op_num_threads == _ort_providers.physical_cores(cpu)
        assert so.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_physical_cores_prefers_the_device_figure(cpu):
    assert _ort_providers.physical_cores(cpu.with_(properties={"physical_cores": 1})) == 1
    assert 1 <= _ort_providers.physical_cores() <= (len(__import__("os").sched_getaffinity(0)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threads": 2}, "unknown onnxruntime option"),
        ({"intra_op_threads": 0}, "positive int"),
        ({"graph_optimization_level": "max"}, "graph_optimization_level"),
        ({"execution_provider": "quantum"}, "unknown execution_provider"),
    ],
)
def test_bad_options_are_refused(cpu, specs, options, message):
    config = Config("onnxruntime", cpu.id, options=options)
    assert not ORT.check(specs["one_op"], cpu, config)
    with pytest.raises(ConfigError, match=message):
        ORT.load(specs["one_op"], cpu, config)


def test_cpu_precisions_are_fp32_and_prequantised_int8(cpu, specs):
    fp16 = ORT.check(specs["mlp"], cpu, Config("onnxruntime", cpu.id, Precision.FP16))
    assert not fp16 and "offered: ['fp32', 'int8']" in fp16.reasons[-1]
    int8 = ORT.check(specs["mlp"], cpu, Config("onnxruntime", cpu.id, Precision.INT8))
    assert not int8 and "pre-quantised" in int8.reasons[0]
    assert ORT.check(specs["qdq"], cpu, Config("onnxruntime", cpu.id, Precision.INT8))


def _model(nodes, opset: int, extra_opsets=(), functions=()) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets], functions=list(functions)
    )


def test_operators_are_read_through_subgraphs_and_functions():
    then = helper.make_graph(
        [helper.make_node("Sinh", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4])],
    )
    other = helper.make_graph(
        [helper.make_node("Cosh", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 4])],
    )
    fn = helper.make_function(
        "local.fns", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])], [helper.make_opsetid("", 17)]
    )
    model = _model(
        [
            helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.BOOL, [], [1])),
            helper.make_node("If", ["c"], ["h"], then_branch=then, else_branch=other),
            helper.make_node("Twice", ["h"], ["y"], domain="local.fns"),
        ],
        17,
        [helper.make_opsetid("local.fns", 1)],
        [fn],
    )
    ops = _ort_ops.model_operators(model)
    assert {("", "Sinh", 17), ("", "Cosh", 17), ("", "If", 17), ("", "Add", 17)} <= ops
    assert not any(op == "Twice" for _, op, _ in ops)
    assert _ort_ops.unsupported(ops) == []


def test_operator_newer_than_the_model_opset_is_reported():
    model = _model([helper.make_node("Gelu", ["x"], ["y"])], 17)
    missing = _ort_ops.unsupported(_ort_ops.model_operators(model))
    assert missing and "Gelu (opset 17): registered only from opset 20" in missing[0]
    assert _ort_ops.unsupported(_ort_ops.model_operators(_model([helper.make_node("Gelu", ["x"], ["y"])], 20))) == []


def test_contrib_operators_are_known():
    model = _model(
        [helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")],
        17,
        [helper.make_opsetid("com.microsoft", 1)],
    )
    assert _ort_ops.unsupported(_ort_ops.model_operators(model)) == []


def test_nodes_placed_on_another_ep_are_reported(model_dir):
    # The Azure EP ships in every ORT wheel and runs no graph node: a real session whose nodes all
    # fall back to the CPU EP, which is the situation of a GPU EP lacking a kernel.
    so = onnxruntime.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    sess = onnxruntime.InferenceSession(
        str(model_dir / "mlp.onnx"), so, providers=["AzureExecutionProvider", "CPUExecutionProvider"]
    )
    fallback = _fallback_nodes(sess, "AzureExecutionProvider")
    assert fallback and all(f.endswith("-> CPU") for f in fallback)
    assert any("(Relu)" in f for f in fallback)
    assert _fallback_nodes(sess, "CPUExecutionProvider") == []


def test_strict_mode_turns_ort_refusal_into_fallback_error(model_dir, specs, cpu):
    so = onnxruntime.SessionOptions()
    so.log_severity_level = 4
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with pytest.raises(Exception) as info:  # ORT's own exception type, translated below
        onnxruntime.InferenceSession(str(model_dir / "mlp.onnx"), so, providers=["AzureExecutionProvider"])
    error = _translate_load_error(info.value, specs["mlp"], cpu, _ort_providers.CUDA, strict=True)
    assert isinstance(error, FallbackError) and "strict mode" in str(error)


def test_unsupported_operator_refused_before_and_at_load(cpu, specs):
    support = ORT.check(specs["custom_op"], cpu, Config("onnxruntime", cpu.id))
    assert "com.example.aivmm.FancyOp (opset 1): not registered" in support.reasons[0]
    with pytest.raises(UnsupportedModelError, match="FancyOp"):
        ORT.load(specs["custom_op"], cpu, Config("onnxruntime", cpu.id))


def test_io_binding_on_cpu_matches_and_binds_torch_memory(cpu, specs):
    torch = pytest.importorskip("torch")
    spec = specs["mlp"]
    feeds = random_inputs(spec, batch=3)
    with (
        ORT.load(spec, cpu, Config("onnxruntime", cpu.id)) as plain,
        ORT.load(spec, cpu, Config("onnxruntime", cpu.id, options={"io_binding": True})) as bound,
    ):
        expected = plain.run(validate_feeds(spec, feeds))
        got = bound.run(validate_feeds(spec, {k: torch.from_numpy(v) for k, v in feeds.items()}))
        native = bound.run(validate_feeds(spec, feeds), output="native")
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
        assert isinstance(native[name], onnxruntime.OrtValue)
        np.testing.assert_array_equal(native[name].numpy(), expected[name])


def test_runtime_failure_is_an_execution_error(cpu, specs):
    spec = specs["int_ops"]
    with (
        ORT.load(spec, cpu, Config("onnxruntime", cpu.id)) as session,
        pytest.raises(ExecutionError, match="onnxruntime failed running 'int_ops'"),
    ):
        session.run({"idx": np.zeros((5, 5), np.int64)})  # bypasses validate_feeds on purpose


def test_in_memory_model_sources(cpu, model_dir):
    spec = spec_of(model_dir / "one_op.onnx")
    import dataclasses

    from_bytes = dataclasses.replace(spec, source=(model_dir / "one_op.onnx").read_bytes())
    with ORT.load(from_bytes, cpu, Config("onnxruntime", cpu.id)) as session:
        x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
        np.testing.assert_array_equal(session.run({"x": x})["y"], np.maximum(x, 0))
    assert session.report.seconds > 0 and "CPUExecutionProvider" in session.report.notes[0]


def test_sessions_never_fall_back_silently_and_release_on_close(cpu, specs):
    session = ORT.load(specs["one_op"], cpu, Config("onnxruntime", cpu.id))
    # InferenceSession.run would otherwise switch to the CPU EP on an EP failure, with only a print().
    assert session._sess._enable_fallback is False
    session.close()
    assert session._sess is None and session._c_run is None


def test_strict_mode_on_cpu_loads(cpu, specs):
    # Strict mode refuses fallback to another EP; on the CPU EP there is no other EP to fall back to.
    config = Config("onnxruntime", cpu.id, options={"disable_fallback": True})
    with ORT.load(specs["mlp"], cpu, config) as session:
        assert session.report.fallback_nodes == ()


def test_fallback_nodes_from_a_real_profile(model_dir, tmp_path, specs):
    # The detection used with onnxruntime older than 1.23 (no assignment API): the first run's profile.
    from aivmm.backends.ort import _fallback_from_profile

    so = onnxruntime.SessionOptions()
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "profile")
    sess = onnxruntime.InferenceSession(
        str(model_dir / "mlp.onnx"), so, providers=["AzureExecutionProvider", "CPUExecutionProvider"]
    )
    sess.run(None, validate_feeds(specs["mlp"], random_inputs(specs["mlp"])))
    path = sess.end_profiling()
    fallback = _fallback_from_profile(path, "AzureExecutionProvider")
    assert fallback and all(f.endswith("-> CPU") for f in fallback)
    assert any("(ReduceSum)" in f for f in fallback)
    assert _fallback_from_profile(path, "CPUExecutionProvider") == []
    assert _fallback_from_profile(str(tmp_path / "missing.json"), "CPUExecutionProvider") == []


EXAMPLES = pathlib.Path(__file__).parents[2] / "src/aivmm/devices/examples"


def _example_devices() -> list[Device]:
    from aivmm.devices import discover

    found = []
    for path in sorted(EXAMPLES.glob("*.json")):
        found += [d.with_(simulated=False) for d in discover(simulate=str(path)) if d.simulated]
    return found


def test_devices_from_discovery_examples_map_and_explain(cpu):
    devices = {d.id: d for d in _example_devices()}
    assert {"nvidia:0", "amd:0", "intel-gpu:0", "intel-npu:0"} <= set(devices)
    expected = {
        "nvidia:0": ["cuda", "tensorrt"],
        "amd:0": ["migraphx", "rocm"],
        "intel-gpu:0": ["openvino"],
        "intel-npu:0": ["openvino"],
    }
    available = set(onnxruntime.get_available_providers())
    for dev_id, shorts in expected.items():
        choices = _ort_providers.choices_for(devices[dev_id])
        assert [c.short for c in choices] == shorts
        support = ORT.drives(devices[dev_id])
        assert bool(support) == any(c.provider in available for c in choices)
        if not support:  # the reason names what to install
            assert all(c.provider in support.reasons[0] for c in choices)


def test_fp16_for_cuda_converts_the_graph_and_keeps_io_types(specs):
    pytest.importorskip("onnxruntime.transformers.float16")
    notes: list[str] = []
    blob = ORT._model_source(specs["small_cnn"], _ort_providers.CUDA, Precision.FP16, notes)
    model = onnx.load_model_from_string(blob)
    weights = {t.name: t.data_type for t in model.graph.initializer}
    assert weights["w1"] == TensorProto.FLOAT16 and weights["wf"] == TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any("fp16" in n for n in notes)
    # The converted graph is what the CUDA EP would load; ONNX Runtime's CPU EP runs it too, which checks
    # it end to end here (the converter appends its input casts unsorted: ORT sorts, onnx.checker refuses).
    x = random_inputs(specs["small_cnn"], batch=1)
    half = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, x)[0]
    path = str(specs["small_cnn"].source)
    full = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(half, full, rtol=1e-2, atol=1e-2 * max(1.0, float(np.abs(full).max())))
    # fp32 loads the file as it is, without conversion.
    assert ORT._model_source(specs["small_cnn"], _ort_providers.CUDA, Precision.FP32, []) == path


def test_memory_check_uses_free_bytes_and_skips_unknown_memory(cpu, specs):
    spec = specs["small_cnn"]
    need = spec.parameter_bytes + spec.peak_activation_bytes
    config = Config("onnxruntime", cpu.id)
    assert not ORT.check(spec, cpu.with_(memory_free_bytes=need - 1), config)
    assert ORT.check(spec, cpu.with_(memory_free_bytes=need), config)
    assert ORT.check(spec, cpu.with_(memory_total_bytes=0, memory_free_bytes=0), config)  # unknown: not refused
    # The runtime's ledger owns admission at load time: a stale free figure does not block load().
    with ORT.load(spec, cpu.with_(memory_free_bytes=need - 1), config):
        pass
