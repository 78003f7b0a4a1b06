"""Devices to ONNX Runtime execution providers, and provider options: the only place EP names appear.

Each device maps to an ordered list of EP choices (the first available one is the default); the user or
planner can pin one with the ``execution_provider`` option. A device is offered only when one of its EPs
is in ``onnxruntime.get_available_providers()``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

from aivmm.devices import Device, DeviceKind, Vendor
from aivmm.dtypes import Precision
from aivmm.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EpChoice:
    """An execution provider aivmm can put a device on."""

    short: str  # the option value users write: "cuda", "tensorrt", ...
    provider: str  # the ONNX Runtime provider name
    gpu: bool  # device-resident memory: IOBinding pays off
    precisions: frozenset[Precision]
    install: str  # how to get it


_FP = frozenset({Precision.FP32, Precision.FP16})
_FP_INT8 = frozenset({Precision.FP32, Precision.FP16, Precision.INT8})

CPU = EpChoice("cpu", "CPUExecutionProvider", False, frozenset({Precision.FP32, Precision.INT8}), "onnxruntime")
CUDA = EpChoice("cuda", "CUDAExecutionProvider", True, _FP, "pip install onnxruntime-gpu")
TENSORRT = EpChoice("tensorrt", "TensorrtExecutionProvider", True, _FP_INT8, "pip install onnxruntime-gpu + TensorRT")
MIGRAPHX = EpChoice("migraphx", "MIGraphXExecutionProvider", True, _FP_INT8, "onnxruntime-migraphx (ROCm)")
ROCM = EpChoice("rocm", "ROCMExecutionProvider", True, _FP, "onnxruntime-rocm")
OPENVINO = EpChoice("openvino", "OpenVINOExecutionProvider", False, _FP_INT8, "pip install onnxruntime-openvino")
DML = EpChoice("dml", "DmlExecutionProvider", True, _FP, "pip install onnxruntime-directml (Windows)")
COREML = EpChoice("coreml", "CoreMLExecutionProvider", False, _FP, "onnxruntime on macOS")

BY_SHORT: dict[str, EpChoice] = {ep.short: ep for ep in (CPU, CUDA, TENSORRT, MIGRAPHX, ROCM, OPENVINO, DML, COREML)}


def choices_for(device: Device) -> tuple[EpChoice, ...]:
    """Every EP that could drive this device, most preferred first (before availability)."""
    if device.kind is DeviceKind.CPU:
        return (CPU,)
    found: list[EpChoice] = []
    if device.vendor is Vendor.NVIDIA and device.kind is DeviceKind.GPU:
        found += [CUDA, TENSORRT]
    elif device.vendor is Vendor.AMD and device.kind is DeviceKind.GPU:
        found += [MIGRAPHX, ROCM]
    elif device.vendor is Vendor.INTEL:
        found.append(OPENVINO)
    elif device.vendor is Vendor.APPLE:
        found.append(COREML)
    if sys.platform == "win32" and device.kind is DeviceKind.GPU:
        found.append(DML)
    return tuple(found)


def available_choices(device: Device, available: frozenset[str]) -> tuple[EpChoice, ...]:
    return tuple(c for c in choices_for(device) if c.provider in available)


def pick(device: Device, available: frozenset[str], options: Mapping[str, Any]) -> EpChoice:
    """The EP for this device and options; ConfigError when the asked one cannot drive it."""
    usable = available_choices(device, available)
    asked = options.get("execution_provider")
    if asked is None:
        if not usable:
            raise ConfigError(f"no ONNX Runtime execution provider drives {device.id}")
        return usable[0]
    choice = BY_SHORT.get(str(asked).lower())
    if choice is None:
        raise ConfigError(f"unknown execution_provider {asked!r}; expected one of {sorted(BY_SHORT)}")
    if choice not in choices_for(device):
        raise ConfigError(f"execution_provider {choice.short!r} cannot drive {device.id} ({device.name})")
    if choice not in usable:
        raise ConfigError(f"{choice.provider} is not available in this onnxruntime build ({choice.install})")
    return choice


def physical_cores(device: Device | None = None) -> int:
    """Physical cores usable by this process: hyper-threads share execution units, so ORT's own default
    (one thread per physical core) is the best figure for one session."""
    if device is not None:
        for key in ("physical_cores", "cores"):
            value = device.properties.get(key)
            if isinstance(value, int) and value > 0:
                return _cap_by_affinity(value)
    try:
        pairs = set()
        phys = core = ""
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not key:
                if core:
                    pairs.add((phys, core))
                phys = core = ""
        if core:
            pairs.add((phys, core))
        if pairs:
            return _cap_by_affinity(len(pairs))
    except OSError:
        pass
    return _cap_by_affinity(os.cpu_count() or 1)


def _cap_by_affinity(cores: int) -> int:
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return cores
    return max(1, min(cores, allowed))


def provider_options(
    choice: EpChoice, device: Device, precision: Precision, options: Mapping[str, Any], cache_dir: pathlib.Path
) -> dict[str, str]:
    """The provider options for one EP, from aivmm's Config options (string values, as ORT wants)."""
    opts: dict[str, str] = {}
    if choice is CPU:
        return opts
    index = str(device.index)
    if choice is CUDA:
        opts["device_id"] = index
        opts["arena_extend_strategy"] = "kNextPowerOfTwo" if options.get("arena", True) else "kSameAsRequested"
        opts["cudnn_conv_algo_search"] = str(options.get("cudnn_conv_algo_search", "EXHAUSTIVE")).upper()
        opts["do_copy_in_default_stream"] = "1"
    elif choice is TENSORRT:
        opts["device_id"] = index
        opts["trt_fp16_enable"] = "1" if precision is Precision.FP16 else "0"
        opts["trt_int8_enable"] = "1" if precision is Precision.INT8 else "0"
        engine_dir = pathlib.Path(str(options.get("engine_cache_dir", cache_dir / "tensorrt")))
        opts["trt_engine_cache_enable"] = "1"
        opts["trt_engine_cache_path"] = str(engine_dir)
        opts["trt_timing_cache_enable"] = "1"
        opts["trt_timing_cache_path"] = str(engine_dir)
    elif choice is MIGRAPHX:
        opts["device_id"] = index
        opts["migraphx_fp16_enable"] = "1" if precision is Precision.FP16 else "0"
        opts["migraphx_int8_enable"] = "1" if precision is Precision.INT8 else "0"
    elif choice is ROCM:
        opts["device_id"] = index
    elif choice is OPENVINO:
        target = {DeviceKind.GPU: f"GPU.{device.index}", DeviceKind.NPU: "NPU"}.get(device.kind, "CPU")
        opts["device_type"] = target
        opts["precision"] = {Precision.FP16: "FP16", Precision.FP32: "FP32"}.get(precision, "FP32")
        opts["cache_dir"] = str(cache_dir / "ort-openvino")
    elif choice is DML:
        opts["device_id"] = index
    elif choice is COREML:
        opts["ModelFormat"] = "MLProgram"
        opts["MLComputeUnits"] = "ALL"
    return opts
