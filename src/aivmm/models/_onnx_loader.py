"""ONNX front end: read the file (weights left on disk), validate, infer shapes, analyse."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import math
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aivmm.errors import InputError, ModelLoadError, UnsupportedModelError
from aivmm.models import _flops, _memory, _params, _shapes
from aivmm.models._categorize import categorize
from aivmm.models._graph import GraphIndex, subgraphs, walk_nodes
from aivmm.models._onnx_facts import collect
from aivmm.models._onnx_types import itemsize, to_dtype
from aivmm.models._spec import Dim, ModelFormat, ModelSpec, TensorSpec

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"})
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
QUANTIZED = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSoftmax", "QGemm",
    "DynamicQuantizeMatMul", "MatMulNBits", "QAttention", "DynamicQuantizeLSTM", "MatMulIntegerToFloat",
})
_CHUNK = 1 << 20


@dataclasses.dataclass
class ReadModel:
    model: Any  # ModelProto, external weights not loaded
    external: list[pathlib.Path]  # external-data files, checked to exist and to be long enough
    sha256: str  # over the model file then the external files
    size_bytes: int
    fingerprinted: bool = False  # external data too large to hash whole: see hash_external


_PROTOBUF_LIMIT = 2**31 - 1


def read(path: pathlib.Path) -> ReadModel:
    """Read, hash and validate an ONNX file; weights in external files are located, never read."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    size = path.stat().st_size
    if size > _PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{path}: {size} bytes in one file; an ONNX model over 2 GB must keep its weights in external data"
        )
    data = path.read_bytes()
    digest = hashlib.sha256()
    # Hash on a second core while protobuf parses: hashlib releases the GIL on large buffers.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        hashed = pool.submit(digest.update, data)
        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(
                f"{path}: not an ONNX model or a truncated file ({type(exc).__name__}: {exc})") from exc
        finally:
            hashed.result()
    if model.ir_version < 1 or not model.HasField("graph") or not (model.graph.node or model.graph.output):
        raise ModelLoadError(
            f"{path}: not an ONNX model (ir_version {model.ir_version}, {len(model.graph.node)} nodes, "
            f"{len(model.graph.output)} outputs)"
        )
    external = _external_files(model, path)
    sampled = hash_external(digest, external)
    return ReadModel(model, external, digest.hexdigest(), size + sum(f.stat().st_size for f in external), sampled)


# External data up to this many bytes is hashed whole; above it, a fingerprint (below). Hashing
# reads every byte: at disk speed, tens of GB of weights would take minutes at each load.
FULL_HASH_LIMIT = 1 << 30
_SAMPLES = 64


def hash_external(digest: Any, files: Sequence[pathlib.Path]) -> bool:
    """Feed the external files to ``digest``; True when they were fingerprinted rather than read whole.

    The fingerprint is each file's size and modification time plus 64 evenly spaced 1 MiB blocks
    (first and last included): any rewrite changes the mtime, and an in-place edit that keeps the
    mtime is caught when it touches a sampled block.
    """
    total = sum(f.stat().st_size for f in files)
    whole = total <= FULL_HASH_LIMIT
    for extra in files:
        with open(extra, "rb") as fh:
            if whole:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                continue
            stat = os.fstat(fh.fileno())
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            last = max(stat.st_size - _CHUNK, 0)
            for i in range(_SAMPLES):
                fh.seek(last * i // (_SAMPLES - 1))
                digest.update(fh.read(_CHUNK))
    return not whole


def _all_tensors(graph: Any) -> Any:
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
        for sub in subgraphs(node):
            yield from _all_tensors(sub)


def _external_files(model: Any, path: pathlib.Path) -> list[pathlib.Path]:
    base = path.parent.resolve()
    files: dict[pathlib.Path, int] = {}
    for t in _all_tensors(model.graph):
        if t.data_location != 1:
            continue
        entries = {e.key: e.value for e in t.external_data}
        location = entries.get("location", "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or base not in target.parents:
            raise ModelLoadError(f"{path}: tensor {t.name!r} has an invalid external-data location {location!r}")
        if not target.is_file():
            raise ModelLoadError(f"{path}: tensor {t.name!r}: external-data file {location!r} is missing")
        size = files.setdefault(target, target.stat().st_size)
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else math.ceil(
                math.prod(t.dims) * itemsize(t.data_type))
        except ValueError:
            raise ModelLoadError(f"{path}: tensor {t.name!r}: malformed external-data offset/length") from None
        if offset < 0 or offset + length > size:
            raise ModelLoadError(
                f"{path}: tensor {t.name!r}: external-data file {location!r} is truncated "
                f"(needs bytes {offset}..{offset + length}, file has {size})"
            )
    return sorted(files)


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


def _structure(model: Any, path: pathlib.Path, file_size: int) -> None:
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


def _signature(model: Any, where: str, kind: str) -> tuple[TensorSpec, ...]:
    init = {t.name for t in model.graph.initializer}
    values = model.graph.input if kind == "input" else model.graph.output
    specs = []
    for value in values:
        if kind == "input" and value.name in init:
            continue  # IR < 4 lists weights as inputs
        if not value.type.HasField("tensor_type"):
            raise UnsupportedModelError(
                f"{where}: {kind} {value.name!r} is a {value.type.WhichOneof('value') or 'typeless'} value; "
                f"only tensors are supported"
            )
        tt = value.type.tensor_type
        dims: tuple[Dim, ...] = _shapes.dims_of(value) if tt.HasField("shape") else ()
        specs.append(TensorSpec(value.name, to_dtype(tt.elem_type, f"{where}: {kind} {value.name!r}"), dims))
    return tuple(specs)


def _infer(model: Any, binding: _shapes.Binding, user_shapes: bool, where: str,
           warnings: list[str]) -> dict[str, tuple[int, tuple[Dim, ...]]]:
    import onnx

    sk = _shapes.skeleton(model, binding.shapes)
    try:
        return _shapes.infer(sk, strict=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if user_shapes:
            try:  # the model as declared, symbolic dims left symbolic: is it the given shapes that fail?
                _shapes.infer(_shapes.skeleton(model, {}), strict=True)
            except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError):
                pass
            else:
                raise InputError(
                    f"{where}: the given input shapes {dict(binding.shapes)} contradict the model: {reason}"
                ) from exc
        warnings.append(f"shape inference stopped early ({reason}); figures cover the shapes it inferred")
    try:
        return _shapes.infer(sk, strict=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        warnings.append(f"shape inference failed ({exc}); FLOPs and activation memory are not counted")
        return {}


def _concrete(table: Mapping[str, tuple[int, tuple[Dim, ...]]]) -> Callable[[str], tuple[int, ...] | None]:
    def shape_of(name: str) -> tuple[int, ...] | None:
        entry = table.get(name)
        if entry is None or any(not isinstance(d, int) for d in entry[1]):
            return None
        return tuple(int(d) for d in entry[1])  # type: ignore[arg-type]

    return shape_of


class _FlopTotals:
    def __init__(self) -> None:
        self.flops = 0
        self.macs = 0
        self.per_op: dict[str, int] = collections.defaultdict(int)
        self.uncounted: collections.Counter[str] = collections.Counter()
        self.notes: list[str] = []

    def graph(self, graph: Any, shape_of: Callable[[str], tuple[int, ...] | None], repeat: int = 1) -> None:
        index = GraphIndex.of(graph)
        for node in graph.node:
            if node.op_type in CONTROL_FLOW:
                self._control_flow(node, index, shape_of, repeat)
                continue
            counted = _flops.count(node, shape_of)
            if counted is None:
                self.uncounted[node.op_type] += 1
                continue
            flops, macs = counted
            self.flops += flops * repeat
            self.macs += macs * repeat
            self.per_op[node.op_type] += flops * repeat

    def _control_flow(self, node: Any, index: GraphIndex, shape_of: Callable[[str], tuple[int, ...] | None],
                      repeat: int) -> None:
        from onnx import numpy_helper

        bodies = list(subgraphs(node))
        if node.op_type == "If":
            # Only one branch runs: count the more expensive one.
            best: _FlopTotals | None = None
            for body in bodies:
                branch = _FlopTotals()
                branch.graph(body, shape_of, repeat)
                if best is None or branch.flops > best.flops:
                    best = branch
            if best is not None:
                self._merge(best)
            return
        trips: int | None = None
        if node.op_type == "Loop" and node.input and node.input[0]:
            t = index.constant_tensor(node.input[0])
            if t is not None and t.data_location != 1:
                try:
                    trips = int(numpy_helper.to_array(t).reshape(-1)[0])
                except (ValueError, IndexError, TypeError):
                    trips = None
        elif node.op_type == "Scan":
            scans = int(_flops.attr(node, "num_scan_inputs", 0))
            first = node.input[len(node.input) - scans] if scans else None
            shape = shape_of(first) if first else None
            if shape:
                axes = _flops.attr(node, "scan_input_axes", None)
                trips = shape[int(axes[0]) if axes else 0]
        if trips is None:
            self.notes.append(f"{node.op_type} {node.name or ''} has no constant trip count: its body is counted once")
            trips = 1
        for body in bodies:
            self.graph(body, shape_of, repeat * max(trips, 0))

    def _merge(self, other: _FlopTotals) -> None:
        self.flops += other.flops
        self.macs += other.macs
        for op, v in other.per_op.items():
            self.per_op[op] += v
        self.uncounted.update(other.uncounted)
        self.notes.extend(other.notes)


def load_onnx(path: str | os.PathLike[str], *, shapes: Mapping[str, Sequence[int]] | None = None,
              name: str | None = None) -> ModelSpec:
    path = pathlib.Path(path)
    where = str(path)
    loaded = read(path)
    try:
        opsets, custom = check_opsets(loaded.model, where)
        _structure(loaded.model, path, loaded.size_bytes)
        return analyse(loaded, path=path, shapes=shapes, name=name, opsets=opsets, custom=custom)
    except UnicodeDecodeError as exc:
        # protobuf parses string fields lazily: a corrupt name surfaces only when read.
        raise ModelLoadError(f"{where}: corrupt file: a name or string is not valid UTF-8 ({exc})") from exc


def analyse(loaded: ReadModel, *, path: pathlib.Path, shapes: Mapping[str, Sequence[int]] | None,
            name: str | None, opsets: dict[str, int], custom: tuple[str, ...]) -> ModelSpec:
    where = str(path)
    model = loaded.model
    warnings: list[str] = []
    if loaded.fingerprinted:
        warnings.append(
            f"external data over {FULL_HASH_LIMIT >> 20} MiB: sha256 covers the model file and a fingerprint of "
            f"the weights (sizes, mtimes, sampled blocks), not every weight byte"
        )
    inputs = _signature(model, where, "input")
    outputs = _signature(model, where, "output")
    signature = "inputs (" + "; ".join(t.describe() for t in inputs) + ")"
    binding = _shapes.bind(inputs, shapes, signature)
    warnings.extend(binding.assumptions)
    table = _infer(model, binding, bool(shapes), where, warnings)
    shape_of = _concrete(table)

    totals = _FlopTotals()
    totals.graph(model.graph, shape_of)
    uncounted = {op: n for op, n in totals.uncounted.items()}
    if uncounted:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(uncounted.items()))
        warnings.append(f"FLOPs not counted (unknown op or shape) for: {listed}")
    warnings.extend(totals.notes)

    def size_of(tensor: str) -> int | None:
        entry = table.get(tensor)
        s = shape_of(tensor)
        if entry is None or s is None:
            return None
        return math.ceil(math.prod(s) * itemsize(entry[0]))

    index = GraphIndex.of(model.graph)
    peak, unknown = _memory.peak_activation_bytes(index, size_of)
    if unknown:
        warnings.append(f"activation size unknown for {len(unknown)} tensor(s) (e.g. {unknown[0]!r}): peak "
                        f"memory is a lower bound")
    params = _params.count(model.graph)
    histogram = collections.Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                                    for n in walk_nodes(model.graph))
    facts = collect(model, dict(histogram))
    if custom:
        warnings.append(f"custom operator domain(s): {', '.join(custom)}; only runtimes that implement them can run it")
    control = tuple(sorted({n.op_type for n in walk_nodes(model.graph) if n.op_type in CONTROL_FLOW}))
    quantized = tuple(sorted({n.op_type for n in walk_nodes(model.graph) if n.op_type in QUANTIZED}))
    batch_dim: int | None = 0 if inputs and all(
        t.rank >= 1 and not isinstance(t.shape[0], int) for t in inputs) else None
    if batch_dim is None and inputs:
        warnings.append("no symbolic batch dimension shared by all inputs: requests cannot be batched together")
    return ModelSpec(
        name=name or path.stem,
        format=ModelFormat.ONNX,
        inputs=inputs,
        outputs=outputs,
        parameters=params.parameters,
        parameter_bytes=params.parameter_bytes,
        flops=int(totals.flops),
        macs=int(totals.macs),
        peak_activation_bytes=int(peak),
        operators=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        per_operator_flops=dict(sorted(((k, int(v)) for k, v in totals.per_op.items() if v),
                                       key=lambda kv: -kv[1])),
        opsets=opsets,
        custom_domains=custom,
        control_flow=control,
        quantized_operators=quantized,
        categories=categorize(facts),
        shapes_used=binding.shapes,
        source=path,
        sha256=loaded.sha256,
        external_data=bool(loaded.external),
        size_bytes=loaded.size_bytes,
        batch_dim=batch_dim,
        warnings=tuple(warnings),
    )
