"""aivmm devices and precisions to OpenVINO device names and properties: the only place they appear."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from aivmm.devices import Device, DeviceKind, Vendor
from aivmm.dtypes import Precision
from aivmm.errors import ConfigError

# INFERENCE_PRECISION_HINT values. The hint is always set: OpenVINO's CPU plugin otherwise computes in
# bf16 on CPUs that have it, silently changing results.
HINTS = {Precision.FP32: "f32", Precision.FP16: "f16", Precision.BF16: "bf16"}
_CPU_BF16 = frozenset({"bf16", "avx512_bf16", "amx_bf16"})
_CPU_FP16 = frozenset({"avx512_fp16", "amx_fp16", "asimdhp"})
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


def device_name(device: Device) -> str | None:
    """The OpenVINO device name for an aivmm device (None when OpenVINO cannot name it)."""
    if device.kind is DeviceKind.CPU:
        return "CPU"
    if device.vendor is not Vendor.INTEL:
        return None
    if device.kind is DeviceKind.GPU:
        return f"GPU.{device.index}"
    if device.kind is DeviceKind.NPU:
        return "NPU"
    return None


def is_listed(name: str, available: Collection[str]) -> bool:
    """OpenVINO lists a single GPU as "GPU" and several as "GPU.0", "GPU.1", ..."""
    return name in available or (name == "GPU.0" and "GPU" in available)


def precisions(device: Device, capabilities: Collection[str] = ()) -> frozenset[Precision]:
    """Precisions OpenVINO computes natively on this device.

    CPU: fp32, bf16 where the ISA has bf16 (AVX512-BF16/AMX), fp16 where it has fp16 arithmetic; GPU:
    fp32 and fp16; NPU: fp16 only (it has no fp32 arithmetic). int8 everywhere, for pre-quantised models.
    """
    found = {Precision.INT8}
    if device.kind is DeviceKind.CPU:
        found.add(Precision.FP32)
        if device.features & _CPU_BF16:
            found.add(Precision.BF16)
        if device.features & _CPU_FP16:
            found.add(Precision.FP16)
    elif device.kind is DeviceKind.GPU:
        found.add(Precision.FP32)
        if not capabilities or "FP16" in capabilities:
            found.add(Precision.FP16)
    elif device.kind is DeviceKind.NPU:
        found.add(Precision.FP16)
    return frozenset(found)


def hint(precision: Precision, device: Device) -> str:
    """The inference precision hint for a configuration (int8 keeps non-quantised parts at the device's
    natural float: f32 on CPU, f16 on GPU/NPU)."""
    if precision is Precision.INT8:
        return "f32" if device.kind is DeviceKind.CPU else "f16"
    return HINTS[precision]


def target(device: Device, options: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(compile target, the real devices it names): "CPU", "GPU.0", "AUTO:GPU.0,CPU", "HETERO:GPU.0,CPU"."""
    base = device_name(device)
    if base is None:
        raise ConfigError(f"OpenVINO cannot drive {device.id}")
    mode = options.get("device_mode")
    if mode is None:
        return base, (base,)
    text = str(mode).strip().upper()
    head, _, rest = text.partition(":")
    if head not in ("AUTO", "HETERO"):
        raise ConfigError(f"device_mode must be 'AUTO', 'HETERO' or 'AUTO:/HETERO:<devices>', got {mode!r}")
    devices = tuple(d.strip() for d in rest.split(",") if d.strip()) if rest else (base, "CPU")
    devices = tuple(dict.fromkeys(devices))  # "CPU,CPU" -> "CPU"
    if base not in devices and not (base == "GPU.0" and "GPU" in devices):
        raise ConfigError(f"device_mode {mode!r} does not include {base}, the device asked for ({device.id})")
    return f"{head}:{','.join(devices)}", devices
