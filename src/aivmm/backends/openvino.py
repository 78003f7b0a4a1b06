"""The OpenVINO backend ("openvino"): CPU, Intel GPU (GPU.N) and NPU, AUTO and HETERO on request.

The precision hint is always explicit (``INFERENCE_PRECISION_HINT``), compiled models are cached under
``$AIVMM_CACHE_DIR/openvino``, and concurrent runs each take their own ``InferRequest`` from a pool.
Config options (all optional):

- ``device_mode``: ``"AUTO"`` / ``"HETERO"`` (the device then CPU) or ``"AUTO:GPU.0,CPU"`` / ``"HETERO:GPU.0,CPU"``;
- ``performance_hint``: ``LATENCY`` (default), ``THROUGHPUT``, ``CUMULATIVE_THROUGHPUT``;
- ``num_streams`` (int or ``"AUTO"``); ``intra_op_threads`` (``INFERENCE_NUM_THREADS``, set when sessions
  share cores); ``cache`` (default True): the compiled-model cache;
- ``disable_fallback``: with HETERO, refuse a model part of which would run on another device.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import pathlib
import queue
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from aivmm._storage import cache_dir as storage_cache_dir
from aivmm.backends import _openvino_devices as ovd
from aivmm.backends._base import Backend, Config, LoadReport, Session, Support
from aivmm.backends._info import BackendInfo, OptionEffect, distribution_versions
from aivmm.backends.tensors import check_output_kind, convert_outputs, to_numpy
from aivmm.devices import Device, DeviceKind
from aivmm.dtypes import Precision
from aivmm.errors import (
    ConfigError,
    ExecutionError,
    FallbackError,
    ModelClosedError,
    ModelLoadError,
    OutOfMemoryError,
    UnsupportedModelError,
    missing_extra,
)
from aivmm.models import ModelFormat, ModelSpec

log = logging.getLogger(__name__)

OPTIONS = ("device_mode", "performance_hint", "num_streams", "intra_op_threads", "cache", "disable_fallback")
# What the planner knows about this runtime before it is imported (the rest is filled in by info()).
_STATIC_INFO = BackendInfo(
    name="openvino",
    formats=frozenset({ModelFormat.ONNX}),
    device_kinds=frozenset(),
    precisions=frozenset(),
    options={"performance_hint": ("LATENCY", "THROUGHPUT")},
    call_overhead_ms=0.03,
    # Several streams: a better aggregate rate, a little more latency per request.
    effects={"performance_hint": {"THROUGHPUT": OptionEffect(overhead=1.2)}},
    thread_option="intra_op_threads",
    loggers=("openvino",),
)


def cache_dir() -> pathlib.Path:
    return storage_cache_dir("openvino", create=False)


def _validate_options(options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown openvino option(s) {unknown}; known: {list(OPTIONS)}")
    hint = str(options.get("performance_hint", "LATENCY")).upper()
    if hint not in ovd.PERFORMANCE_HINTS:
        raise ConfigError(f"performance_hint must be one of {list(ovd.PERFORMANCE_HINTS)}, got {hint!r}")
    streams = options.get("num_streams")
    if streams is not None and streams != "AUTO" and (not isinstance(streams, int) or streams < 1):
        raise ConfigError(f"num_streams must be a positive int or 'AUTO', got {streams!r}")
    threads = options.get("intra_op_threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"intra_op_threads must be a positive int, got {threads!r}")


def _source_path(model: ModelSpec) -> str:
    source = model.source
    if isinstance(source, str | os.PathLike):
        return str(source)
    data = source if isinstance(source, bytes | bytearray) else getattr(source, "SerializeToString", None)
    if data is None:
        raise ModelLoadError(f"openvino cannot read a model source of type {type(source).__name__}")
    blob = bytes(data) if isinstance(data, bytes | bytearray) else data()
    # OpenVINO's ONNX reader takes files; in-memory models are written once under their content hash.
    import hashlib

    path = cache_dir() / "models" / f"{hashlib.sha256(blob).hexdigest()[:24]}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
    return str(path)


class OpenVinoBackend(Backend):
    name: ClassVar[str] = "openvino"
    extra: ClassVar[str] = "openvino"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._coverage: dict[tuple[str, str, str], tuple[Support, dict[str, str]]] = {}

    def available(self) -> Support:
        if importlib.util.find_spec("openvino") is None:
            return Support.no(str(missing_extra("openvino", self.extra)))
        return Support.yes()

    @functools.cached_property
    def _core(self) -> Any:
        import openvino

        return openvino.Core()

    @functools.cached_property
    def _onnx_frontend(self) -> Any:
        from openvino.frontend import FrontEndManager

        # The manager owns the frontend library: it must outlive every model the frontend made, or
        # reading a framework node's attributes touches unloaded code.
        self._frontend_manager = FrontEndManager()
        return self._frontend_manager.load_by_framework("onnx")

    @functools.cached_property
    def _devices(self) -> tuple[str, ...]:
        return tuple(self._core.available_devices)

    def _capabilities(self, name: str) -> tuple[str, ...]:
        try:
            return tuple(self._core.get_property(name, "OPTIMIZATION_CAPABILITIES"))
        except Exception:  # a device without the property: fall back to what its kind implies
            return ()

    def info(self) -> BackendInfo:
        return self._info

    @functools.cached_property
    def _info(self) -> BackendInfo:  # runtimes and their devices do not change while the process runs
        if not self.available():
            return _STATIC_INFO
        import openvino

        kinds = {DeviceKind.CPU} if "CPU" in self._devices else set()
        if any(d.startswith("GPU") for d in self._devices):
            kinds.add(DeviceKind.GPU)
        if "NPU" in self._devices:
            kinds.add(DeviceKind.NPU)
        return dataclasses.replace(
            _STATIC_INFO,
            device_kinds=frozenset(kinds),
            precisions=frozenset(Precision),
            versions={**self.versions(), "openvino": openvino.get_version(), "devices": ",".join(self._devices)},
        )

    def versions(self) -> dict[str, str]:
        # From package metadata: a plan-cache hit must not import the runtime or open a Core.
        return distribution_versions("openvino") if self.available() else {}

    def drives(self, device: Device) -> Support:
        if device.simulated:
            return Support.no(f"{device.id} is simulated: only the 'simulated' backend drives it")
        name = ovd.device_name(device)
        if name is None:
            return Support.no(
                f"OpenVINO drives CPUs and Intel GPUs/NPUs, not {device.vendor.value} {device.kind.value} {device.id}"
            )
        if not ovd.is_listed(name, self._devices):
            return Support.no(
                f"OpenVINO does not list {name} for {device.id} (available: {list(self._devices)}); "
                "is its driver installed?"
            )
        return Support.yes()

    def device_precisions(self, device: Device) -> frozenset[Precision]:
        name = ovd.device_name(device)
        caps = self._capabilities(name) if name and device.kind is not DeviceKind.CPU else ()
        return ovd.precisions(device, caps)

    def _requirements(self, model: ModelSpec, device: Device, config: Config) -> Any:
        yield from super()._requirements(model, device, config)
        try:
            _validate_options(config.options)
            compile_target, _ = ovd.target(device, config.options)
        except ConfigError as exc:
            yield Support.no(str(exc)), ConfigError
            return
        offered = self.device_precisions(device)
        if config.precision not in offered:
            yield (
                Support.no(
                    f"precision {config.precision.value} is not available on {device.id} with OpenVINO "
                    f"(offered: {sorted(p.value for p in offered)})"
                ),
                ConfigError,
            )
            return
        if config.precision is Precision.INT8 and not model.quantized_operators:
            yield (
                Support.no(
                    f"int8 on openvino runs pre-quantised models; {model.name!r} has no quantised "
                    "operators (quantise it first)"
                ),
                ConfigError,
            )
        support, _ = self._coverage_of(model, compile_target, config.options.get("device_mode") is not None)
        yield support, UnsupportedModelError

    def _coverage_of(self, model: ModelSpec, compile_target: str, composite: bool) -> tuple[Support, dict[str, str]]:
        """Operators OpenVINO's ONNX frontend cannot convert, then nodes the device cannot run (query_model)."""
        path = _source_path(model)
        key = (path, model.sha256 or str(pathlib.Path(path).stat().st_mtime_ns), compile_target)
        with self._lock:
            hit = self._coverage.get(key)
        if hit is not None:
            return hit
        frontend = self._onnx_frontend
        try:
            # The input model must stay referenced while framework nodes are inspected: they point into it.
            input_model = frontend.load(path)
            partial = frontend.convert_partially(input_model)
        except Exception as exc:  # the frontend raises plain RuntimeErrors for unreadable files
            raise ModelLoadError(f"openvino cannot read {model.name!r} ({path}): {exc}") from exc
        missing = sorted(
            {
                f"{a.get('ONNX_META_domain') + '.' if a.get('ONNX_META_domain') else ''}{a.get('ONNX_META_type')}"
                for op in partial.get_ordered_ops()
                if "FrameworkNode" in op.get_type_name()
                for a in (op.get_attributes(),)
            }
        )
        assignment: dict[str, str] = {}
        if missing:
            import openvino

            support = Support.no(
                f"openvino {openvino.get_version().split('-')[0]} cannot convert "
                f"{model.name!r}: no conversion rule for {', '.join(missing)}"
            )
        else:
            assignment = dict(self._core.query_model(partial, compile_target))
            unplaced = [
                op.get_friendly_name() for op in partial.get_ordered_ops() if op.get_friendly_name() not in assignment
            ]
            if unplaced and not composite:  # AUTO / HETERO place such nodes on their other devices
                support = Support.no(
                    f"{compile_target} cannot run {len(unplaced)} node(s) of {model.name!r}: "
                    + ", ".join(unplaced[:10])
                )
            else:
                support = Support.yes()
        del partial, input_model  # framework nodes first, then the input model they point into
        with self._lock:
            self._coverage[key] = (support, assignment)
        return support, assignment

    def _load(self, model: ModelSpec, device: Device, config: Config) -> Session:
        options = config.options
        compile_target, devices = ovd.target(device, options)
        composite = options.get("device_mode") is not None
        _, assignment = self._coverage_of(model, compile_target, composite)
        hetero = compile_target.startswith("HETERO")
        primary = {devices[0], "GPU" if devices[0] == "GPU.0" else devices[0]}
        # HETERO's query_model says where each node goes; AUTO answers "AUTO" for all (checked after compile).
        fallback = tuple(
            sorted(f"{node} -> {dev}" for node, dev in assignment.items() if hetero and dev not in primary)
        )
        if fallback and options.get("disable_fallback"):
            raise FallbackError(
                f"strict mode: {len(fallback)} node(s) of {model.name!r} would run elsewhere than "
                f"{devices[0]}: {', '.join(fallback[:10])}"
            )
        precision_hint = ovd.hint(config.precision, device)
        per_device: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision_hint}
        properties: dict[str, Any] = {"PERFORMANCE_HINT": str(options.get("performance_hint", "LATENCY")).upper()}
        if options.get("num_streams") is not None:
            per_device["NUM_STREAMS"] = str(options["num_streams"])
        if options.get("intra_op_threads") is not None:
            per_device["INFERENCE_NUM_THREADS"] = int(options["intra_op_threads"])
        if composite:
            # AUTO and HETERO pass hints to the devices they use through DEVICE_PROPERTIES.
            properties["DEVICE_PROPERTIES"] = {d: dict(per_device) for d in devices}
        else:
            properties.update(per_device)
        if options.get("cache", True):
            # One cache folder per precision hint: OpenVINO 2026.4 keys its blobs without the hint, so a
            # bf16 compile after an f32 one of the same model in one Core read the f32 blob and
            # returned NaN everywhere (zoo bert-base/gpt2 on an AMX CPU).
            root = cache_dir() / precision_hint
            root.mkdir(parents=True, exist_ok=True)
            properties["CACHE_DIR"] = str(root)
        path = _source_path(model)
        try:
            compiled = self._core.compile_model(self._core.read_model(path), compile_target, properties)
        except Exception as exc:  # OpenVINO raises RuntimeError with the plugin's message
            text = str(exc)
            if "out of memory" in text.lower() or "bad_alloc" in text.lower():
                raise OutOfMemoryError(f"out of memory compiling {model.name!r} for {compile_target}: {text}") from exc
            raise UnsupportedModelError(
                f"openvino could not compile {model.name!r} for {compile_target}: {text}"
            ) from exc
        notes = [f"compiled for {compile_target}", f"INFERENCE_PRECISION_HINT={precision_hint}"]
        executing = _execution_devices(compiled)
        if executing:
            notes.append(f"execution devices: {', '.join(executing)}")
        if composite and compile_target.startswith("AUTO") and executing and not primary & set(executing):
            # AUTO picks one device for the whole model: anything else than the one asked for is a fallback.
            fallback = (f"{model.name} -> {','.join(executing)}",)
            if options.get("disable_fallback"):
                raise FallbackError(f"strict mode: AUTO placed {model.name!r} on {executing}, not {devices[0]}")
        if not composite:
            actual = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
            notes.append(f"precision in effect: {actual}")
        if fallback:
            log.warning(
                "%s on %s: %d node(s) placed elsewhere: %s",
                model.name,
                compile_target,
                len(fallback),
                ", ".join(fallback[:10]),
            )
        report = LoadReport(0.0, device_memory_bytes=model.parameter_bytes, fallback_nodes=fallback, notes=tuple(notes))
        return OpenVinoSession(model, device, config, compiled, report)


def _execution_devices(compiled: Any) -> tuple[str, ...]:
    try:
        return tuple(str(d) for d in compiled.get_property("EXECUTION_DEVICES"))
    except RuntimeError:  # older plugins do not report it; the note is informative only
        return ()


class OpenVinoSession(Session):
    """A compiled model; each concurrent ``run`` takes an idle InferRequest from a pool (or makes one)."""

    def __init__(self, model: ModelSpec, device: Device, config: Config, compiled: Any, report: LoadReport) -> None:
        super().__init__(model, device, config)
        self.report = report
        self._compiled = compiled
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle.put(compiled.create_infer_request())
        names = [o.get_any_name() for o in compiled.outputs]
        expected = [o.name for o in model.outputs]
        if expected and len(expected) != len(names):
            raise ModelLoadError(f"openvino compiled {len(names)} outputs for {model.name!r}, expected {expected}")
        # ONNX output names are the model's; OpenVINO keeps them as tensor names in the same order.
        self._out_names = expected or names
        # A port can carry several tensor names (the ONNX input's and those of values folded into it);
        # get_any_name() may return any of them, so index every name.
        self._in_index = {n: i for i, p in enumerate(compiled.inputs) for n in p.get_names()}
        import openvino

        self._tensor = openvino.Tensor

    def run(self, feeds: Mapping[str, Any], *, output: str = "numpy") -> dict[str, Any]:
        # Same contract as Session.run, inlined: this is the per-request hot path.
        if self._closed:
            raise ModelClosedError(f"session {self.config.label()} of {self.model.name!r} is closed")
        return self._run(feeds, output)

    def _run(self, feeds: Mapping[str, Any], output: str) -> dict[str, Any]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            compiled = self._compiled
            if compiled is None:
                raise ModelClosedError(f"session {self.config.label()} of {self.model.name!r} is closed") from None
            request = compiled.create_infer_request()
        try:
            keep = []  # shared tensors do not own their buffers: copies made here must outlive infer()
            for name, value in feeds.items():
                array = value if type(value) is np.ndarray else to_numpy(value)
                if not array.flags.c_contiguous or not array.flags.writeable:
                    # openvino.Tensor refuses to share a read-only buffer (np.frombuffer views of a
                    # request body, arrays loaded from protobuf): copy those.
                    array = np.array(array, order="C")
                    keep.append(array)
                # Shared memory: the request reads the caller's array in place (set per call, so a
                # request never keeps a previous caller's buffer).
                request.set_input_tensor(self._in_index[name], self._tensor(array, shared_memory=True))
            request.infer()
            # Copy out: the request's output memory is reused by its next inference.
            result = {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(self._out_names)}
        except KeyError as exc:
            raise ExecutionError(f"openvino model {self.model.name!r} has no input {exc}") from None
        except Exception as exc:
            raise ExecutionError(f"openvino failed running {self.model.name!r} on {self.device.id}: {exc}") from exc
        finally:
            self._idle.put(request)
        if output == "numpy" or output == "native":
            return result
        check_output_kind(output)
        return convert_outputs(result, output)

    def _close(self) -> None:
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        self._compiled = None


__all__ = ["OpenVinoBackend", "OpenVinoSession"]
