"""The torch backend beyond the shared contract: devices, precisions, options, native modules,
tensor interop, refusals and the lowering's own guarantees (weights as buffers, subgraph captures)."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from _backend_models import host_cpu, spec_of  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from aivmm.backends import Config, registry  # noqa: E402
from aivmm.backends.torch.lowering import lower, refusals  # noqa: E402
from aivmm.devices._types import Device, DeviceKind, Vendor  # noqa: E402
from aivmm.dtypes import DType, Precision  # noqa: E402
from aivmm.errors import (  # noqa: E402
    BackendUnavailableError,
    ConfigError,
    InputError,
    LoweringError,
    ModelLoadError,
)
from aivmm.models._spec import ModelFormat, ModelSpec, TensorSpec  # noqa: E402

OPSET = 18


def _save(
    path: pathlib.Path,
    nodes: list,
    inputs: list,
    outputs: list,
    inits: list = (),
    opset: int = OPSET,
    extra_opsets: tuple = (),
) -> pathlib.Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def backend():
    return registry.get("torch")


@pytest.fixture(scope="module")
def cpu() -> Device:
    return host_cpu()


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory) -> pathlib.Path:
    """Conv -> BatchNorm -> Relu -> Cast(float) -> GlobalAveragePool -> Flatten: a CNN in miniature."""
    r = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((r.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32), "w"),
        numpy_helper.from_array(r.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(np.abs(r.standard_normal(8)).astype(np.float32) + 0.5, "scale"),
        numpy_helper.from_array(r.standard_normal(8).astype(np.float32), "shift"),
        numpy_helper.from_array(r.standard_normal(8).astype(np.float32) * 0.1, "mean"),
        numpy_helper.from_array(np.abs(r.standard_normal(8)).astype(np.float32) + 0.5, "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Cast", ["r"], ["rc"], to=TensorProto.FLOAT),
        helper.make_node("GlobalAveragePool", ["rc"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
    ]
    return _save(
        tmp_path_factory.mktemp("torch") / "conv.onnx",
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        inits,
    )


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory) -> pathlib.Path:
    return _save(
        tmp_path_factory.mktemp("torch") / "identity.onnx",
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )


def _ort(spec: ModelSpec, feeds: dict) -> dict:
    cpu = host_cpu()
    with registry.get("onnxruntime").load(spec, cpu, Config("onnxruntime", cpu.id)) as s:
        return s.run(feeds)


# -- devices ------------------------------------------------------------------------------------


def _gpu(vendor: Vendor, prefix: str) -> Device:
    return Device(f"{prefix}:0", DeviceKind.GPU, vendor, f"{vendor.value} gpu", 8 << 30, 8 << 30)


def test_cpu_is_always_driven(backend, cpu):
    assert backend.drives(cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize(
    ("vendor", "prefix", "needle"),
    [
        (Vendor.NVIDIA, "nvidia", "CUDA"),
        (Vendor.AMD, "amd", "ROCm"),
        (Vendor.INTEL, "intel-gpu", "XPU"),
        (Vendor.APPLE, "apple", "MPS"),
    ],
)
def test_gpu_without_torch_support_is_refused_by_name(backend, conv_model, vendor, prefix, needle):
    device = _gpu(vendor, prefix)
    support = backend.drives(device)
    assert not support
    assert any(needle in r and device.id in r for r in support.reasons), support.reasons
    with pytest.raises(BackendUnavailableError, match=needle):
        backend.load(spec_of(conv_model), device, Config("torch", device.id))


def test_npu_is_not_driven(backend):
    npu = Device("intel-npu:0", DeviceKind.NPU, Vendor.INTEL, "npu", 1 << 30, 1 << 30)
    assert not backend.drives(npu)


def test_info_lists_the_planner_options(backend):
    info = backend.info()
    assert set(info.options) == {"compile", "cuda_graphs", "channels_last", "tf32"}
    assert "reduce-overhead" in info.options["compile"] and None in info.options["compile"]
    assert {Precision.FP32, Precision.FP16, Precision.BF16} <= info.precisions
    assert {ModelFormat.ONNX, ModelFormat.TORCH_MODULE, ModelFormat.TORCH_EXPORTED} <= info.formats


# -- precisions and outputs ---------------------------------------------------------------------


@pytest.mark.parametrize(("precision", "tol"), [(Precision.FP32, 1e-5), (Precision.FP16, 2e-2), (Precision.BF16, 6e-2)])
def test_precisions_match_onnxruntime_and_cast_back(backend, cpu, conv_model, precision, tol):
    spec = spec_of(conv_model)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ref = _ort(spec, {"x": x})["y"]
    with backend.load(spec, cpu, Config("torch", cpu.id, precision)) as session:
        got = session.run({"x": x})["y"]
        native = session.run({"x": x}, output="native")["y"]
    assert got.dtype == np.float32  # cast back to the signature's type
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * max(1.0, float(np.abs(ref).max())))
    want_native = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
    assert isinstance(native, torch.Tensor) and native.dtype == want_native[precision]


def test_dynamic_batch_runs_in_one_session(backend, cpu, conv_model):
    spec = spec_of(conv_model)
    with backend.load(spec, cpu, Config("torch", cpu.id)) as session:
        for batch in (1, 3, 5):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
            np.testing.assert_allclose(session.run({"x": x})["y"], _ort(spec, {"x": x})["y"], rtol=1e-4, atol=1e-5)


def test_channels_last_gives_the_same_answer(backend, cpu, conv_model):
    spec = spec_of(conv_model)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with backend.load(spec, cpu, Config("torch", cpu.id, options={"channels_last": True})) as session:
        got = session.run({"x": x})["y"]
    np.testing.assert_allclose(got, _ort(spec, {"x": x})["y"], rtol=1e-4, atol=1e-5)


# -- inputs: no copies, DLPack, bad input ----------------------------------------------------------


def test_tensor_already_on_the_device_is_not_copied(backend, cpu, identity_model):
    spec = spec_of(identity_model)
    x = torch.randn(2, 4)
    with backend.load(spec, cpu, Config("torch", cpu.id)) as session:
        y = session.run({"x": x}, output="native")["y"]
    assert y.data_ptr() == x.data_ptr()


def test_numpy_input_is_not_copied_on_cpu(backend, cpu, identity_model):
    spec = spec_of(identity_model)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with backend.load(spec, cpu, Config("torch", cpu.id)) as session:
        y = session.run({"x": x}, output="torch")["y"]
    assert y.data_ptr() == x.ctypes.data


class _DLPackOnly:
    """An array known to the backend only through the DLPack protocol (as cupy or jax arrays are)."""

    def __init__(self, t: torch.Tensor) -> None:
        self._t = t

    def __dlpack__(self, *args, **kwargs):
        return self._t.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()


def test_dlpack_input_shares_memory(backend, cpu, identity_model):
    spec = spec_of(identity_model)
    x = torch.randn(3, 4)
    with backend.load(spec, cpu, Config("torch", cpu.id)) as session:
        y = session.run({"x": _DLPackOnly(x)}, output="native")["y"]
    assert y.data_ptr() == x.data_ptr()
    torch.testing.assert_close(y, x)


def test_wrong_rank_names_the_input(backend, cpu, conv_model):
    with backend.load(spec_of(conv_model), cpu, Config("torch", cpu.id)) as session:
        with pytest.raises(InputError, match=r"'x'.*rank 2"):
            session.run({"x": np.zeros((3, 16), np.float32)})
        with pytest.raises(InputError, match="dimension 1 is 4, expected 3"):
            session.run({"x": np.zeros((1, 4, 16, 16), np.float32)})
        with pytest.raises(InputError, match="missing"):
            session.run({})


def test_unknown_output_kind_is_a_config_error(backend, cpu, identity_model):
    with (
        backend.load(spec_of(identity_model), cpu, Config("torch", cpu.id)) as session,
        pytest.raises(ConfigError, match="cupy"),
    ):
        session.run({"x": np.zeros((1, 4), np.float32)}, output="cupy")


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"fast": True}, "unknown torch option 'fast'"),
        ({"compile": "turbo"}, "compile='turbo'"),
        ({"cuda_graphs": True}, "cuda_graphs needs a CUDA or ROCm GPU"),
    ],
)
def test_bad_options_are_refused(backend, cpu, conv_model, options, needle):
    config = Config("torch", cpu.id, options=options)
    support = backend.check(spec_of(conv_model), cpu, config)
    assert not support and any(needle in r for r in support.reasons), support.reasons
    with pytest.raises(ConfigError, match=needle.split("'")[0]):
        backend.load(spec_of(conv_model), cpu, config)


# -- refusals: before loading, naming operator, domain and opset ---------------------------------


def test_unknown_operator_is_refused_with_domain_and_opset(backend, cpu, tmp_path):
    path = _save(
        tmp_path / "custom.onnx",
        [helper.make_node("Warp", ["x"], ["y"], domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        extra_opsets=(helper.make_opsetid("com.example", 3),),
    )
    spec = _plain_spec(path)
    support = backend.check(spec, cpu, Config("torch", cpu.id))
    assert not support
    assert any("Warp" in r and "com.example" in r and "opset 3" in r for r in support.reasons), support.reasons
    with pytest.raises(LoweringError, match="Warp"):
        backend.load(spec, cpu, Config("torch", cpu.id))


def test_known_mismatch_is_refused_not_answered(backend, cpu, tmp_path):
    # Antialiased Resize: the filter footprint depends on the scale; the lowering does not follow it.
    scales = numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales")
    path = _save(
        tmp_path / "aa.onnx",
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [scales],
        opset=19,
    )
    spec = _plain_spec(path)
    support = backend.check(spec, cpu, Config("torch", cpu.id))
    assert not support and any("antialias" in r and "Resize" in r for r in support.reasons)
    with pytest.raises(LoweringError, match="antialias"):
        backend.load(spec, cpu, Config("torch", cpu.id))


def test_unreadable_file_is_a_model_load_error(backend, cpu, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    spec = ModelSpec(
        "bad",
        ModelFormat.ONNX,
        (TensorSpec("x", DType.FLOAT32, (1,)),),
        (TensorSpec("y", DType.FLOAT32, (1,)),),
        source=str(bad),
    )
    assert not backend.check(spec, cpu, Config("torch", cpu.id))
    with pytest.raises(ModelLoadError, match=r"bad\.onnx"):
        backend.load(spec, cpu, Config("torch", cpu.id))


def _plain_spec(path: pathlib.Path) -> ModelSpec:
    model = onnx.load(str(path))

    def specs(values):
        return tuple(
            TensorSpec(v.name, DType.FLOAT32, tuple(d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim))
            for v in values
        )

    return ModelSpec(path.stem, ModelFormat.ONNX, specs(model.graph.input), specs(model.graph.output), source=str(path))


# -- native torch models ------------------------------------------------------------------------


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 5)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(a)) + b
        return {"h": h, "total": h.sum(dim=1)}


def _native_spec(source, fmt: ModelFormat) -> ModelSpec:
    inputs = (TensorSpec("a", DType.FLOAT32, ("N", 6)), TensorSpec("b", DType.FLOAT32, ("N", 5)))
    outputs = (TensorSpec("h", DType.FLOAT32, ("N", 5)), TensorSpec("total", DType.FLOAT32, ("N",)))
    return ModelSpec("two_heads", fmt, inputs, outputs, source=source)


@pytest.mark.parametrize("fmt", [ModelFormat.TORCH_MODULE, ModelFormat.TORCH_EXPORTED])
def test_native_models_run_and_leave_the_callers_module_alone(backend, cpu, fmt):
    torch.manual_seed(0)
    module = _TwoHeads().eval()
    a, b = torch.randn(3, 6), torch.randn(3, 5)
    source = module if fmt is ModelFormat.TORCH_MODULE else torch.export.export(module, (a, b))
    spec = _native_spec(source, fmt)
    with torch.inference_mode():
        want = module(a, b)
    with backend.load(spec, cpu, Config("torch", cpu.id, Precision.BF16)) as session:
        got = session.run({"a": a.numpy(), "b": b.numpy()})
    assert list(got) == ["h", "total"]
    np.testing.assert_allclose(got["h"], want["h"].numpy(), rtol=5e-2, atol=5e-2)
    np.testing.assert_allclose(got["total"], want["total"].numpy(), rtol=5e-2, atol=2e-1)
    assert module.body.weight.dtype == torch.float32  # the session cast its own copy


def test_native_module_needs_a_module(backend, cpu):
    spec = _native_spec("not a module", ModelFormat.TORCH_MODULE)
    support = backend.check(spec, cpu, Config("torch", cpu.id))
    assert not support and any("nn.Module" in r for r in support.reasons)
    with pytest.raises(ModelLoadError, match=r"nn\.Module"):
        backend.load(spec, cpu, Config("torch", cpu.id))


# -- the lowering's guarantees ------------------------------------------------------------------


def test_weights_are_buffers_and_shape_constants_stay_on_the_host(conv_model, tmp_path):
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    path = _save(
        tmp_path / "reshape.onnx",
        [
            helper.make_node("MatMul", ["x", "w"], ["m"]),
            helper.make_node("Shape", ["m"], ["s"]),
            helper.make_node("Reshape", ["m", "shape"], ["y"]),
            helper.make_node("Reshape", ["m", "s"], ["z"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2, 3]),
        ],
        [shape, w],
    )
    gm = lower(onnx.load(str(path)))
    buffers = dict(gm.named_buffers())
    assert any(t.shape == (4, 3) for t in buffers.values())  # the weight moves with .to()
    assert not any(t.dtype == torch.int64 for t in buffers.values())  # the shape vector does not
    gm.to("meta")  # every weight follows; host constants stay usable
    x = torch.randn(2, 2, 4, device="meta")
    y, z = gm(x)
    assert y.shape == (2, 6) and z.shape == (2, 2, 3)


def test_subgraph_reads_outer_run_time_values(tmp_path):
    # Loop body reads 'step' (computed at run time in the outer graph) and 'bias' (an outer initializer).
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "step"], ["acc_mid"]),
            helper.make_node("Add", ["acc_mid", "bias"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["acc_out"], ["scan"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("scan", TensorProto.FLOAT, [2]),
        ],
    )
    inits = [
        numpy_helper.from_array(np.array(3, np.int64), "trip"),
        numpy_helper.from_array(np.array(True), "cond"),
        numpy_helper.from_array(np.array([0.5, 0.5], np.float32), "bias"),
    ]
    path = _save(
        tmp_path / "loop.onnx",
        [
            helper.make_node("Mul", ["x", "x"], ["step"]),
            helper.make_node("Loop", ["trip", "cond", "x"], ["final", "history"], body=body),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [
            helper.make_tensor_value_info("final", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("history", TensorProto.FLOAT, [3, 2]),
        ],
        inits,
    )
    assert refusals(onnx.load(str(path))) == []
    gm = lower(onnx.load(str(path)))
    x = torch.tensor([1.0, 2.0])
    final, history = gm(x)
    step = x * x + 0.5
    torch.testing.assert_close(history, torch.stack([x + step, x + 2 * step, x + 3 * step]))
    torch.testing.assert_close(final, x + 3 * step)


def test_lowering_failure_names_the_node(tmp_path):
    # Reshape to an impossible shape: caught while folding constants, reported with the node.
    data = numpy_helper.from_array(np.ones(6, np.float32), "data")
    shape = numpy_helper.from_array(np.array([4, 4], np.int64), "shape")
    path = _save(
        tmp_path / "bad_reshape.onnx",
        [helper.make_node("Reshape", ["data", "shape"], ["y"], name="r1")],
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [data, shape],
    )
    with pytest.raises(LoweringError, match="Reshape 'r1'"):
        lower(onnx.load(str(path)))


def test_rnn_with_too_few_activations_is_refused_by_name(tmp_path):
    # An LSTM needs three gate functions per direction; two would leave the cell's output function unset.
    w = numpy_helper.from_array(np.ones((1, 8, 3), np.float32), "w")
    r = numpy_helper.from_array(np.ones((1, 8, 2), np.float32), "r")
    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=2, activations=["Sigmoid", "Tanh"])
    path = _save(
        tmp_path / "lstm.onnx",
        [lstm],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, r],
    )
    with pytest.raises(LoweringError, match="2 activations given; LSTM with direction 'forward' needs 3"):
        lower(onnx.load(str(path)))


def test_offload_is_refused_on_the_cpu(backend, cpu, identity_model):
    with backend.load(spec_of(identity_model), cpu, Config("torch", cpu.id)) as session:
        assert session.offload_to_host() is False


def test_constants_live_where_their_consumers_run(tmp_path):
    # The Gather index meets a device tensor: it must move with the module (a buffer). The -1 joined to a
    # Shape result is shape arithmetic: it must stay on the host (not a buffer), so reshapes never sync.
    idx = numpy_helper.from_array(np.array([2, 0], np.int64), "idx")
    tail = numpy_helper.from_array(np.array([-1], np.int64), "tail")
    path = _save(
        tmp_path / "where.onnx",
        [
            helper.make_node("Gather", ["x", "idx"], ["g"], axis=1),
            helper.make_node("Shape", ["g"], ["s"], end=1),
            helper.make_node("Concat", ["s", "tail"], ["shape"], axis=0),
            helper.make_node("Reshape", ["g", "shape"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [idx, tail],
    )
    gm = lower(onnx.load(str(path)))
    buffers = [t.tolist() for t in gm.buffers() if t.dtype == torch.int64]
    assert [2, 0] in buffers and [-1] not in buffers
    x = torch.arange(12.0).reshape(2, 3, 2)
    (y,) = gm(x)
    torch.testing.assert_close(y, x[:, [2, 0]].reshape(2, 4))


def test_module_loaded_by_aivmm_models_load_with_keyword_inputs(backend, cpu):
    from aivmm.models import load

    torch.manual_seed(1)
    module = _TwoHeads().eval()
    a, b = torch.randn(2, 6), torch.randn(2, 5)
    spec = load(module, example_inputs={"b": b, "a": a})  # keyword order differs from forward's
    assert spec.format is ModelFormat.TORCH_MODULE and [t.name for t in spec.inputs] == ["b", "a"]
    with backend.load(spec, cpu, Config("torch", cpu.id)) as session:
        got = session.run({"a": a.numpy(), "b": b.numpy()})
    with torch.inference_mode():
        want = module(a, b)
    np.testing.assert_allclose(got["h"], want["h"].numpy(), rtol=1e-6, atol=1e-6)


def test_channels_last_is_refused_without_convolutions(backend, cpu, identity_model):
    from aivmm.models import load

    spec = load(str(identity_model))
    support = backend.check(spec, cpu, Config("torch", cpu.id, options={"channels_last": True}))
    assert not support and any("channels_last" in r for r in support.reasons)


# -- device mapping on builds this machine lacks (a stand-in torch module with the attributes torch has) --


def _fake_torch(*, cuda: str | None = None, hip: str | None = None, gpus: int = 0, xpus: int = 0, mps: bool = False):
    from types import SimpleNamespace

    return SimpleNamespace(
        __version__="2.x-fake",
        version=SimpleNamespace(cuda=cuda, hip=hip),
        cuda=SimpleNamespace(is_available=lambda: gpus > 0, device_count=lambda: gpus),
        xpu=SimpleNamespace(is_available=lambda: xpus > 0, device_count=lambda: xpus),
        backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps)),
        device=torch.device,
    )


@pytest.mark.parametrize(
    ("fake", "device", "expected"),
    [
        (dict(cuda="13.0", gpus=2), _gpu(Vendor.NVIDIA, "nvidia").with_(id="nvidia:1", index=1), "cuda:1"),
        (dict(hip="6.2", gpus=2), _gpu(Vendor.AMD, "amd").with_(id="amd:1", index=1), "cuda:1"),
        (dict(xpus=1), _gpu(Vendor.INTEL, "intel-gpu"), "xpu:0"),
        (dict(mps=True), _gpu(Vendor.APPLE, "apple"), "mps"),
    ],
)
def test_device_strings_for_each_vendor(fake, device, expected):
    from aivmm.backends.torch._devices import torch_device

    assert str(torch_device(_fake_torch(**fake), device)) == expected


@pytest.mark.parametrize(
    ("fake", "device", "needle"),
    [
        (dict(hip="6.2", gpus=1), _gpu(Vendor.NVIDIA, "nvidia"), "no CUDA support"),  # a ROCm build, NVIDIA GPU
        (dict(cuda="13.0", gpus=1), _gpu(Vendor.AMD, "amd"), "no ROCm (HIP) support"),
        (dict(cuda="13.0", gpus=1), _gpu(Vendor.NVIDIA, "nvidia").with_(id="nvidia:3", index=3), "sees only 1 GPU"),
        (dict(cuda="13.0", gpus=0), _gpu(Vendor.NVIDIA, "nvidia"), "is_available() is False"),
    ],
)
def test_device_refusals_name_the_missing_piece(fake, device, needle):
    from aivmm.backends.torch._devices import torch_device

    with pytest.raises(BackendUnavailableError, match=re.escape(needle)):
        torch_device(_fake_torch(**fake), device)


def test_inputs_are_passed_by_name_whatever_the_signature_order(backend, cpu, tmp_path):
    path = _save(
        tmp_path / "sub.onnx",
        [helper.make_node("Sub", ["a", "b"], ["y"])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    spec = _plain_spec(path)
    reordered = ModelSpec(spec.name, spec.format, tuple(reversed(spec.inputs)), spec.outputs, source=spec.source)
    a, b = np.array([5.0, 7.0], np.float32), np.array([1.0, 2.0], np.float32)
    with backend.load(reordered, cpu, Config("torch", cpu.id)) as session:
        np.testing.assert_array_equal(session.run({"a": a, "b": b})["y"], a - b)
    stale = ModelSpec(spec.name, spec.format, (TensorSpec("z", DType.FLOAT32, (2,)),), spec.outputs, source=spec.source)
    with pytest.raises(ModelLoadError, match="signature"):
        backend.load(stale, cpu, Config("torch", cpu.id))


# -- GPU candidates, TF32, compile caches, capture-safe lowering (checked here without a GPU) -----


def _cuda_device(**props) -> Device:
    return Device(
        "nvidia:0",
        DeviceKind.GPU,
        Vendor.NVIDIA,
        "NVIDIA H200",
        141 << 30,
        140 << 30,
        properties={"compute_capability": "9.0", "driver_version": "580.159.04", **props},
    )


def test_gpu_candidates_cover_graphs_compile_layout_and_tf32(backend, conv_model, identity_model):
    gpu = _cuda_device()
    conv = spec_of(conv_model)
    fp32 = backend.candidate_options(conv, gpu, Precision.FP32)
    bf16 = backend.candidate_options(conv, gpu, Precision.BF16)
    assert fp32[0] == {}  # eager first: the cheapest to load
    for runner in ({"cuda_graphs": True}, {"compile": "reduce-overhead"}):
        assert {**runner, "channels_last": True} in bf16 and runner in bf16
        assert {**runner, "tf32": True} in fp32 and {**runner, "channels_last": True, "tf32": True} in fp32
    assert not any("tf32" in o for o in bf16)
    assert not any(
        "channels_last" in o for o in backend.candidate_options(spec_of(identity_model), gpu, Precision.FP16)
    )


def test_cpu_candidates_are_the_option_product_without_gpu_modes(backend, cpu, conv_model):
    options = backend.candidate_options(spec_of(conv_model), cpu, Precision.FP32)
    assert len(options) == 12 and options[0] == {"channels_last": False, "compile": None, "cuda_graphs": False}
    assert not any("tf32" in o for o in options)


@pytest.mark.parametrize("precision", [Precision.FP16, Precision.FP32])
def test_tf32_is_refused_outside_fp32_on_cuda(backend, cpu, conv_model, precision):
    support = backend.check(spec_of(conv_model), cpu, Config("torch", cpu.id, precision, options={"tf32": True}))
    assert not support and any("tf32 is an fp32 mode of CUDA GPUs" in r for r in support.reasons)


def test_compile_cache_folder_is_keyed_by_the_whole_stack(monkeypatch, tmp_path):
    from aivmm.backends.torch import _compile_cache as cc

    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(cc.INDUCTOR_ENV, raising=False)
    base = cc.stack_versions(_cuda_device(), torch)
    assert base["driver"] == "580.159.04" and base["torch"] == torch.__version__
    keys = {cc.stack_key(base)} | {cc.stack_key({**base, k: "changed"}) for k in base}
    assert len(keys) == len(base) + 1  # any change of device, driver or library starts a new folder
    root = cc.use_compile_cache(_cuda_device(), torch)
    assert root is not None and root.parent.parent == tmp_path / "torch-compile"
    assert str(root) == __import__("os").environ[cc.INDUCTOR_ENV]
    assert (root.parent / "stack.json").is_file()
    other = cc.use_compile_cache(_cuda_device(driver_version="590.1"), torch)  # a new driver: a new folder
    assert other != root
    monkeypatch.setenv(cc.INDUCTOR_ENV, str(tmp_path / "mine"))  # the user's own choice is kept
    assert cc.use_compile_cache(_cuda_device(), torch) is None
    assert __import__("os").environ[cc.INDUCTOR_ENV] == str(tmp_path / "mine")


def test_embedding_tables_and_position_ids_move_to_the_device(tmp_path):
    # BERT's embeddings as exporters write them: position ids sliced to the sequence length (a Shape
    # result) index a table. Both are data: buffers that move with the module, or every run would copy
    # them to the device (and CUDA-graph capture fails). The shape arithmetic stays on the host.
    r = np.random.default_rng(0)
    pos = numpy_helper.from_array(np.arange(512, dtype=np.int64)[None], "pos")
    table = numpy_helper.from_array(r.standard_normal((512, 8)).astype(np.float32), "table")
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    path = _save(
        tmp_path / "emb.onnx",
        [
            helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
            helper.make_node("Slice", ["pos", "zero", "s", "one"], ["ids"]),
            helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
            helper.make_node(
                "ConstantOfShape", ["s"], ["ones"], value=numpy_helper.from_array(np.array([1], np.int64))
            ),
            helper.make_node("Add", ["x", "e"], ["y"]),
            helper.make_node("Identity", ["ones"], ["n"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 8]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["S"]),
        ],
        [pos, table, one, zero],
    )
    gm = lower(onnx.load(str(path)))
    buffers = {tuple(t.shape) for t in gm.buffers()}
    assert (1, 512) in buffers and (512, 8) in buffers
    host = [v for v in vars(gm).values() if isinstance(v, torch.Tensor)]
    assert all(t.numel() <= 64 for t in host)
    x = torch.zeros(2, 5, 8)
    y, n = gm(x)
    torch.testing.assert_close(y, torch.from_numpy(numpy_helper.to_array(table)[:5]).expand(2, 5, 8))
    assert n.tolist() == [1] * 5 and "anchor" not in dict(gm.named_buffers())  # an integer fill: host


def test_shared_zero_biases_behind_identity_still_fuse_to_linear(tmp_path):
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    path = _save(
        tmp_path / "shared.onnx",
        [
            helper.make_node("Identity", ["b"], ["b1"]),
            helper.make_node("Identity", ["b"], ["b2"]),
            helper.make_node("MatMul", ["x", "w"], ["m1"]),
            helper.make_node("Add", ["b1", "m1"], ["h"]),
            helper.make_node("MatMul", ["h", "w"], ["m2"]),
            helper.make_node("Add", ["m2", "b2"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w, b],
    )
    gm = lower(onnx.load(str(path)))
    assert gm.fused.get("Linear") == 2
    x = torch.randn(3, 4)
    torch.testing.assert_close(gm(x)[0], x)
