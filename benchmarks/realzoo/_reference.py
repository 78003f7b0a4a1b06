"""Independent MAC and weight counts from running a model, for the hand counts of wheel models
(no torch module to count from).

``runtime_macs`` runs the model on ONNX Runtime with every Conv / MatMul / Gemm / LSTM operand and
result exposed as a graph output and applies the textbook formulas to the *observed* arrays, so
it shares nothing with aivmm's shape inference or its FLOP walker. ``reference_macs`` does the
same through ``onnx.reference`` with counting op overrides, which also sees inside If/Loop
bodies (the branch actually taken on the given inputs).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np

_COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "ConvInteger", "MatMulInteger")
_RUNTIME_ONLY = ("DynamicQuantizeLSTM",)  # com.microsoft: counted from ORT runs, not onnx.reference


def _macs(op: str, ins: list[Any], out: Any, attrs: dict[str, Any]) -> int:
    if op in ("Conv", "ConvInteger"):
        return int(out.size * math.prod(ins[1].shape[1:]))
    if op == "ConvTranspose":  # every input element scatters into Cout/group x kernel outputs
        return int(ins[0].size * math.prod(ins[1].shape[1:]))
    if op in ("MatMul", "MatMulInteger"):
        return int(out.size * ins[0].shape[-1])
    if op == "Gemm":
        return int(out.size * (ins[0].shape[0] if attrs.get("transA") else ins[0].shape[-1]))
    if op in ("LSTM", "GRU", "DynamicQuantizeLSTM"):
        gates = 3 if op == "GRU" else 4
        x, w, r = ins[0], ins[1], ins[2]
        seq, batch = (x.shape[1], x.shape[0]) if attrs.get("layout") else (x.shape[0], x.shape[1])
        # ORT's quantised LSTM stores W [dirs, I, 4H] and R [dirs, H, 4H]
        hidden, inputs = (r.shape[1], w.shape[1]) if op == "DynamicQuantizeLSTM" else (r.shape[-1], w.shape[-1])
        return int(seq * batch * w.shape[0] * gates * hidden * (inputs + hidden))
    return 0


def runtime_macs(path: pathlib.Path, feeds: dict[str, np.ndarray]) -> int:
    """MACs of the top-level graph's Conv/MatMul/Gemm/LSTM/GRU nodes on ``feeds`` (no control flow)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in _COUNTED + _RUNTIME_ONLY]
    present = {o.name for o in model.graph.output} | set(feeds)
    wanted = sorted({t for n in nodes for t in [*n.input, n.output[0]] if t and t not in inits} - present)
    for name in wanted:
        model.graph.output.append(helper.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, feeds)))
    values.update(inits)
    values.update(feeds)
    total = 0
    for n in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        total += _macs(n.op_type, [values[i] for i in n.input if i], values[n.output[0]], attrs)
    return total


def reference_macs(path: pathlib.Path, feeds: dict[str, np.ndarray]) -> int:
    """MACs counted while onnx.reference evaluates the model, If/Loop bodies included."""
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops import load_op

    counter = [0]
    overrides = []
    for op in _COUNTED:
        base = load_op("", op)

        def run(self: Any, *args: Any, _op: str = op, _base: Any = base, **kwargs: Any) -> Any:
            result = _base._run(self, *args, **kwargs)
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in self.onnx_node.attribute}
            counter[0] += _macs(_op, list(args), result[0], attrs)
            return result

        overrides.append(type(op, (base,), {"_run": run, "op_domain": ""}))
    ReferenceEvaluator(str(path), new_ops=overrides).run(None, feeds)
    return counter[0]


def distinct_weights(path: pathlib.Path) -> int:
    """Elements of the distinct float/int8/int32 weight arrays (initializers and Constant values),
    int64 and scalars left out, each distinct content counted once."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    seen: set[bytes] = set()
    total = 0

    def visit(graph: Any) -> None:
        nonlocal total
        tensors = list(graph.initializer)
        for node in graph.node:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    tensors.append(a.t)
                if a.HasField("g"):
                    visit(a.g)
        for t in tensors:
            a = numpy_helper.to_array(t)
            if a.ndim == 0 or a.dtype == np.int64:
                continue
            key = a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()
            if key not in seen:
                seen.add(key)
                total += a.size

    visit(model.graph)
    return total
