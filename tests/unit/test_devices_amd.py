"""The AMD probe against recorded sysfs trees, a fake amdsmi driven by recorded ``amd-smi static
--json`` output, and the recorded rocm-smi answers (names and gfx targets must agree)."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from aivmm.devices import DeviceKind, Vendor, _amd, _pci_ids

SYSFS = "devices/amd/sysfs"


def sys_root(tmp_path: Path, drm: dict[str, Path] | None = None, kfd_topology: Path | None = None) -> Path:
    """A /sys laid out like the kernel's, whose parts link to recorded trees."""
    root = tmp_path / "sys"
    (root / "class/drm").mkdir(parents=True)
    for card, target in (drm or {}).items():
        (root / "class/drm" / card).symlink_to(target, target_is_directory=True)
    if kfd_topology is not None:
        (root / "class/kfd/kfd").mkdir(parents=True)
        (root / "class/kfd/kfd/topology").symlink_to(kfd_topology, target_is_directory=True)
    return root


def card_with_device(tmp_path: Path, device_dir: Path) -> Path:
    card = tmp_path / "card0"
    card.mkdir()
    (card / "device").symlink_to(device_dir, target_is_directory=True)
    return card


def test_rx6900xt_from_drm_device_tree_with_id_only_in_uevent(tmp_path: Path, fixtures_dir: Path) -> None:
    device_dir = fixtures_dir / SYSFS / "drm-card-device__radeon-rx6900xt__amdgpu-sysfs-rs"
    assert not (device_dir / "device").exists()  # the recording's quirk this test is about
    root = sys_root(tmp_path, {"card0": card_with_device(tmp_path, device_dir)})
    report = _amd.probe(root, use_amdsmi=False)
    assert report.reason == ""
    (gpu,) = report.devices
    assert gpu.id == "amd:0" and gpu.kind is DeviceKind.GPU and gpu.vendor is Vendor.AMD and gpu.source == "sysfs"
    assert gpu.name == "AMD Radeon RX 6900 XT"  # product_name is empty; id 0x73bf revision 0xc0
    assert gpu.memory_total_bytes == 17163091968
    assert gpu.memory_free_bytes == 17163091968 - 668274688
    props = gpu.properties
    assert props["pci_bus_id"] == "0000:0c:00.0" and props["pci_device_id"] == "0x73bf"
    assert props["pcie_gen_current"] == 4 and props["pcie_width_current"] == 16 and props["pcie_gen_max"] == 4
    assert props["integrated"] is False and gpu.discrete
    assert props["vbios_version"] == "113-D4121EXT-CO1"
    assert "gfx_architecture" not in props  # no KFD topology in this recording: not guessed


def test_phoenix_apu_is_integrated_with_gfx1103_from_kfd(tmp_path: Path, fixtures_dir: Path) -> None:
    tree = fixtures_dir / SYSFS / "drm-and-kfd__radeon-780m-phoenix-apu__lact"
    root = sys_root(tmp_path, {"card1": tree / "card1"}, tree / "kfd/topology")
    (gpu,) = _amd.probe(root, use_amdsmi=False).devices
    assert gpu.name == "AMD Radeon 760M/780M (Phoenix APU)"
    assert gpu.properties["gfx_architecture"] == "gfx1103"  # gfx_target_version 110003, matched by location_id
    assert gpu.properties["compute_units"] == 12  # simd_count 24 / simd_per_cu 2
    assert gpu.properties["integrated"] is True and not gpu.discrete
    assert gpu.properties["carve_out_bytes"] == 4294967296
    assert gpu.properties["gtt_total_bytes"] == 31433977856
    assert gpu.memory_total_bytes == 4294967296
    assert {"fp16", "bf16", "int8"} <= gpu.features


@pytest.mark.parametrize(
    ("tree", "count", "gfx", "device_id", "name"),
    [
        ("kfd-topology__mi300x-cpx-8gpu__k8s-device-plugin", 63, "gfx942", "0x74a1", "AMD Instinct MI300X"),
        ("kfd-topology__mi308x__k8s-device-plugin", 32, "gfx942", "0x74a2", "AMD Instinct MI308X"),
        ("kfd-topology__mi210-xgmi__k8s-device-plugin", 8, "gfx90a", "0x740f", "AMD Instinct MI210"),
    ],
)
def test_kfd_only_topologies_list_every_gpu_node(
    tmp_path: Path, fixtures_dir: Path, tree: str, count: int, gfx: str, device_id: str, name: str
) -> None:
    root = sys_root(tmp_path, kfd_topology=fixtures_dir / SYSFS / tree)
    report = _amd.probe(root, use_amdsmi=False)
    assert len(report.devices) == count
    assert [d.id for d in report.devices] == [f"amd:{i}" for i in range(count)]
    for gpu in report.devices:
        assert gpu.properties["gfx_architecture"] == gfx
        assert gpu.properties["pci_device_id"] == device_id
        assert gpu.name == name
        assert {"bf16", "int8", "matrix-cores"} <= gpu.features


def test_kfd_details_partition_memory_bus_and_hive(tmp_path: Path, fixtures_dir: Path) -> None:
    mi308 = _amd.probe(
        sys_root(tmp_path / "a", kfd_topology=fixtures_dir / SYSFS / "kfd-topology__mi308x__k8s-device-plugin"),
        use_amdsmi=False,
    ).devices
    # mem_banks size_in_bytes: 48 GiB per partition, one partition recorded 16 MiB short
    assert {d.memory_total_bytes for d in mi308} == {51539607552, 51522830336}
    mi210 = _amd.probe(
        sys_root(tmp_path / "b", kfd_topology=fixtures_dir / SYSFS / "kfd-topology__mi210-xgmi__k8s-device-plugin"),
        use_amdsmi=False,
    ).devices
    assert mi210[0].properties["compute_units"] == 104  # 416 SIMDs / 4 per CU, the MI210's CU count
    assert len({d.properties["xgmi_hive_id"] for d in mi210}) == 2  # two 4-GPU xGMI hives
    assert mi210[0].properties["pci_bus_id"] == "0000:63:00.0"  # location_id 25344
    mi300 = _amd.probe(
        sys_root(
            tmp_path / "c", kfd_topology=fixtures_dir / SYSFS / "kfd-topology__mi300x-cpx-8gpu__k8s-device-plugin"
        ),
        use_amdsmi=False,
    )
    assert mi300.devices[0].properties["compute_units"] == 38  # CPX: one XCD of 38 CUs per partition


def test_no_amd_gpu_is_absent_with_reason(tmp_path: Path) -> None:
    report = _amd.probe(sys_root(tmp_path), use_amdsmi=False)
    assert report.devices == ()
    assert report.reason.startswith("absent: no AMD GPU (vendor 0x1002) under ")


def test_intel_card_is_not_taken_for_amd(tmp_path: Path, fixtures_dir: Path) -> None:
    intel = fixtures_dir / "devices/intel/sysfs/drm-card__arc-b580_xe__lact/card1"
    assert _amd.probe(sys_root(tmp_path, {"card1": intel}), use_amdsmi=False).devices == ()


@pytest.mark.parametrize(
    ("version", "name"),
    [
        (90010, "gfx90a"),
        (90402, "gfx942"),
        (110003, "gfx1103"),
        (100301, "gfx1031"),
        (90006, "gfx906"),
        (90008, "gfx908"),
    ],
)
def test_gfx_target_version_decoding(version: int, name: str) -> None:
    assert _amd.gfx_name(version) == name


# ---------------------------------------------------------------- amdsmi


class AmdSmiLibraryException(Exception):
    pass


def fake_amdsmi(static_json: dict[str, Any]) -> types.SimpleNamespace:
    """amdsmi's Python API answering from recorded ``amd-smi static --json`` output; the CLI's
    fields are mapped to the API's dictionaries (the CLI prints those same values)."""
    gpus = static_json["gpu_data"]
    state = {"shutdown": 0}

    def unsupported(*_: Any) -> Any:
        raise AmdSmiLibraryException("AMDSMI_STATUS_NOT_SUPPORTED")

    def vram(h: int) -> dict[str, Any]:
        v = gpus[h]["vram"]
        return {
            "vram_type": v["type"],
            "vram_vendor": v["vendor"],
            "vram_size": v["size"]["value"],
            "vram_bit_width": v["bit_width"],
        }

    def pcie(h: int) -> dict[str, Any]:
        bus = gpus[h]["bus"]
        return {
            "pcie_static": {
                "max_pcie_width": bus["max_pcie_width"],
                "max_pcie_speed": bus["max_pcie_speed"],
                "pcie_interface_version": bus["pcie_interface_version"],
                "slot_type": bus["slot_type"],
            }
        }

    def power(h: int) -> dict[str, Any]:
        return {"power_cap": gpus[h]["limit"]["socket_power"]["value"] * 1_000_000}

    return types.SimpleNamespace(
        _state=state,
        AmdSmiInitFlags=types.SimpleNamespace(INIT_AMD_GPUS=2),
        amdsmi_init=lambda flags=None: None,
        amdsmi_shut_down=lambda: state.__setitem__("shutdown", state["shutdown"] + 1),
        amdsmi_get_processor_handles=lambda: list(range(len(gpus))),
        amdsmi_get_gpu_asic_info=lambda h: dict(gpus[h]["asic"]),
        amdsmi_get_gpu_vram_info=vram,
        amdsmi_get_pcie_info=pcie,
        amdsmi_get_power_cap_info=power,
        amdsmi_get_gpu_vram_usage=unsupported,  # `static` does not record usage
        amdsmi_get_gpu_device_bdf=unsupported,  # upstream abridged `bus` and dropped the bdf
        amdsmi_get_gpu_device_uuid=unsupported,
    )


@pytest.fixture
def mi210_static(fixtures_dir: Path) -> dict[str, Any]:
    path = fixtures_dir / "devices/amd/amd-smi_static_json__mi210__device-metrics-exporter.json"
    return json.loads(path.read_text())


def test_amdsmi_recorded_mi210(tmp_path: Path, mi210_static: dict[str, Any]) -> None:
    smi = fake_amdsmi(mi210_static)
    report = _amd.probe(sys_root(tmp_path), smi)
    assert report.reason == ""
    (gpu,) = report.devices
    assert gpu.source == "amdsmi" and gpu.id == "amd:0"
    assert gpu.name == "AMD Instinct MI210"
    assert gpu.memory_total_bytes == 65520 * 2**20
    assert gpu.memory_free_bytes == gpu.memory_total_bytes and gpu.properties["memory_free_known"] is False
    props = gpu.properties
    assert props["gfx_architecture"] == "gfx90a" and props["compute_units"] == 104
    assert props["pci_device_id"] == "0x740f"
    assert props["pcie_gen_max"] == 4 and props["pcie_width_max"] == 16
    assert props["power_limit_w"] == 300.0 and props["vram_type"] == "HBM"
    assert {"bf16", "int8", "matrix-cores"} <= gpu.features
    assert smi._state["shutdown"] == 1


def test_failing_amdsmi_falls_back_to_sysfs_and_says_so(
    tmp_path: Path, fixtures_dir: Path, mi210_static: dict[str, Any]
) -> None:
    smi = fake_amdsmi(mi210_static)

    def fail(flags: Any = None) -> None:
        raise AmdSmiLibraryException("AMDSMI_STATUS_DRIVER_NOT_LOADED")

    smi.amdsmi_init = fail
    device_dir = fixtures_dir / SYSFS / "drm-card-device__radeon-rx6900xt__amdgpu-sysfs-rs"
    report = _amd.probe(sys_root(tmp_path, {"card0": card_with_device(tmp_path, device_dir)}), smi)
    assert [d.source for d in report.devices] == ["sysfs"]
    assert report.reason == (
        "amdsmi_init failed: AmdSmiLibraryException: AMDSMI_STATUS_DRIVER_NOT_LOADED; read sysfs instead"
    )


def test_amdsmi_failure_without_sysfs_gpu_is_absent_with_both_reasons(
    tmp_path: Path, mi210_static: dict[str, Any]
) -> None:
    smi = fake_amdsmi(mi210_static)
    smi.amdsmi_get_processor_handles = lambda: []
    report = _amd.probe(sys_root(tmp_path), smi)
    assert report.devices == ()
    assert "amdsmi reports no GPU; read sysfs instead" in report.reason
    assert "absent: no AMD GPU" in report.reason


# ---------------------------------------------------------------- rocm-smi recordings


ROCM_SMI = sorted((Path(__file__).parents[1] / "fixtures/devices/amd").glob("rocm-smi_json__*.json"))


@pytest.mark.parametrize("path", ROCM_SMI, ids=lambda p: p.stem.split("__")[-1])
def test_rocm_smi_recordings_agree_with_the_name_table(path: Path) -> None:
    """Every GPU rocm-smi recorded has a name in our PCI table that matches its recorded series."""
    data = json.loads(path.read_text())
    cards = {k: v for k, v in data.items() if k.startswith("card")}
    assert cards
    for card in cards.values():
        device_id = int(card.get("Device ID", card.get("GPU ID")), 16)
        name = _pci_ids.name_for(_pci_ids.AMD, device_id)
        assert name, f"no name for 0x{device_id:04x}"
        series = card.get("Card Series", card.get("Card series", ""))
        marker = {0x738C: "MI100", 0x73DF: "6700", 0x66A1: "MI50", 0x6861: "Vega 10"}[device_id]
        assert marker in name
        if series and not series.startswith("0x"):  # ROCm 4.3 printed the vendor id instead
            assert marker.split()[0] in series or device_id == 0x6861
        if "GFX Version" in card:
            assert _amd.gfx_name(100301) == card["GFX Version"]  # Navi 22's KFD gfx_target_version
