"""Operator coverage for ONNX Runtime, decided from the schemas the runtime registers, before loading.

A model's operators are read as ``(domain, op_type, opset)`` from the graph, its subgraphs (If, Loop,
Scan bodies) and its local functions' bodies; each must match a schema ONNX Runtime registered for that
domain with ``since_version <= opset``. A schema is necessary, not sufficient (a kernel may be missing for
one type on one EP): session creation stays the final word, and its error is translated the same way.
"""

from __future__ import annotations

import functools
from typing import Any

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _norm(domain: str) -> str:
    return "" if domain in _DEFAULT_DOMAINS else domain


def model_operators(proto: Any) -> frozenset[tuple[str, str, int]]:
    """Every ``(domain, op_type, opset)`` the runtime must execute, local functions expanded."""
    opsets = {_norm(o.domain): int(o.version) for o in proto.opset_import}
    functions = {(_norm(f.domain), f.name): f for f in proto.functions}
    found: set[tuple[str, str, int]] = set()
    seen_functions: set[tuple[str, str]] = set()

    def walk(nodes: Any, scope_opsets: dict[str, int]) -> None:
        for node in nodes:
            key = (_norm(node.domain), node.op_type)
            fn = functions.get(key)
            if fn is not None:
                if key not in seen_functions:
                    seen_functions.add(key)
                    fn_opsets = dict(scope_opsets)
                    fn_opsets.update({_norm(o.domain): int(o.version) for o in fn.opset_import})
                    walk(fn.node, fn_opsets)
                continue
            found.add((key[0], key[1], scope_opsets.get(key[0], 1)))
            for attr in node.attribute:
                if attr.g is not None and len(attr.g.node):
                    walk(attr.g.node, scope_opsets)
                for sub in attr.graphs:
                    walk(sub.node, scope_opsets)

    walk(proto.graph.node, opsets)
    return frozenset(found)


@functools.lru_cache(maxsize=1)
def _registered() -> dict[tuple[str, str], tuple[int, ...]]:
    """(domain, op) -> sorted since_versions, from ONNX Runtime's operator schema registry."""
    from onnxruntime.capi import _pybind_state as capi

    table: dict[tuple[str, str], list[int]] = {}
    for schema in capi.get_all_operator_schema():
        table.setdefault((_norm(schema.domain), schema.name), []).append(int(schema.since_version))
    return {k: tuple(sorted(v)) for k, v in table.items()}


def schemas_reachable() -> bool:
    try:
        return bool(_registered())
    except (ImportError, AttributeError, RuntimeError):
        return False


def unsupported(operators: frozenset[tuple[str, str, int]]) -> list[str]:
    """Operators with no registered schema at their opset, as readable strings, sorted."""
    table = _registered()
    missing = []
    for domain, op, opset in sorted(operators):
        versions = table.get((domain, op))
        label = f"{domain + '.' if domain else ''}{op} (opset {opset})"
        if versions is None:
            missing.append(f"{label}: not registered")
        elif versions[0] > opset:
            missing.append(f"{label}: registered only from opset {versions[0]}")
    return missing
