"""Reading an ONNX file: parse it with its external weights left on disk, locate and check the
external-data files, and hash everything for change detection."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from aivmm.errors import ModelLoadError
from aivmm.models._graph import subgraphs
from aivmm.models._onnx_types import itemsize

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
                f"{path}: not an ONNX model or a truncated file ({type(exc).__name__}: {exc})"
            ) from exc
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


def all_tensors(graph: Any) -> Any:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
        for sub in subgraphs(node):
            yield from all_tensors(sub)


def _external_files(model: Any, path: pathlib.Path) -> list[pathlib.Path]:
    base = path.parent.resolve()
    files: dict[pathlib.Path, int] = {}
    for t in all_tensors(model.graph):
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
            length = (
                int(entries["length"]) if "length" in entries else math.ceil(math.prod(t.dims) * itemsize(t.data_type))
            )
        except ValueError:
            raise ModelLoadError(f"{path}: tensor {t.name!r}: malformed external-data offset/length") from None
        if offset < 0 or offset + length > size:
            raise ModelLoadError(
                f"{path}: tensor {t.name!r}: external-data file {location!r} is truncated "
                f"(needs bytes {offset}..{offset + length}, file has {size})"
            )
    return sorted(files)
