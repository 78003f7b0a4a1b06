"""Discovery as a whole: the probe registry, the deadline, caching, simulated devices (argument,
environment, shipped examples, malformed specs) and which runtimes drive each device."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import aivmm
from aivmm.backends import registry as backend_registry
from aivmm.backends._base import Backend, BackendInfo, Support
from aivmm.devices import (
    Device,
    DeviceKind,
    ProbeReport,
    discover,
    discover_report,
    register_probe,
    unregister_probe,
)
from aivmm.devices import _registry as probe_registry
from aivmm.errors import ConfigError, SimulationSpecError

EXAMPLES = Path(aivmm.__file__).parent / "devices" / "examples"
MIXED = EXAMPLES / "amd-mi210_intel-arc-a770_intel-npu.json"


@pytest.fixture(autouse=True)
def no_env_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIVMM_SIMULATE", raising=False)


@pytest.fixture
def probe_name() -> Iterator[str]:
    name = "test-probe"
    yield name
    unregister_probe(name)


def test_builtin_probes_are_a_lazy_table() -> None:
    entries = {e.name: e for e in probe_registry.entries()}
    assert {"cpu", "nvidia", "amd", "intel"} <= set(entries)
    assert entries["nvidia"].target == "aivmm.devices._nvidia:probe" and entries["nvidia"].builtin


def test_duplicate_and_builtin_names_are_refused(probe_name: str) -> None:
    register_probe(probe_name, lambda: ProbeReport(probe_name))
    with pytest.raises(ConfigError, match="already registered"):
        register_probe(probe_name, lambda: ProbeReport(probe_name))
    with pytest.raises(ConfigError, match="already registered"):
        register_probe("simulated", lambda: ProbeReport("simulated"))
    with pytest.raises(ConfigError, match="cannot unregister built-in"):
        unregister_probe("cpu")


def test_every_probe_reports_and_the_cpu_is_found() -> None:
    report = discover_report(include_runtimes=False, refresh=True)
    names = [p.probe for p in report.probes]
    assert names[:4] == ["cpu", "nvidia", "amd", "intel"]
    for probe in report.probes:
        assert probe.devices or probe.reason.startswith("absent: "), probe  # a reason whenever nothing is found
    assert report.devices[0].id == "cpu:0"
    assert json.loads(json.dumps(report.to_json()))["devices"][0]["id"] == "cpu:0"


def test_a_raising_probe_is_reported_not_propagated(probe_name: str) -> None:
    def broken() -> ProbeReport:
        raise OSError("ioctl failed")

    register_probe(probe_name, broken)
    report = discover_report(include_runtimes=False, probes=[probe_name], refresh=True)
    assert report.probe(probe_name).reason == "absent: probe raised OSError: ioctl failed"


def test_a_probe_returning_garbage_is_reported(probe_name: str) -> None:
    register_probe(probe_name, lambda: "not a report")  # type: ignore[arg-type, return-value]
    report = discover_report(include_runtimes=False, probes=[probe_name], refresh=True)
    assert report.probe(probe_name).reason == "absent: probe returned str, not a ProbeReport"


def test_answers_are_cached_until_refresh(probe_name: str) -> None:
    calls: list[int] = []

    def counting() -> ProbeReport:
        calls.append(1)
        return ProbeReport(probe_name, reason=f"absent: call {len(calls)}")

    register_probe(probe_name, counting)
    first = discover_report(include_runtimes=False, probes=[probe_name], refresh=True)
    second = discover_report(include_runtimes=False, probes=[probe_name])
    third = discover_report(include_runtimes=False, probes=[probe_name], refresh=True)
    assert [r.probe(probe_name).reason for r in (first, second, third)] == [
        "absent: call 1",
        "absent: call 1",
        "absent: call 2",
    ]


def test_unknown_probe_name_and_bad_timeout() -> None:
    report = discover_report(include_runtimes=False, probes=["no-such-probe"], refresh=True)
    assert "unknown probe 'no-such-probe'" in report.probe("no-such-probe").reason
    with pytest.raises(ConfigError, match="timeout_s"):
        discover(timeout_s=0)


# ---------------------------------------------------------------- simulation


def test_shipped_example_adds_amd_and_intel_devices() -> None:
    devices = discover(MIXED, include_runtimes=False)
    simulated = {d.id: d for d in devices if d.simulated}
    assert set(simulated) == {"amd:0", "intel-gpu:0", "intel-npu:0"}
    assert simulated["amd:0"].properties["gfx_architecture"] == "gfx90a"
    assert simulated["intel-npu:0"].kind is DeviceKind.NPU
    assert all(d.source == "simulated" for d in simulated.values())
    assert any(d.id == "cpu:0" and not d.simulated for d in devices)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_example_is_valid(path: Path) -> None:
    from aivmm.devices import _simulated

    assert _simulated.load(path)


def test_environment_variable_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIVMM_SIMULATE", str(MIXED))
    report = discover_report(include_runtimes=False)
    assert [d.id for d in report.probe("simulated").devices] == ["amd:0", "intel-gpu:0", "intel-npu:0"]


def test_json_output_round_trips_as_a_simulation_spec(tmp_path: Path) -> None:
    real = discover(include_runtimes=False)
    spec = [dict(d.to_json(), id=d.id.replace("cpu:", "cpu:1")) for d in real]  # new ids: not the real ones
    path = tmp_path / "replay.json"
    path.write_text(json.dumps(spec))
    replayed = [d for d in discover(path, include_runtimes=False) if d.simulated]
    assert [d.name for d in replayed] == [d.name for d in real]
    assert replayed[0].features == real[0].features and replayed[0].properties == real[0].properties


def test_list_of_dicts_argument() -> None:
    spec = [{"id": "amd:7", "kind": "gpu", "vendor": "amd", "name": "X", "memory_total_bytes": 2**30}]
    (device,) = [d for d in discover(spec, include_runtimes=False) if d.simulated]
    assert device == Device.from_json(spec[0]).with_(simulated=True)
    assert device.memory_free_bytes == 2**30  # free defaults to total


@pytest.mark.parametrize(
    ("content", "field", "problem"),
    [
        ("{not json", "<json>", "not valid JSON at line 1 column 2"),
        ('{"id": "amd:0"}', "<top level>", "expected a list of devices"),
        ('[{"kind": "gpu", "memory_total_bytes": 1}]', "<device>.id", "missing"),
        ('[{"id": "amd0", "kind": "gpu", "memory_total_bytes": 1}]', "amd0.id", "expected 'prefix:index'"),
        ('[{"id": "amd:0", "kind": "tpu", "memory_total_bytes": 1}]', "amd:0.kind", "expected one of"),
        ('[{"id": "amd:0", "kind": "gpu", "memory_total_bytes": "64GB"}]', "amd:0.memory_total_bytes", "expected int"),
        (
            '[{"id": "amd:0", "kind": "gpu", "memory_total_bytes": 1, "memory_free_bytes": 2}]',
            "amd:0.memory_free_bytes",
            "need 0 <= free",
        ),
        (
            '[{"id": "amd:0", "kind": "gpu", "memory_total_bytes": 1, "features": "fp16"}]',
            "amd:0.features",
            "expected list",
        ),
        (
            '[{"id": "amd:0", "kind": "gpu", "memory_total_bytes": 1}, {"id": "amd:0", "kind": "gpu",'
            ' "memory_total_bytes": 1}]',
            "amd:0.id",
            "duplicates the device at position 0",
        ),
        (
            '[{"id": "amd:0", "kind": "gpu", "memory_total_bytes": 1, "figures": 3}]',
            "amd:0.figures",
            "expected an object",
        ),
        (
            '[{"id": "amd:0", "kind": "gpu", "memory_total_bytes": 1, "figures": {"matmul_tflops": {"bf16": "fast"}}}]',
            "amd:0.figures",
            "malformed device figures: ValueError",
        ),
    ],
)
def test_malformed_spec_names_file_and_field(tmp_path: Path, content: str, field: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SimulationSpecError) as info:
        discover(path, include_runtimes=False)
    assert str(path) in info.value.source and info.value.field == field
    assert problem in str(info.value)


def test_missing_spec_file_and_collision_with_a_real_device(tmp_path: Path) -> None:
    with pytest.raises(SimulationSpecError, match="cannot read") as info:
        discover(tmp_path / "nope.json", include_runtimes=False)
    assert info.value.field == "<file>"
    cpu_again = [{"id": "cpu:0", "kind": "cpu", "memory_total_bytes": 1}]
    with pytest.raises(SimulationSpecError, match="is the id of a real device"):
        discover(cpu_again, include_runtimes=False)


# ---------------------------------------------------------------- runtimes


class PickyBackend(Backend):
    """Drives CPUs only, and raises for simulated devices (a backend bug discovery must survive)."""

    name = "test-picky"
    extra = "none"

    def available(self) -> Support:
        return Support.yes()

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, frozenset(), frozenset(), frozenset())

    def drives(self, device: Device) -> Support:
        if device.simulated:
            raise RuntimeError("driver table missing")
        return Support.yes() if device.kind is DeviceKind.CPU else Support.no("CPUs only")

    def _load(self, model, device, config):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class MissingBackend(PickyBackend):
    name = "test-missing"

    def available(self) -> Support:
        return Support.no('test-missing is not installed: pip install "aivmm[none]"')


@pytest.fixture
def test_backends() -> Iterator[None]:
    backend_registry.register("test-picky", PickyBackend)
    backend_registry.register("test-missing", MissingBackend)
    yield
    backend_registry.unregister("test-picky")
    backend_registry.unregister("test-missing")


def test_runtimes_come_from_backends_and_their_errors_are_notes(test_backends: None) -> None:
    report = discover_report(MIXED, probes=["cpu"])
    by_id = {d.id: d for d in report.devices}
    assert "test-picky" in by_id["cpu:0"].runtimes
    assert "test-missing" not in by_id["cpu:0"].runtimes
    assert all("test-picky" not in d.runtimes for d in report.devices if d.simulated)
    notes = report.probe("runtimes").reason
    assert "test-picky: drives(amd:0) raised RuntimeError: driver table missing" in notes
    assert 'test-missing: test-missing is not installed: pip install "aivmm[none]"' in notes


def test_without_runtimes_the_spec_runtimes_are_kept() -> None:
    spec = [{"id": "amd:3", "kind": "gpu", "memory_total_bytes": 1, "runtimes": ["simulated"]}]
    (device,) = [d for d in discover(spec, include_runtimes=False) if d.simulated]
    assert device.runtimes == ("simulated",)


def test_entry_point_probes_are_loaded_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    points = [
        EntryPoint("test-ep", "aivmm.devices._cpu:probe", probe_registry.ENTRY_POINT_GROUP),
        EntryPoint("cpu", "somewhere.else:probe", probe_registry.ENTRY_POINT_GROUP),  # cannot shadow a built-in
    ]
    import aivmm._lazy

    monkeypatch.setattr(aivmm._lazy, "entry_points", lambda group: points if group == "aivmm.probes" else [])
    probe_registry.refresh()
    try:
        entries = {e.name: e for e in probe_registry.entries()}
        assert entries["test-ep"].target == "aivmm.devices._cpu:probe" and not entries["test-ep"].builtin
        assert entries["cpu"].target == "aivmm.devices._cpu:probe"
        report = discover_report(include_runtimes=False, probes=["test-ep"], refresh=True)
        assert [d.id for d in report.probe("test-ep").devices] == ["cpu:0"]
    finally:
        monkeypatch.undo()
        probe_registry.refresh()  # back to the real entry points
    assert "test-ep" not in probe_registry.names()


def test_discovery_leaves_the_environment_alone() -> None:
    import os

    before = dict(os.environ)
    discover_report(refresh=True)
    assert dict(os.environ) == before


def test_importing_devices_loads_no_sdk_or_runtime() -> None:
    import subprocess
    import sys

    code = (
        "import sys, aivmm.devices, aivmm.devices.bench;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'pynvml', 'amdsmi', 'openvino', 'torch', 'onnxruntime', 'onnx'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_concurrent_discoveries_share_one_probe_run(probe_name: str) -> None:
    import threading

    calls: list[int] = []
    gate = threading.Event()

    def slow() -> ProbeReport:
        calls.append(1)
        gate.wait(5)
        return ProbeReport(probe_name, reason="absent: nothing here")

    register_probe(probe_name, slow)
    answers: list[str] = []

    def ask() -> None:
        report = discover_report(include_runtimes=False, probes=[probe_name], refresh=True, timeout_s=10)
        answers.append(report.probe(probe_name).reason)

    askers = [threading.Thread(target=ask) for _ in range(2)]
    askers[0].start()
    for _ in range(500):  # the first call's probe is running ...
        if calls:
            break
        threading.Event().wait(0.01)
    askers[1].start()  # ... when the second call (refresh=True) arrives: it must wait for that run
    threading.Event().wait(0.3)
    gate.set()
    for t in askers:
        t.join(10)
    assert answers == ["absent: nothing here", "absent: nothing here"]
    assert len(calls) == 1


def test_a_hanging_backend_costs_the_deadline_not_the_other_answers(
    test_backends: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from aivmm.devices import _discovery

    release = threading.Event()

    class HangingBackend(PickyBackend):
        name = "test-hanging"

        def drives(self, device: Device) -> Support:
            release.wait(30)  # a runtime stuck in a driver call; bounded so the thread ends
            return Support.yes()

    backend_registry.register("test-hanging", HangingBackend)
    monkeypatch.setattr(_discovery, "RUNTIMES_TIMEOUT_S", 0.5)
    try:
        report = discover_report(probes=["cpu"])
    finally:
        release.set()
        backend_registry.unregister("test-hanging")
    cpu = report.devices[0]
    assert "test-picky" in cpu.runtimes and "test-hanging" not in cpu.runtimes
    assert "test-hanging: drives() did not answer within 0.5 s; left out" in report.probe("runtimes").reason


def test_a_backend_still_importing_its_runtime_is_waited_for_and_noted_slow(
    test_backends: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # torch's import took over 15 s on a loaded machine and torch was dropped: an import is slow, not stuck.
    from aivmm.devices import _discovery

    (tmp_path / "aivmm_test_slow_runtime.py").write_text("import time\ntime.sleep(1.2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class SlowImportBackend(PickyBackend):
        name = "test-slow-import"

        def drives(self, device: Device) -> Support:
            import aivmm_test_slow_runtime  # noqa: F401  (the runtime, imported on first use)

            return Support.yes()

    backend_registry.register("test-slow-import", SlowImportBackend)
    monkeypatch.setattr(_discovery, "RUNTIMES_TIMEOUT_S", 0.3)
    try:
        report = discover_report(probes=["cpu"])
    finally:
        backend_registry.unregister("test-slow-import")
        sys.modules.pop("aivmm_test_slow_runtime", None)
    assert "test-slow-import" in report.devices[0].runtimes
    note = report.probe("runtimes").reason
    assert "test-slow-import: slow: importing its runtime took it" in note and "not left out" in note
