"""Peephole fusions on the ONNX graph, before lowering: patterns exporters spell out op by op that
torch has one kernel for.

* ``MatMul(x, W) + b`` (W a 2-D constant, b a 1-D constant) -> ``F.linear`` (one GEMM with bias);
* the erf GELU ``0.5 * x * (1 + erf(x / sqrt 2))`` -> ``F.gelu``;
* ``softmax(Q Kᵀ * scale [+ mask]) V`` -> ``F.scaled_dot_product_attention`` (flash / memory-efficient
  kernels on GPUs).

Fused nodes are ordinary nodes of the private domain ``aivmm.fused`` and are lowered like any other.
A pattern is fused only when every intermediate value has that single consumer and is not a graph
output, so no value another node reads disappears. Subgraphs are left as they are.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

FUSED_DOMAIN = "aivmm.fused"


def fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of ``model`` with the patterns fused, and how many of each were fused."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = _constants(graph)
    counts: dict[str, int] = defaultdict(int)
    nodes = list(graph.node)
    pinned = {o.name for o in graph.output} | _subgraph_reads(graph)
    for rewrite in (_attention, _linear, _gelu):
        nodes = rewrite(nodes, consts, pinned, counts)
    del graph.node[:]
    graph.node.extend(nodes)
    if counts:
        out.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))
    return out, dict(counts)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input and node.input[0] in consts:
            # Exporters share equal initializers (a zero bias of every layer) through Identity nodes.
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                for sub in attr.g.node:
                    names.update(sub.input)
                names |= _subgraph_reads(attr.g)
    return names


def _consumers(nodes: list[onnx.NodeProto]) -> dict[str, list[int]]:
    users: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for name in node.input:
            if name:
                users[name].append(i)
    return users


def _only_user(users: dict[str, list[int]], pinned: set[str], name: str) -> int | None:
    """The index of the single node reading ``name``, when no one else (graph outputs included) does."""
    readers = users.get(name, [])
    if len(readers) != 1 or name in pinned:
        return None
    return readers[0]


def _is_default(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _scalar(consts: dict[str, np.ndarray], name: str) -> float | None:
    value = consts.get(name)
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(-1)[0])


def _other(node: onnx.NodeProto, name: str) -> str | None:
    """The other input of a binary node, given one of them."""
    if len(node.input) != 2:
        return None
    a, b = node.input
    return b if a == name else a if b == name else None


def _rebuild(nodes: list[onnx.NodeProto], drop: set[int], insert: dict[int, onnx.NodeProto]) -> list:
    out = []
    for i, node in enumerate(nodes):
        if i in insert:
            out.append(insert[i])
        elif i not in drop:
            out.append(node)
    return out


def _linear(nodes: list, consts: dict, pinned: set, counts: dict) -> list:
    users = _consumers(nodes)
    drop: set[int] = set()
    insert: dict[int, onnx.NodeProto] = {}
    for i, mm in enumerate(nodes):
        if mm.op_type != "MatMul" or not _is_default(mm) or i in drop:
            continue
        w = consts.get(mm.input[1])
        if w is None or w.ndim != 2 or w.dtype.kind != "f":
            continue
        j = _only_user(users, pinned, mm.output[0])
        if j is None or nodes[j].op_type != "Add" or not _is_default(nodes[j]) or j in drop:
            continue
        bias_name = _other(nodes[j], mm.output[0])
        if not bias_name:
            continue
        b = consts.get(bias_name)
        if b is None or b.ndim != 1 or b.shape[0] != w.shape[1] or b.dtype != w.dtype:
            continue
        drop |= {i, j}
        insert[j] = helper.make_node(
            "Linear",
            [mm.input[0], mm.input[1], bias_name],
            [nodes[j].output[0]],
            name=f"{mm.name}+{nodes[j].name}",
            domain=FUSED_DOMAIN,
        )
        counts["Linear"] += 1
    return _rebuild(nodes, drop - set(insert), insert)


def _gelu(nodes: list, consts: dict, pinned: set, counts: dict) -> list:
    users = _consumers(nodes)
    drop: set[int] = set()
    insert: dict[int, onnx.NodeProto] = {}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    for e, erf in enumerate(nodes):
        if erf.op_type != "Erf" or not _is_default(erf):
            continue
        a = producer.get(erf.input[0])
        if a is None or a in drop or _only_user(users, pinned, erf.input[0]) != e:
            continue
        scale_node = nodes[a]
        x = None
        if scale_node.op_type in ("Mul", "Div") and _is_default(scale_node):
            for cand in scale_node.input:
                c = _scalar(consts, _other(scale_node, cand) or "")
                if c is None:
                    continue
                factor = c if scale_node.op_type == "Mul" else 1.0 / c if c else 0.0
                if math.isclose(factor, 1 / math.sqrt(2), rel_tol=1e-4):
                    x = cand
        if x is None:
            continue
        p = _only_user(users, pinned, erf.output[0])
        if p is None or nodes[p].op_type != "Add" or _scalar(consts, _other(nodes[p], erf.output[0]) or "") != 1.0:
            continue
        q = _only_user(users, pinned, nodes[p].output[0])
        if q is None or nodes[q].op_type != "Mul":
            continue
        q_other = _other(nodes[q], nodes[p].output[0])
        r = _only_user(users, pinned, nodes[q].output[0])
        if r is None or nodes[r].op_type != "Mul":
            continue
        r_other = _other(nodes[r], nodes[q].output[0])
        # Either (x * p) * 0.5 or (p * 0.5) * x.
        if not (
            (q_other == x and _scalar(consts, r_other or "") == 0.5)
            or (_scalar(consts, q_other or "") == 0.5 and r_other == x)
        ):
            continue
        group = {a, e, p, q, r}
        if group & drop:
            continue
        drop |= group
        insert[r] = helper.make_node("Gelu", [x], [nodes[r].output[0]], name=f"{erf.name}:gelu", domain=FUSED_DOMAIN)
        counts["Gelu"] += 1
    return _rebuild(nodes, drop - set(insert), insert)


def _attention(nodes: list, consts: dict, pinned: set, counts: dict) -> list:
    users = _consumers(nodes)
    drop: set[int] = set()
    insert: dict[int, onnx.NodeProto] = {}
    for i, qk in enumerate(nodes):
        if qk.op_type != "MatMul" or not _is_default(qk) or i in drop:
            continue
        s = _only_user(users, pinned, qk.output[0])
        if s is None or nodes[s].op_type not in ("Mul", "Div"):
            continue
        c = _scalar(consts, _other(nodes[s], qk.output[0]) or "")
        if c is None or c == 0:
            continue
        scale = c if nodes[s].op_type == "Mul" else 1.0 / c
        if nodes[s].op_type == "Div" and nodes[s].input[0] != qk.output[0]:
            continue
        nxt = _only_user(users, pinned, nodes[s].output[0])
        mask = None
        group = [i, s]
        if nxt is not None and nodes[nxt].op_type == "Add":
            mask = _other(nodes[nxt], nodes[s].output[0])
            group.append(nxt)
            nxt = _only_user(users, pinned, nodes[nxt].output[0])
        if nxt is None or nodes[nxt].op_type != "Softmax":
            continue
        axis = next((a.i for a in nodes[nxt].attribute if a.name == "axis"), None)
        if axis != -1:  # the opset <13 flattening semantics would differ; -1 is unambiguous from 13 on
            continue
        group.append(nxt)
        av = _only_user(users, pinned, nodes[nxt].output[0])
        if av is None or nodes[av].op_type != "MatMul" or nodes[av].input[0] != nodes[nxt].output[0]:
            continue
        group.append(av)
        if set(group) & drop:
            continue
        drop |= set(group)
        inputs = [qk.input[0], qk.input[1], nodes[av].input[1]] + ([mask] if mask else [])
        insert[av] = helper.make_node(
            "Attention",
            inputs,
            [nodes[av].output[0]],
            name=f"{qk.name}:attention",
            domain=FUSED_DOMAIN,
            scale=float(scale),
        )
        counts["Attention"] += 1
    return _rebuild(nodes, drop - set(insert), insert)
