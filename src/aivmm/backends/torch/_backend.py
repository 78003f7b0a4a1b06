"""TorchBackend: the adapter between aivmm's Backend interface and PyTorch."""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import inspect
import itertools
import os
import pathlib
import shutil
import threading
from collections.abc import Iterator
from typing import Any

from aivmm.backends._base import Backend, Config, Session, Support
from aivmm.backends._info import BackendInfo, OptionEffect, distribution_versions
from aivmm.backends.torch._devices import is_cuda
from aivmm.devices import Device, DeviceKind
from aivmm.dtypes import Precision
from aivmm.errors import (
    AivmmError,
    BackendUnavailableError,
    ConfigError,
    LoweringError,
    ModelLoadError,
    OutOfMemoryError,
    UnsupportedModelError,
    missing_extra,
)
from aivmm.models import ModelFormat, ModelSpec, onnx_model, onnx_model_with_weights

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune-no-cudagraphs")
OPTIONS: dict[str, tuple[Any, ...]] = {
    "compile": COMPILE_MODES,
    "cuda_graphs": (False, True),
    "channels_last": (False, True),
    # fp32 on a CUDA GPU through TF32 tensor cores (10-bit mantissa): only where the plan's fp32
    # accuracy check passes, and named in the plan's label.
    "tf32": (False, True),
}
_STATIC_INFO = BackendInfo(
    name="torch",
    formats=frozenset({ModelFormat.ONNX, ModelFormat.TORCH_MODULE, ModelFormat.TORCH_EXPORTED}),
    device_kinds=frozenset({DeviceKind.CPU, DeviceKind.GPU}),
    precisions=frozenset({Precision.FP32, Precision.FP16, Precision.BF16}),
    options=OPTIONS,
    call_overhead_ms=0.06,
    effects={
        # torch.compile fuses kernels (and with reduce-overhead replays CUDA graphs) after tens of
        # seconds of compilation on real models.
        "compile": {True: OptionEffect(compute=0.85, overhead=0.7, load_s=30.0, compiles=True, runner=True)},
        # aivmm's CUDA-graph runner: a capture per shape on the first load.
        "cuda_graphs": {True: OptionEffect(load_s=1.0, compiles=True, runner=True)},
    },
    loggers=("torch", "onnxscript"),  # dynamo's graph-break reports; the exporter of torch modules
)
_CONV_OPERATORS = frozenset({"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"})
# Operators whose result decides what runs next on the host: a captured CUDA graph cannot hold them.
_DATA_DEPENDENT = ("If", "Loop", "Scan", "NonZero", "Compress")
_PRECISION_DTYPES = {Precision.FP32: "float32", Precision.FP16: "float16", Precision.BF16: "bfloat16"}


class TorchBackend(Backend):
    name = "torch"
    extra = "torch"

    def __init__(self) -> None:
        self._onnx_cache: dict[tuple[str, int, int], tuple[Any, list[str]]] = {}
        self._cache_lock = threading.Lock()

    # -- capabilities ----------------------------------------------------------------------
    def available(self) -> Support:
        if importlib.util.find_spec("torch") is None:
            return Support.no(str(missing_extra("torch", "torch")))
        return Support.yes()

    @functools.cache  # noqa: B019 - one instance per process (the registry's)
    def info(self) -> BackendInfo:
        return dataclasses.replace(_STATIC_INFO, versions=self.versions())

    def versions(self) -> dict[str, str]:
        # From package metadata: importing torch to read its version would cost a second.
        return distribution_versions("torch", "onnx") if self.available() else {}

    def drives(self, device: Device) -> Support:
        if not self.available():
            return self.available()
        import torch

        from aivmm.backends.torch._devices import check_device

        return check_device(torch, device)

    def candidate_options(self, model: ModelSpec, device: Device, precision: Precision) -> list[dict[str, Any]]:
        """The option sets worth measuring for ``model`` on ``device`` in ``precision``, cheapest to
        load first (the planner measures these instead of the product of every option's values).

        On a CUDA GPU: eager; replayed from CUDA graphs (aivmm's runner, a capture per shape); and
        torch.compile with CUDA graphs (``reduce-overhead``) — each in NCHW and, when the model has
        convolutions, channels-last, and in fp32 each also with TF32. Elsewhere the first
        combinations of the option values, as for any backend.
        """
        if not is_cuda(device):
            names = ("channels_last", "compile", "cuda_graphs")
            combos = itertools.product(*(OPTIONS[k] for k in names))
            return [dict(zip(names, c)) for c in itertools.islice(combos, 12)]
        convs = model.format is not ModelFormat.ONNX or bool(_CONV_OPERATORS & set(model.operators))
        layouts = ({}, {"channels_last": True}) if convs else ({},)
        maths = ({}, {"tf32": True}) if precision is Precision.FP32 else ({},)
        out: list[dict[str, Any]] = [{}]
        for runner in ({"cuda_graphs": True}, {"compile": "reduce-overhead"}):
            out += [{**runner, **layout, **math} for math in maths for layout in layouts]
        return out

    # -- check -----------------------------------------------------------------------------
    def _requirements(
        self, model: ModelSpec, device: Device, config: Config
    ) -> Iterator[tuple[Support, type[AivmmError]]]:
        # The base checks installation, device, format, precision and memory; a failure that makes the
        # rest meaningless (runtime missing, device not driven, format not run) ends the list there.
        for support, error in super()._requirements(model, device, config):
            yield support, error
            if not support and error in (BackendUnavailableError, UnsupportedModelError):
                return
        yield _options_support(config), ConfigError
        graphs = bool(config.options.get("cuda_graphs"))
        if graphs and not is_cuda(device):
            yield Support.no(f"cuda_graphs needs a CUDA or ROCm GPU, not {device.id}"), ConfigError
        if graphs and config.options.get("compile") == "reduce-overhead":
            yield (
                Support.no("compile='reduce-overhead' already captures CUDA graphs; do not also set cuda_graphs"),
                ConfigError,
            )
        if config.options.get("compile"):
            yield _compile_support(device), BackendUnavailableError
        if config.options.get("tf32") and (config.precision is not Precision.FP32 or not is_cuda(device)):
            yield (
                Support.no(f"tf32 is an fp32 mode of CUDA GPUs, not of {config.precision.value} on {device.id}"),
                ConfigError,
            )
        if (
            config.options.get("channels_last")
            and model.format is ModelFormat.ONNX
            and not (_CONV_OPERATORS & set(model.operators))
        ):
            yield Support.no("channels_last only changes 2-D convolutions, and this model has none"), ConfigError
        if model.format is ModelFormat.ONNX:
            yield from self._check_onnx(model, graphs)
        else:
            yield _check_native(model), ModelLoadError

    def _check_onnx(self, model: ModelSpec, cuda_graphs: bool) -> Iterator[tuple[Support, type[AivmmError]]]:
        if importlib.util.find_spec("onnx") is None:
            yield Support.no(str(missing_extra("onnx", "torch"))), BackendUnavailableError
            return
        try:
            proto, reasons = self._onnx(model, with_weights=False)
        except ModelLoadError as exc:
            yield Support.no(str(exc)), ModelLoadError
            return
        yield (Support.no(*reasons) if reasons else Support.yes()), LoweringError
        if cuda_graphs:
            found = sorted({n.op_type for n in _all_nodes(proto.graph) if n.op_type in _DATA_DEPENDENT})
            if found:
                yield (
                    Support.no(f"cuda_graphs cannot capture data-dependent operators: {', '.join(found)}"),
                    ConfigError,
                )

    def _onnx(self, model: ModelSpec, *, with_weights: bool) -> tuple[Any, list[str]]:
        import onnx

        from aivmm.backends.torch.lowering import refusals

        source = model.source
        if isinstance(source, onnx.ModelProto):
            return source, refusals(source)
        if not isinstance(source, str | os.PathLike):
            raise ModelLoadError(
                f"{model.name!r}: ONNX source must be a path or ModelProto, not {type(source).__name__}"
            )
        path = pathlib.Path(source)
        try:
            stat = path.stat()
        except OSError as exc:
            raise ModelLoadError(f"{path}: {exc.strerror or exc}") from exc
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if not with_weights:
            with self._cache_lock:
                cached = self._onnx_cache.get(key)
            if cached is not None:
                return cached
        try:
            # The loader's parse (weights inline; lower() copies before it rewrites anything), or a
            # copy of it with the external weights read in.
            proto = onnx_model_with_weights(model) if with_weights and model.external_data else onnx_model(model)
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
        entry = (proto, refusals(proto))
        if not with_weights:
            with self._cache_lock:
                if len(self._onnx_cache) > 32:
                    self._onnx_cache.clear()
                self._onnx_cache[key] = entry
        return entry

    # -- load ------------------------------------------------------------------------------
    def _load(self, model: ModelSpec, device: Device, config: Config) -> Session:
        import torch

        from aivmm.backends.torch._devices import torch_device
        from aivmm.backends.torch._session import TorchSession

        target = torch_device(torch, device)
        peak_base = None
        if target.type == "cuda":
            # The allocator's peak counts from here, so the session can say what its load and runs held.
            torch.cuda.reset_peak_memory_stats(target)
            peak_base = torch.cuda.memory_allocated(target)
        float_dtype = getattr(torch, _PRECISION_DTYPES[config.precision])
        notes: list[str] = []
        arg_order: list[str] | None = None
        if model.format is ModelFormat.ONNX:
            from aivmm.backends.torch.lowering import graph_inputs, lower

            proto, _ = self._onnx(model, with_weights=True)
            arg_order = graph_inputs(proto)
            if sorted(arg_order) != sorted(t.name for t in model.inputs):
                raise ModelLoadError(
                    f"{model.name!r}: the signature's inputs {[t.name for t in model.inputs]} are "
                    f"not the graph's {arg_order}; the file changed or the spec is of another model"
                )
            module = lower(proto, float_dtype=float_dtype)
            nodes = sum(1 for n in module.graph.nodes if n.op in ("call_function", "call_module"))
            notes.append(f"lowered {len(proto.graph.node)} ONNX nodes to {nodes} torch.fx calls")
            fused: dict[str, int] = getattr(module, "fused", {})  # set by lower()
            if fused:
                notes.append("fused " + ", ".join(f"{k} x{v}" for k, v in sorted(fused.items())))
        else:
            module = _native_module(model)
            if float_dtype != torch.float32:
                module = module.to(float_dtype)
        if model.format is not ModelFormat.TORCH_EXPORTED:  # an exported program is traced in eval mode already
            module.eval()
        if config.options.get("channels_last"):
            # Module.to takes memory_format (documented); its stubs list only device and dtype.
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        try:
            if target.type == "cuda":
                # One reused pinned staging buffer with chunked async copies: a plain module.to("cuda")
                # copies tensor by tensor from pageable memory at a fraction of the bus speed.
                from aivmm.memory import PinnedUploader

                uploader = PinnedUploader(target.index or 0)
                try:
                    upload = uploader.move_module(module)
                finally:
                    uploader.close()
                notes.append(
                    f"weights uploaded through pinned staging: {upload.nbytes / 2**20:.1f} MiB at "
                    f"{upload.bytes_per_second / 1e9:.1f} GB/s"
                )
            else:
                module = module.to(target)
        except torch.OutOfMemoryError as exc:
            raise OutOfMemoryError(f"{model.name!r}: weights do not fit on {device.id}: {exc}") from exc
        weight_bytes = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
        session = TorchSession(model, device, config, module, target, float_dtype, tuple(notes), arg_order)
        session.report = dataclasses.replace(session.report, device_memory_bytes=weight_bytes, notes=tuple(notes))
        session.peak_base = peak_base
        return session


def _options_support(config: Config) -> Support:
    result = Support.yes()
    for key, value in config.options.items():
        if key not in OPTIONS:
            result = result & Support.no(f"unknown torch option {key!r}; known: {sorted(OPTIONS)}")
        elif value not in OPTIONS[key]:
            result = result & Support.no(f"option {key}={value!r}: expected one of {list(OPTIONS[key])}")
    return result


def _compile_support(device: Device) -> Support:
    if device.kind is DeviceKind.CPU:
        if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
            return Support.no("torch.compile on CPU needs a C++ compiler (g++ or c++) on PATH")
        return Support.yes()
    if importlib.util.find_spec("triton") is None:
        return Support.no(f"torch.compile on {device.id} needs triton (pip install triton)")
    return Support.yes()


def _check_native(model: ModelSpec) -> Support:
    import torch

    source = model.source
    if model.format is ModelFormat.TORCH_MODULE and not isinstance(source, torch.nn.Module):
        return Support.no(
            f"{model.name!r}: a torch-module model needs an nn.Module source, got {type(source).__name__}"
        )
    if model.format is ModelFormat.TORCH_EXPORTED and not isinstance(source, torch.export.ExportedProgram):
        return Support.no(
            f"{model.name!r}: a torch-exported model needs an ExportedProgram source, got {type(source).__name__}"
        )
    if not model.inputs:
        return Support.no(f"{model.name!r}: a native torch model needs its input signature (example inputs)")
    return Support.yes()


def _native_module(model: ModelSpec) -> Any:
    import torch

    source = model.source
    module = _copy_of(source)
    if isinstance(source, torch.nn.Module):
        # Inputs are passed by name when forward() names them all: the signature may list them in
        # another order than forward's parameters (keyword example inputs).
        names = [t.name for t in model.inputs]
        params = inspect.signature(source.forward).parameters
        if all(n in params for n in names):
            return _ByName(module, names)
    return module


class _ByName:  # replaced by an nn.Module subclass on first use (torch is imported lazily)
    def __new__(cls, module: Any, names: list[str]) -> Any:
        return _by_name_class()(module, names)


@functools.cache
def _by_name_class() -> type:
    import torch

    class ByName(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, names: list[str]) -> None:
            super().__init__()
            self.inner = inner
            self.names = names

        def forward(self, *tensors: torch.Tensor) -> Any:
            return self.inner(**dict(zip(self.names, tensors)))

    return ByName


def _copy_of(source: Any) -> Any:
    import torch

    # Moving or casting a module is in place, and an exported program's module shares the caller's
    # parameters: work on a copy so the caller's model stays where, and as, it was.
    if isinstance(source, torch.export.ExportedProgram):
        return copy.deepcopy(source.module())
    if isinstance(source, torch.nn.Module):
        return copy.deepcopy(source)
    raise ConfigError(f"not a torch module or exported program: {type(source).__name__}")


def _all_nodes(graph: Any) -> list[Any]:
    import onnx

    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out.extend(_all_nodes(attr.g))
    return out
