"""The NVIDIA probe, through NVML (``pip install "aivmm[nvidia]"`` installs nvidia-ml-py).

NVML is the management library: asking it about a GPU creates no CUDA context, allocates no GPU
memory and does not depend on ``CUDA_VISIBLE_DEVICES`` (which it ignores on purpose), so device
``nvidia:N`` is NVML's index N, the same numbering as ``nvidia-smi``.

Without NVML (nvidia-ml-py not installed, or the library failing) the GPUs are still listed from
sysfs (``/sys/bus/pci/devices``, vendor 0x10de, display class) and the driver's
``/proc/driver/nvidia/gpus/*/information``, in PCI order (NVML's order), with the reason NVML was
not used: memory and compute capability are then unknown, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aivmm.devices import _pci_ids
from aivmm.devices._library import LibrarySession, nvml_session
from aivmm.devices._library import describe as _describe
from aivmm.devices._sysfs import list_dir, pci_identity, pcie_link, read_int, read_key_values, read_text
from aivmm.devices._types import Device, DeviceKind, ProbeReport, Vendor

_ARCHITECTURES = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
    13: "rubin",
}


def probe(nvml: Any = None, *, root: str | Path = "/") -> ProbeReport:
    """Every NVIDIA GPU, through the process's NVML session (initialised once, shut down at exit).

    ``nvml`` replaces the ``pynvml`` module for this one probe (tests pass a fake): it is then
    initialised and shut down here. ``root`` is where the sysfs/procfs fallback reads (tests point
    it at recorded files)."""
    if nvml is not None:
        own = LibrarySession.nvml(nvml)
        try:
            return _probe(own, root)
        finally:
            own.close()
    return _probe(nvml_session(), root)


def _probe(session: LibrarySession, root: str | Path) -> ProbeReport:
    nvml, why = session.library()
    if nvml is None:
        return _fallback(root, why)
    try:
        return _devices(nvml)
    except Exception as exc:
        return ProbeReport("nvidia", reason=f"absent: NVML failed while listing GPUs: {_describe(exc)}")


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
    for key, fn in (
        ("pcie_gen_current", "nvmlDeviceGetCurrPcieLinkGeneration"),
        ("pcie_gen_max", "nvmlDeviceGetMaxPcieLinkGeneration"),
        ("pcie_width_current", "nvmlDeviceGetCurrPcieLinkWidth"),
        ("pcie_width_max", "nvmlDeviceGetMaxPcieLinkWidth"),
    ):
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


# ---------------------------------------------------------------- without NVML

_DISPLAY_CLASSES = ("0x0300", "0x0302")  # VGA controller, 3D controller (data-centre GPUs)


def _fallback(root: str | Path, why: str) -> ProbeReport:
    report = probe_sysfs(root)
    if not report.devices:
        return ProbeReport("nvidia", reason=f"absent: {why}")
    return ProbeReport(
        "nvidia", report.devices, f"NVML unusable ({why}): listed from sysfs, memory and compute capability unknown"
    )


def probe_sysfs(root: str | Path = "/") -> ProbeReport:
    base = Path(root)
    devices: list[Device] = []
    for device_dir in list_dir(base / "sys/bus/pci/devices"):
        vendor = read_text(device_dir / "vendor")
        pci_class = read_text(device_dir / "class") or ""
        if vendor != "0x10de" or not pci_class.startswith(_DISPLAY_CLASSES):
            continue
        ident = pci_identity(device_dir)
        slot = ident.get("pci_bus_id", device_dir.name)
        info = read_key_values(base / "proc/driver/nvidia/gpus" / slot / "information", ":")
        device_id = _pci_ids.parse_hex(ident.get("device_id"))
        name = info.get("Model") or (_pci_ids.name_for(_pci_ids.NVIDIA, device_id) if device_id else None)
        index = len(devices)
        props: dict[str, Any] = {
            "pci_bus_id": slot,
            "pci_device_id": ident.get("device_id"),
            "driver": ident.get("driver") or None,
            "uuid": info.get("GPU UUID"),
            "vbios_version": info.get("Video BIOS"),
            "memory_total_known": False,
            "memory_free_known": False,
            **pcie_link(device_dir),
        }
        numa = read_int(device_dir / "numa_node")
        if numa is not None and numa >= 0:
            props["numa_node"] = numa
        devices.append(
            Device(
                id=f"nvidia:{index}",
                kind=DeviceKind.GPU,
                vendor=Vendor.NVIDIA,
                name=name or f"NVIDIA GPU 0x{device_id or 0:04x}",
                memory_total_bytes=0,
                memory_free_bytes=0,
                index=index,
                features=frozenset({"fp32"}),
                properties={k: v for k, v in props.items() if v is not None},
                source="sysfs",
            )
        )
    if not devices:
        return ProbeReport("nvidia", reason=f"absent: no NVIDIA GPU under {base / 'sys/bus/pci/devices'}")
    return ProbeReport("nvidia", tuple(devices))
