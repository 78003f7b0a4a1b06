"""The Intel probe against recorded sysfs trees (Arc A380 on i915, Arc B580 and Tiger Lake on xe),
the recorded Lunar Lake NPU sysfs transcript, and OpenVINO answers recorded as property dumps
(parsed into a fake ``Core``); plus real OpenVINO on this machine."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from aivmm.devices import DeviceKind, Vendor, _intel

INTEL = "devices/intel"
OV_155H = f"{INTEL}/openvino_properties__core-ultra-7-155h_cpu-gpu-npu__edge-ai-libraries.txt"
OV_A770 = f"{INTEL}/openvino_hello_query_device__arc-a770-dgpu_core-ultra-7-265k__ov2024.1.txt"
NPU_TRANSCRIPT = f"{INTEL}/sysfs-transcript__npu-lunar-lake_intel_vpu__nokyan-resources-622.txt"


def sys_root(tmp_path: Path, drm: dict[str, Path] | None = None) -> Path:
    root = tmp_path / "sys"
    (root / "class/drm").mkdir(parents=True)
    (root / "class/accel").mkdir(parents=True)
    for card, target in (drm or {}).items():
        (root / "class/drm" / card).symlink_to(target, target_is_directory=True)
    return root


def add_npu_from_transcript(root: Path, transcript: str) -> None:
    """Lay out /sys/class/accel/accel0/device from the recorded shell transcript: each
    ``cat <file>`` (or the link-file loop) followed by what the kernel answered."""
    device = root / "class/accel/accel0/device"
    device.mkdir(parents=True)
    lines = transcript.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"\$ cat (?:/sys/class/accel/accel0/device|\$ACCEL)/(\S+)$", line.strip())
        if match:
            block = []
            for follow in lines[i + 1 :]:
                if follow.startswith(("$", "```")):
                    break
                block.append(follow)
            (device / match.group(1)).parent.mkdir(parents=True, exist_ok=True)
            (device / match.group(1)).write_text("\n".join(block).strip() + "\n")
        loop = re.match(r"== (\w+) ==$", line.strip())
        if loop:
            (device / loop.group(1)).write_text(lines[i + 1].strip() + "\n")


class RecordedCore:
    """``openvino.Core`` answering ``available_devices`` and ``get_property`` from a recording."""

    def __init__(self, devices: dict[str, dict[str, Any]]) -> None:
        self._devices = devices

    @property
    def available_devices(self) -> list[str]:
        return list(self._devices)

    def get_property(self, device: str, name: str) -> Any:
        try:
            return self._devices[device][name]
        except KeyError:
            raise RuntimeError(f"Unsupported property {name} by {device} plugin") from None


def _python_value(text: str) -> Any:
    """The Python API's printed values back to Python objects (lists, dicts keyed by ov.Type)."""
    if text.startswith("{") and "<Type:" in text:
        return {k: float(v) for k, v in re.findall(r"<Type: '(\w+)'>: ([\d.]+)", text)}
    if text.startswith("["):
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return text


def parse_python_dump(text: str) -> dict[str, dict[str, Any]]:
    devices: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("Device: "):
            current = devices.setdefault(line.split(": ", 1)[1].strip(), {})
        elif line.startswith("    ") and ":" in line:
            key, _, value = line.strip().partition(":")
            current[key.strip()] = _python_value(value.strip())
    return devices


def parse_hello_query_device(text: str) -> dict[str, dict[str, Any]]:
    devices: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] = {}
    for line in text.splitlines():
        body = line.removeprefix("[ INFO ]").strip()
        if re.fullmatch(r"[A-Z]+(\.\d+)?", body):
            current = devices.setdefault(body, {})
        elif body.startswith(("Immutable:", "Mutable:")):
            key, _, value = body.split(":", 1)[1].partition(" : ")
            current[key.strip()] = value.strip()
    return devices


@pytest.fixture
def core_155h(fixtures_dir: Path) -> RecordedCore:
    return RecordedCore(parse_python_dump((fixtures_dir / OV_155H).read_text()))


@pytest.fixture
def core_a770(fixtures_dir: Path) -> RecordedCore:
    return RecordedCore(parse_hello_query_device((fixtures_dir / OV_A770).read_text()))


@pytest.mark.parametrize(
    ("tree", "card", "driver", "name", "slot", "integrated", "link"),
    [
        (
            "drm-card__arc-a380_i915__lact",
            "card1",
            "i915",
            "Intel Arc A380 Graphics",
            "0000:0b:00.0",
            False,
            {"pcie_gen_current": 1, "pcie_width_current": 1},
        ),
        (
            "drm-card__arc-b580_xe__lact",
            "card1",
            "xe",
            "Intel Arc B580 Graphics",
            "0000:09:00.0",
            False,
            {"pcie_gen_current": 1, "pcie_width_current": 1, "pcie_gen_max": 1, "pcie_width_max": 1},
        ),
        (
            "drm-card__tigerlake-igpu_xe__lact",
            "card0",
            "xe",
            "Intel Iris Xe Graphics (Tiger Lake)",
            "0000:00:02.0",
            True,
            {},
        ),
    ],
)
def test_recorded_gpu_trees(
    tmp_path: Path,
    fixtures_dir: Path,
    tree: str,
    card: str,
    driver: str,
    name: str,
    slot: str,
    integrated: bool,
    link: dict[str, int],
) -> None:
    root = sys_root(tmp_path, {card: fixtures_dir / INTEL / "sysfs" / tree / card})
    report = _intel.probe(root, openvino=False)
    (gpu,) = report.devices
    assert gpu.id == "intel-gpu:0" and gpu.kind is DeviceKind.GPU and gpu.vendor is Vendor.INTEL
    assert gpu.name == name and gpu.source == "sysfs"
    assert gpu.properties["driver"] == driver and gpu.properties["pci_bus_id"] == slot
    assert gpu.properties["integrated"] is integrated
    assert {k: v for k, v in gpu.properties.items() if k.startswith("pcie_")} == link  # "Unknown"/0 dropped
    assert gpu.memory_total_bytes == 0 and gpu.properties["memory_total_known"] is False  # sysfs does not say


def test_npu_from_recorded_transcript(tmp_path: Path, fixtures_dir: Path) -> None:
    root = sys_root(tmp_path)
    add_npu_from_transcript(root, (fixtures_dir / NPU_TRANSCRIPT).read_text())
    (npu,) = _intel.probe(root, openvino=False).devices
    assert npu.id == "intel-npu:0" and npu.kind is DeviceKind.NPU
    assert npu.name == "Intel AI Boost NPU (Lunar Lake)"
    assert npu.properties["pci_bus_id"] == "0000:00:0b.0" and npu.properties["driver"] == "intel_vpu"
    assert npu.properties["max_frequency_mhz"] == 1900
    assert not any(k.startswith("pcie_") for k in npu.properties)  # "Unknown", 0 and 255 are not links
    assert {"fp16", "int8"} <= npu.features


def test_openvino_155h_adds_gpu_and_npu_and_merges_the_npu_seen_in_sysfs(
    tmp_path: Path, fixtures_dir: Path, core_155h: RecordedCore
) -> None:
    root = sys_root(tmp_path)
    add_npu_from_transcript(root, (fixtures_dir / NPU_TRANSCRIPT).read_text())
    report = _intel.probe(root, core_factory=lambda: core_155h)  # sysfs saw an NPU, so OpenVINO is asked
    assert [d.id for d in report.devices] == ["intel-gpu:0", "intel-npu:0"]
    gpu, npu = report.devices
    # the NPU at 0000:00:0b.0 is one device seen twice: DEVICE_PCI_INFO matches the sysfs slot
    assert npu.source == "sysfs+openvino"
    assert npu.name == "Intel(R) AI Boost" and npu.memory_total_bytes == 32924782592
    assert npu.memory_free_bytes == 32924782592  # NPU_DEVICE_ALLOC_MEM_SIZE 0
    assert npu.properties["openvino_device"] == "NPU" and npu.properties["architecture"] == "3720"
    assert npu.features == {"fp16", "int8"}  # DEVICE_GOPS fp32/bf16 are 0.0 and not in the capabilities
    assert gpu.source == "openvino" and gpu.name == "Intel(R) Arc(TM) Graphics (iGPU)"
    assert gpu.memory_total_bytes == 30477434880 and gpu.properties["integrated"] is True
    assert gpu.properties["execution_units"] == 128
    assert {"fp32", "fp16", "int8"} <= gpu.features
    assert gpu.properties["openvino_gops"]["fp16"] == 9216.0


def test_openvino_a770_merges_by_pci_id_and_keeps_other_gpus_apart(
    tmp_path: Path, fixtures_dir: Path, core_a770: RecordedCore
) -> None:
    a380 = fixtures_dir / INTEL / "sysfs/drm-card__arc-a380_i915__lact/card1"
    root = sys_root(tmp_path, {"card1": a380})
    report = _intel.probe(root, core_factory=lambda: core_a770)
    # DEVICE_UUID 8680a056... is PCI 8086:56a0 (A770), not the A380 (56a5) in sysfs: two devices
    assert [(d.id, d.name) for d in report.devices] == [
        ("intel-gpu:0", "Intel Arc A380 Graphics"),
        ("intel-gpu:1", "Intel(R) Arc(TM) A770 Graphics (dGPU)"),
    ]
    a770 = report.devices[1]
    assert a770.memory_total_bytes == 16225243136 and a770.properties["integrated"] is False
    assert {"fp32", "fp16", "int8", "xmx"} <= a770.features


def test_openvino_view_folds_into_the_matching_sysfs_gpu(tmp_path: Path, core_a770: RecordedCore) -> None:
    # An A770 in sysfs (same uevent layout as the recorded A380, with the A770's PCI id) and
    # OpenVINO's A770 are one device.
    card = tmp_path / "card0/device"
    card.mkdir(parents=True)
    (card / "vendor").write_text("0x8086\n")
    (card / "uevent").write_text("DRIVER=i915\nPCI_CLASS=30000\nPCI_ID=8086:56A0\nPCI_SLOT_NAME=0000:03:00.0\n")
    root = sys_root(tmp_path, {"card0": tmp_path / "card0"})
    (gpu,) = _intel.probe(root, core_factory=lambda: core_a770).devices
    assert gpu.source == "sysfs+openvino" and gpu.properties["pci_bus_id"] == "0000:03:00.0"
    assert gpu.memory_total_bytes == 16225243136


def test_openvino_is_not_asked_when_sysfs_shows_no_intel_device(tmp_path: Path) -> None:
    def never() -> Any:
        raise AssertionError("OpenVINO must not be loaded on a machine without an Intel GPU or NPU")

    report = _intel.probe(sys_root(tmp_path), core_factory=never)
    assert report.devices == ()
    assert report.reason.startswith("absent: no Intel GPU (vendor 0x8086, driver i915/xe) or NPU (intel_vpu)")


def test_openvino_failure_is_reported_and_sysfs_devices_remain(tmp_path: Path, fixtures_dir: Path) -> None:
    def broken() -> Any:
        raise RuntimeError("Failed to create plugin libopenvino_intel_gpu_plugin.so")

    b580 = fixtures_dir / INTEL / "sysfs/drm-card__arc-b580_xe__lact/card1"
    report = _intel.probe(sys_root(tmp_path, {"card1": b580}), core_factory=broken)
    assert [d.name for d in report.devices] == ["Intel Arc B580 Graphics"]
    assert (
        report.reason == "OpenVINO failed to list devices: RuntimeError: Failed to create plugin "
        "libopenvino_intel_gpu_plugin.so"
    )


def test_amd_and_nvidia_cards_are_not_intel(tmp_path: Path, fixtures_dir: Path) -> None:
    phoenix = fixtures_dir / "devices/amd/sysfs/drm-and-kfd__radeon-780m-phoenix-apu__lact/card1"
    assert _intel.probe(sys_root(tmp_path, {"card1": phoenix}), openvino=False).devices == ()


def test_real_openvino_on_this_machine_finds_no_intel_gpu_or_npu(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    report = _intel.probe(sys_root(tmp_path), openvino=True)  # explicitly requested: real Core()
    assert all(d.kind in (DeviceKind.GPU, DeviceKind.NPU) for d in report.devices)
    assert all(d.source == "openvino" for d in report.devices)
    if not report.devices:  # this CPU-only machine: OpenVINO lists only its CPU plugin
        assert report.reason.startswith("absent: ")
