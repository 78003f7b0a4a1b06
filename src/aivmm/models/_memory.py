"""Peak activation memory: a liveness walk over the graph's (topological) node order.

A tensor is live from the node that produces it (graph inputs: from the start) to its last
consumer (graph outputs: to the end); during a node both its inputs and its outputs are live.
Weights are not activations (they are ``parameter_bytes``), and neither are the outputs of nodes
fed only by constants (a transposed weight, a ConstantOfShape-generated weight): runtimes fold
them into constants when the session is created. The runtime's arena may reuse or fragment
differently; this is the lower bound any executor of this order needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aivmm.models._graph import GraphIndex, subgraphs


def _outer_names(node: Any) -> set[str]:
    """Names a node's subgraphs read from the enclosing scope (implicit inputs)."""
    names: set[str] = set()
    for sub in subgraphs(node):
        local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
        for inner in sub.node:
            local.update(o for o in inner.output if o)
        for inner in sub.node:
            names.update(i for i in inner.input if i and i not in local)
            names.update(_outer_names(inner) - local)
    return names


def peak_activation_bytes(index: GraphIndex, size_of: Callable[[str], int | None]) -> tuple[int, list[str]]:
    """(peak bytes, names whose size is unknown)."""
    end = len(index.nodes)
    last_use: dict[str, int] = {}
    for step, node in enumerate(index.nodes):
        for name in (*node.input, *_outer_names(node)):
            if name:
                last_use[name] = step
    for name in index.graph_outputs:
        last_use[name] = end
    unknown: list[str] = []

    def size(name: str) -> int:
        s = size_of(name)
        if s is None:
            if name in last_use:  # an unread optional output (a Dropout mask) is not worth a warning
                unknown.append(name)
            return 0
        return s

    live: dict[str, int] = {name: size(name) for name in index.graph_inputs}
    total = sum(live.values())
    peak = total
    for name in list(live):
        if name not in last_use:  # an input nobody reads
            total -= live.pop(name)
    folded = set(index.initializers) | set(index.constants)
    for step, node in enumerate(index.nodes):
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (
            inputs and all(i in folded for i in inputs) and not any(True for _ in subgraphs(node))
        ):
            folded.update(o for o in node.output if o)
            continue
        for out in node.output:
            if out and out not in live:
                live[out] = size(out)
                total += live[out]
        peak = max(peak, total)
        for name in {*node.input, *node.output}:
            if name in live and last_use.get(name, step) <= step:
                total -= live.pop(name)
    return peak, unknown
