"""The ONNX Runtime backend ("onnxruntime").

Devices map to execution providers in :mod:`aivmm.backends._ort_providers`; nothing outside this adapter
sees an EP name. Config options (all optional):

- ``execution_provider``: ``cpu``, ``cuda``, ``tensorrt``, ``migraphx``, ``rocm``, ``openvino``, ``dml``,
  ``coreml`` (default: the first available one for the device);
- ``intra_op_threads`` (default: physical cores), ``inter_op_threads`` (default 1), ``allow_spinning``
  (default True; the planner sets False when other sessions share the CPU cores, ``BackendInfo.shared_cores``:
  spinning idle threads take the cores from the other sessions' calls);
- ``graph_optimization_level``: ``disable``, ``basic``, ``extended``, ``all`` (default ``all``);
- ``disable_fallback``: True makes ONNX Runtime refuse to place nodes on the CPU EP (strict mode);
- ``io_binding``: bind inputs and outputs by pointer (default: on for device-memory EPs);
- EP tuning: ``arena``, ``cudnn_conv_algo_search``, ``engine_cache_dir`` (TensorRT).

Nodes placed on another EP than the chosen one are listed in ``Session.report.fallback_nodes``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import logging
import os
import pathlib
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from aivmm._storage import cache_dir as storage_cache_dir
from aivmm.backends import _ort_ops, _ort_providers
from aivmm.backends._base import Backend, Config, LoadReport, Session, Support
from aivmm.backends._info import BackendInfo, OptionEffect, distribution_versions
from aivmm.backends.tensors import (
    DLPACK_CUDA,
    Framework,
    check_output_kind,
    convert_outputs,
    dlpack_device,
    framework_of,
    host_view,
    to_numpy,
)
from aivmm.devices import Device
from aivmm.dtypes import Precision
from aivmm.errors import (
    AivmmError,
    BackendUnavailableError,
    ConfigError,
    ExecutionError,
    FallbackError,
    ModelClosedError,
    ModelLoadError,
    OutOfMemoryError,
    UnsupportedModelError,
    missing_extra,
)
from aivmm.models import ModelFormat, ModelSpec, ValueKind, onnx_model, onnx_model_with_weights

log = logging.getLogger(__name__)

OPTIONS: tuple[str, ...] = (
    "execution_provider",
    "intra_op_threads",
    "inter_op_threads",
    "allow_spinning",
    "graph_optimization_level",
    "disable_fallback",
    "io_binding",
    "arena",
    "cudnn_conv_algo_search",
    "engine_cache_dir",
)
_OPT_LEVELS = ("disable", "basic", "extended", "all")
# What the planner knows about this runtime before it is imported (the rest is filled in by info()).
_STATIC_INFO = BackendInfo(
    name="onnxruntime",
    formats=frozenset({ModelFormat.ONNX}),
    device_kinds=frozenset(),
    precisions=frozenset(),
    options={"graph_optimization_level": ("all", "basic")},
    call_overhead_ms=0.02,
    effects={
        # Fusions matter most on transformers; "disable" leaves every op separate.
        "graph_optimization_level": {
            "disable": OptionEffect(compute=1.35),
            "basic": OptionEffect(compute=1.1),
            "extended": OptionEffect(compute=1.0),
            "all": OptionEffect(compute=0.97),
        },
        # The TensorRT EP builds an engine on the first load (a minute on real models).
        "execution_provider": {"tensorrt": OptionEffect(load_s=60.0, compiles=True)},
    },
    thread_option="intra_op_threads",
    loggers=("onnxruntime",),
    # GPT-2 (zoo), 2 cores, alone: spinning on 1.16-1.19 ms, off 1.29-1.32; beside an OpenVINO and a
    # torch session called in turn, ORT's spinning made OpenVINO 1.2-1.6x and torch up to 3x slower.
    shared_cores={"allow_spinning": False},
)
# EPs without an fp16 switch of their own: fp16 there means converting the graph before loading.
_CONVERTED_FP16 = (_ort_providers.CUDA, _ort_providers.ROCM, _ort_providers.DML, _ort_providers.COREML)


def cache_dir() -> pathlib.Path:
    """aivmm's cache directory (``AIVMM_CACHE_DIR``, else ``~/.cache/aivmm``)."""
    return storage_cache_dir(create=False)


def _fp16_converter_available() -> bool:
    try:
        return importlib.util.find_spec("onnxruntime.transformers.float16") is not None
    except (ImportError, ValueError):
        return False


def _validate_options(options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown onnxruntime option(s) {unknown}; known: {list(OPTIONS)}")
    for key in ("intra_op_threads", "inter_op_threads"):
        value = options.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"onnxruntime option {key} must be a positive int, got {value!r}")
    level = options.get("graph_optimization_level", "all")
    if level not in _OPT_LEVELS:
        raise ConfigError(f"graph_optimization_level must be one of {list(_OPT_LEVELS)}, got {level!r}")


class OrtBackend(Backend):
    name: ClassVar[str] = "onnxruntime"
    extra: ClassVar[str] = "onnxruntime"

    def __init__(self) -> None:
        self._ops_cache: dict[tuple[str, str], list[str]] = {}
        self._ops_lock = threading.Lock()

    # --- capabilities ---------------------------------------------------------------------------

    def available(self) -> Support:
        if importlib.util.find_spec("onnxruntime") is None:
            return Support.no(str(missing_extra("onnxruntime", self.extra)))
        if importlib.util.find_spec("onnx") is None:
            return Support.no(str(missing_extra("onnx", self.extra)))
        return Support.yes()

    @functools.cached_property
    def _providers(self) -> frozenset[str]:
        import onnxruntime

        return frozenset(onnxruntime.get_available_providers())

    def _precisions(self, choice: _ort_providers.EpChoice) -> frozenset[Precision]:
        precisions = set(choice.precisions)
        # fp16 on EPs without their own fp16 switch means converting the graph, which needs the converter.
        if choice in _CONVERTED_FP16 and not _fp16_converter_available():
            precisions.discard(Precision.FP16)
        return frozenset(precisions)

    def info(self) -> BackendInfo:
        return self._info

    @functools.cached_property
    def _info(self) -> BackendInfo:  # runtimes and their devices do not change while the process runs
        if not self.available():
            return _STATIC_INFO
        import onnxruntime

        usable = [c for c in _ort_providers.BY_SHORT.values() if c.provider in self._providers]
        kinds = {k for c in usable for k in _kinds_of(c)}
        precisions = frozenset(p for c in usable for p in self._precisions(c))
        return dataclasses.replace(
            _STATIC_INFO,
            device_kinds=frozenset(kinds),
            precisions=precisions,
            versions={
                **self.versions(),
                "onnxruntime": onnxruntime.__version__,
                "providers": ",".join(sorted(self._providers)),
            },
            value_kinds=frozenset(ValueKind),  # ORT's Python binding takes lists and None as they are
        )

    def versions(self) -> dict[str, str]:
        # Which onnxruntime wheel (the -gpu and -openvino builds carry other providers) and its version,
        # from package metadata: a plan-cache hit must not import the runtime.
        if not self.available():
            return {}
        return distribution_versions("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnx")

    def drives(self, device: Device) -> Support:
        if device.simulated:
            return Support.no(f"{device.id} is simulated: only the 'simulated' backend drives it")
        wanted = _ort_providers.choices_for(device)
        if not wanted:
            return Support.no(
                f"onnxruntime has no execution provider for {device.vendor.value} {device.kind.value} {device.id}"
            )
        usable = _ort_providers.available_choices(device, self._providers)
        if not usable:
            return Support.no(
                f"no execution provider for {device.id} in this onnxruntime build: "
                + "; ".join(f"{c.provider} ({c.install})" for c in wanted)
                + f"; available: {sorted(self._providers)}"
            )
        return Support.yes()

    def _requirements(self, model: ModelSpec, device: Device, config: Config) -> Any:
        yield from super()._requirements(model, device, config)
        try:
            _validate_options(config.options)
            choice = _ort_providers.pick(device, self._providers, config.options)
        except ConfigError as exc:
            yield Support.no(str(exc)), ConfigError
            return
        if config.precision not in self._precisions(choice):
            offered = sorted(p.value for p in self._precisions(choice))
            yield (
                Support.no(
                    f"precision {config.precision.value} is not available on {device.id} through "
                    f"{choice.provider} (offered: {offered})"
                ),
                ConfigError,
            )
            return
        if config.precision is Precision.INT8 and not model.quantized_operators:
            yield (
                Support.no(
                    f"int8 on onnxruntime runs pre-quantised models; {model.name!r} has no quantised "
                    "operators (quantise it first)"
                ),
                ConfigError,
            )
        yield self._operator_support(model), UnsupportedModelError

    def _operator_support(self, model: ModelSpec) -> Support:
        if not _ort_ops.schemas_reachable():
            return Support.yes("operator schemas not reachable: coverage is decided at load")
        key = (str(model.source) if not isinstance(model.source, bytes | bytearray) else "<bytes>", model.sha256)
        with self._ops_lock:
            missing = self._ops_cache.get(key) if model.sha256 else None
        if missing is None:
            missing = _ort_ops.unsupported(_ort_ops.model_operators(onnx_model(model)))  # the loader's parse
            if model.sha256:
                with self._ops_lock:
                    self._ops_cache[key] = missing
        if missing:
            import onnxruntime

            return Support.no(f"onnxruntime {onnxruntime.__version__} cannot run {model.name!r}: " + "; ".join(missing))
        return Support.yes()

    # --- loading --------------------------------------------------------------------------------

    def _load(self, model: ModelSpec, device: Device, config: Config) -> Session:
        import onnxruntime as ort

        options = config.options
        choice = _ort_providers.pick(device, self._providers, options)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = int(options.get("intra_op_threads") or _ort_providers.physical_cores(device))
        so.inter_op_num_threads = int(options.get("inter_op_threads") or 1)
        so.graph_optimization_level = _graph_level(ort, options.get("graph_optimization_level", "all"))
        if not options.get("allow_spinning", True):
            _no_spinning(so)
        strict = bool(options.get("disable_fallback", False))
        if strict and choice is not _ort_providers.CPU:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        profile_primary = None
        if choice is not _ort_providers.CPU and not hasattr(ort.InferenceSession, "get_provider_graph_assignment_info"):
            # Older runtimes cannot say where nodes went until they ran: profile the first run only.
            profiles = cache_dir() / "ort-profiles"
            profiles.mkdir(parents=True, exist_ok=True)
            so.enable_profiling = True
            so.profile_file_prefix = str(profiles / f"{model.name}-{os.getpid()}")
            profile_primary = choice.provider
        if options.get("arena") is False:
            so.enable_cpu_mem_arena = False

        root = cache_dir()
        providers: list[tuple[str, dict[str, str]]] = [
            (
                choice.provider,
                _ort_providers.provider_options(choice, device, config.precision, options, root),
            )
        ]
        if choice is _ort_providers.TENSORRT and _ort_providers.CUDA.provider in self._providers:
            providers.append(
                (
                    _ort_providers.CUDA.provider,
                    _ort_providers.provider_options(_ort_providers.CUDA, device, config.precision, options, root),
                )
            )
        if choice is not _ort_providers.CPU and not strict:
            providers.append((_ort_providers.CPU.provider, {}))

        notes: list[str] = [f"execution provider {choice.provider}", f"intra_op_threads={so.intra_op_num_threads}"]
        source = self._model_source(model, choice, config.precision, notes)
        try:
            sess = ort.InferenceSession(
                source, so, providers=[p for p, _ in providers], provider_options=[o for _, o in providers]
            )
        except Exception as exc:  # ORT raises Fail / InvalidGraph / NotImplemented / RuntimeException
            raise _translate_load_error(exc, model, device, choice, strict) from exc
        # InferenceSession.run otherwise answers an EP failure by switching the session to the CPU EP
        # with a print(): the silent fallback aivmm exists to prevent.
        sess.disable_fallback()
        active = sess.get_providers()
        if not active or active[0] != choice.provider:
            # ONNX Runtime drops an EP it cannot create with only a log line: refuse instead.
            raise BackendUnavailableError(
                f"onnxruntime could not create {choice.provider} for {device.id} (active providers: {active}); "
                f"check the runtime libraries ({choice.install})"
            )
        fallback = _fallback_nodes(sess, choice.provider)
        if fallback and strict:
            # disable_cpu_ep_fallback covers the CPU EP only; TensorRT handing nodes to CUDA is a fallback too.
            raise FallbackError(
                f"strict mode: {len(fallback)} node(s) of {model.name!r} would not run on "
                f"{choice.provider}: {', '.join(fallback[:10])}"
            )
        if fallback:
            log.warning(
                "%s on %s: %d node(s) run on another execution provider: %s",
                model.name,
                device.id,
                len(fallback),
                ", ".join(fallback[:10]),
            )
        report = LoadReport(
            0.0, device_memory_bytes=model.parameter_bytes, fallback_nodes=tuple(fallback), notes=tuple(notes)
        )
        if profile_primary is not None:
            notes.append("fallback nodes are read from the profile of the first run")
            report = dataclasses.replace(report, notes=tuple(notes))
        # An IOBinding binds tensors only: sequences and optionals go through the plain run.
        io_binding = bool(options.get("io_binding", choice.gpu)) and _tensors_only(model)
        return OrtSession(model, device, config, sess, choice, report, io_binding, profile_primary)

    def _model_source(
        self, model: ModelSpec, choice: _ort_providers.EpChoice, precision: Precision, notes: list[str]
    ) -> Any:
        source = model.source
        if precision is Precision.FP16 and choice in _CONVERTED_FP16:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            proto = onnx_model_with_weights(model)  # a copy: the conversion rewrites the graph in place
            converted = convert_float_to_float16(proto, keep_io_types=True)
            notes.append("fp16: float weights and activations converted, inputs and outputs kept as given")
            return converted.SerializeToString()
        if isinstance(source, bytes | bytearray):
            return bytes(source)
        if isinstance(source, str | os.PathLike):
            return str(source)
        if hasattr(source, "SerializeToString"):
            return source.SerializeToString()
        raise ModelLoadError(f"onnxruntime cannot load a model source of type {type(source).__name__}")


def _graph_level(ort: Any, level: str) -> Any:
    return {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]


def _no_spinning(so: Any) -> None:
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")


def cpu_session(
    path: str | os.PathLike[str],
    *,
    graph_optimization_level: str = "all",
    threads: int | None = None,
    allow_spinning: bool = True,
    optimized_model_path: str | os.PathLike[str] | None = None,
    free_dims: Sequence[tuple[str, int]] = (),
) -> Any:
    """A plain ``onnxruntime.InferenceSession`` on the CPU execution provider, for aivmm's own uses of
    ONNX Runtime's API outside a :class:`Session`: the fp32 reference of the accuracy checks, the graph
    passes (which write ``optimized_model_path``), the LLM step runner's IOBinding. ``free_dims``:
    (dimension name, value) pairs fixed in the graph (the LLM runner's fixed-shape decode sessions).

    Raises BackendUnavailableError when onnxruntime is not installed, ConfigError on an unknown level;
    ONNX Runtime's own exception when the model does not load (the caller says what it was loading for).
    """
    if graph_optimization_level not in _OPT_LEVELS:
        raise ConfigError(
            f"graph_optimization_level must be one of {list(_OPT_LEVELS)}, got {graph_optimization_level!r}"
        )
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise missing_extra("onnxruntime", "onnxruntime") from exc
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = _graph_level(ort, graph_optimization_level)
    if threads:
        so.intra_op_num_threads = threads
    if not allow_spinning:
        _no_spinning(so)
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    for name, value in free_dims:
        so.add_free_dimension_override_by_name(name, value)
    return ort.InferenceSession(str(path), so, providers=[_ort_providers.CPU.provider])


def _kinds_of(choice: _ort_providers.EpChoice) -> tuple[Any, ...]:
    from aivmm.devices import DeviceKind

    if choice is _ort_providers.CPU:
        return (DeviceKind.CPU,)
    if choice in (_ort_providers.OPENVINO, _ort_providers.COREML):
        return (DeviceKind.GPU, DeviceKind.NPU)
    return (DeviceKind.GPU,)


def _fallback_nodes(sess: Any, primary: str) -> list[str]:
    getter = getattr(sess, "get_provider_graph_assignment_info", None)
    if getter is None:
        return []
    out: list[str] = []
    for subgraph in getter():
        if subgraph.ep_name == primary:
            continue
        short = subgraph.ep_name.removesuffix("ExecutionProvider")
        out.extend(f"{n.name or n.op_type} ({n.op_type}) -> {short}" for n in subgraph.get_nodes())
    return out


def _fallback_from_profile(path: str, primary: str) -> list[str]:
    """Nodes an ONNX Runtime profile (Chrome trace JSON) shows running on another EP than ``primary``."""
    try:
        events = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return []
    found: dict[str, str] = {}
    for event in events:
        args = event.get("args") or {}
        provider = args.get("provider")
        if event.get("cat") != "Node" or not provider or provider == primary:
            continue
        name = (
            str(event.get("name", ""))
            .removesuffix("_kernel_time")
            .removesuffix("_fence_before")
            .removesuffix("_fence_after")
        )
        found.setdefault(name, f"{name} ({args.get('op_name', '?')}) -> {provider.removesuffix('ExecutionProvider')}")
    return list(found.values())


def _translate_load_error(
    exc: Exception, model: ModelSpec, device: Device, choice: _ort_providers.EpChoice, strict: bool
) -> Exception:
    text = str(exc)
    lower = text.lower()
    where = f"{model.name!r} on {device.id} ({choice.provider})"
    if strict and "fallback" in lower:
        return FallbackError(f"strict mode: part of {where} would run on the CPU: {text}")
    if "out of memory" in lower or "bad_alloc" in lower or "failed to allocate" in lower:
        return OutOfMemoryError(f"out of memory loading {where}: {text}")
    if (
        "could not find an implementation" in lower
        or "not a registered function/op" in lower
        or "no opset import for domain" in lower
        or "unsupported" in lower
    ):
        return UnsupportedModelError(f"onnxruntime cannot run {where}: {text}")
    if "protobuf parsing failed" in lower or "no such file" in lower or "load model" in lower:
        return ModelLoadError(f"onnxruntime cannot load {where}: {text}")
    return UnsupportedModelError(f"onnxruntime refused {where}: {text}")


class OrtSession(Session):
    """An ``InferenceSession`` behind aivmm's Session; ``run`` is thread-safe (ORT's run is)."""

    def __init__(
        self,
        model: ModelSpec,
        device: Device,
        config: Config,
        sess: Any,
        choice: _ort_providers.EpChoice,
        report: LoadReport,
        io_binding: bool,
        profile_primary: str | None = None,
    ) -> None:
        super().__init__(model, device, config)
        self.report = report
        self._sess = sess
        self._choice = choice
        self._io_binding = io_binding
        self._profile_primary = profile_primary
        self._slow = io_binding or profile_primary is not None  # the fast path in run() is numpy-only
        # Precomputed once: the hot path builds nothing it can reuse.
        self._out_names = [o.name for o in sess.get_outputs()]
        expected = [o.name for o in model.outputs]
        if expected and self._out_names != expected:
            raise ModelLoadError(f"onnxruntime outputs {self._out_names} differ from the model's {expected}")
        self._device_type = "cuda" if choice.gpu and choice in (_ort_providers.CUDA, _ort_providers.TENSORRT) else "cpu"
        # The binding's own run: feeds are validated by aivmm already, and the Python wrapper's extra work
        # is input-name validation plus the silent EP fallback disabled above.
        self._c_run = getattr(getattr(sess, "_sess", None), "run", None) or sess.run
        self._single = self._out_names[0] if len(self._out_names) == 1 else None

    def run(self, feeds: Mapping[str, Any], *, output: str = "numpy") -> dict[str, Any]:
        # The hot path, inlined (same contract as Session.run): numpy in, numpy out, no binding.
        if self._closed:
            raise ModelClosedError(f"session {self.config.label()} of {self.model.name!r} is closed")
        if output == "numpy" and not self._slow and type(feeds) is dict:
            for value in feeds.values():
                if type(value) is not np.ndarray:
                    return self._run(feeds, output)
            try:
                outs = self._c_run(self._out_names, feeds, None)
            except Exception as exc:
                raise self._failed(exc) from exc
            if self._single is not None:
                return {self._single: outs[0]}
            return dict(zip(self._out_names, outs))
        return self._run(feeds, output)

    def _failed(self, exc: Exception) -> AivmmError:
        if self._sess is None:
            return ModelClosedError(f"session {self.config.label()} of {self.model.name!r} was closed while running")
        return ExecutionError(f"onnxruntime failed running {self.model.name!r} on {self.device.id}: {exc}")

    @property
    def providers(self) -> list[str]:
        return list(self._sess.get_providers())

    def _run(self, feeds: Mapping[str, Any], output: str) -> dict[str, Any]:
        result = self._run_bound(feeds, output) if self._io_binding else self._run_plain(feeds, output)
        if self._profile_primary is not None:
            self._read_profile()
        return result

    def _read_profile(self) -> None:
        with self._lock:
            primary, self._profile_primary = self._profile_primary, None
            if primary is None or self._sess is None:
                return
            path = self._sess.end_profiling()  # also stops profiling: later runs are not traced
            self._slow = self._io_binding
        fallback = _fallback_from_profile(path, primary)
        with contextlib.suppress(OSError):
            pathlib.Path(path).unlink()
        if fallback:
            log.warning(
                "%s on %s: %d node(s) ran on another execution provider: %s",
                self.model.name,
                self.device.id,
                len(fallback),
                ", ".join(fallback[:10]),
            )
            self.report = dataclasses.replace(self.report, fallback_nodes=tuple(fallback))

    def _run_plain(self, feeds: Mapping[str, Any], output: str) -> dict[str, Any]:
        arrays = feeds
        for value in feeds.values():
            if type(value) is not np.ndarray:
                arrays = {k: _host_value(v) for k, v in feeds.items()}
                break
        try:
            outs = self._c_run(self._out_names, dict(arrays), None)
        except Exception as exc:
            raise self._failed(exc) from exc
        result = dict(zip(self._out_names, outs))
        if output == "numpy" or output == "native":
            return result
        check_output_kind(output)
        return convert_outputs(result, output)

    def _run_bound(self, feeds: Mapping[str, Any], output: str) -> dict[str, Any]:
        """Bind by pointer: device-resident inputs stay where they are; outputs stay on the device when
        asked for natively. An IOBinding per call keeps concurrent runs independent."""
        check_output_kind(output)
        binding = self._sess.io_binding()
        keep_alive = []
        for name, value in feeds.items():
            kind, index = dlpack_device(value)
            if kind == DLPACK_CUDA and self._device_type == "cuda" and index == self.device.index:
                ptr, dtype = _device_pointer(value)
                binding.bind_input(name, "cuda", index, dtype, tuple(value.shape), ptr)
                keep_alive.append(value)
            elif self._device_type == "cuda":
                binding.bind_cpu_input(name, np.ascontiguousarray(to_numpy(value)))
            else:
                array = np.ascontiguousarray(host_view(value) if kind != DLPACK_CUDA else to_numpy(value))
                keep_alive.append(array)
                binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        for name in self._out_names:
            binding.bind_output(name, self._device_type, self.device.index if self._device_type == "cuda" else 0)
        try:
            self._sess.run_with_iobinding(binding)
        except Exception as exc:
            raise self._failed(exc) from exc
        if output == "native":
            return dict(zip(self._out_names, binding.get_outputs()))
        result = dict(zip(self._out_names, binding.copy_outputs_to_cpu()))
        if output == "torch" and self._device_type == "cuda":
            torch = sys.modules.get("torch") or __import__("torch")
            return {k: torch.from_numpy(v).to(f"cuda:{self.device.index}") for k, v in result.items()}
        return convert_outputs(result, output)

    def _close(self) -> None:
        # Drop every reference to the native session so its memory is released now.
        self._sess = None
        self._c_run = None


def _tensors_only(model: ModelSpec) -> bool:
    return all(t.is_tensor for t in (*model.inputs, *model.outputs))


def _host_value(value: Any) -> Any:
    """A feed as ORT's Python binding takes it: a numpy array, a list of them for a sequence input,
    None for an empty optional one."""
    if type(value) is np.ndarray or value is None:
        return value
    if isinstance(value, list):
        return [_host_value(item) for item in value]
    return to_numpy(value)


def _device_pointer(value: Any) -> tuple[int, Any]:
    """(pointer, numpy dtype) of a device tensor, for binding without a copy."""
    fw = framework_of(value)
    if fw is Framework.TORCH:
        if not value.is_contiguous():
            raise ConfigError("device-resident torch inputs must be contiguous to bind without a copy")
        from aivmm.backends.tensors import dtype_of

        return int(value.data_ptr()), dtype_of(value).to_numpy()
    if fw is Framework.CUPY:
        return int(value.data.ptr), np.dtype(value.dtype)
    raise ConfigError(f"cannot bind a {type(value).__name__} by pointer: pass a torch or cupy tensor")


__all__ = ["OrtBackend", "OrtSession"]
