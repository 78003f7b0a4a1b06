"""An index over an ONNX graph: who produces and who consumes each tensor, which tensors are constant.

Pattern searches (attention, embeddings, masks) and the liveness walk all need the same maps;
building them once keeps every analysis a linear pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

# Ops that move or reshape data, or apply a cheap elementwise step, without changing what a
# tensor "is": pattern searches walk through them.
PASS_THROUGH = frozenset({
    "Add", "Sub", "Mul", "Div", "Where", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Flatten", "Identity", "Dropout", "Slice", "Expand", "Sqrt", "Neg", "Not", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Max", "Min", "Clip", "Concat", "Split",
    "Gather", "Pow", "Softplus", "ScatterND", "Tile", "Abs", "CastLike", "Trilu", "Shape", "Range",
    "ConstantOfShape", "Mod", "Floor", "Ceil", "Round", "Sign", "Erf", "Sigmoid", "Tanh", "Relu",
})


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
