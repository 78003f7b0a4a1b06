"""The CPU probe: /proc/cpuinfo, /proc/meminfo and the sysfs CPU and NUMA topology.

One ``cpu:0`` device stands for all sockets: runtimes schedule across them themselves, and the
NUMA layout is reported in ``properties`` for the layers that pin threads.
"""

from __future__ import annotations

from pathlib import Path

from aivmm.devices._sysfs import list_dir, parse_cpu_list, read_int, read_key_values, read_text
from aivmm.devices._types import Device, DeviceKind, ProbeReport, Vendor

# /proc/cpuinfo flag -> feature name reported in Device.features (only those inference cares about).
_X86_FEATURES = {
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512_bf16": "avx512_bf16",
    "avx512_vnni": "avx512_vnni",
    "avx512_fp16": "avx512_fp16",
    "avx_vnni": "avx_vnni",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "amx_tile": "amx_tile",
    "amx_fp16": "amx_fp16",
}
_ARM_FEATURES = {
    "asimd": "neon",
    "neon": "neon",
    "asimdhp": "asimdhp",
    "fphp": "fphp",
    "asimddp": "dotprod",
    "sve": "sve",
    "sve2": "sve2",
    "bf16": "bf16",
    "i8mm": "i8mm",
    "sme": "sme",
}
# Features that mean the CPU computes a precision natively (not by converting to fp32 first).
_NATIVE_PRECISION = {
    "bf16": ("avx512_bf16", "amx_bf16", "bf16"),
    "fp16": ("avx512_fp16", "amx_fp16", "asimdhp"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8", "dotprod", "i8mm"),
}
_X86_VENDORS = {"GenuineIntel": Vendor.INTEL, "AuthenticAMD": Vendor.AMD}
# "CPU implementer" codes of the Arm architecture registry.
_ARM_IMPLEMENTERS = {0x41: Vendor.ARM, 0x61: Vendor.APPLE, 0x4E: Vendor.NVIDIA}


def probe(root: str | Path = "/") -> ProbeReport:
    """Describe the host CPU from the files under ``root`` (``"/"`` on a live system)."""
    base = Path(root)
    cpuinfo = read_text(base / "proc/cpuinfo")
    if not cpuinfo:
        return ProbeReport("cpu", reason=f"absent: cannot read {base / 'proc/cpuinfo'}")
    blocks = [_block(b) for b in cpuinfo.split("\n\n") if b.strip()]
    processors = [b for b in blocks if "processor" in b]
    first = processors[0] if processors else (blocks[0] if blocks else {})
    flags = set((first.get("flags") or first.get("Features") or "").split())

    features = {name for flag, name in {**_X86_FEATURES, **_ARM_FEATURES}.items() if flag in flags}
    features.add("fp32")
    for precision, needs in _NATIVE_PRECISION.items():
        if features.intersection(needs):
            features.add(precision)

    logical = len(processors) or 1
    physical, sockets = _physical_cores(base, processors)
    meminfo = read_key_values(base / "proc/meminfo", ":")
    total = _kib(meminfo.get("MemTotal"))
    available = _kib(meminfo.get("MemAvailable", meminfo.get("MemFree")))
    vendor, name = _vendor_and_name(first)
    properties: dict[str, object] = {
        "logical_cores": logical,
        "physical_cores": physical,
        "sockets": sockets,
        "numa_nodes": _numa_nodes(base),
        "architecture": "aarch64" if "CPU implementer" in first else "x86_64",
        "integrated": True,
    }
    device = Device(
        id="cpu:0",
        kind=DeviceKind.CPU,
        vendor=vendor,
        name=name,
        memory_total_bytes=total,
        memory_free_bytes=min(available, total),
        features=frozenset(features),
        properties=properties,
        source="cpu",
    )
    reason = "" if total else f"memory unknown: cannot read MemTotal from {base / 'proc/meminfo'}"
    return ProbeReport("cpu", (device,), reason)


def _block(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def _kib(text: str | None) -> int:
    if not text:
        return 0
    number = text.split()[0]
    return int(number) * 1024 if number.isdigit() else 0


def _vendor_and_name(first: dict[str, str]) -> tuple[Vendor, str]:
    if "vendor_id" in first:
        vendor = _X86_VENDORS.get(first["vendor_id"], Vendor.OTHER)
        return vendor, first.get("model name") or first["vendor_id"]
    implementer = first.get("CPU implementer")
    if implementer:
        try:
            code = int(implementer, 16)
        except ValueError:
            code = -1
        vendor = _ARM_IMPLEMENTERS.get(code, Vendor.OTHER)
        part = first.get("CPU part", "?")
        return vendor, first.get("model name") or f"Arm CPU (implementer {implementer}, part {part})"
    return Vendor.OTHER, first.get("model name") or first.get("cpu model") or "unknown CPU"


def _physical_cores(base: Path, processors: list[dict[str, str]]) -> tuple[int, int]:
    """(physical cores, sockets): /proc/cpuinfo pairs on x86, sysfs topology elsewhere."""
    pairs = {(p.get("physical id"), p.get("core id")) for p in processors if "core id" in p}
    if pairs:
        return len(pairs), len({pkg for pkg, _ in pairs}) or 1
    cores: set[tuple[int | None, int | None]] = set()
    for cpu in list_dir(base / "sys/devices/system/cpu"):
        if not (cpu.name.startswith("cpu") and cpu.name[3:].isdigit()):
            continue
        topo = cpu / "topology"
        cores.add((read_int(topo / "physical_package_id"), read_int(topo / "core_id")))
    cores.discard((None, None))
    if cores:
        return len(cores), len({pkg for pkg, _ in cores}) or 1
    return len(processors) or 1, 1


def _numa_nodes(base: Path) -> list[dict[str, object]]:
    nodes = []
    for node in list_dir(base / "sys/devices/system/node"):
        if not (node.name.startswith("node") and node.name[4:].isdigit()):
            continue
        meminfo = read_text(node / "meminfo") or ""
        total = 0
        for line in meminfo.splitlines():
            if "MemTotal:" in line:
                total = _kib(line.split("MemTotal:")[1])
        nodes.append(
            {
                "node": int(node.name[4:]),
                "cpus": parse_cpu_list(read_text(node / "cpulist")),
                "memory_total_bytes": total,
            }
        )
    return nodes
