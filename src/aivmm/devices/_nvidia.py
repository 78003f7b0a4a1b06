"""The NVIDIA probe, through NVML (``pip install "aivmm[nvidia]"`` installs nvidia-ml-py).

NVML is the management library: asking it about a GPU creates no CUDA context, allocates no GPU
memory and does not depend on ``CUDA_VISIBLE_DEVICES`` (which it ignores on purpose), so device
``nvidia:N`` is NVML's index N, the same numbering as ``nvidia-smi``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

from aivmm.devices._types import Device, DeviceKind, ProbeReport, Vendor

_ARCHITECTURES = {
    2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere", 8: "ada",
    9: "hopper", 10: "blackwell", 13: "rubin",
}


def probe(nvml: Any = None) -> ProbeReport:
    """Every GPU NVML reports. ``nvml`` replaces the ``pynvml`` module (tests pass a fake)."""
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return ProbeReport("nvidia", reason='absent: pynvml is not installed (pip install "aivmm[nvidia]")')
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ... : the reason is the point
        return ProbeReport("nvidia", reason=f"absent: nvmlInit failed: {_describe(exc)}")
    try:
        return _devices(nvml)
    except Exception as exc:
        return ProbeReport("nvidia", reason=f"absent: NVML failed while listing GPUs: {_describe(exc)}")
    finally:
        with contextlib.suppress(Exception):  # shutting down a library that misbehaved must not hide what we found
            nvml.nvmlShutdown()


def _devices(nvml: Any) -> ProbeReport:
    count = nvml.nvmlDeviceGetCount()
    driver = _text(_optional(nvml.nvmlSystemGetDriverVersion))
    cuda = _optional(getattr(nvml, "nvmlSystemGetCudaDriverVersion_v2", None))
    devices: list[Device] = []
    problems: list[str] = []
    for index in range(count):
        try:
            devices.append(_device(nvml, index, driver, cuda))
        except Exception as exc:
            problems.append(f"GPU {index} skipped: {_describe(exc)}")
    if not count:
        return ProbeReport("nvidia", reason="absent: NVML reports no GPU")
    return ProbeReport("nvidia", tuple(devices), "; ".join(problems))


def _device(nvml: Any, index: int, driver: str | None, cuda: int | None) -> Device:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(nvml.nvmlDeviceGetName(handle)) or f"NVIDIA GPU {index}"
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    props: dict[str, Any] = {
        "uuid": _text(_optional(nvml.nvmlDeviceGetUUID, handle)),
        "compute_capability": f"{major}.{minor}",
        "driver_version": driver,
        "cuda_driver_version": _cuda_version(cuda),
    }
    pci = _optional(nvml.nvmlDeviceGetPciInfo, handle)
    if pci is not None:
        props["pci_bus_id"] = _text(getattr(pci, "busId", None))
        device_id = getattr(pci, "pciDeviceId", None)
        if isinstance(device_id, int):
            props["pci_device_id"] = f"0x{device_id >> 16:04x}"  # NVML packs device<<16 | vendor
    arch = _optional(getattr(nvml, "nvmlDeviceGetArchitecture", None), handle)
    if arch is not None:
        props["architecture"] = _ARCHITECTURES.get(int(arch), f"unknown ({arch})")
    limit = _optional(nvml.nvmlDeviceGetPowerManagementLimit, handle)
    if limit is not None:
        props["power_limit_w"] = round(limit / 1000.0, 1)
    draw = _optional(nvml.nvmlDeviceGetPowerUsage, handle)
    if draw is not None:
        props["power_draw_w"] = round(draw / 1000.0, 1)
    for key, fn in (("pcie_gen_current", "nvmlDeviceGetCurrPcieLinkGeneration"),
                    ("pcie_gen_max", "nvmlDeviceGetMaxPcieLinkGeneration"),
                    ("pcie_width_current", "nvmlDeviceGetCurrPcieLinkWidth"),
                    ("pcie_width_max", "nvmlDeviceGetMaxPcieLinkWidth")):
        value = _optional(getattr(nvml, fn, None), handle)
        if value is not None:
            props[key] = int(value)
    cores = _optional(getattr(nvml, "nvmlDeviceGetNumGpuCores", None), handle)
    if cores is not None:
        props["cuda_cores"] = int(cores)
    mig = _optional(getattr(nvml, "nvmlDeviceGetMigMode", None), handle)
    mig_current = bool(mig[0]) if mig is not None else False
    props["mig_mode"] = "enabled" if mig_current else ("disabled" if mig is not None else "unsupported")

    features = {"fp32", "fp16"}
    cc = (int(major), int(minor))
    if cc >= (6, 1):
        features.add("int8")
    if cc >= (7, 0):
        features.add("tensor-cores")
    if cc >= (8, 0):
        features.add("bf16")
    if cc >= (8, 9):
        features.add("fp8")
    if mig_current:
        features.add("mig")
    return Device(
        id=f"nvidia:{index}",
        kind=DeviceKind.GPU,
        vendor=Vendor.NVIDIA,
        name=name,
        memory_total_bytes=int(memory.total),
        memory_free_bytes=int(memory.free),
        index=index,
        features=frozenset(features),
        properties={k: v for k, v in props.items() if v is not None},
        source="nvml",
    )


def _optional(fn: Callable[..., Any] | None, *args: Any) -> Any:
    """A query that some GPUs, drivers or VMs do not support (NVMLError_NotSupported): None then."""
    if fn is None:
        return None
    try:
        return fn(*args)
    except Exception:
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(value: int | None) -> str | None:
    if not isinstance(value, int) or value <= 0:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
