"""The CPU probe: this machine's real /proc and /sys, a copy of them under another root, an Arm
server's /proc/cpuinfo, and what happens when files are missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aivmm.devices import DeviceKind, Vendor, _cpu

# /proc/cpuinfo of an AWS Graviton3 (Neoverse V1) core, as the kernel prints it on c7g instances.
GRAVITON3_CORE = """processor\t: {n}
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc \
dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm \
bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""


def live_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def test_live_cpu_matches_proc_cpuinfo() -> None:
    report = _cpu.probe("/")
    assert report.reason == ""
    (cpu,) = report.devices
    assert cpu.id == "cpu:0" and cpu.kind is DeviceKind.CPU and cpu.source == "cpu"
    text = Path("/proc/cpuinfo").read_text()
    assert cpu.properties["logical_cores"] == text.count("processor\t:")
    assert 1 <= cpu.properties["physical_cores"] <= cpu.properties["logical_cores"]
    flags = live_flags()
    for flag in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "fma", "f16c"):
        assert (flag in cpu.features) == (flag in flags), flag
    assert "fp32" in cpu.features
    assert ("bf16" in cpu.features) == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert ("int8" in cpu.features) == bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    assert 0 < cpu.memory_free_bytes <= cpu.memory_total_bytes
    assert cpu.properties["numa_nodes"] and cpu.properties["numa_nodes"][0]["cpus"]
    assert not cpu.discrete


def test_probe_reads_only_below_its_root(tmp_path: Path) -> None:
    """A copy of this machine's files under another root gives the same device."""
    (tmp_path / "proc").mkdir()
    for name in ("cpuinfo", "meminfo"):
        (tmp_path / "proc" / name).write_text(Path("/proc", name).read_text())
    node_root = tmp_path / "sys/devices/system/node"
    for node in Path("/sys/devices/system/node").glob("node[0-9]*"):
        (node_root / node.name).mkdir(parents=True)
        for name in ("cpulist", "meminfo"):
            shutil.copyfile(node / name, node_root / node.name / name)
    copied = _cpu.probe(tmp_path).devices[0]
    live = _cpu.probe("/").devices[0]
    assert copied.name == live.name and copied.features == live.features
    assert copied.memory_total_bytes == live.memory_total_bytes
    assert copied.properties["numa_nodes"] == live.properties["numa_nodes"]


def test_arm_server_features_and_topology_from_sysfs(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("\n".join(GRAVITON3_CORE.format(n=n) for n in range(4)))
    meminfo = "MemTotal:        7864320 kB\nMemFree:  100 kB\nMemAvailable:    6291456 kB\n"
    (tmp_path / "proc/meminfo").write_text(meminfo)
    for n in range(4):  # Arm /proc/cpuinfo has no core ids: the probe reads sysfs topology instead
        topo = tmp_path / f"sys/devices/system/cpu/cpu{n}/topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{n}\n")
    (cpu,) = _cpu.probe(tmp_path).devices
    assert cpu.vendor is Vendor.ARM
    assert cpu.name == "Arm CPU (implementer 0x41, part 0xd40)"
    assert {"neon", "sve", "bf16", "i8mm", "dotprod", "asimdhp"} <= cpu.features
    assert {"fp32", "fp16", "bf16", "int8"} <= cpu.features
    assert "sve2" not in cpu.features and "avx2" not in cpu.features
    assert cpu.properties["architecture"] == "aarch64"
    assert cpu.properties["logical_cores"] == 4 and cpu.properties["physical_cores"] == 4
    assert cpu.memory_total_bytes == 7864320 * 1024 and cpu.memory_free_bytes == 6291456 * 1024


def test_hyperthreads_count_once_as_physical_cores(tmp_path: Path) -> None:
    blocks = []
    for n in range(4):  # 2 cores x 2 threads, as x86 /proc/cpuinfo pairs them
        blocks.append(
            f"processor\t: {n}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
            f"physical id\t: 0\ncore id\t\t: {n % 2}\nflags\t\t: fpu avx avx2 fma f16c\n"
        )
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("\n".join(blocks))
    (tmp_path / "proc/meminfo").write_text("MemTotal: 1024 kB\nMemAvailable: 512 kB\n")
    (cpu,) = _cpu.probe(tmp_path).devices
    assert cpu.vendor is Vendor.AMD and cpu.name == "AMD EPYC 7B13"
    assert cpu.properties["logical_cores"] == 4 and cpu.properties["physical_cores"] == 2
    assert cpu.features == {"avx", "avx2", "fma", "f16c", "fp32"}  # no VNNI/BF16: no native int8/bf16


def test_missing_cpuinfo_is_absent_with_reason(tmp_path: Path) -> None:
    report = _cpu.probe(tmp_path)
    assert report.devices == ()
    assert report.reason == f"absent: cannot read {tmp_path / 'proc/cpuinfo'}"


def test_missing_meminfo_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(GRAVITON3_CORE.format(n=0))
    report = _cpu.probe(tmp_path)
    assert report.devices[0].memory_total_bytes == 0
    assert report.reason.startswith("memory unknown")


@pytest.mark.parametrize(("text", "cpus"), [("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]), ("", []), ("5", [5])])
def test_cpulist_format(text: str, cpus: list[int]) -> None:
    from aivmm.devices._sysfs import parse_cpu_list

    assert parse_cpu_list(text) == cpus
