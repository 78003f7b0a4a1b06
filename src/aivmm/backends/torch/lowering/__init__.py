"""aivmm's own ONNX → torch.fx lowering.

``lower(model, float_dtype=...)`` returns a ``torch.fx.GraphModule`` whose forward takes the
graph inputs (initializers excluded) in order and returns a tuple of the graph outputs.
``refusals(model)`` is the static check: every node (subgraphs included) whose operator, domain,
opset or attributes the lowering does not follow, each as a sentence. A model with refusals is
never lowered: a wrong answer is worse than none.
"""

from __future__ import annotations

import onnx
import torch
from torch import fx

from aivmm.backends.torch.lowering._builder import GraphBuilder
from aivmm.backends.torch.lowering._fuse import fuse as fuse_patterns
from aivmm.backends.torch.lowering._node import ONNX_TO_TORCH, NodeContext
from aivmm.backends.torch.lowering._registry import lookup, supported
from aivmm.errors import LoweringError

# Opsets older than 7 carry legacy attributes (``broadcast``, ``consumed_inputs``) this lowering does not follow.
MIN_OPSET = 7

__all__ = ["MIN_OPSET", "graph_inputs", "lower", "refusals", "supported"]


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if o.domain in ("", "ai.onnx") else o.domain): int(o.version) for o in model.opset_import}


def graph_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the true inputs (an initializer listed as an input is a constant here)."""
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def refusals(model: onnx.ModelProto) -> list[str]:
    """Why the model cannot be lowered (empty when it can), without building anything."""
    opsets = opsets_of(model)
    reasons: list[str] = []
    default = opsets.get("", 0)
    if default and default < MIN_OPSET:
        reasons.append(f"ai.onnx opset {default} is older than {MIN_OPSET}, the oldest the torch lowering follows")
    newest = onnx.defs.onnx_opset_version()
    if default > newest:
        reasons.append(f"ai.onnx opset {default} is newer than {newest}, the newest this onnx package knows")
    if model.functions:
        names = ", ".join(sorted(f"{f.domain}::{f.name}" for f in model.functions))
        reasons.append(f"model-local functions ({names}) are not lowered; inline them first (onnx.inliner)")
    if model.graph.sparse_initializer:
        reasons.append("sparse initializers are not lowered")
    for value in list(model.graph.input) + list(model.graph.output):
        problem = _io_type_problem(value)
        if problem:
            reasons.append(f"{value.name!r}: {problem}")
    seen: set[str] = set()
    _scan(model.graph, opsets, reasons, seen)
    return reasons


def _io_type_problem(value: onnx.ValueInfoProto) -> str | None:
    if not value.type.HasField("tensor_type"):
        kind = value.type.WhichOneof("value")
        return f"{kind} values are not lowered (tensors only)"
    elem = value.type.tensor_type.elem_type
    if elem == onnx.TensorProto.UINT64:
        return "element type UINT64: torch has almost no arithmetic for uint64"
    if elem and elem not in ONNX_TO_TORCH:
        return f"element type {onnx.TensorProto.DataType.Name(elem)} is not supported by torch"
    return None


def _scan(graph: onnx.GraphProto, opsets: dict[str, int], reasons: list[str], seen: set[str]) -> None:
    for node in graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        opset = opsets.get(domain, 0)
        ctx = NodeContext(node, opset)
        lowering = lookup(domain, node.op_type)
        reason = None
        if lowering is None:
            domain_name = node.domain or "ai.onnx"
            reason = f"operator {node.op_type} (domain {domain_name!r}, opset {opset}) has no torch lowering"
        elif opset < lowering.since:
            reason = (
                f"operator {node.op_type} (domain {node.domain or 'ai.onnx'!r}) at opset {opset}: "
                f"only opset {lowering.since} and later are lowered"
            )
        elif lowering.refuse is not None:
            try:
                why = lowering.refuse(ctx)
            except LoweringError as exc:
                why = str(exc)
            if why:
                reason = f"{ctx.where()}: {why}"
        if reason and reason not in seen:
            seen.add(reason)
            reasons.append(reason)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _scan(attr.g, opsets, reasons, seen)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _scan(g, opsets, reasons, seen)


def lower(model: onnx.ModelProto, *, float_dtype: torch.dtype = torch.float32, fuse: bool = True) -> fx.GraphModule:
    """Lower ``model``; raises LoweringError naming the first node that blocks it.

    ``fuse`` replaces op-by-op patterns (MatMul+Add, erf GELU, softmax attention) with one torch
    kernel each; ``gm.fused`` counts them.
    """
    reasons = refusals(model)
    if reasons:
        raise LoweringError("; ".join(reasons))
    fused: dict[str, int] = {}
    if fuse:
        model, fused = fuse_patterns(model)
    builder = GraphBuilder(opsets_of(model), float_dtype, label=model.graph.name or "graph")
    builder.add_constants(model.graph.initializer)
    builder.add_inputs(graph_inputs(model))
    builder.lower_nodes(model.graph.node)
    gm = builder.finish([o.name for o in model.graph.output])
    gm.eval()
    # nn.Module.__setattr__ is typed for tensors and modules only; any attribute works.
    gm.fused = fused  # type: ignore[assignment]
    return gm
