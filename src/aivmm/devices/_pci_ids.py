"""Marketing names for the PCI device ids aivmm has recorded answers for.

sysfs gives ids, not names (``product_name`` is often empty, as on the recorded RX 6900 XT), and
the system's pci.ids database is not always installed; this small table covers the devices in
tests/fixtures/devices and the parts named in their recordings. Unknown ids are shown as
``"AMD GPU 0x1234"`` rather than guessed.
"""

from __future__ import annotations

AMD = 0x1002
INTEL = 0x8086
NVIDIA = 0x10DE

# (vendor, device) -> name. Where one id covers several boards, the name says so.
NAMES: dict[tuple[int, int], str] = {
    (AMD, 0x73BF): "AMD Radeon RX 6800/6800 XT/6900 XT (Navi 21)",
    (AMD, 0x73DF): "AMD Radeon RX 6700/6700 XT/6800M (Navi 22)",
    (AMD, 0x15BF): "AMD Radeon 760M/780M (Phoenix APU)",
    (AMD, 0x740F): "AMD Instinct MI210",
    (AMD, 0x738C): "AMD Instinct MI100",
    (AMD, 0x74A1): "AMD Instinct MI300X",
    (AMD, 0x74A2): "AMD Instinct MI308X",
    (AMD, 0x6861): "AMD Radeon Vega 10 XT (Radeon Pro WX 9100 / Vega Frontier)",
    (AMD, 0x66A1): "AMD Radeon Instinct MI50/MI60 (Vega 20)",
    (INTEL, 0x56A5): "Intel Arc A380 Graphics",
    (INTEL, 0x56A0): "Intel Arc A770 Graphics",
    (INTEL, 0xE20B): "Intel Arc B580 Graphics",
    (INTEL, 0x9A49): "Intel Iris Xe Graphics (Tiger Lake)",
    (INTEL, 0x7D55): "Intel Arc Graphics (Meteor Lake)",
    (INTEL, 0x643E): "Intel AI Boost NPU (Lunar Lake)",
    (INTEL, 0x7D1D): "Intel AI Boost NPU (Meteor Lake)",
    (NVIDIA, 0x2330): "NVIDIA H100 80GB HBM3",
}

# Revision-specific names where one device id is several products (AMD's Navi 21 by revision).
REVISIONS: dict[tuple[int, int, int], str] = {
    (AMD, 0x73BF, 0xC0): "AMD Radeon RX 6900 XT",
    (AMD, 0x73BF, 0xC1): "AMD Radeon RX 6800 XT",
    (AMD, 0x73BF, 0xC3): "AMD Radeon RX 6800",
}

# AMD GPUs that are integrated into the CPU package (APUs). The kernel exposes no "integrated" flag
# in sysfs that holds on every generation, so the ids of APU graphics are listed here.
AMD_APUS: frozenset[int] = frozenset(
    {
        0x15BF,
        0x15C8,  # Phoenix 1/2 (Radeon 780M/760M, 740M)
        0x1681,  # Rembrandt (680M)
        0x164E,  # Raphael (Ryzen 7000 desktop iGPU)
        0x1636,
        0x1638,
        0x164C,  # Renoir, Cezanne, Lucienne
        0x15D8,
        0x15DD,  # Picasso, Raven Ridge
        0x163F,  # Van Gogh (Steam Deck)
        0x1506,  # Mendocino
        0x150E,
        0x1586,  # Strix Point, Strix Halo
    }
)


def name_for(vendor: int, device: int, revision: int | None = None) -> str | None:
    if revision is not None and (vendor, device, revision) in REVISIONS:
        return REVISIONS[(vendor, device, revision)]
    return NAMES.get((vendor, device))


def parse_hex(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None
