"""The NVIDIA probe against a fake pynvml driven by NVML answers recorded on the project's H100,
plus NVML that is missing, that fails, and that hangs."""

from __future__ import annotations

import json
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from aivmm.devices import DeviceKind, Vendor, _nvidia, discover_report, register_probe, unregister_probe

RECORDED = "devices/nvidia/nvml_pynvml__h100-80gb-hbm3_driver580__recorded.json"


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # pynvml's own class naming
    pass


class NVMLError_DriverNotLoaded(NVMLError):
    pass


def fake_pynvml(recording: dict[str, Any]) -> types.SimpleNamespace:
    """A pynvml stand-in answering from the recording; what was not recorded is "not supported"."""
    devices = recording["devices"]
    state = {"init": 0, "shutdown": 0}

    def not_supported(*_: Any) -> Any:
        raise NVMLError_NotSupported("Not Supported")

    def by_handle(key: str, convert: Any = lambda v: v) -> Any:
        return lambda handle: convert(devices[handle][key])

    memory = lambda d: types.SimpleNamespace(total=d["memory_total"], free=d["memory_free"], used=d["memory_used"])  # noqa: E731
    pci = lambda d: types.SimpleNamespace(busId=d["pci_bus_id"], pciDeviceId=int(d["pci_device_id"], 16))  # noqa: E731
    return types.SimpleNamespace(
        _state=state,
        nvmlInit=lambda: state.__setitem__("init", state["init"] + 1),
        nvmlShutdown=lambda: state.__setitem__("shutdown", state["shutdown"] + 1),
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlSystemGetDriverVersion=lambda: recording["driver_version"],
        nvmlSystemGetCudaDriverVersion_v2=lambda: recording["cuda_driver_version"],
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=by_handle("name"),
        nvmlDeviceGetUUID=by_handle("uuid"),
        nvmlDeviceGetMemoryInfo=lambda h: memory(devices[h]),
        nvmlDeviceGetPciInfo=lambda h: pci(devices[h]),
        nvmlDeviceGetCudaComputeCapability=by_handle("cuda_compute_capability", tuple),
        nvmlDeviceGetMigMode=by_handle("mig_mode", tuple),
        nvmlDeviceGetPowerManagementLimit=by_handle("power_limit_mw"),
        nvmlDeviceGetArchitecture=by_handle("architecture"),
        nvmlDeviceGetNumGpuCores=by_handle("num_gpu_cores"),
        # Not in the recording: answered the way NVML answers on a VM that does not expose them.
        nvmlDeviceGetPowerUsage=not_supported,
        nvmlDeviceGetCurrPcieLinkGeneration=not_supported,
        nvmlDeviceGetMaxPcieLinkGeneration=not_supported,
        nvmlDeviceGetCurrPcieLinkWidth=not_supported,
        nvmlDeviceGetMaxPcieLinkWidth=not_supported,
    )


@pytest.fixture
def recording(fixtures_dir: Path) -> dict[str, Any]:
    return json.loads((fixtures_dir / RECORDED).read_text())


def test_recorded_h100_becomes_nvidia_0_with_its_facts(recording: dict[str, Any]) -> None:
    nvml = fake_pynvml(recording)
    report = _nvidia.probe(nvml)
    assert report.reason == ""
    (gpu,) = report.devices
    assert gpu.id == "nvidia:0" and gpu.kind is DeviceKind.GPU and gpu.vendor is Vendor.NVIDIA
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.memory_total_bytes == 85520809984 and gpu.memory_free_bytes == 85017493504
    props = gpu.properties
    assert props["compute_capability"] == "9.0"
    assert props["architecture"] == "hopper"
    assert props["pci_bus_id"] == "00000000:00:06.0"
    assert props["pci_device_id"] == "0x2330"
    assert props["uuid"] == "GPU-00000000-0000-0000-0000-000000000000"
    assert props["power_limit_w"] == 700.0
    assert props["mig_mode"] == "disabled"
    assert props["driver_version"] == "580.159.04" and props["cuda_driver_version"] == "13.0"
    assert props["cuda_cores"] == 16896
    # what NVML did not answer is left out, not invented
    assert "power_draw_w" not in props and "pcie_gen_current" not in props
    assert {"fp16", "bf16", "int8", "tensor-cores", "fp8"} <= gpu.features
    assert "mig" not in gpu.features
    assert nvml._state == {"init": 1, "shutdown": 1}  # NVML's refcount is given back


def test_features_follow_compute_capability(recording: dict[str, Any]) -> None:
    recording["devices"][0]["cuda_compute_capability"] = [7, 5]  # a Turing part
    recording["devices"][0]["mig_mode"] = [1, 1]
    (gpu,) = _nvidia.probe(fake_pynvml(recording)).devices
    assert "tensor-cores" in gpu.features and "int8" in gpu.features
    assert "bf16" not in gpu.features and "fp8" not in gpu.features
    assert "mig" in gpu.features and gpu.properties["mig_mode"] == "enabled"


def test_pcie_and_power_draw_reported_when_nvml_answers(recording: dict[str, Any]) -> None:
    nvml = fake_pynvml(recording)
    nvml.nvmlDeviceGetCurrPcieLinkGeneration = lambda h: 5
    nvml.nvmlDeviceGetMaxPcieLinkWidth = lambda h: 16
    nvml.nvmlDeviceGetPowerUsage = lambda h: 71234
    (gpu,) = _nvidia.probe(nvml).devices
    assert gpu.properties["pcie_gen_current"] == 5 and gpu.properties["pcie_width_max"] == 16
    assert gpu.properties["power_draw_w"] == 71.2


def test_nvml_init_failure_is_absent_with_reason(recording: dict[str, Any]) -> None:
    """With no NVIDIA GPU in sysfs either, the device is absent and NVML's error is the reason."""
    nvml = fake_pynvml(recording)

    def fail() -> None:
        raise NVMLError_DriverNotLoaded("Driver Not Loaded")

    nvml.nvmlInit = fail
    report = _nvidia.probe(nvml, root=Path("/nonexistent"))
    assert report.devices == ()
    assert report.reason == "absent: nvmlInit failed: NVMLError_DriverNotLoaded: Driver Not Loaded"


def test_one_failing_gpu_is_skipped_with_reason(recording: dict[str, Any]) -> None:
    recording["devices"].append(dict(recording["devices"][0], index=1))
    nvml = fake_pynvml(recording)
    real_name = nvml.nvmlDeviceGetName

    def name(handle: int) -> str:
        if handle == 1:
            raise NVMLError("GPU is lost")
        return real_name(handle)

    nvml.nvmlDeviceGetName = name
    report = _nvidia.probe(nvml)
    assert [d.id for d in report.devices] == ["nvidia:0"]
    assert "GPU 1 skipped: NVMLError: GPU is lost" in report.reason


def test_missing_pynvml_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    report = _nvidia.probe(root=tmp_path)  # and no NVIDIA GPU in sysfs either
    assert report.devices == ()
    assert report.reason == 'absent: pynvml is not installed (pip install "aivmm[nvidia]")'


def recorded_h100_root(tmp_path: Path, fixtures_dir: Path) -> Path:
    """/sys/bus/pci/devices/0000:00:06.0 and /proc/driver/nvidia/gpus/0000:00:06.0/information as
    recorded on the H100 machine (the recording names the folder 0000_00_06.0 and concatenates
    /proc/driver/nvidia/version before the information file)."""
    recorded = fixtures_dir / "devices/nvidia/sysfs/pci-device__h100-80gb-hbm3__recorded"
    pci = tmp_path / "sys/bus/pci/devices"
    pci.mkdir(parents=True)
    (pci / "0000:00:06.0").symlink_to(recorded / "0000_00_06.0", target_is_directory=True)
    text = (recorded / "proc_driver_nvidia/version_and_gpus_information.txt").read_text()
    information = text[text.index("Model:") :]
    gpu = tmp_path / "proc/driver/nvidia/gpus/0000:00:06.0"
    gpu.mkdir(parents=True)
    (gpu / "information").write_text(information)
    return tmp_path


def test_without_nvml_the_gpu_is_listed_from_sysfs_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fixtures_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    report = _nvidia.probe(root=recorded_h100_root(tmp_path, fixtures_dir))
    (gpu,) = report.devices
    assert gpu.id == "nvidia:0" and gpu.source == "sysfs"
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    props = gpu.properties
    assert props["pci_bus_id"] == "0000:00:06.0" and props["pci_device_id"] == "0x2330"
    assert props["driver"] == "nvidia" and props["vbios_version"] == "96.00.da.00.0c"
    assert props["pcie_gen_current"] == 5 and props["pcie_width_current"] == 16 and props["pcie_gen_max"] == 5
    assert gpu.memory_total_bytes == 0 and props["memory_total_known"] is False  # unknown, not guessed
    assert "compute_capability" not in props
    assert report.reason == (
        'NVML unusable (pynvml is not installed (pip install "aivmm[nvidia]")): listed '
        "from sysfs, memory and compute capability unknown"
    )


def test_failing_nvml_falls_back_to_sysfs(recording: dict[str, Any], tmp_path: Path, fixtures_dir: Path) -> None:
    nvml = fake_pynvml(recording)

    def fail() -> None:
        raise NVMLError_DriverNotLoaded("Driver Not Loaded")

    nvml.nvmlInit = fail
    report = _nvidia.probe(nvml, root=recorded_h100_root(tmp_path, fixtures_dir))
    assert [d.source for d in report.devices] == ["sysfs"]
    assert report.reason.startswith("NVML unusable (nvmlInit failed: NVMLError_DriverNotLoaded: Driver Not Loaded)")


def test_real_pynvml_on_this_machine_answers_without_raising() -> None:
    report = _nvidia.probe()
    # On a machine without an NVIDIA driver the library is missing; with one, GPUs are listed.
    assert report.devices or report.reason.startswith("absent: ")


def test_hung_nvml_times_out_and_discovery_returns(recording: dict[str, Any]) -> None:
    release = threading.Event()
    nvml = fake_pynvml(recording)
    nvml.nvmlInit = lambda: release.wait(30)  # a stalled driver call, bounded so the thread ends
    register_probe("test-hung-nvml", lambda: _nvidia.probe(nvml))
    try:
        report = discover_report(timeout_s=0.3, include_runtimes=False, refresh=True, probes=["cpu", "test-hung-nvml"])
        assert report.probe("test-hung-nvml").reason == "absent: timed out after 0.3 s"
        assert report.probe("cpu").devices  # the other probes still answered
        # discovery returned while the stalled call is still in progress: it did not wait for it
        stalled = [t for t in threading.enumerate() if t.name == "aivmm-probe-test-hung-nvml"]
        assert stalled and stalled[0].is_alive() and stalled[0].daemon
        again = discover_report(timeout_s=0.3, include_runtimes=False, probes=["test-hung-nvml"])
        assert again.probe("test-hung-nvml").reason == (
            "absent: timed out after 0.3 s (stalled since an earlier discovery)"
        )
    finally:
        release.set()
        unregister_probe("test-hung-nvml")
