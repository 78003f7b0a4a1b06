"""Hardware meters read fake sysfs/proc trees laid out like the real ones; absent sources never raise."""

from __future__ import annotations

import pathlib
import shutil

import pytest

from aivmm.telemetry import AmdMeter, CpuMeter, IntelMeter, IntelNpuMeter, NvidiaMeter, Reading, default_meters, merge


def _proc(root: pathlib.Path, user: int, idle: int) -> None:
    root.mkdir(exist_ok=True)
    (root / "stat").write_text(f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\n")
    (root / "meminfo").write_text("MemTotal:       1000 kB\nMemFree:  100 kB\nMemAvailable:    250 kB\n")


def test_cpu_utilisation_from_proc_stat_deltas(tmp_path: pathlib.Path) -> None:
    _proc(tmp_path, 100, 100)
    s = CpuMeter(str(tmp_path), rapl_root=tmp_path / "no-powercap")
    _proc(tmp_path, 130, 110)  # 30 busy of 40 jiffies
    (r,) = s.sample()
    assert r.device == "cpu:0" and r.utilization == 0.75
    assert r.memory_total_bytes == 1000 * 1024 and r.memory_used_bytes == 750 * 1024


def test_rapl_energy_and_power_with_counter_wrap(tmp_path: pathlib.Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("900000\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-zone: not counted twice
    s = CpuMeter(str(tmp_path / "no-proc"), rapl_root=tmp_path)
    assert s.unavailable == ""
    assert s.sample()[0].energy_j == 0.0
    (zone / "energy_uj").write_text("100000\n")  # wrapped: 0.2 J more
    (r,) = s.sample()
    assert abs(r.energy_j - 0.2) < 1e-9 and r.power_w is not None and r.power_w > 0


def test_amdgpu_sysfs(tmp_path: pathlib.Path) -> None:
    dev = tmp_path / "card0" / "device"
    (dev / "hwmon" / "hwmon3").mkdir(parents=True)
    (dev / "gpu_busy_percent").write_text("42\n")
    (dev / "mem_info_vram_used").write_text("1024\n")
    (dev / "mem_info_vram_total").write_text("4096\n")
    (dev / "hwmon" / "hwmon3" / "power1_average").write_text("150000000\n")
    (tmp_path / "card0-DP-1").mkdir()  # a connector, not a card
    (r,) = AmdMeter(str(tmp_path)).sample()
    assert r == Reading("amd:0", 0.42, 150.0, None, 1024, 4096)


def test_absent_sources_say_why_and_never_raise(tmp_path: pathlib.Path) -> None:
    for s in (AmdMeter(str(tmp_path / "none")), CpuMeter(str(tmp_path / "none"), rapl_root=tmp_path / "none")):
        assert s.sample() == [] and s.unavailable
    nv = NvidiaMeter()  # no NVIDIA GPU on the CI machine; on the GPU machine it reads real figures
    assert isinstance(nv.sample(), list)
    assert [m.name for m in default_meters()] == ["cpu", "nvml", "amdgpu-sysfs", "intel-hwmon", "intel-vpu"]


def test_merge_fills_gaps_from_later_meters() -> None:
    a = Reading("cpu:0", utilization=0.5, memory_total_bytes=10)
    b = Reading("cpu:0", utilization=0.9, power_w=30.0)
    assert merge([a, b])["cpu:0"] == Reading("cpu:0", 0.5, 30.0, None, None, 10)


def test_amdgpu_sysfs_recorded_on_a_radeon_780m(fixtures_dir: pathlib.Path) -> None:
    """A real amdgpu sysfs recording (tests/fixtures/devices/README.md: radeon-780m, LACT)."""
    root = fixtures_dir / "devices" / "amd" / "sysfs" / "drm-and-kfd__radeon-780m-phoenix-apu__lact"
    (r,) = AmdMeter(str(root)).sample()
    assert r.device == "amd:0" and r.utilization == 0.0
    assert r.memory_used_bytes == 1272893440 and r.memory_total_bytes == 4294967296
    assert r.power_w == 3.103


@pytest.mark.gpu
def test_nvml_reads_the_real_gpu() -> None:
    pytest.importorskip("pynvml")
    readings = NvidiaMeter().sample()
    assert readings, "NVML found no GPU"
    r = readings[0]
    assert r.device == "nvidia:0" and r.memory_total_bytes and r.memory_total_bytes > 1 << 30
    assert r.utilization is not None and 0.0 <= r.utilization <= 1.0
    assert r.power_w is not None and r.power_w > 1.0


def test_intel_gpus_recorded_on_an_arc_a380_and_b580(tmp_path: pathlib.Path, fixtures_dir: pathlib.Path) -> None:
    """The i915 (A380) and xe (B580) hwmon energy counters, numbered as the Intel probe numbers the GPUs."""
    from aivmm.devices import _intel

    recorded = fixtures_dir / "devices" / "intel" / "sysfs"
    drm = tmp_path / "class" / "drm"
    drm.mkdir(parents=True)
    for card, folder in (("card0", "drm-card__arc-a380_i915__lact"), ("card1", "drm-card__arc-b580_xe__lact")):
        shutil.copytree(recorded / folder / "card1", drm / card, symlinks=True)
    probed = [d.id for d in _intel.probe(tmp_path, openvino=False).devices]
    meter = IntelMeter(tmp_path)
    assert meter.unavailable == ""
    a380, b580 = meter.sample()
    assert [a380.device, b580.device] == probed == ["intel-gpu:0", "intel-gpu:1"]
    assert a380.energy_j == pytest.approx(25637.161804) and b580.energy_j == pytest.approx(11031.745544)
    assert b580.power_w is None  # a rate needs two samples
    counter, why = meter.energy(1)
    assert counter is not None and why == "" and counter.source == "intel-hwmon"
    (drm / "card1" / "device" / "hwmon" / "hwmon2" / "energy1_input").write_text("11081745544\n")  # +50 J
    assert counter.read_j() == pytest.approx(11081.745544)
    assert meter.sample()[1].power_w > 0
    assert meter.energy(2) == (None, "intel-gpu:2 has no readable hwmon energy counter (integrated GPU?)")
    assert "no readable Intel GPU energy counter" in IntelMeter(tmp_path / "none").unavailable


def test_intel_npu_recorded_on_a_lunar_lake(tmp_path: pathlib.Path, fixtures_dir: pathlib.Path) -> None:
    """The intel_vpu busy time and memory in use (tests/fixtures/devices README: Lunar Lake transcript)."""
    from test_devices_intel import NPU_TRANSCRIPT, add_npu_from_transcript, sys_root

    from aivmm.devices import _intel

    root = sys_root(tmp_path)
    add_npu_from_transcript(root, (fixtures_dir / NPU_TRANSCRIPT).read_text())
    (npu,) = _intel.probe(root, openvino=False).devices
    meter = IntelNpuMeter(root)
    assert meter.unavailable == ""
    (first,) = meter.sample()
    assert first == Reading(npu.id, None, None, None, 68714496)  # utilisation needs two samples
    busy = root / "class/accel/accel0/device/npu_busy_time_us"
    busy.write_text(f"{979473 + 10_000_000}\n")  # 10 s busy: more than the wall time since, so clamped
    (second,) = meter.sample()
    assert second.utilization == 1.0
    assert meter.energy(0) == (
        None,
        "Intel NPUs expose no energy counter (their power is inside the CPU package's RAPL count)",
    )
    assert "no Intel NPU" in IntelNpuMeter(tmp_path / "none").unavailable
