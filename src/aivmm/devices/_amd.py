"""The AMD probe: amdsmi when it is installed and works, otherwise sysfs.

sysfs needs nothing installed: ``/sys/class/drm/card*/device`` (vendor 0x1002, driver amdgpu)
gives the PCI identity and VRAM (``mem_info_vram_total``/``_used``), and the KFD topology
(``/sys/class/kfd/kfd/topology/nodes/*/properties``) gives the gfx architecture of each GPU
node, matched to its card by PCI location. When only the KFD topology is there (a partitioned
Instinct GPU exposes one KFD node per compute partition, each a separate ROCm device), each
GPU node becomes a device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aivmm.devices import _pci_ids
from aivmm.devices._library import LibrarySession, amdsmi_session
from aivmm.devices._sysfs import list_dir, pci_identity, pcie_link, read_int, read_key_values, read_text
from aivmm.devices._types import Device, DeviceKind, ProbeReport, Vendor

_MB = 1024 * 1024
# gfx architectures whose matrix cores compute bf16 / int8 (CDNA 1-3, RDNA 3-4). RDNA 2 and Vega
# run fp16 packed math and int8 dot products but no bf16 matrix path.
_BF16 = ("gfx908", "gfx90a", "gfx940", "gfx941", "gfx942", "gfx950", "gfx11", "gfx12")
_INT8 = ("gfx906", "gfx908", "gfx90a", "gfx94", "gfx95", "gfx103", "gfx11", "gfx12")


def probe(root: str | Path = "/sys", amdsmi: Any = None, *, use_amdsmi: bool = True) -> ProbeReport:
    """AMD GPUs. ``amdsmi`` replaces the ``amdsmi`` module (tests pass a fake driven by a recording)."""
    notes: list[str] = []
    if use_amdsmi:
        if amdsmi is not None:
            own = LibrarySession.amdsmi(amdsmi)
            try:
                report = _probe_session(own)
            finally:
                own.close()
        else:
            report = _probe_session(amdsmi_session())
        if report.devices:
            return report
        if report.reason:
            notes.append(f"{report.reason}; read sysfs instead")
    report = probe_sysfs(root)
    reason = "; ".join([*notes, report.reason] if report.reason else notes)
    return ProbeReport("amd", report.devices, reason)


# ---------------------------------------------------------------- amdsmi


def _probe_session(session: LibrarySession) -> ProbeReport:
    """GPUs through amdsmi; an empty reason when amdsmi is simply not installed (sysfs is the norm)."""
    amdsmi, why = session.library()
    if amdsmi is None:
        return ProbeReport("amd", reason="" if why == session.not_installed else why)
    try:
        handles = amdsmi.amdsmi_get_processor_handles()
        devices = []
        problems = []
        for index, handle in enumerate(handles):
            try:
                devices.append(_amdsmi_device(amdsmi, index, handle))
            except Exception as exc:
                problems.append(f"GPU {index} skipped: {type(exc).__name__}: {exc}")
        if devices:
            reason = "; ".join(problems)
        else:
            reason = "amdsmi reports no GPU" + (": " + "; ".join(problems) if problems else "")
        return ProbeReport("amd", tuple(devices), reason)
    except Exception as exc:
        return ProbeReport("amd", reason=f"amdsmi failed while listing GPUs: {type(exc).__name__}: {exc}")


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:  # AmdSmiLibraryException for "not supported" on this board or driver
        return None


def _amdsmi_device(amdsmi: Any, index: int, handle: Any) -> Device:
    asic = amdsmi.amdsmi_get_gpu_asic_info(handle)
    vram = _call(amdsmi.amdsmi_get_gpu_vram_info, handle) or {}
    usage = _call(getattr(amdsmi, "amdsmi_get_gpu_vram_usage", None), handle) or {}
    bdf = _call(getattr(amdsmi, "amdsmi_get_gpu_device_bdf", None), handle)
    uuid = _call(getattr(amdsmi, "amdsmi_get_gpu_device_uuid", None), handle)
    pcie = _call(getattr(amdsmi, "amdsmi_get_pcie_info", None), handle) or {}
    power = _call(getattr(amdsmi, "amdsmi_get_power_cap_info", None), handle) or {}

    total_mb = _number(usage.get("vram_total")) or _number(vram.get("vram_size")) or 0
    used_mb = _number(usage.get("vram_used"))
    total = int(total_mb * _MB)
    free = total - int(used_mb * _MB) if used_mb is not None else total
    gfx = str(asic.get("target_graphics_version") or "") or None
    device_id = _pci_ids.parse_hex(str(asic.get("device_id", "")))
    name = str(asic.get("market_name") or "") or _name(device_id, None)
    props: dict[str, Any] = {
        "gfx_architecture": gfx,
        "compute_units": _number(asic.get("num_compute_units")),
        "pci_device_id": f"0x{device_id:04x}" if device_id is not None else None,
        "pci_bus_id": bdf,
        "uuid": uuid,
        "vram_type": vram.get("vram_type"),
        "memory_free_known": used_mb is not None,
    }
    static = pcie.get("pcie_static", {}) if isinstance(pcie, dict) else {}
    if static:
        props["pcie_width_max"] = _number(static.get("max_pcie_width"))
        generation = _number(static.get("pcie_interface_version"))
        props["pcie_gen_max"] = generation
    cap_uw = _number(power.get("power_cap")) if isinstance(power, dict) else None
    if cap_uw:
        props["power_limit_w"] = round(cap_uw / 1e6, 1)
    integrated = device_id in _pci_ids.AMD_APUS if device_id is not None else False
    props["integrated"] = integrated
    return Device(
        id=f"amd:{index}",
        kind=DeviceKind.GPU,
        vendor=Vendor.AMD,
        name=name,
        memory_total_bytes=total,
        memory_free_bytes=max(0, min(free, total)),
        index=index,
        features=_features(gfx),
        properties={k: v for k, v in props.items() if v is not None},
        source="amdsmi",
    )


def _number(value: Any) -> float | int | None:
    """amdsmi returns numbers, "N/A", or strings such as "Gen 4"; keep the number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, dict):
        return _number(value.get("value"))
    if isinstance(value, str):
        digits = "".join(ch for ch in value if ch.isdigit() or ch == ".")
        try:
            number = float(digits)
        except ValueError:
            return None
        return int(number) if number.is_integer() else number
    return None


# ---------------------------------------------------------------- sysfs


def gfx_name(target_version: int) -> str:
    """KFD ``gfx_target_version`` (major*10000 + minor*100 + stepping) as a gfx name: 90010 -> gfx90a."""
    major, minor, stepping = target_version // 10000, (target_version // 100) % 100, target_version % 100
    return f"gfx{major}{minor:x}{stepping:x}"


def _features(gfx: str | None) -> frozenset[str]:
    features = {"fp32", "fp16"}
    if gfx and gfx.startswith(_BF16):
        features.add("bf16")
    if gfx and gfx.startswith(_INT8):
        features.add("int8")
    if gfx and gfx.startswith(("gfx908", "gfx90a", "gfx94", "gfx95")):
        features.add("matrix-cores")
    return frozenset(features)


def _kfd_gpu_nodes(root: Path) -> list[dict[str, str | Path]]:
    nodes = []
    for node in list_dir(root / "class/kfd/kfd/topology/nodes"):
        props: dict[str, str | Path] = dict(read_key_values(node / "properties"))
        if props.get("simd_count", "0") in ("0", "") or props.get("gfx_target_version", "0") == "0":
            continue  # a CPU node
        props["_path"] = node
        nodes.append(props)
    return nodes


def _location(slot: str) -> tuple[int, int] | None:
    """(domain, location_id) of a PCI slot "0000:64:00.0" the way KFD encodes it (bus << 8 | devfn)."""
    try:
        domain, bus, devfn = slot.split(":")
        dev, fn = devfn.split(".")
        return int(domain, 16), (int(bus, 16) << 8) | (int(dev, 16) << 3) | int(fn, 16)
    except ValueError:
        return None


def _slot(domain: int, location: int) -> str:
    return f"{domain:04x}:{location >> 8:02x}:{(location >> 3) & 0x1F:02x}.{location & 7:x}"


def _name(device_id: int | None, revision: int | None) -> str:
    if device_id is None:
        return "AMD GPU"
    return _pci_ids.name_for(_pci_ids.AMD, device_id, revision) or f"AMD GPU 0x{device_id:04x}"


def probe_sysfs(root: str | Path = "/sys") -> ProbeReport:
    base = Path(root)
    kfd = _kfd_gpu_nodes(base)
    kfd_by_location: dict[tuple[int, int], list[dict[str, str | Path]]] = {}
    for node in kfd:
        key = (int(str(node.get("domain", "0")) or 0), int(str(node.get("location_id", "0")) or 0))
        kfd_by_location.setdefault(key, []).append(node)

    devices: list[Device] = []
    seen_slots: set[str] = set()
    for card in list_dir(base / "class/drm"):
        if not (card.name.startswith("card") and card.name[4:].isdigit()):
            continue  # connectors (card0-DP-1) and render nodes describe the same GPU again
        device_dir = card / "device"
        ident = pci_identity(device_dir)
        if ident.get("vendor_id") != "0x1002":
            continue
        slot = ident.get("pci_bus_id", "")
        if slot and slot in seen_slots:
            continue
        seen_slots.add(slot)
        location = _location(slot) if slot else None
        devices.append(_sysfs_device(len(devices), device_dir, ident, kfd_by_location.get(location or (-1, -1), [])))

    if not devices and kfd:
        for node in kfd:
            devices.append(_kfd_device(len(devices), node))
        return ProbeReport("amd", tuple(devices), "" if devices else "absent: no AMD GPU in sysfs")
    if not devices:
        return ProbeReport("amd", reason=f"absent: no AMD GPU (vendor 0x1002) under {base / 'class/drm'}")
    return ProbeReport("amd", tuple(devices))


def _sysfs_device(
    index: int, device_dir: Path, ident: dict[str, str], kfd_nodes: list[dict[str, str | Path]]
) -> Device:
    device_id = _pci_ids.parse_hex(ident.get("device_id"))
    revision = read_int(device_dir / "revision")
    product = read_text(device_dir / "product_name")
    total = read_int(device_dir / "mem_info_vram_total") or 0
    used = read_int(device_dir / "mem_info_vram_used")
    gtt = read_int(device_dir / "mem_info_gtt_total")
    props: dict[str, Any] = {
        "pci_bus_id": ident.get("pci_bus_id"),
        "pci_device_id": ident.get("device_id"),
        "driver": ident.get("driver"),
        "vbios_version": read_text(device_dir / "vbios_version"),
        "unique_id": read_text(device_dir / "unique_id"),
        "gtt_total_bytes": gtt,
        "memory_free_known": used is not None,
        **pcie_link(device_dir),
    }
    numa = read_int(device_dir / "numa_node")
    if numa is not None and numa >= 0:
        props["numa_node"] = numa
    gfx = None
    if kfd_nodes:
        first = kfd_nodes[0]
        gfx = gfx_name(int(str(first["gfx_target_version"])))
        props["compute_units"] = _compute_units(first)
        if len(kfd_nodes) > 1:
            props["partitions"] = len(kfd_nodes)
    props["gfx_architecture"] = gfx
    integrated = device_id in _pci_ids.AMD_APUS if device_id is not None else False
    props["integrated"] = integrated
    if integrated and gtt:
        # An APU's "VRAM" is a BIOS carve-out of system memory; the GPU also maps GTT (system RAM).
        props["carve_out_bytes"] = total
    return Device(
        id=f"amd:{index}",
        kind=DeviceKind.GPU,
        vendor=Vendor.AMD,
        name=product or _name(device_id, revision),
        memory_total_bytes=total,
        memory_free_bytes=max(0, total - used) if used is not None else total,
        index=index,
        features=_features(gfx),
        properties={k: v for k, v in props.items() if v is not None},
        source="sysfs",
    )


def _compute_units(node: dict[str, str | Path]) -> int | None:
    try:
        return int(str(node["simd_count"])) // int(str(node.get("simd_per_cu", "4")) or 4)
    except (KeyError, ValueError, ZeroDivisionError):
        return None


def _kfd_device(index: int, node: dict[str, str | Path]) -> Device:
    device_id = int(str(node.get("device_id", "0")) or 0) or None
    gfx = gfx_name(int(str(node["gfx_target_version"])))
    domain = int(str(node.get("domain", "0")) or 0)
    location = int(str(node.get("location_id", "0")) or 0)
    path = Path(node["_path"])
    bank = read_key_values(path / "mem_banks/0/properties")
    total = int(bank.get("size_in_bytes", "0") or 0) or int(str(node.get("local_mem_size", "0")) or 0)
    props: dict[str, Any] = {
        "gfx_architecture": gfx,
        "compute_units": _compute_units(node),
        "pci_device_id": f"0x{device_id:04x}" if device_id else None,
        "pci_bus_id": _slot(domain, location),
        "kfd_node": int(path.name) if path.name.isdigit() else None,
        "memory_free_known": False,
        "integrated": device_id in _pci_ids.AMD_APUS if device_id else False,
    }
    hive = node.get("hive_id", "0")
    if hive not in ("0", ""):
        props["xgmi_hive_id"] = str(hive)
    return Device(
        id=f"amd:{index}",
        kind=DeviceKind.GPU,
        vendor=Vendor.AMD,
        name=_name(device_id, None),
        memory_total_bytes=total,
        memory_free_bytes=total,
        index=index,
        features=_features(gfx),
        properties={k: v for k, v in props.items() if v is not None},
        source="sysfs",
    )
