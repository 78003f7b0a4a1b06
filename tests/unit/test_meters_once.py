"""NVML is initialised once per process and RAPL read by one reader, whoever asks: discovery, the
telemetry meters and the planner's energy counters. The planner names no vendor SDK."""

from __future__ import annotations

import ast
import json
import pathlib
import threading
from typing import Any

import pytest
from test_devices_nvidia import RECORDED, fake_pynvml

import aivmm.planner
from aivmm.devices import (
    Device,
    DeviceKind,
    LibrarySession,
    Vendor,
    clear_cache,
    discover_report,
    nvml_session,
    rapl_reader,
    using_library,
)
from aivmm.telemetry import CpuMeter, NvidiaMeter, energy_counter, merge


@pytest.fixture
def h100_nvml(fixtures_dir: pathlib.Path) -> Any:
    """The recorded H100's NVML, with the two counters the recording lacks answered as a busy GPU
    answers them (utilisation and an energy count that grows 1 J per read)."""
    nvml = fake_pynvml(json.loads((fixtures_dir / RECORDED).read_text()))
    energy_mj = iter(range(10_000_000, 20_000_000, 1000))
    nvml.nvmlDeviceGetTotalEnergyConsumption = lambda h: next(energy_mj)
    nvml.nvmlDeviceGetUtilizationRates = lambda h: type("Utilization", (), {"gpu": 37, "memory": 5})()
    return nvml


def test_nvml_is_initialised_once_for_discovery_telemetry_and_energy(h100_nvml: Any) -> None:
    with using_library(h100_nvml) as session:
        assert nvml_session() is session
        try:
            report = discover_report(probes=["nvidia"], include_runtimes=False, refresh=True)
            (gpu,) = report.devices
            assert gpu.id == "nvidia:0" and gpu.source == "nvml"
            meter = NvidiaMeter()
            (reading,) = meter.sample()
            assert reading.device == "nvidia:0" and reading.utilization == 0.37
            assert reading.memory_total_bytes == 85520809984
            counter, why = energy_counter(gpu)
            assert counter is not None and why == "" and counter.source == "nvml"
            before = counter.read_j()
            assert counter.read_j() - before == pytest.approx(1.0)
            # a second discovery and more meters: still the one initialisation
            discover_report(probes=["nvidia"], include_runtimes=False, refresh=True)
            NvidiaMeter().sample()
            assert h100_nvml._state == {"init": 1, "shutdown": 0}
        finally:
            clear_cache()  # the fake H100 must not stay in the process's discovery cache
    assert h100_nvml._state == {"init": 1, "shutdown": 1}  # shut down once, when its owner closed
    assert nvml_session() is not session


def test_concurrent_first_users_initialise_once(h100_nvml: Any) -> None:
    session = LibrarySession.nvml(h100_nvml)
    start = threading.Barrier(8)

    def first_use() -> None:
        start.wait(5)
        assert session.library()[0] is h100_nvml

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    session.close()
    session.close()
    assert h100_nvml._state == {"init": 1, "shutdown": 1}


def test_a_failed_init_is_retried_and_a_stalled_one_does_not_hang(h100_nvml: Any) -> None:
    calls = {"n": 0}

    def flaky() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("Driver Not Loaded")

    h100_nvml.nvmlInit = flaky
    session = LibrarySession.nvml(h100_nvml)
    assert session.library() == (None, "nvmlInit failed: RuntimeError: Driver Not Loaded")
    assert session.library()[0] is h100_nvml and calls["n"] == 2
    session.close()

    release = threading.Event()
    h100_nvml.nvmlInit = lambda: release.wait(10)
    stalled = LibrarySession("pynvml", "nvmlInit", "nvmlShutdown", "", module=h100_nvml, wait_s=0.2)
    first = threading.Thread(target=stalled.library, daemon=True)
    first.start()
    try:
        module, why = stalled.library()
        assert module is None and "has not returned after 0.2 s" in why
        stalled.close()  # returns (the stalled call keeps the lock): interpreter exit does not hang on it
        assert h100_nvml._state["shutdown"] == 1  # only the first session's
    finally:
        release.set()
        first.join(5)
        stalled.close()


def _powercap(root: pathlib.Path, uj: int) -> pathlib.Path:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(f"{uj}\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    (root / "intel-rapl:0:0").mkdir(exist_ok=True)  # the core sub-zone, inside its package
    return root


def test_rapl_is_read_through_one_reader(tmp_path: pathlib.Path) -> None:
    root = _powercap(tmp_path / "powercap", 5_000_000)
    cpu = Device("cpu:0", DeviceKind.CPU, Vendor.INTEL, "test cpu", 1 << 30, 1 << 30)
    meter = CpuMeter(str(tmp_path / "proc-absent"), rapl_root=root)
    counter, why = energy_counter(cpu, rapl_root=root)
    assert why == "" and counter is rapl_reader(root)  # the planner's counter is the meter's reader
    assert meter.sample()[0].energy_j == 0.0
    _powercap(root, 7_500_000)  # +2.5 J, seen once by both readers of the one count
    assert counter.read_j() == pytest.approx(2.5)
    (reading,) = meter.sample()
    assert reading.energy_j == pytest.approx(2.5) and reading.power_w is not None and reading.power_w > 0
    assert merge([reading])["cpu:0"].energy_j == pytest.approx(2.5)


def test_unreadable_rapl_says_why_and_is_scanned_again(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "powercap"
    assert "no RAPL zones under" in rapl_reader(root).unavailable
    _powercap(root, 1)
    assert rapl_reader(root).unavailable == ""  # made readable later: a fresh scan sees it


_VENDOR_SDKS = {"torch", "pynvml", "amdsmi", "cupy", "jax"}
_SRC = pathlib.Path(aivmm.planner.__file__).parent.parent


def _vendor_uses(path: pathlib.Path, sdks: set[str]) -> list[str]:
    """Imports of ``sdks`` (statements and importlib.import_module("...")) and ``torch.cuda`` in a file."""
    found: list[str] = []
    text = path.read_text()
    if not any(sdk in text for sdk in sdks):
        return found
    for node in ast.walk(ast.parse(text, str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            first = node.args[0]
            names = [first.value] if isinstance(first, ast.Constant) and isinstance(first.value, str) else []
        found += [f"{path.relative_to(_SRC)}:{node.lineno} {n}" for n in names if n.split(".")[0] in sdks]
        torch_cuda = (
            isinstance(node, ast.Attribute) and node.attr == "cuda" and getattr(node.value, "id", "") == "torch"
        )
        if "torch" in sdks and torch_cuda:
            found.append(f"{path.relative_to(_SRC)}:{node.lineno} torch.cuda")
    return found


def test_no_planner_module_imports_a_vendor_sdk() -> None:
    """The planner reads devices through meters and backends; the SDKs stay in their adapters."""
    assert [use for p in sorted((_SRC / "planner").rglob("*.py")) for use in _vendor_uses(p, _VENDOR_SDKS)] == []


def test_nvml_amdsmi_and_rapl_are_opened_in_one_place_each() -> None:
    """Only the session owner imports the management libraries (by name, from its table), and only
    the RAPL reader names the powercap counter file."""
    files = sorted(_SRC.rglob("*.py"))
    assert [use for p in files for use in _vendor_uses(p, {"pynvml", "amdsmi"})] == []
    assert [str(p.relative_to(_SRC)) for p in files if "energy_uj" in p.read_text()] == ["devices/_rapl.py"]


def test_every_device_kind_has_a_meter_or_says_why_not() -> None:
    npu = Device("intel-npu:0", DeviceKind.NPU, Vendor.INTEL, "npu", 0, 0)
    assert energy_counter(npu) == (
        None,
        "Intel NPUs expose no energy counter (their power is inside the CPU package's RAPL count)",
    )
    apple = Device("apple:0", DeviceKind.GPU, Vendor.APPLE, "m3", 0, 0)
    assert energy_counter(apple) == (None, "no energy counter known for apple gpu")


def test_a_forked_child_initialises_its_own(h100_nvml: Any) -> None:
    import os

    with using_library(h100_nvml) as session:
        assert session.initialised is False
        session.library()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the parent's handle is forgotten, its own initialisation follows
            ok = not session.initialised and session.library()[0] is h100_nvml and session.initialised
            os.write(write, b"1" if ok and h100_nvml._state["init"] == 2 else b"0")
            os._exit(0)
        os.close(write)
        answer = os.read(read, 1)
        os.waitpid(pid, 0)
        os.close(read)
        assert answer == b"1"
        assert session.initialised and h100_nvml._state["init"] == 1  # the parent's own count is untouched
