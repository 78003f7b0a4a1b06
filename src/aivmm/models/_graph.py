"""An index over an ONNX graph: who produces and who consumes each tensor, which tensors are constant.

Pattern searches (attention, embeddings, masks) and the liveness walk all need the same maps;
building them once keeps every analysis a linear pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

# Ops that move or reshape data, or apply a cheap elementwise step, without changing what a
# tensor "is": pattern searches walk through them.
_INTEGER = frozenset({2, 3, 4, 5, 6, 7, 12, 13})  # ONNX integer element types

# fmt: off
PASS_THROUGH = frozenset({
    "Add", "Sub", "Mul", "Div", "Where", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Flatten", "Identity", "Dropout", "Slice", "Expand", "Sqrt", "Neg", "Not", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Max", "Min", "Clip", "Concat", "Split",
    "Gather", "Pow", "Softplus", "ScatterND", "Tile", "Abs", "CastLike", "Trilu", "Shape", "Range",
    "ConstantOfShape", "Mod", "Floor", "Ceil", "Round", "Sign", "Erf", "Sigmoid", "Tanh", "Relu",
    # quantised graphs: (de)quantisation and ORT's quantised elementwise ops keep a tensor's role
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul",
})
# fmt: on


@dataclasses.dataclass
class GraphIndex:
    """Maps over one graph (not its subgraphs)."""

    nodes: list[Any]
    producer: dict[str, Any]
    consumers: dict[str, list[Any]]
    initializers: dict[str, Any]  # name -> TensorProto
    constants: dict[str, Any]  # Constant node output name -> TensorProto (or None for scalar attrs)
    graph_inputs: list[str]
    graph_outputs: list[str]
    integer_inputs: frozenset[str] = frozenset()  # graph inputs of an integer element type

    @classmethod
    def of(cls, graph: Any) -> GraphIndex:
        producer: dict[str, Any] = {}
        consumers: dict[str, list[Any]] = {}
        constants: dict[str, Any] = {}
        for node in graph.node:
            for out in node.output:
                if out:
                    producer[out] = node
            for name in node.input:
                if name:
                    consumers.setdefault(name, []).append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                constants[node.output[0]] = next(
                    (a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None
                )
        inits = {t.name: t for t in graph.initializer}
        for sparse in graph.sparse_initializer:
            inits[sparse.values.name] = sparse.values
        return cls(
            nodes=list(graph.node),
            producer=producer,
            consumers=consumers,
            initializers=inits,
            constants=constants,
            graph_inputs=[i.name for i in graph.input if i.name not in inits],
            graph_outputs=[o.name for o in graph.output],
            integer_inputs=frozenset(
                i.name
                for i in graph.input
                if i.name not in inits and i.type.HasField("tensor_type") and i.type.tensor_type.elem_type in _INTEGER
            ),
        )

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constants

    def constant_tensor(self, name: str) -> Any:
        return self.initializers.get(name) or self.constants.get(name)

    def upstream(self, name: str, max_depth: int, through: frozenset[str] = PASS_THROUGH) -> Iterator[Any]:
        """Nodes reachable backwards from ``name``, walking only through ``through`` ops (bounded)."""
        seen: set[int] = set()
        frontier = [(name, 0)]
        while frontier:
            tensor, depth = frontier.pop()
            node = self.producer.get(tensor)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            yield node
            if depth < max_depth and node.op_type in through:
                frontier.extend((i, depth + 1) for i in node.input if i)

    def downstream(self, name: str, max_depth: int, through: frozenset[str] = PASS_THROUGH) -> Iterator[Any]:
        """Nodes reachable forwards from ``name``, walking only through ``through`` ops (bounded)."""
        seen: set[int] = set()
        frontier = [(name, 0)]
        while frontier:
            tensor, depth = frontier.pop()
            for node in self.consumers.get(tensor, ()):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                yield node
                if depth < max_depth and node.op_type in through:
                    frontier.extend((o, depth + 1) for o in node.output if o)

    def roots(self, name: str, max_depth: int = 12) -> tuple[set[str], bool]:
        """Graph inputs ``name`` derives from, and whether it derives only from constants.

        A ``Shape`` node's output counts as constant: a mask sliced to the sequence length read
        from an input's shape is still a constant mask.
        """
        inputs: set[str] = set()
        seen: set[str] = set()
        frontier = [(name, 0)]
        while frontier:
            tensor, depth = frontier.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            if tensor in self.graph_inputs:
                inputs.add(tensor)
                continue
            node = self.producer.get(tensor)
            if node is None or depth >= max_depth or node.op_type == "Shape":
                continue
            frontier.extend((i, depth + 1) for i in node.input if i)
        return inputs, not inputs


def tensor_array(t: Any) -> Any:
    """A TensorProto's values as a numpy array, read-only, without the conversion copy
    ``numpy_helper.to_array`` makes of raw data; None for external or unreadable data."""
    import numpy as np
    from onnx import helper, numpy_helper

    if t.data_location == 1:
        return None
    try:
        if t.raw_data and t.data_type in _PLAIN:
            return np.frombuffer(t.raw_data, dtype=helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(tuple(t.dims))
        return numpy_helper.to_array(t)
    except (ValueError, TypeError):
        return None


_PLAIN = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13})  # numeric types stored as plain little-endian


def subgraphs(node: Any) -> Iterator[Any]:
    """The subgraphs held by a node's attributes (If branches, Loop and Scan bodies)."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def walk_nodes(graph: Any) -> Iterator[Any]:
    """Every node of a graph and, recursively, of its subgraphs."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from walk_nodes(sub)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# fmt: off
_EVALUABLE = frozenset({
    "Shape", "Size", "Gather", "Squeeze", "Unsqueeze", "Cast", "Identity", "Concat", "Slice", "Reshape",
    "Equal", "Not", "Less", "Greater", "And", "Or", "Add", "Sub", "Mul", "Div", "ReduceProd", "Constant",
    "Transpose", "ConstantOfShape", "Range", "Expand", "Where", "Max", "Min", "Neg", "Abs", "Flatten",
})
# fmt: on
_FOLD_LIMIT = 256  # elements: shapes, pads, axes and indices, never activations


class ConstantValues:
    """Small integer or boolean tensors (trip counts, If conditions) computed from constants and from
    the shapes bound for the inputs, so a loop over ``x.shape[0]`` has a known trip count and an
    ``if x.dim() == 2`` a known branch. Anything that depends on input *values* stays unknown.
    """

    def __init__(self, scopes: list[GraphIndex], shape_of: Callable[[str], tuple[int, ...] | None]) -> None:
        self.scopes = scopes  # GraphIndex of this graph first, then its enclosing graphs
        self.shape_of = shape_of
        self.memo: dict[str, Any] = {}

    def value(self, name: str, depth: int = 0) -> Any:
        """A numpy array, or None when not computable from constants and shapes."""
        if name in self.memo:
            return self.memo[name]
        self.memo[name] = None  # cycles and repeated failures end here
        result = self._compute(name, depth) if name and depth < 24 else None
        if result is not None and getattr(result, "size", _FOLD_LIMIT + 1) > _FOLD_LIMIT:
            result = None
        self.memo[name] = result
        return result

    def _compute(self, name: str, depth: int) -> Any:
        import numpy as np
        from onnx import numpy_helper

        for index in self.scopes:
            tensor = index.constant_tensor(name)
            if tensor is not None:
                return None if tensor.data_location == 1 else numpy_helper.to_array(tensor)
            node = index.producer.get(name)
            if node is not None:
                break
            if name in index.graph_inputs:
                return None
        else:
            return None
        if node.op_type not in _EVALUABLE or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type in ("Shape", "Size"):
            shape = self.shape_of(node.input[0])
            if shape is None:  # the shape of a value computed here (a Range of offsets, say)
                computed = self.value(node.input[0], depth + 1)
                shape = None if computed is None else tuple(computed.shape)
            if shape is None:
                return None
            if node.op_type == "Size":
                return np.array(math.prod(shape), dtype=np.int64)
            start, end = _attr(node, "start", 0), _attr(node, "end", None)
            return np.array(shape[start:end], dtype=np.int64)
        args = [self.value(i, depth + 1) if i else None for i in node.input]
        if any(a is None for a, i in zip(args, node.input) if i):
            return None
        try:
            return _evaluate(node, args)
        except (ValueError, IndexError, TypeError, ZeroDivisionError):
            return None


def _evaluate(node: Any, args: list[Any]) -> Any:
    import numpy as np

    op = node.op_type
    if op in ("Identity", "Cast"):
        return args[0] if op == "Identity" else args[0].astype(np.int64 if args[0].dtype != bool else bool)
    if op == "Gather":
        return np.take(args[0], args[1], axis=_attr(node, "axis", 0))
    if op in ("Squeeze", "Unsqueeze"):
        axes = args[1] if len(args) > 1 and args[1] is not None else _attr(node, "axes", None)
        if op == "Squeeze":
            return np.squeeze(args[0], axis=tuple(int(a) for a in axes) if axes is not None else None)
        out = args[0]
        for a in sorted(int(a) % (out.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return out
    if op == "Concat":
        return np.concatenate([np.atleast_1d(a) for a in args], axis=_attr(node, "axis", 0))
    if op == "Slice":
        data, starts, ends = args[0], args[1], args[2]
        axes = args[3] if len(args) > 3 and args[3] is not None else range(len(starts))
        steps = args[4] if len(args) > 4 and args[4] is not None else [1] * len(starts)
        index = [slice(None)] * data.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[int(a)] = slice(int(s), int(e), int(st))
        return data[tuple(index)]
    if op == "Reshape":
        return args[0].reshape([int(d) for d in args[1]])
    if op == "Transpose":
        return np.transpose(args[0], _attr(node, "perm", None))
    if op == "ConstantOfShape":
        shape = [int(d) for d in args[0].reshape(-1)]
        if math.prod(shape) > _FOLD_LIMIT:
            return None
        fill = _attr(node, "value", None)
        from onnx import numpy_helper

        return np.full(shape, numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None else 0.0)
    if op == "Range":
        n = int(max(np.ceil((args[1] - args[0]) / args[2]), 0))
        return None if n > _FOLD_LIMIT else np.arange(args[0], args[1], args[2])
    if op == "Expand":
        expanded = np.broadcast_shapes(args[0].shape, tuple(int(d) for d in args[1]))
        return None if math.prod(expanded) > _FOLD_LIMIT else np.broadcast_to(args[0], expanded).copy()
    if op == "Where":
        return np.where(args[0], args[1], args[2])
    if op in ("Neg", "Abs"):
        return -args[0] if op == "Neg" else np.abs(args[0])
    if op == "Flatten":
        axis = _attr(node, "axis", 1)
        return args[0].reshape(math.prod(args[0].shape[:axis]), -1)
    if op == "ReduceProd":
        return np.array(np.prod(args[0]), dtype=args[0].dtype)
    if op == "Not":
        return np.logical_not(args[0])
    binary = {
        "Equal": np.equal,
        "Less": np.less,
        "Greater": np.greater,
        "And": np.logical_and,
        "Or": np.logical_or,
        "Add": np.add,
        "Sub": np.subtract,
        "Mul": np.multiply,
        "Max": np.maximum,
        "Min": np.minimum,
    }
    if op in binary:
        return binary[op](args[0], args[1])
    if op == "Div":
        return args[0] // args[1] if args[0].dtype.kind in "iu" else args[0] / args[1]
    return None
