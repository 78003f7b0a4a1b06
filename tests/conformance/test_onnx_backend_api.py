"""aivmm.onnx_backend: the ONNX backend API (prepare, run_model, run_node, supports_device) over
real runtimes, in auto mode and with one backend."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from aivmm import onnx_backend  # noqa: E402
from aivmm.errors import ConfigError, ExecutionError, InputError, ModelLoadError  # noqa: E402
from aivmm.onnx_backend import AivmmBackend, device_id, with_backend  # noqa: E402


def _add_mul() -> onnx.ModelProto:
    """y = (a + b) * w with w an initializer that is also a graph input (an overridable default)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3], [2.0, 2.0, 2.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["s", "w"], ["y"])],
        "add_mul",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("a", "b")]
        + [helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


A = np.arange(6, dtype=np.float32).reshape(2, 3)
B = np.ones((2, 3), np.float32)


# (no "gpu" in a parameter: conftest skips every test whose keywords mention it)
@pytest.mark.parametrize("device", ["CPU", "cpu:0", "CPU:0", "CUDA", "CUDA:3", "intel-npu:1", "nvidia:2"])
def test_device_strings_map_to_aivmm_ids(device: str) -> None:
    expected = {
        "CPU": "cpu:0",
        "cpu:0": "cpu:0",
        "CPU:0": "cpu:0",
        "CUDA": "nvidia:0",
        "CUDA:3": "nvidia:3",
        "intel-npu:1": "intel-npu:1",
        "nvidia:2": "nvidia:2",
    }[device]
    assert device_id(device) == expected


@pytest.mark.parametrize("device", ["", "TPU", "CUDA:x", "accelerator", 3])
def test_bad_device_strings_are_config_errors(device: object) -> None:
    with pytest.raises(ConfigError):
        device_id(device)  # type: ignore[arg-type]


def test_supports_device() -> None:
    assert AivmmBackend.supports_device("CPU")
    assert with_backend("onnxruntime").supports_device("CPU")
    assert not AivmmBackend.supports_device("TPU")
    assert not AivmmBackend.supports_device("nvidia:99")


def test_with_backend_binds_the_choice() -> None:
    ov = with_backend("openvino")
    assert ov.options.backend == "openvino" and issubclass(ov, AivmmBackend)
    assert AivmmBackend.options.backend is None  # the base class stays in auto mode
    with pytest.raises(ConfigError, match="unknown backend"):
        with_backend("tensorrt-llm")


@pytest.mark.parametrize("backend", [None, "onnxruntime", "openvino"])
def test_run_model_positional_named_and_defaults(backend: str | None) -> None:
    b = with_backend(backend)
    model = _add_mul()
    with b.prepare(model, "CPU") as rep:
        assert rep.feed_names == ("a", "b")  # w is an initializer: not a required feed
        (y,) = rep.run([A, B])
        np.testing.assert_allclose(y, (A + B) * 2)
        (y2,) = rep.run({"a": A, "b": B})
        np.testing.assert_array_equal(y, y2)
        assert rep.attempts and rep.attempts[-1].ok
        assert rep.config.startswith(backend or "")
    (y3,) = b.run_model(model.SerializeToString(), [A, B])
    np.testing.assert_allclose(y3, (A + B) * 2)


def test_run_model_from_a_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "m.onnx"
    onnx.save(_add_mul(), path)
    (y,) = with_backend("onnxruntime").run_model(str(path), [A, B])
    np.testing.assert_allclose(y, (A + B) * 2)


def test_bad_inputs_are_input_errors() -> None:
    with with_backend("onnxruntime").prepare(_add_mul()) as rep:
        with pytest.raises(InputError, match="the model takes"):
            rep.run([A, B, A, A])
        with pytest.raises(InputError, match="unknown input"):
            rep.run({"a": A, "nope": B})
        with pytest.raises(InputError):
            rep.run([A.astype(np.int64), B])  # wrong dtype, caught by aivmm's feed validation


def test_not_a_model_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError):
        AivmmBackend.prepare(b"definitely not protobuf \xff\xff\xff")


@pytest.mark.parametrize("backend", [None, "onnxruntime", "openvino"])
def test_run_node(backend: str | None) -> None:
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    node = helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.5)
    (y,) = with_backend(backend).run_node(node, [x])
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.5 * x), rtol=1e-6)
    # Typed by shape inference: an integer op keeps its integer type.
    (z,) = with_backend(backend).run_node(helper.make_node("Neg", ["i"], ["z"]), [np.arange(4, dtype=np.int32)])
    assert z.dtype == np.int32 and z.tolist() == [0, -1, -2, -3]


@pytest.mark.parametrize("backend", [None, "onnxruntime", "openvino"])
def test_read_only_inputs(backend: str | None) -> None:
    # Arrays decoded from protobuf or np.frombuffer views of a request body are read-only.
    a, b = A.copy(), B.copy()
    a.setflags(write=False)
    b.setflags(write=False)
    (y,) = with_backend(backend).run_model(_add_mul(), [a, b])
    np.testing.assert_allclose(y, (A + B) * 2)


def test_run_node_opset_and_outputs_info() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    # ReduceSum takes axes as an attribute before opset 13 and as an input from 13 on.
    node = helper.make_node("ReduceSum", ["x"], ["y"], axes=[1], keepdims=0)
    (y,) = with_backend("onnxruntime").run_node(node, [x], opset_version=11)
    np.testing.assert_array_equal(y, x.sum(axis=1))
    (y,) = AivmmBackend.run_node(helper.make_node("Relu", ["x"], ["y"]), [x], outputs_info=[(np.float32, (2, 3))])
    np.testing.assert_array_equal(y, x)


def test_run_node_input_count_is_checked() -> None:
    with pytest.raises(InputError):
        AivmmBackend.run_node(helper.make_node("Add", ["a", "b"], ["c"]), [A])


def _conv_integer_with_padding() -> tuple[onnx.ModelProto, list[np.ndarray], np.ndarray]:
    """ConvInteger with pads (the ONNX suite's test_convinteger_with_padding): ONNX Runtime 1.32's CPU
    kernel fails on it at run time, OpenVINO runs it. Expected output from onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("ConvInteger", ["x", "w", "x_zero_point", "w_zero_point"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "convinteger",
        [
            helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 3, 3]),
            helper.make_tensor_value_info("w", TensorProto.UINT8, [2, 1, 2, 2]),
            helper.make_tensor_value_info("x_zero_point", TensorProto.UINT8, []),
            helper.make_tensor_value_info("w_zero_point", TensorProto.UINT8, [2]),
        ],  # per output channel
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 2, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 8
    inputs = [
        np.arange(2, 11, dtype=np.uint8).reshape(1, 1, 3, 3),
        np.ones((2, 1, 2, 2), np.uint8),
        np.array(1, np.uint8),
        np.array([0, 1], np.uint8),
    ]
    (expected,) = ReferenceEvaluator(model).run(None, dict(zip(("x", "w", "x_zero_point", "w_zero_point"), inputs)))
    return model, inputs, expected


def test_one_backend_never_falls_back() -> None:
    model, inputs, _ = _conv_integer_with_padding()
    with with_backend("onnxruntime").prepare(model) as rep, pytest.raises(ExecutionError):
        rep.run(inputs)
    assert [a.ok for a in rep.attempts] == [True, False]  # loaded, then failed running: recorded, not retried


def test_auto_mode_moves_on_and_records_it(caplog: pytest.LogCaptureFixture) -> None:
    model, inputs, expected = _conv_integer_with_padding()
    with caplog.at_level("WARNING", logger="aivmm.onnx_backend"), AivmmBackend.prepare(model) as rep:
        (y,) = rep.run(inputs)
    np.testing.assert_array_equal(y, expected)
    failed = [a for a in rep.attempts if not a.ok]
    # Whatever the planner picked first, a failure is never silent: it is in attempts and in the log.
    assert all(a.error for a in failed)
    if failed:
        assert rep.attempts[-1].ok and rep.attempts[-1].config != failed[0].config
        assert "trying" in caplog.text


def test_auto_fallback_is_off_when_asked() -> None:
    model, inputs, _ = _conv_integer_with_padding()
    strict = with_backend(None, retry=False)
    with strict.prepare(model) as rep:
        if rep.config.startswith("onnxruntime"):
            with pytest.raises(ExecutionError):
                rep.run(inputs)


def test_module_level_api_is_auto_mode() -> None:
    (y,) = onnx_backend.run_model(_add_mul(), [A, B])
    np.testing.assert_allclose(y, (A + B) * 2)
    assert onnx_backend.supports_device("CPU")


def _resize_align_corners() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Linear Resize with align_corners, downsampling (the ONNX suite's
    test_resize_downsample_scales_linear_align_corners): ONNX Runtime 1.32 and OpenVINO 2026.4 both
    run it and answer differently from the spec. Expected output from onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node(
        "Resize", ["X", "", "scales"], ["Y"], mode="linear", coordinate_transformation_mode="align_corners"
    )
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 0.6, 0.6])
    graph = helper.make_graph(
        [node],
        "resize",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 2, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1, 1, 2])],
        initializer=[scales],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    x = np.arange(1, 9, dtype=np.float32).reshape(1, 1, 2, 4)
    (expected,) = ReferenceEvaluator(model).run(None, {"X": x})
    return model, x, expected


def test_auto_mode_checks_outputs_against_the_onnx_reference(caplog: pytest.LogCaptureFixture) -> None:
    model, x, expected = _resize_align_corners()
    (alone,) = with_backend("onnxruntime").run_model(model, [x])
    ort_wrong = alone.shape != expected.shape or not np.allclose(alone, expected, rtol=1e-3, atol=1e-7)
    with caplog.at_level("WARNING", logger="aivmm.onnx_backend"), AivmmBackend.prepare(model) as rep:
        (y,) = rep.run([x])
        (again,) = rep.run([x])  # checked once: the second run is served as it is
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-7)
    np.testing.assert_array_equal(y, again)
    validated = [a for a in rep.attempts if a.stage == "validate"]
    if ort_wrong and rep.attempts[0].config.startswith("onnxruntime"):
        assert not validated[0].ok and "differ from the ONNX reference" in validated[0].error
        assert validated[-1].ok and validated[-1].config == rep.config and not rep.config.startswith("onnxruntime")
        assert "ONNX reference" in caplog.text
    # Off when asked: the planner's choice answers, right or wrong.
    with with_backend(None, validate=False).prepare(model) as unchecked:
        unchecked.run([x])
        assert not [a for a in unchecked.attempts if a.stage == "validate"]


def test_reference_mismatch_says_what_differs() -> None:
    from aivmm import _onnx_reference as ref

    want = {"y": np.array([1.0, 2.0, 3.0], np.float32), "i": np.array([1, 2], np.int64)}
    assert ref.mismatch({"y": want["y"] + 1e-6, "i": want["i"]}, want, ["y", "i"]) is None
    assert "2 of 3 values" in (ref.mismatch({"y": np.array([1.0, 2.5, 4.0], np.float32)}, want, ["y"]) or "")
    assert "shape [1, 3]" in (ref.mismatch({"y": want["y"][None]}, want, ["y"]) or "")
    assert "dtype float64" in (ref.mismatch({"y": want["y"].astype(np.float64)}, want, ["y"]) or "")
    assert "1 of 2 values" in (ref.mismatch({"i": np.array([1, 3], np.int64)}, want, ["i"]) or "")
    words = {"s": np.array(["a", "bc"])}
    assert ref.mismatch({"s": np.array(["a", "bc"], dtype=object)}, words, ["s"]) is None  # ORT gives objects
    assert "strings differ" in (ref.mismatch({"s": np.array(["a", "b"], dtype=object)}, words, ["s"]) or "")
    nan = np.array([np.nan], np.float32)
    assert ref.mismatch({"y": nan}, {"y": nan}, ["y"]) is None  # NaN where the spec says NaN is right
    assert ref.evaluate(_add_mul(), {"a": A, "b": B}, flops=10**12).outputs is None  # too big to check
