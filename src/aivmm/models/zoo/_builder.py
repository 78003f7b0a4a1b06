"""A small helper over ``onnx.helper`` for writing the zoo's graphs: seeded weights, unique names."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the newest IR that onnxruntime and OpenVINO releases of the last two years all read
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
BATCH = "batch"


class GraphBuilder:
    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._count = 0

    def _fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def input(self, name: str, elem: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, tensor: str, name: str, elem: int, shape: Sequence[int | str]) -> None:
        self.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"{name}_out"))
        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))

    def const(self, array: np.ndarray, prefix: str = "c") -> str:
        name = self._fresh(prefix)
        # np.ascontiguousarray would turn a 0-d scalar into shape [1]; scalars must stay rank 0.
        data = np.asarray(array)
        self.initializers.append(numpy_helper.from_array(data if data.flags.c_contiguous else data.copy(), name))
        return name

    def ints(self, values: Sequence[int], prefix: str = "shape") -> str:
        return self.const(np.asarray(values, dtype=np.int64), prefix)

    def scalar(self, value: float) -> str:
        return self.const(np.asarray(value, dtype=np.float32), "s")

    def weight(self, shape: Sequence[int], fan_in: int | None = None, prefix: str = "w") -> str:
        """Normal weights scaled by 1/sqrt(fan_in): activations stay O(1) through deep stacks."""
        fan = fan_in if fan_in is not None else (shape[0] if len(shape) == 2 else math.prod(shape[1:]))
        data = self.rng.standard_normal(tuple(shape), dtype=np.float32)
        data *= np.float32(1.0 / math.sqrt(max(fan, 1)))
        return self.const(data, prefix)

    def bias(self, size: int | tuple[int, ...], prefix: str = "b") -> str:
        return self.const((self.rng.standard_normal(size, dtype=np.float32) * np.float32(0.02)), prefix)

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, **attrs: Any) -> Any:
        names = [self._fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._fresh(op_type), **attrs))
        return names[0] if outputs == 1 else names

    # Composite layers used by several models.
    def linear(self, x: str, fan_in: int, fan_out: int, bias: bool = True) -> str:
        y = self.op("MatMul", [x, self.weight((fan_in, fan_out))])
        return self.op("Add", [y, self.bias(fan_out)]) if bias else y

    def gemm(self, x: str, fan_in: int, fan_out: int) -> str:
        return self.op("Gemm", [x, self.weight((fan_out, fan_in), fan_in), self.bias(fan_out)], transB=1)

    def layer_norm(self, x: str, size: int) -> str:
        gamma = self.const(np.ones(size, dtype=np.float32), "ln_g")
        beta = self.const(np.zeros(size, dtype=np.float32), "ln_b")
        return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)

    def gelu(self, x: str) -> str:
        """The exact erf GELU written in opset-17 ops (Gelu itself is opset 20)."""
        scaled = self.op("Mul", [x, self.scalar(1.0 / math.sqrt(2.0))])
        erf = self.op("Add", [self.op("Erf", [scaled]), self.scalar(1.0)])
        return self.op("Mul", [self.op("Mul", [x, erf]), self.scalar(0.5)])

    def model(self, doc: str) -> Any:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="aivmm.zoo",
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        return model


def check(model: Any) -> None:
    """onnx.checker on the built model (full check: shape inference must agree with the declared outputs)."""
    onnx.checker.check_model(model, full_check=True)
