"""Tiny ONNX models built with onnx.helper, and the ModelSpec / Device values the backends consume.

``spec_of`` uses ``aivmm.models.load`` when that package provides it and otherwise reads the signature
straight from the graph, so the backend suite does not depend on the analysis being finished.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aivmm.devices._types import Device, DeviceKind, Vendor
from aivmm.dtypes import DType
from aivmm.models._spec import ModelFormat, ModelSpec, TensorSpec

OPSET = 17
_ONNX_DTYPES = {
    TensorProto.FLOAT: DType.FLOAT32,
    TensorProto.FLOAT16: DType.FLOAT16,
    TensorProto.DOUBLE: DType.FLOAT64,
    TensorProto.INT64: DType.INT64,
    TensorProto.INT32: DType.INT32,
    TensorProto.INT8: DType.INT8,
    TensorProto.UINT8: DType.UINT8,
    TensorProto.BOOL: DType.BOOL,
}


def _save(model: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def one_op(path: pathlib.Path) -> pathlib.Path:
    """y = relu(x), x: float32[N, 16]: the smallest model, for overhead and contract basics."""
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "one_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
    )
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def mlp(path: pathlib.Path) -> pathlib.Path:
    """Two inputs, two outputs (order matters): out = relu(a @ W1 + b1) + c; aux = sum(out, axis=1)."""
    r = _rng(1)
    w1 = numpy_helper.from_array(r.standard_normal((8, 12)).astype(np.float32) * 0.3, "W1")
    b1 = numpy_helper.from_array(r.standard_normal(12).astype(np.float32) * 0.1, "b1")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["a", "W1"], ["h0"], name="mm"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="act"),
        helper.make_node("Add", ["h2", "c"], ["out"], name="skip"),
        helper.make_node("ReduceSum", ["out", "axes"], ["aux"], name="sum", keepdims=0),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", 12]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 12]),
            helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["batch"]),
        ],
        initializer=[w1, b1, axes],
    )
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def small_cnn(path: pathlib.Path, channels: int = 16, size: int = 32) -> pathlib.Path:
    """conv-relu-conv-relu-globalpool-gemm on float32[N, 3, size, size]: a small CNN at batch 1."""
    r = _rng(2)

    def init(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((r.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("w1", (channels, 3, 3, 3), 0.2),
        init("b1", (channels,), 0.05),
        init("w2", (channels, channels, 3, 3), 0.1),
        init("b2", (channels,), 0.05),
        init("wf", (10, channels), 0.2),
        init("bf", (10,), 0.05),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def int_ops(path: pathlib.Path) -> pathlib.Path:
    """Integer and static-shape input: idx int64[2, 3] -> idx * 3 + 1 (checks dtype plumbing)."""
    three = numpy_helper.from_array(np.array(3, dtype=np.int64), "three")
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    g = helper.make_graph(
        [
            helper.make_node("Mul", ["idx", "three"], ["m"], name="mul"),
            helper.make_node("Add", ["m", "one"], ["res"], name="add"),
        ],
        "int_ops",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("res", TensorProto.INT64, [2, 3])],
        initializer=[three, one],
    )
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def custom_op(path: pathlib.Path) -> pathlib.Path:
    """A model no runtime can run: an operator of an unknown domain."""
    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["h"], name="relu"),
            helper.make_node("FancyOp", ["h"], ["y"], name="fancy", domain="com.example.aivmm"),
        ],
        "custom_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example.aivmm", 1)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))  # the checker would refuse the unknown domain; that is the point
    return path


def qdq(path: pathlib.Path) -> pathlib.Path:
    """A pre-quantised (QDQ) model: int8 configurations need quantised operators."""
    scale = numpy_helper.from_array(np.array(0.05, dtype=np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dequant"),
        helper.make_node("Relu", ["dq"], ["y"], name="relu"),
    ]
    g = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        initializer=[scale, zero],
    )
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), path)


BUILDERS: dict[str, Callable[[pathlib.Path], pathlib.Path]] = {
    "one_op": one_op,
    "mlp": mlp,
    "small_cnn": small_cnn,
    "int_ops": int_ops,
}


def _tensor_specs(values: list[onnx.ValueInfoProto], skip: set[str]) -> tuple[TensorSpec, ...]:
    out = []
    for v in values:
        if v.name in skip:
            continue
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out.append(TensorSpec(v.name, _ONNX_DTYPES[tt.elem_type], dims))
    return tuple(out)


_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}


def graph_spec(path: pathlib.Path) -> ModelSpec:
    """A ModelSpec read from the graph alone (signature, opsets, parameter bytes, content hash)."""
    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    data = path.read_bytes()
    return ModelSpec(
        name=path.stem,
        format=ModelFormat.ONNX,
        inputs=_tensor_specs(list(model.graph.input), inits),
        outputs=_tensor_specs(list(model.graph.output), set()),
        parameters=sum(int(np.prod(t.dims)) for t in model.graph.initializer),
        parameter_bytes=sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer),
        operators=ops,
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        quantized_operators=tuple(sorted(set(ops) & _QUANT_OPS)),
        source=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )


def spec_of(path: pathlib.Path) -> ModelSpec:
    import aivmm.models as models

    load = getattr(models, "load", None)
    if load is not None:
        return load(str(path))
    return graph_spec(path)


def random_inputs(spec: ModelSpec, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    r = _rng(seed)
    feeds = {}
    for t in spec.inputs:
        shape = tuple(d if isinstance(d, int) and d > 0 else batch for d in t.shape)
        dt = t.dtype.to_numpy()
        if dt.kind == "f":
            feeds[t.name] = r.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            feeds[t.name] = r.integers(0, 2, shape).astype(dt)
        else:
            feeds[t.name] = r.integers(0, 10, shape).astype(dt)
    return feeds


def host_cpu() -> Device:
    """The host CPU as discovery reports it (falls back to /proc when the CPU probe is not there)."""
    try:
        from aivmm.devices._cpu import probe
    except ImportError:
        probe = None
    if probe is not None:
        report = probe()
        if report.devices:
            return report.devices[0]
    flags = set()
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    features = {"fp32"} | (flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"})
    if features & {"avx512_bf16", "amx_bf16"}:
        features.add("bf16")
    mem = {
        k.strip(): v for k, _, v in (ln.partition(":") for ln in pathlib.Path("/proc/meminfo").read_text().splitlines())
    }
    total = int(mem["MemTotal"].split()[0]) * 1024
    free = int(mem["MemAvailable"].split()[0]) * 1024
    return Device("cpu:0", DeviceKind.CPU, Vendor.INTEL, "host cpu", total, free, features=frozenset(features))
