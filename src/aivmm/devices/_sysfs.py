"""Reading kernel pseudo-files (sysfs, procfs) without ever raising.

Every probe reads below a root path so tests can point it at a recorded tree; a missing or
unreadable file is simply ``None`` because recorded trees are partial and real ones vary by
kernel and driver.
"""

from __future__ import annotations

import re
from pathlib import Path


def read_text(path: Path) -> str | None:
    """The file's text with surrounding whitespace and NUL padding removed, or None."""
    try:
        return path.read_bytes().decode("utf-8", "replace").strip("\x00").strip()
    except (OSError, ValueError):
        return None


def read_int(path: Path, base: int = 10) -> int | None:
    text = read_text(path)
    if not text:
        return None
    try:
        return int(text, 0 if text.lower().startswith("0x") else base)
    except ValueError:
        return None


def read_key_values(path: Path, sep: str | None = None) -> dict[str, str]:
    """Lines of ``KEY=value`` (uevent, sep "=") or ``key value`` (KFD properties, sep None)."""
    text = read_text(path)
    out: dict[str, str] = {}
    if not text:
        return out
    for line in text.splitlines():
        if sep is None:
            key, _, value = line.strip().partition(" ")
        else:
            key, _, value = line.partition(sep)
        if key:
            out[key.strip()] = value.strip()
    return out


def list_dir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir(), key=lambda p: _natural_key(p.name))
    except OSError:
        return []


def _natural_key(name: str) -> tuple[object, ...]:
    # card10 sorts after card2, node 10 after node 9: the kernel numbers them, users read them that way.
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def parse_cpu_list(text: str | None) -> list[int]:
    """``"0-3,8,10-11"`` (the kernel's cpulist format) as a list of CPU numbers."""
    cpus: list[int] = []
    if not text:
        return cpus
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            start = int(lo)
            end = int(hi) if hi else start
        except ValueError:
            continue
        cpus.extend(range(start, end + 1))
    return cpus


_GT_PER_GEN = {"2.5": 1, "5.0": 2, "5": 2, "8.0": 3, "8": 3, "16.0": 4, "16": 4, "32.0": 5, "32": 5, "64.0": 6, "64": 6}


def pcie_generation(link_speed: str | None) -> int | None:
    """PCIe generation from a sysfs link speed such as ``"16.0 GT/s PCIe"`` (None for "Unknown")."""
    if not link_speed:
        return None
    match = re.match(r"\s*([\d.]+)\s*GT/s", link_speed)
    if not match:
        return None
    return _GT_PER_GEN.get(match.group(1))


def pcie_link(device_dir: Path) -> dict[str, int]:
    """PCIe generation and width, current and max, from a PCI device directory (only known values)."""
    out: dict[str, int] = {}
    for which in ("current", "max"):
        gen = pcie_generation(read_text(device_dir / f"{which}_link_speed"))
        width = read_int(device_dir / f"{which}_link_width")
        if gen is not None:
            out[f"pcie_gen_{which}"] = gen
        # 0 (integrated parts) and 255 (the NPU's "not a link") are not widths.
        if width is not None and 0 < width < 255:
            out[f"pcie_width_{which}"] = width
    return out


def pci_identity(device_dir: Path) -> dict[str, str]:
    """Vendor, device id and slot of a PCI device directory, from its files or, when a recorded
    tree lacks them, from ``uevent`` (``PCI_ID=1002:73BF``, ``PCI_SLOT_NAME``, ``DRIVER``)."""
    uevent = read_key_values(device_dir / "uevent", "=")
    vendor = read_text(device_dir / "vendor")
    device = read_text(device_dir / "device")
    pci_id = uevent.get("PCI_ID", "")
    if ":" in pci_id:
        ue_vendor, _, ue_device = pci_id.partition(":")
        vendor = vendor or f"0x{ue_vendor}"
        device = device or f"0x{ue_device}"
    out = {
        "vendor_id": _hex4(vendor),
        "device_id": _hex4(device),
        "pci_bus_id": uevent.get("PCI_SLOT_NAME", ""),
        "driver": uevent.get("DRIVER", ""),
        "pci_class": uevent.get("PCI_CLASS", ""),
    }
    return {k: v for k, v in out.items() if v}


def _hex4(text: str | None) -> str:
    if not text:
        return ""
    try:
        return f"0x{int(text, 16):04x}"
    except ValueError:
        return ""
