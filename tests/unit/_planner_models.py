"""Tiny ONNX models and devices shared by the planner and optimize tests (no tests here)."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aivmm.devices._types import Device, DeviceKind, Vendor


def _save(graph: onnx.GraphProto, path: pathlib.Path) -> pathlib.Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def mlp(path: pathlib.Path, d: int = 32, h: int = 64, out: int = 10, seed: int = 0) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((d, h)) * 0.2).astype(np.float32), "W1"),
        numpy_helper.from_array((rng.standard_normal(h) * 0.1).astype(np.float32), "B1"),
        numpy_helper.from_array((rng.standard_normal((h, out)) * 0.2).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Add", ["h", "B1"], ["ha"]),
        helper.make_node("Relu", ["ha"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out])],
        inits,
    )
    return _save(graph, path)


def embedding(path: pathlib.Path, vocab: int = 50, dim: int = 8) -> pathlib.Path:
    """ids (int64) -> Cast -> Gather(table) -> ReduceMean: ids must stay below ``vocab``."""
    table = numpy_helper.from_array(np.arange(vocab * dim, dtype=np.float32).reshape(vocab, dim), "table")
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["table", "ids32"], ["emb"], axis=0),
        helper.make_node("ReduceMean", ["emb"], ["y"], axes=[1], keepdims=0),
        helper.make_node("Identity", ["mask"], ["mask_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "emb",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 6]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim]),
            helper.make_tensor_value_info("mask_out", TensorProto.INT64, ["N", 6]),
        ],
        [table],
    )
    return _save(graph, path)


def strings(path: pathlib.Path) -> pathlib.Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "str",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, [2])],
    )
    return _save(graph, path)


def cpu(**changes: object) -> Device:
    base = Device(
        id="cpu:0",
        kind=DeviceKind.CPU,
        vendor=Vendor.INTEL,
        name="test cpu",
        memory_total_bytes=16 * 2**30,
        memory_free_bytes=8 * 2**30,
        features=frozenset({"avx2", "fma"}),
        runtimes=("onnxruntime", "openvino"),
        source="cpu",
    )
    return base.with_(**changes) if changes else base


def sim_gpu(idx: int = 0, memory: int = 8 * 2**30, **props: object) -> Device:
    return Device(
        id=f"nvidia:{idx}",
        kind=DeviceKind.GPU,
        vendor=Vendor.NVIDIA,
        name="simulated GPU",
        memory_total_bytes=memory,
        memory_free_bytes=memory,
        index=idx,
        features=frozenset({"fp16", "bf16", "int8"}),
        runtimes=("simulated",),
        properties={"power_limit_w": 300, **props},
        simulated=True,
        source="simulated",
    )
