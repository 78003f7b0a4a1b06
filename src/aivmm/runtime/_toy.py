"""Tiny ONNX models with hand-made specs, for the runtime's tests and benchmarks.

They stand in until ``aivmm.models.zoo`` and ``aivmm.models.load`` are available to every caller,
and they give exact control over parameter bytes (splits, budgets) and batch behaviour.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from aivmm.devices import Device, DeviceKind, Vendor
from aivmm.dtypes import DType
from aivmm.models import ModelFormat, ModelSpec, TensorSpec


def mlp(
    path: str | pathlib.Path,
    *,
    width: int = 64,
    layers: int = 2,
    seed: int = 0,
    name: str = "mlp",
    batch_dim_preserved: bool = True,
) -> ModelSpec:
    """``y = relu(...relu(x @ W0 + b0)... @ Wk + bk)``; x: float32[N, width]. With
    ``batch_dim_preserved=False`` the output sums over the batch (a model that cannot be batched)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        b = rng.standard_normal(width).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"], name=f"matmul{i}"),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
            helper.make_node("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}"),
        ]
        current = f"h{i}"
    out_shape: list[Any] = ["N", width]
    if not batch_dim_preserved:
        axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
        inits.append(axes)
        nodes.append(helper.make_node("ReduceSum", [current, "axes"], ["y"], keepdims=0, name="reduce"))
        out_shape = [width]
    else:
        nodes.append(helper.make_node("Identity", [current], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    params = layers * (width * width + width)
    return ModelSpec(
        name=name,
        format=ModelFormat.ONNX,
        inputs=(TensorSpec("x", DType.FLOAT32, ("N", width)),),
        outputs=(TensorSpec("y", DType.FLOAT32, tuple(out_shape)),),
        parameters=params,
        parameter_bytes=params * 4,
        flops=2 * layers * width * width,
        macs=layers * width * width,
        peak_activation_bytes=3 * width * 4,
        opsets={"": 17},
        shapes_used={"x": (1, width)},
        source=str(path),
        size_bytes=pathlib.Path(path).stat().st_size,
        batch_dim=0,
    )


def one_op(path: str | pathlib.Path, *, width: int = 16, name: str = "add-one") -> ModelSpec:
    """``y = x + 1`` (the smallest model: the runtime's own overhead dominates it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    one = numpy_helper.from_array(np.ones(width, dtype=np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return ModelSpec(
        name=name,
        format=ModelFormat.ONNX,
        inputs=(TensorSpec("x", DType.FLOAT32, ("N", width)),),
        outputs=(TensorSpec("y", DType.FLOAT32, ("N", width)),),
        parameters=width,
        parameter_bytes=4 * width,
        peak_activation_bytes=8 * width,
        opsets={"": 17},
        shapes_used={"x": (1, width)},
        source=str(path),
        size_bytes=pathlib.Path(path).stat().st_size,
        batch_dim=0,
    )


def simulated_device(
    dev_id: str = "nvidia:0",
    *,
    memory: int = 2**30,
    vendor: Vendor = Vendor.NVIDIA,
    kind: DeviceKind = DeviceKind.GPU,
    **properties: Any,
) -> Device:
    return Device(
        id=dev_id,
        kind=kind,
        vendor=vendor,
        name=f"simulated {dev_id}",
        memory_total_bytes=memory,
        memory_free_bytes=memory,
        index=int(dev_id.rsplit(":", 1)[-1]),
        runtimes=("simulated",),
        properties=properties,
        simulated=True,
        source="simulated",
    )


def inputs(spec: ModelSpec, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = tuple(batch if (i == spec.batch_dim) else int(d) for i, d in enumerate(t.shape))  # type: ignore[arg-type]
        out[t.name] = rng.standard_normal(shape).astype(t.dtype.to_numpy())
    return out
