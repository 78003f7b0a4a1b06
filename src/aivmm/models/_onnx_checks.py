"""Validating an ONNX model before analysis: opsets, domains and operators, every inline weight's
size against its dims, then onnx.checker over the graph skeleton."""

from __future__ import annotations

import math
import pathlib
import re
from typing import Any

from aivmm.errors import ModelLoadError, UnsupportedModelError
from aivmm.models import _shapes
from aivmm.models._graph import walk_nodes
from aivmm.models._onnx_file import all_tensors
from aivmm.models._onnx_types import itemsize

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"})


def check_opsets(model: Any, where: str) -> tuple[dict[str, int], tuple[str, ...]]:
    """Opsets by domain and the custom domains; raises UnsupportedModelError for unknown ones."""
    import onnx

    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        domain = entry.domain or "ai.onnx"
        opsets[domain] = int(entry.version)
    # A graph of ai.onnx.ml operators only (a scikit-learn export) needs no default opset; a node of
    # the default domain without one is refused below ("uses domain ... which the model does not import").
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
    custom = sorted(
        {d for d in opsets if d not in STANDARD_DOMAINS}
        | {n.domain for n in walk_nodes(model.graph) if n.domain not in STANDARD_DOMAINS}
    )
    return opsets, tuple(custom)


def _known_op(op_type: str, domain: str) -> bool:
    import onnx

    try:
        return bool(onnx.defs.has(op_type, domain))
    except (TypeError, ValueError):  # a name onnx's C++ layer cannot even take (corrupt bytes)
        return False


def _norm(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def check_structure(model: Any, path: pathlib.Path) -> None:
    """Every inline weight holds exactly the bytes its dims and type imply, then onnx.checker over
    the graph skeleton.

    Handing the checker the whole model would make it serialise every weight byte again, which
    costs more than all the rest of the analysis; and the checker only asks that data be not too
    short. A weight whose data disagrees with its dims in either direction cannot be turned into
    an array by any runtime, so it is refused here, by name.
    """
    import onnx

    where = str(path)
    for t in model.graph.initializer:
        if not t.name:
            raise ModelLoadError(f"{where}: an initializer has no name")
        if any(d < 0 for d in t.dims):
            raise ModelLoadError(f"{where}: initializer {t.name!r} has a negative dimension {list(t.dims)}")
    for t in all_tensors(model.graph):
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


# Contradictions ONNX's own inference proves from the model alone. ONNX Runtime runs the same
# operator inference functions when it loads a model and refuses these too; a runtime that does not
# check (the torch lowering, say) would otherwise run them into a crash or a wrong answer. A clash
# between an inferred shape and a declared one ("existing shape differ") is left out: ONNX Runtime
# merges those leniently and runs the model.
_CONTRADICTION = re.compile(
    r"\(op_type:(?P<op>[^,]*), node name: (?P<node>[^)]*)\): "
    r"(?:\[(?:Type|Shape)InferenceError\] )?(?P<what>.*)"
)
_LENIENT = ("existing shape differ",)


def check_consistency(model: Any, where: str) -> None:
    """Refuse a model whose operators contradict each other's types or shapes (onnx's strict type
    and shape inference over the declared signature, no dims assumed)."""
    import onnx

    try:
        onnx.shape_inference.infer_shapes(
            _shapes.skeleton(model, {}), check_type=True, strict_mode=True, data_prop=False
        )
    # ValueError / TypeError: values inference cannot even read (a corrupt elem type); analysis
    # reports those later, this check only speaks about proven contradictions.
    except (
        onnx.shape_inference.InferenceError,
        onnx.checker.ValidationError,
        RuntimeError,
        ValueError,
        TypeError,
    ) as exc:
        for line in str(exc).splitlines():
            m = _CONTRADICTION.search(line)
            if m and not any(k in m["what"] for k in _LENIENT):
                raise ModelLoadError(
                    f"{where}: invalid ONNX model: node {m['node'] or m['op']!r} ({m['op']}): {m['what'].strip()}"
                ) from exc


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
_RAW_DATA_TAG_BYTES = 1  # raw_data is field 9 of TensorProto: its wire tag takes one byte


def _check_weight_size(t: Any, where: str) -> None:
    if t.data_location == 1 or t.data_type in (0, 8):  # external (checked with its file), undefined, string
        return
    expected = math.ceil(math.prod(t.dims) * itemsize(t.data_type))
    if t.HasField("raw_data"):
        have: float = _raw_length(t)
        if have != expected:
            have = len(t.raw_data)  # the estimate's rare failure path: read the real length (a copy)
        if have == expected:
            return
        relation = "holds" if have < expected else "holds more:"
    elif any(len(getattr(t, f)) for f in _TYPED_FIELDS):
        have = sum(len(getattr(t, f)) for f in _TYPED_FIELDS) * itemsize(t.data_type)
        if have >= expected:  # typed fields pack some types several to an entry: only "too short" is sure
            return
        relation = "holds"
    else:
        return  # no data at all: onnx.checker reports the initializer with nothing in it
    what = f"tensor {t.name!r}" if t.name else "an unnamed constant tensor"
    raise ModelLoadError(
        f"{where}: {what} {relation} {int(have)} bytes of data but its dims {list(t.dims)} need {expected}"
    )


def _raw_length(t: Any) -> int:
    """len(t.raw_data) without copying the bytes (protobuf's Python API copies them on access):
    the message's serialised size less that of every other field, less raw_data's tag and length."""
    import onnx

    meta = onnx.TensorProto()
    for field in onnx.TensorProto.DESCRIPTOR.fields:
        if field.name == "raw_data":
            continue
        value = getattr(t, field.name)
        if field.is_repeated:
            if len(value):
                getattr(meta, field.name).extend(value)
        elif t.HasField(field.name):
            if field.message_type is not None:
                getattr(meta, field.name).CopyFrom(value)
            else:
                setattr(meta, field.name, value)
    rest = t.ByteSize() - meta.ByteSize() - _RAW_DATA_TAG_BYTES
    for width in range(1, 11):  # the length is a varint of 1..10 bytes
        length = rest - width
        if length >= 0 and _varint_width(length) == width:
            return length
    return -1


def _varint_width(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)
