"""Builds a ``torch.fx.GraphModule`` from an ONNX graph (and, recursively, from its subgraphs).

Initializers and folded constants become buffers of the module, so ``.to(device)`` moves every
weight once. Shape arithmetic stays on the host: ``Shape`` yields a CPU tensor, every node whose
run-time inputs are all host values is a host value too, and the constants such nodes read are
plain attributes that ``.to()`` leaves on the CPU. Reshapes then read Python integers without a
device sync, and no host-to-device copy happens per run (both would break CUDA-graph capture).
Subgraphs (If, Loop, Scan bodies) become child GraphModules that take the outer values they read
as extra arguments.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any, cast

import onnx
import torch
from torch import fx, nn

from aivmm.backends.torch.lowering._node import FLOAT_TYPES, HOST_RESULTS, NodeContext, Value, tensor_from_proto
from aivmm.backends.torch.lowering._registry import lookup
from aivmm.errors import LoweringError

# Shape arithmetic reads shape vectors, axes and scalars: constants of a few elements.
MAX_HOST_CONSTANT = 64


class GraphBuilder:
    """Lowers one ONNX graph into one fx graph owned by ``root``."""

    def __init__(
        self,
        opsets: dict[str, int],
        float_dtype: torch.dtype,
        outer: GraphBuilder | None = None,
        label: str = "graph",
    ) -> None:
        self.opsets = opsets
        self.float_dtype = float_dtype
        self.outer = outer
        self.label = label
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: dict[str, Value] = {}
        self.captures: list[str] = []  # outer names this (sub)graph reads at run time
        self._host_consts: list[str] = []
        self._const_ids: dict[tuple[int, bool], tuple[torch.Tensor, fx.Node]] = {}
        self.host_nodes: set[fx.Node] = set()  # run-time values that live on the CPU (shape arithmetic)
        self._counter = 0
        self._anchor: fx.Node | None = None

    # -- values ----------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        if name in self.env:
            return self.env[name]
        if self.outer is not None:
            outer_value = self.outer.value(name)
            if isinstance(outer_value, torch.Tensor) or outer_value is None:
                self.env[name] = outer_value
                return outer_value
            # A run-time value of the enclosing graph: it becomes an extra argument.
            self.captures.append(name)
            node = self._placeholder(f"outer_{name}")
            self.env[name] = node
            return node
        raise LoweringError(f"{self.label}: value {name!r} is used before it is defined")

    def _fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def const_node(self, t: torch.Tensor, host: bool = False) -> fx.Node:
        key = (id(t), host)
        cached = self._const_ids.get(key)
        if cached is not None and cached[0] is t:
            return cached[1]
        name = self._fresh("h" if host else "c")
        stored = t.to(self.float_dtype) if t.dtype in FLOAT_TYPES and self.float_dtype != torch.float32 else t
        self.root.register_buffer(name, stored.detach().contiguous())
        node = self.graph.get_attr(name)
        if host:
            self._host_consts.append(name)
            self.host_nodes.add(node)
        # Holding the tensor keeps its id from being reused by a later, different constant.
        self._const_ids[key] = (t, node)
        return node

    def anchor(self) -> fx.Node:
        """An empty buffer that follows the module's device: where run-time fills are created."""
        if self._anchor is None:
            self.root.register_buffer("anchor", torch.zeros(0, dtype=self.float_dtype))
            self._anchor = self.graph.get_attr("anchor")
        return self._anchor

    def _to_graph(self, obj: Any, host: bool = False) -> Any:
        if isinstance(obj, torch.Tensor):
            return self.const_node(obj, host)
        if isinstance(obj, list):
            return [self._to_graph(o, host) for o in obj]
        if isinstance(obj, tuple):
            return tuple(self._to_graph(o, host) for o in obj)
        if isinstance(obj, dict):
            return {k: self._to_graph(v, host) for k, v in obj.items()}
        return obj

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Value:
        runtime = _nodes_in((args, kwargs))
        if not runtime:
            with torch.inference_mode():
                return fn(*args, **kwargs)  # folded: every argument is known now
        # A node whose run-time inputs are all host values computes shapes: it and its constants stay on
        # the CPU. One that reads a large constant (an embedding table, a position-id buffer sliced to
        # the sequence length) computes data: it runs on the device, or every run would copy it there.
        host = all(n in self.host_nodes for n in runtime) and all(
            t.numel() <= MAX_HOST_CONSTANT for t in _tensors_in((args, kwargs))
        )
        node = self.graph.call_function(fn, self._to_graph(args, host), self._to_graph(kwargs, host))
        if host or fn in HOST_RESULTS:
            self.host_nodes.add(node)
        return node

    def call_multi(self, fn: Callable[..., Any], n: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Value]:
        out = self.call(fn, args, kwargs)
        if isinstance(out, fx.Node):
            items = [self.graph.call_function(operator.getitem, (out, i)) for i in range(n)]
            if out in self.host_nodes:
                self.host_nodes.update(items)
            return list[Value](items)
        return list(cast("Iterable[Value]", out))  # folded: fn returned its n results as a sequence

    def call_module(self, module: nn.Module, args: tuple[Any, ...], n: int, prefix: str) -> list[Value]:
        name = self._fresh(prefix)
        self.root.add_module(name, module)
        out = self.graph.call_module(name, self._to_graph(args))
        return [self.graph.call_function(operator.getitem, (out, i)) for i in range(n)]

    def _placeholder(self, name: str) -> fx.Node:
        # Placeholders must precede computation: captures are discovered mid-graph.
        first = next((n for n in self.graph.nodes if n.op != "placeholder"), None)
        if first is None:
            return self.graph.placeholder(_ident(name))
        with self.graph.inserting_before(first):
            return self.graph.placeholder(_ident(name))

    # -- graphs ----------------------------------------------------------------------------
    def add_constants(self, initializers: Iterable[onnx.TensorProto]) -> None:
        for init in initializers:
            self.env[init.name] = tensor_from_proto(init)

    def add_inputs(self, names: Iterable[str]) -> list[fx.Node]:
        nodes = []
        for name in names:
            node = self._placeholder(name)
            self.env[name] = node
            nodes.append(node)
        return nodes

    def lower_nodes(self, nodes: Iterable[onnx.NodeProto]) -> None:
        for node in nodes:
            self.lower_node(node)

    def lower_node(self, node: onnx.NodeProto) -> None:
        domain = node.domain or ""
        opset = self.opsets.get(domain if domain != "ai.onnx" else "", 0)
        lowering = lookup(domain, node.op_type)
        ctx = NodeContext(node, opset, self)
        if lowering is None:
            raise ctx.fail("no torch lowering for this operator")
        if opset < lowering.since:
            raise ctx.fail(f"only opset {lowering.since} and later are lowered")
        if lowering.refuse is not None:
            reason = lowering.refuse(ctx)
            if reason:
                raise ctx.fail(reason)
        try:
            result = lowering.build(ctx)
        except LoweringError:
            raise
        except Exception as exc:  # a folding step or a lowering bug: name the node
            raise ctx.fail(f"{type(exc).__name__}: {exc}") from exc
        outputs = list(result) if isinstance(result, list | tuple) else [result]
        for i, name in enumerate(node.output):
            if not name:
                continue
            if i >= len(outputs):
                raise ctx.fail(f"output {i} ({name!r}) is not produced by the lowering")
            self.env[name] = outputs[i]

    def finish(self, output_names: list[str]) -> fx.GraphModule:
        outs = []
        for name in output_names:
            v = self.value(name)
            outs.append(self.const_node(v) if isinstance(v, torch.Tensor) else v)
        self.graph.output(tuple(outs))
        gm = fx.GraphModule(self.root, self.graph, class_name="LoweredOnnx")
        # GraphModule turns every tensor attribute into a buffer; host constants must not move with .to().
        for name in self._host_consts:
            tensor = gm._buffers.pop(name, None)
            if tensor is not None:
                object.__setattr__(gm, name, tensor)
        return gm


def lower_subgraph(parent: NodeContext, graph: onnx.GraphProto) -> tuple[fx.GraphModule, list[str]]:
    """Lower a subgraph; returns the module and the outer names it takes after its formal inputs."""
    assert parent.builder is not None
    sub = GraphBuilder(
        parent.builder.opsets,
        parent.builder.float_dtype,
        outer=parent.builder,
        label=f"{parent.op_type} subgraph {graph.name!r}",
    )
    sub.add_constants(graph.initializer)
    sub.add_inputs([i.name for i in graph.input if i.name not in sub.env])
    sub.lower_nodes(graph.node)
    gm = sub.finish([o.name for o in graph.output])
    return gm, list(sub.captures)


def _ident(name: str) -> str:
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    if not out or out[0].isdigit():
        out = "v_" + out
    return out


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, list | tuple):
        return [t for o in obj for t in _tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors_in(o)]
    return []


def _nodes_in(obj: Any) -> list[fx.Node]:
    if isinstance(obj, fx.Node):
        return [obj]
    if isinstance(obj, list | tuple):
        return [n for o in obj for n in _nodes_in(o)]
    if isinstance(obj, dict):
        return [n for o in obj.values() for n in _nodes_in(o)]
    return []
