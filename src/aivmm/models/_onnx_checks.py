"""Validating an ONNX model before analysis: opsets, domains and operators, then onnx.checker over
the graph skeleton with large weights checked from their headers."""

from __future__ import annotations

import math
import pathlib
from typing import Any

from aivmm.errors import ModelLoadError, UnsupportedModelError
from aivmm.models import _shapes
from aivmm.models._graph import walk_nodes
from aivmm.models._onnx_types import itemsize

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"})


def check_opsets(model: Any, where: str) -> tuple[dict[str, int], tuple[str, ...]]:
    """Opsets by domain and the custom domains; raises UnsupportedModelError for unknown ones."""
    import onnx

    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        domain = entry.domain or "ai.onnx"
        opsets[domain] = int(entry.version)
    if model.ir_version >= 3 and "ai.onnx" not in opsets and model.graph.node:
        raise UnsupportedModelError(f"{where}: the model imports no default ONNX opset")
    limits = {"ai.onnx": onnx.defs.onnx_opset_version(), "ai.onnx.ml": onnx.defs.onnx_ml_opset_version()}
    for domain, version in opsets.items():
        if domain in limits and not 1 <= version <= limits[domain]:
            raise UnsupportedModelError(
                f"{where}: opset {version} of domain {domain!r} is unknown (onnx {onnx.__version__} knows 1.."
                f"{limits[domain]})"
            )
    functions = {(_norm(fn.domain), fn.name) for fn in model.functions}
    declared = {_norm(e.domain) for e in model.opset_import}
    for node in walk_nodes(model.graph):
        domain = _norm(node.domain)
        if (domain, node.op_type) in functions:
            continue
        if domain not in declared:
            raise UnsupportedModelError(
                f"{where}: node {node.name or node.op_type!r} ({node.op_type}) uses domain {node.domain!r}, "
                f"which the model does not import"
            )
        if domain in ("", "ai.onnx.ml") and not _known_op(node.op_type, domain):
            raise UnsupportedModelError(
                f"{where}: operator {node.op_type!r} does not exist in domain {domain or 'ai.onnx'!r} "
                f"(opset {opsets.get(domain or 'ai.onnx', 0)})"
            )
    custom = sorted({d for d in opsets if d not in STANDARD_DOMAINS} |
                    {n.domain for n in walk_nodes(model.graph) if n.domain not in STANDARD_DOMAINS})
    return opsets, tuple(custom)


def _known_op(op_type: str, domain: str) -> bool:
    import onnx

    try:
        return bool(onnx.defs.has(op_type, domain))
    except (TypeError, ValueError):  # a name onnx's C++ layer cannot even take (corrupt bytes)
        return False


def _norm(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def check_structure(model: Any, path: pathlib.Path, file_size: int) -> None:
    """onnx.checker over the graph skeleton; large weights are checked here from their headers.

    Handing the checker the whole model would make it serialise every weight byte again, which
    costs more than all the rest of the analysis. The skeleton keeps small weights inline (the
    checker verifies them); for large inline weights, whose data protobuf has already parsed
    from the file, the file must hold at least the bytes their dims imply — one sum, no copy.
    """
    import onnx

    where = str(path)
    large = []
    for t in model.graph.initializer:
        if not t.name:
            raise ModelLoadError(f"{where}: an initializer has no name")
        if any(d < 0 for d in t.dims):
            raise ModelLoadError(f"{where}: initializer {t.name!r} has a negative dimension {list(t.dims)}")
        if t.data_location != 1 and t.data_type != 8 and math.prod(t.dims) > _shapes.INLINE_LIMIT:
            large.append(t)
    if sum(math.ceil(math.prod(t.dims) * itemsize(t.data_type)) for t in large) > file_size:
        for t in large:  # the rare failure path: find the culprit, copying data as needed
            _check_weight_size(t, where)
    try:
        onnx.checker.check_model(_shapes.skeleton(model, {}))
    except onnx.checker.ValidationError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "No Op registered" in message or "opset" in message.lower():
            raise UnsupportedModelError(f"{where}: {message}") from exc
        raise ModelLoadError(f"{where}: invalid ONNX model: {message}") from exc
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"{where}: invalid ONNX model: {exc}") from exc


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _check_weight_size(t: Any, where: str) -> None:
    expected = math.ceil(math.prod(t.dims) * itemsize(t.data_type))
    have = len(t.raw_data) if t.HasField("raw_data") else sum(len(getattr(t, f)) for f in _TYPED_FIELDS) * (
        itemsize(t.data_type))
    if have < expected:
        raise ModelLoadError(
            f"{where}: initializer {t.name!r} holds {int(have)} bytes of data but its dims {list(t.dims)} "
            f"need {expected}"
        )
