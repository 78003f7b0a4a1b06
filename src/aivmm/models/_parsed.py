"""The parsed ONNX graph of a model, kept while it is deployed so the file is parsed once.

aivmm's loader parses the file to analyse it; the planner's input generation, the backends'
operator checks and the torch lowering read the same graph. The loader keeps its ``ModelProto``
(external weights left on disk) on the spec, and :func:`onnx_model` hands that one out; the
façade drops it once the model is loaded (:func:`release_parsed`): a deployed model's graph lives
in its runtime session, and a second copy in Python would double the memory it holds. After that,
or for a spec whose source changed (``dataclasses.replace(spec, source=...)``), the file is parsed
again when something asks.

Callers must not modify the proto they get: it is shared (copy it first, as the lowering does).
"""

from __future__ import annotations

import os
import pathlib
import threading
from typing import Any

from aivmm.errors import ModelLoadError
from aivmm.models._spec import ModelSpec


class ParsedModel:
    """A ``ModelProto`` and the source it was parsed from. Pickles empty (a worker process parses
    its own copy rather than receiving the whole graph through a pipe)."""

    __slots__ = ("_lock", "proto", "source")

    def __init__(self, source: Any, proto: Any) -> None:
        self.source = source
        self.proto = proto
        self._lock = threading.Lock()

    def get(self, source: Any) -> Any:
        with self._lock:
            return self.proto if self.source == source else None

    def release(self) -> None:
        with self._lock:
            self.proto = None

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.source, self.proto, self._lock = state["source"], None, threading.Lock()


def onnx_model(spec: ModelSpec) -> Any:
    """The ``onnx.ModelProto`` of an ONNX spec, external weights not loaded: the loader's parse
    while it is kept, else the source itself (a proto), else the bytes or file parsed now."""
    import onnx

    kept = spec.parsed.get(spec.source) if spec.parsed is not None else None
    if kept is not None:
        return kept
    source = spec.source
    if isinstance(source, onnx.ModelProto):
        return source
    try:
        if isinstance(source, bytes | bytearray):
            return onnx.load_model_from_string(bytes(source))
        if isinstance(source, str | os.PathLike):
            return onnx.load(str(pathlib.Path(source)), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError and others for bad files
        raise ModelLoadError(f"cannot read ONNX model {source!s:.200}: {exc}") from exc
    raise ModelLoadError(f"{spec.name!r}: no ONNX graph in a source of type {type(source).__name__}")


def onnx_model_with_weights(spec: ModelSpec) -> Any:
    """A private copy of :func:`onnx_model`'s graph with the external weights read in from beside
    the file (the graph is copied, not parsed again); the caller may modify it."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    proto = onnx.ModelProto()
    proto.CopyFrom(onnx_model(spec))
    if spec.external_data and isinstance(spec.source, str | os.PathLike):
        try:
            load_external_data_for_model(proto, str(pathlib.Path(spec.source).parent))
        except Exception as exc:  # a file gone or cut short since the load checked it
            raise ModelLoadError(f"cannot read the external weights of {spec.source!s:.200}: {exc}") from exc
    return proto


def release_parsed(spec: ModelSpec) -> None:
    """Drop the kept parse (the next :func:`onnx_model` parses the file again)."""
    if spec.parsed is not None:
        spec.parsed.release()
