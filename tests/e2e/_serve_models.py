"""Tiny ONNX models for the end-to-end tests, built with onnx.helper (no downloads)."""

from __future__ import annotations

import pathlib

import numpy as np


def _save(graph, path: pathlib.Path) -> pathlib.Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def scale(path: pathlib.Path, k: float) -> pathlib.Path:
    """y = k * x, x: FP32 [N, 4]."""
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.array(k, np.float32), "k")],
    )
    return _save(g, path)


def mixed(path: pathlib.Path) -> pathlib.Path:
    """FP16, BOOL and INT64 through one model: h2 = h + h, nb = not b, i2 = i * 3."""
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [
            helper.make_node("Add", ["h", "h"], ["h2"]),
            helper.make_node("Not", ["b"], ["nb"]),
            helper.make_node("Mul", ["i", "three"], ["i2"]),
        ],
        "mixed",
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["N", 2]),
            helper.make_tensor_value_info("b", TensorProto.BOOL, ["N", 2]),
            helper.make_tensor_value_info("i", TensorProto.INT64, ["N", 2]),
        ],
        [
            helper.make_tensor_value_info("h2", TensorProto.FLOAT16, ["N", 2]),
            helper.make_tensor_value_info("nb", TensorProto.BOOL, ["N", 2]),
            helper.make_tensor_value_info("i2", TensorProto.INT64, ["N", 2]),
        ],
        [numpy_helper.from_array(np.array(3, np.int64), "three")],
    )
    return _save(g, path)


def heavy(path: pathlib.Path, layers: int = 32, width: int = 256) -> pathlib.Path:
    """A MatMul chain whose cost grows with the batch: cheap to plan at N=1, slow at N=1024."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        prev = out
    g = helper.make_graph(
        nodes,
        "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        inits,
    )
    return _save(g, path)


TRITON_CONFIG = """
name: "double"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 500 preferred_batch_size: [ 4 ] }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def repository(root: pathlib.Path) -> pathlib.Path:
    """double/{1,2} (Triton layout + config.pbtxt), mixed/1, heavy/1 and ov/1 (config.json), flat.onnx."""
    scale(root / "double" / "1" / "model.onnx", 2.0)
    scale(root / "double" / "2" / "model.onnx", 3.0)
    (root / "double" / "config.pbtxt").write_text(TRITON_CONFIG)
    mixed(root / "mixed" / "1" / "model.onnx")
    heavy(root / "heavy" / "1" / "model.onnx")
    (root / "heavy" / "config.json").write_text('{"device": "cpu:0"}')
    scale(root / "flat.onnx", 5.0)
    scale(root / "ov" / "1" / "model.onnx", 7.0)
    (root / "ov" / "config.json").write_text('{"backend": "openvino", "device": "cpu:0"}')
    return root
