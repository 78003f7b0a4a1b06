"""Capability figures: real (short) measurements on this CPU, the disk cache and its fingerprint,
simulated figures, and the answers when nothing can be measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aivmm.devices import Device, DeviceKind, Vendor, bench, discover
from aivmm.errors import BackendUnavailableError, ConfigError


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def cpu() -> Device:
    return next(d for d in discover(include_runtimes=False) if d.id == "cpu:0")


def test_cpu_measurement_is_positive_cached_and_says_who_measured(cpu: Device, cache: Path) -> None:
    assert bench.figures(cpu) is None  # nothing measured yet: no datasheet guess
    measured = bench.measure(cpu, budget_s=3.0)
    assert measured.device_id == "cpu:0" and measured.runtime == "numpy"
    assert measured.matmul_tflops["fp32"] > 0 and measured.measured_by["fp32"] == "numpy"
    assert measured.memory_bandwidth_gbps is not None and measured.memory_bandwidth_gbps > 0
    assert measured.h2d_pinned_gbps is None  # a CPU has no host-to-device copy
    for precision in ("bf16", "int8"):
        if precision in cpu.features and precision in measured.matmul_tflops:
            assert measured.matmul_tflops[precision] > 0
            assert measured.measured_by[precision] in ("torch", "onnxruntime")
    files = list((cache / "figures").glob("*.json"))
    assert [f.stem for f in files] == [bench.fingerprint(cpu)]
    assert bench.figures(cpu) == measured  # read back from disk, unchanged


def test_cached_figures_are_not_measured_again(cpu: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    first = bench.DeviceFigures(
        "cpu:0", "numpy", {"fp32": 0.25}, {"fp32": "numpy"}, 20.0, fingerprint=bench.fingerprint(cpu)
    )
    bench._store(first)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured although cached")

    monkeypatch.setattr(bench, "measure", forbidden)
    assert bench.figures(cpu, measure_if_missing=True) == first


def test_one_runtime_measures_only_with_itself(cpu: Device) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    figures = bench.measure(cpu, "onnxruntime", budget_s=2.0)
    assert set(figures.measured_by.values()) == {"onnxruntime"}
    assert "fp32" in figures.matmul_tflops
    assert bench.fingerprint(cpu, "onnxruntime") != bench.fingerprint(cpu, "numpy")


def test_fingerprint_tracks_identity_and_runtime_version(cpu: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    key = bench.fingerprint(cpu)
    assert bench.fingerprint(cpu) == key
    assert bench.fingerprint(cpu.with_(name="another CPU")) != key
    real_versions = bench._versions
    monkeypatch.setattr(bench, "_versions", lambda runtime: {**real_versions(runtime), "numpy": "0.0-upgraded"})
    assert bench.fingerprint(cpu) != key


def test_figures_json_round_trip_and_malformed_input() -> None:
    figures = bench.DeviceFigures("nvidia:0", "torch", {"bf16": 700.5}, {"bf16": "torch"}, 3000.0, 50.1, 20.2)
    assert bench.DeviceFigures.from_json(json.loads(json.dumps(figures.to_json()))) == figures
    with pytest.raises(ConfigError, match="malformed device figures"):
        bench.DeviceFigures.from_json({"runtime": "torch"}, source="x.json")


def test_corrupt_cache_file_is_ignored(cpu: Device, cache: Path) -> None:
    path = cache / "figures" / f"{bench.fingerprint(cpu)}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{truncated")
    assert bench.figures(cpu) is None


def test_devices_without_a_measurer_say_why() -> None:
    mi210 = Device("amd:0", DeviceKind.GPU, Vendor.AMD, "AMD Instinct MI210", 2**36, 2**36)
    ok, why = bench.can_measure(mi210)
    assert not ok and why == "no measurer for amd gpu devices yet"
    with pytest.raises(BackendUnavailableError, match=r"cannot measure amd:0 \(AMD Instinct MI210\) with torch"):
        bench.measure(mi210)
    assert bench.figures(mi210, measure_if_missing=True) is None
    with pytest.raises(ConfigError, match="budget_s"):
        bench.measure(mi210, budget_s=0)


def test_unknown_cpu_runtime_is_refused(cpu: Device) -> None:
    ok, why = bench.can_measure(cpu, "tensorrt")
    assert not ok and "no CPU measurer for runtime 'tensorrt'" in why


def test_simulated_devices_carry_their_figures() -> None:
    spec = [
        {
            "id": "nvidia:5",
            "kind": "gpu",
            "vendor": "nvidia",
            "name": "H100 replay",
            "memory_total_bytes": 2**36,
            "figures": {"runtime": "torch", "matmul_tflops": {"bf16": 700.0}, "memory_bandwidth_gbps": 3000.0},
        }
    ]
    (device,) = [d for d in discover(spec, include_runtimes=False) if d.simulated]
    figures = bench.figures(device)
    assert figures is not None and figures.device_id == "nvidia:5"
    assert figures.tflops("bf16") == 700.0 and figures.memory_bandwidth_gbps == 3000.0
    assert bench.figures(device, "onnxruntime") is None  # measured through torch, not onnxruntime
    plain = device.with_(properties={})
    assert bench.figures(plain) is None
    assert bench.can_measure(plain) == (False, "simulated device: its spec carries no figures")


def h100(**props: object) -> Device:
    base = {"uuid": "GPU-5d2a6a0e-0000-1111-2222-333344445555", "pci_bus_id": "00000000:00:06.0"}
    return Device(
        "nvidia:0",
        DeviceKind.GPU,
        Vendor.NVIDIA,
        "NVIDIA H100 80GB HBM3",
        85520809984,
        85017493504,
        properties={**base, **props},
        source="nvml",
    )


def test_nvidia_without_cuda_torch_says_why() -> None:
    from aivmm.devices import _bench_cuda

    if _bench_cuda.cuda_available():
        pytest.skip("this machine has CUDA")
    ok, why = bench.can_measure(h100())
    assert not ok and "torch with CUDA is not installed" in why
    assert bench.can_measure(h100(), "onnxruntime") == (
        False,
        "NVIDIA GPUs are measured with torch.cuda, not 'onnxruntime'",
    )


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        # CUDA_VISIBLE_DEVICES=1,0: torch's index 1 is NVML's GPU at 00:06.0, found by UUID
        ([("5d2a6a0e-0000-1111-2222-999999999999", 0, 7), ("5d2a6a0e-0000-1111-2222-333344445555", 0, 6)], 1),
        # a torch without UUIDs in its properties: the PCI bus decides
        ([(None, 0, 7), (None, 0, 6)], 1),
    ],
)
def test_nvml_device_is_mapped_to_its_torch_index(
    monkeypatch: pytest.MonkeyPatch, visible: list[tuple[str | None, int, int]], expected: int
) -> None:
    import types

    torch = pytest.importorskip("torch")
    from aivmm.devices import _bench_cuda

    props = [
        types.SimpleNamespace(**({"uuid": u} if u else {}), pci_domain_id=0, pci_bus_id=b, pci_device_id=d)
        for u, b, d in visible
    ]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(props))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    assert _bench_cuda.torch_index(h100()) == expected


def test_nvml_device_hidden_from_torch_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    torch = pytest.importorskip("torch")
    from aivmm.devices import _bench_cuda
    from aivmm.errors import DeviceNotFoundError

    other = [types.SimpleNamespace(uuid="ffff", pci_domain_id=0, pci_bus_id=9, pci_device_id=0)] * 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: other[i])
    with pytest.raises(DeviceNotFoundError, match=r"nvidia:0 .* is not visible to torch.cuda"):
        _bench_cuda.torch_index(h100())


def test_a_failing_runtime_hands_the_precision_to_the_next(cpu: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the GPU machine onnxruntime refused the int8 model (IR version); torch then measures it."""
    from aivmm.devices import _bench_cpu

    if "int8" not in cpu.features:
        pytest.skip("this CPU has no native int8")
    pytest.importorskip("torch")
    real = _bench_cpu.kernels

    def refuse(budget: object) -> float:
        raise RuntimeError("Unsupported model IR version: 14, max supported IR version: 13")

    def kernels(runtime: str) -> dict:
        table = dict(real(runtime))
        if runtime == "onnxruntime":
            table["int8"] = refuse
        elif runtime == "numpy":
            table = {"fp32": lambda budget: 0.5}  # keep the test short: only int8 is measured for real
        elif runtime == "torch":
            table = {"int8": table["int8"]}
        return table

    monkeypatch.setattr(_bench_cpu, "kernels", kernels)
    figures = bench.measure(cpu.with_(features=frozenset({"fp32", "int8"})), budget_s=2.0)
    assert figures.measured_by["int8"] == "torch" and figures.matmul_tflops["int8"] > 0
    assert "int8 via onnxruntime failed: RuntimeError: Unsupported model IR version: 14" in figures.notes[-1]
