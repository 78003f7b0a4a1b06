"""The Intel probe: GPUs from sysfs (vendor 0x8086, driver i915 or xe), NPUs from
``/sys/class/accel`` (driver intel_vpu), and OpenVINO's view of both when OpenVINO is installed.

OpenVINO knows what sysfs does not (device memory, integrated or discrete, the precisions the
device computes) but importing it and creating a ``Core`` costs about a second, so it is asked
only when sysfs shows an Intel GPU or NPU, or when the caller asks for it (``openvino=True``).
The two views of one device are merged: OpenVINO's ``DEVICE_UUID`` starts with the PCI vendor
and device ids (little-endian), and ``DEVICE_PCI_INFO`` gives the bus when present.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aivmm.devices import _pci_ids
from aivmm.devices._sysfs import list_dir, pci_identity, pcie_link, read_int
from aivmm.devices._types import Device, DeviceKind, ProbeReport, Vendor

_GPU_DRIVERS = ("i915", "xe")
_NPU_DRIVERS = ("intel_vpu",)
# Intel puts the integrated GPU at PCI 00:02.0 on every client platform since Sandy Bridge.
_IGPU_SLOT = re.compile(r"^[0-9a-f]{4}:00:02\.0$", re.IGNORECASE)
_OV_PROPERTIES = (
    "FULL_DEVICE_NAME",
    "DEVICE_TYPE",
    "DEVICE_ARCHITECTURE",
    "DEVICE_UUID",
    "DEVICE_PCI_INFO",
    "OPTIMIZATION_CAPABILITIES",
    "DEVICE_GOPS",
    "GPU_DEVICE_TOTAL_MEM_SIZE",
    "GPU_EXECUTION_UNITS_COUNT",
    "NPU_DEVICE_TOTAL_MEM_SIZE",
    "NPU_DEVICE_ALLOC_MEM_SIZE",
    "NPU_DRIVER_VERSION",
    "DEVICE_ID",
)


def probe(
    root: str | Path = "/sys",
    *,
    openvino: bool | None = None,
    core_factory: Callable[[], Any] | None = None,
) -> ProbeReport:
    """Intel GPUs and NPUs.

    ``openvino``: None asks OpenVINO only when sysfs found an Intel GPU or NPU; True always; False
    never. ``core_factory`` builds the OpenVINO ``Core`` (tests pass a fake driven by a recording).
    """
    base = Path(root)
    gpus = _sysfs_gpus(base)
    npus = _sysfs_npus(base)
    notes: list[str] = []
    use_ov = openvino if openvino is not None else bool(gpus or npus)
    if use_ov:
        ov_devices, note = _openvino_devices(core_factory)
        if note:
            notes.append(note)
        gpus = _merge(gpus, [d for d in ov_devices if d["kind"] == "GPU"])
        npus = _merge(npus, [d for d in ov_devices if d["kind"] == "NPU"])
    devices = [_device("intel-gpu", i, g, DeviceKind.GPU) for i, g in enumerate(gpus)]
    devices += [_device("intel-npu", i, n, DeviceKind.NPU) for i, n in enumerate(npus)]
    if not devices:
        where = f"{base / 'class/drm'} or {base / 'class/accel'}"
        notes.insert(0, f"absent: no Intel GPU (vendor 0x8086, driver i915/xe) or NPU (intel_vpu) under {where}")
    return ProbeReport("intel", tuple(devices), "; ".join(notes))


# ---------------------------------------------------------------- sysfs


def gpu_dirs(root: str | Path = "/sys") -> list[Path]:
    """The PCI device folders of the Intel GPUs under ``root``, in the order the probe numbers them
    (``intel-gpu:N``; OpenVINO-only devices come after): the telemetry meter reads the same list."""
    found: list[Path] = []
    seen: set[str] = set()
    for card in list_dir(Path(root) / "class/drm"):
        if not (card.name.startswith("card") and card.name[4:].isdigit()):
            continue
        device_dir = card / "device"
        ident = pci_identity(device_dir)
        if ident.get("vendor_id") != "0x8086" or ident.get("driver") not in _GPU_DRIVERS:
            continue
        slot = ident.get("pci_bus_id", "")
        if slot in seen:
            continue
        seen.add(slot)
        found.append(device_dir)
    return found


def _sysfs_gpus(base: Path) -> list[dict[str, Any]]:
    return [_sysfs_facts(device_dir, pci_identity(device_dir)) for device_dir in gpu_dirs(base)]


def npu_dirs(root: str | Path = "/sys") -> list[Path]:
    """The PCI device folders of the Intel NPUs under ``root``, in the probe's order (``intel-npu:N``)."""
    found = []
    for accel in list_dir(Path(root) / "class/accel"):
        if not (accel.name.startswith("accel") and accel.name[5:].isdigit()):
            continue
        device_dir = accel / "device"
        if pci_identity(device_dir).get("driver") in _NPU_DRIVERS:
            found.append(device_dir)
    return found


def _sysfs_npus(base: Path) -> list[dict[str, Any]]:
    found = []
    for device_dir in npu_dirs(base):
        facts = _sysfs_facts(device_dir, pci_identity(device_dir))
        max_mhz = read_int(device_dir / "npu_max_frequency_mhz")
        if max_mhz:
            facts["props"]["max_frequency_mhz"] = max_mhz
        found.append(facts)
    return found


def _sysfs_facts(device_dir: Path, ident: dict[str, str]) -> dict[str, Any]:
    slot = ident.get("pci_bus_id", "")
    props: dict[str, Any] = {
        "pci_bus_id": slot or None,
        "pci_device_id": ident.get("device_id"),
        "driver": ident.get("driver"),
        **pcie_link(device_dir),
    }
    numa = read_int(device_dir / "numa_node")
    if numa is not None and numa >= 0:
        props["numa_node"] = numa
    return {
        "device_id": _pci_ids.parse_hex(ident.get("device_id")),
        "slot": slot.lower(),
        "integrated": bool(_IGPU_SLOT.match(slot)) if slot else None,
        "name": None,
        "memory": 0,
        "memory_used": None,
        "features": set(),
        "props": props,
        "sources": ["sysfs"],
    }


# ---------------------------------------------------------------- OpenVINO


def _openvino_devices(core_factory: Callable[[], Any] | None) -> tuple[list[dict[str, Any]], str]:
    if core_factory is None:
        try:
            ov = importlib.import_module("openvino")
        except ImportError:
            return [], 'OpenVINO not installed (pip install "aivmm[openvino]"): memory and precisions unknown'
        core_factory = ov.Core
    try:
        core = core_factory()
        names = list(core.available_devices)
    except Exception as exc:
        return [], f"OpenVINO failed to list devices: {type(exc).__name__}: {exc}"
    out = []
    for name in names:
        kind = name.split(".")[0]
        if kind not in ("GPU", "NPU"):
            continue
        props: dict[str, Any] = {}
        for key in _OV_PROPERTIES:
            try:
                props[key] = core.get_property(name, key)
            except Exception:  # each device supports a different subset of properties
                continue
        out.append(_openvino_facts(name, kind, props))
    return out, ""


def _openvino_facts(name: str, kind: str, p: dict[str, Any]) -> dict[str, Any]:
    uuid = str(p.get("DEVICE_UUID", "") or "")
    device_id = None
    if len(uuid) >= 8 and uuid[:4].lower() == "8680":  # vendor 0x8086 little-endian, then the device id
        device_id = int(uuid[6:8] + uuid[4:6], 16)
    slot = _pci_slot(str(p.get("DEVICE_PCI_INFO", "") or ""))
    device_type = str(p.get("DEVICE_TYPE", "")).upper()
    integrated = True if "INTEGRATED" in device_type else (False if "DISCRETE" in device_type else None)
    memory = _int(p.get("GPU_DEVICE_TOTAL_MEM_SIZE")) or _int(p.get("NPU_DEVICE_TOTAL_MEM_SIZE")) or 0
    capabilities = _as_list(p.get("OPTIMIZATION_CAPABILITIES"))
    features = {c.lower() for c in capabilities if c in ("FP32", "FP16", "INT8", "BF16")}
    gops = _gops(p.get("DEVICE_GOPS"))
    # DEVICE_GOPS reads 0.0 both for "no fast path" (NPU fp32) and "not reported" (A770 fp16 on
    # OpenVINO 2024.1), so a zero never removes what OPTIMIZATION_CAPABILITIES claims.
    features |= {prec for prec, value in gops.items() if value > 0}
    if "GPU_HW_MATMUL" in _as_list(p.get("OPTIMIZATION_CAPABILITIES")):
        features.add("xmx")
    props: dict[str, Any] = {
        "openvino_device": name,
        "architecture": str(p["DEVICE_ARCHITECTURE"]) if "DEVICE_ARCHITECTURE" in p else None,
        "execution_units": _int(p.get("GPU_EXECUTION_UNITS_COUNT")),
        "openvino_gops": gops or None,
        "npu_driver_version": str(p["NPU_DRIVER_VERSION"]) if "NPU_DRIVER_VERSION" in p else None,
        "uuid": uuid or None,
    }
    return {
        "kind": kind,
        "device_id": device_id,
        "slot": slot,
        "integrated": integrated,
        "name": str(p.get("FULL_DEVICE_NAME") or "") or None,
        "memory": memory,
        "memory_used": _int(p.get("NPU_DEVICE_ALLOC_MEM_SIZE")),
        "features": features,
        "props": {k: v for k, v in props.items() if v is not None},
        "sources": ["openvino"],
    }


def _pci_slot(text: str) -> str:
    # OpenVINO prints ov::device::PCIInfo as "{domain: 0 bus: 0 device: 0xb function: 0}".
    fields = dict(re.findall(r"(domain|bus|device|function):\s*(0x[0-9a-fA-F]+|\d+)", text))
    if len(fields) != 4:
        return ""
    n = {k: int(v, 0) for k, v in fields.items()}
    return f"{n['domain']:04x}:{n['bus']:02x}:{n['device']:02x}.{n['function']:x}"


def _gops(value: Any) -> dict[str, float]:
    if not value:
        return {}
    items = value.items() if isinstance(value, dict) else []
    out: dict[str, float] = {}
    for key, number in items:
        text = str(getattr(key, "type_name", None) or key)
        for token, precision in (
            ("bfloat16", "bf16"),
            ("bf16", "bf16"),
            ("float16", "fp16"),
            ("f16", "fp16"),
            ("float32", "fp32"),
            ("f32", "fp32"),
            ("uint8", None),
            ("u8", None),
            ("int8", "int8"),
            ("i8", "int8"),
        ):
            if token in text:
                if precision:
                    out[precision] = max(out.get(precision, 0.0), float(number))
                break
    return out


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.replace(",", " ").split()
    return [str(v) for v in value]


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _merge(sysfs: list[dict[str, Any]], ov: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per physical device: OpenVINO facts folded into the sysfs entry they describe."""
    merged = [dict(s) for s in sysfs]
    for ov_dev in ov:
        target = None
        if ov_dev["slot"]:
            target = next((m for m in merged if m["slot"] == ov_dev["slot"] and "openvino" not in m["sources"]), None)
        if target is None and ov_dev["device_id"] is not None:
            target = next(
                (m for m in merged if m["device_id"] == ov_dev["device_id"] and "openvino" not in m["sources"]), None
            )
        if target is None and len(sysfs) == 1 and len(ov) == 1 and ov_dev["device_id"] is None and not ov_dev["slot"]:
            target = merged[0]  # one of each and nothing that contradicts: the same device
        if target is None:
            merged.append(dict(ov_dev))
            continue
        target["name"] = ov_dev["name"] or target["name"]
        target["memory"] = ov_dev["memory"] or target["memory"]
        target["memory_used"] = ov_dev["memory_used"]
        target["features"] = set(target["features"]) | ov_dev["features"]
        if ov_dev["integrated"] is not None:
            target["integrated"] = ov_dev["integrated"]
        target["props"] = {**target["props"], **ov_dev["props"]}
        target["sources"] = [*target["sources"], "openvino"]
    return merged


def _device(prefix: str, index: int, facts: dict[str, Any], kind: DeviceKind) -> Device:
    device_id = facts["device_id"]
    name = (
        facts["name"]
        or (_pci_ids.name_for(_pci_ids.INTEL, device_id) if device_id is not None else None)
        or (f"Intel {kind.value.upper()} 0x{device_id:04x}" if device_id is not None else f"Intel {kind.value.upper()}")
    )
    total = int(facts["memory"] or 0)
    used = facts["memory_used"]
    props = dict(facts["props"])
    props["integrated"] = bool(facts["integrated"]) if facts["integrated"] is not None else kind is DeviceKind.NPU
    props["memory_free_known"] = used is not None
    if not total:
        props["memory_total_known"] = False
    features = set(facts["features"]) or ({"fp16", "int8"} if kind is DeviceKind.NPU else {"fp32", "fp16"})
    return Device(
        id=f"{prefix}:{index}",
        kind=kind,
        vendor=Vendor.INTEL,
        name=name,
        memory_total_bytes=total,
        memory_free_bytes=max(0, total - used) if used is not None else total,
        index=index,
        features=frozenset(features),
        properties=props,
        source="+".join(facts["sources"]),
    )
