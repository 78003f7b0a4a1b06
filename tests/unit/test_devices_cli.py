"""``aivmm devices``: table, JSON, --simulate, --check, --bench, bad input, and a run with every
runtime and vendor SDK hidden (numpy only, as after ``pip install aivmm`` with no extras)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aivmm
from aivmm.cli.main import main
from aivmm.devices import bench, discover

MIXED = Path(aivmm.__file__).parent / "devices/examples/amd-mi210_intel-arc-a770_intel-npu.json"
REQUIRED_KEYS = {"id", "kind", "vendor", "name", "memory_total_bytes", "memory_free_bytes", "features", "runtimes"}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIVMM_SIMULATE", raising=False)
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "300")  # rich folds cells to the terminal width; keep each value on one line


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict]:
    assert main(["devices", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_table_lists_the_cpu_and_why_other_probes_found_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "cpu:0" in out and "fp32" in out
    assert "nvidia: absent:" in out or "nvidia:0" in out


def test_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    devices = run_json(capsys)
    assert devices[0]["id"] == "cpu:0" and devices[0]["kind"] == "cpu"
    for device in devices:
        assert set(device) >= REQUIRED_KEYS
        assert "figures" not in device and "check" not in device


def test_simulate_flag_adds_the_example_devices(capsys: pytest.CaptureFixture[str]) -> None:
    ids = [d["id"] for d in run_json(capsys, "--simulate", str(MIXED))]
    assert ids[0] == "cpu:0" and ids[-3:] == ["amd:0", "intel-gpu:0", "intel-npu:0"]


def test_environment_simulation_shows_in_the_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIVMM_SIMULATE", str(MIXED))
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "AMD Instinct MI210 [simulated]" in out and "intel-npu:0" in out


def test_check_runs_add_through_each_claiming_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    devices = run_json(capsys, "--check", "--simulate", str(MIXED))
    for device in devices:
        results = device["check"]
        if not device["runtimes"]:
            assert results == [{"runtime": "", "status": "skipped", "detail": "no runtime"}]
            continue
        assert [r["runtime"] for r in results] == device["runtimes"]
        for result in results:
            assert result["status"] == "pass", result


def test_check_reports_a_failing_runtime_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    from aivmm.backends import registry
    from aivmm.backends._base import Backend, BackendInfo, Support
    from aivmm.devices import DeviceKind
    from aivmm.dtypes import Precision
    from aivmm.models import ModelFormat

    class Broken(Backend):
        name = "test-broken"
        extra = "none"

        def available(self) -> Support:
            return Support.yes()

        def info(self) -> BackendInfo:
            return BackendInfo(
                self.name, frozenset({ModelFormat.ONNX}), frozenset({DeviceKind.CPU}), frozenset({Precision.FP32})
            )

        def drives(self, device):  # type: ignore[no-untyped-def]
            return Support.yes()

        def _load(self, model, device, config):  # type: ignore[no-untyped-def]
            raise RuntimeError("device lost")

    registry.register("test-broken", Broken)
    try:
        assert main(["devices", "--json", "--check"]) == 1
    finally:
        registry.unregister("test-broken")
    cpu = json.loads(capsys.readouterr().out)[0]
    broken = next(r for r in cpu["check"] if r["runtime"] == "test-broken")
    assert broken == {"runtime": "test-broken", "status": "fail", "detail": "RuntimeError: device lost"}


def test_bench_uses_cached_figures_and_explains_missing_ones(capsys: pytest.CaptureFixture[str]) -> None:
    cpu = next(d for d in discover(include_runtimes=False) if d.id == "cpu:0")
    bench._store(
        bench.DeviceFigures(
            "cpu:0", "numpy", {"fp32": 0.123}, {"fp32": "numpy"}, 21.0, fingerprint=bench.fingerprint(cpu)
        )
    )
    devices = {d["id"]: d for d in run_json(capsys, "--bench", "--simulate", str(MIXED))}
    assert devices["cpu:0"]["figures"]["matmul_tflops"] == {"fp32": 0.123}
    assert devices["amd:0"]["figures"] is None
    assert devices["amd:0"]["figures_unavailable"] == "simulated device: its spec carries no figures"
    assert main(["devices", "--bench"]) == 0
    assert "0.123" in capsys.readouterr().out


def test_malformed_simulation_file_exits_2_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "amd:0", "kind": "gpu"}]')
    assert main(["devices", "--simulate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}[0]: field 'amd:0.memory_total_bytes': missing" in err


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    HIDDEN = {"onnxruntime", "openvino", "torch", "pynvml", "amdsmi", "onnx", "rich", "ray", "cupy"}

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    from aivmm.cli.main import main
    code = main(sys.argv[1:])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
    assert not leaked, leaked
    sys.exit(code)
""")


@pytest.mark.parametrize("args", [["devices"], ["devices", "--check"]], ids=["table", "check"])
def test_devices_works_with_numpy_only(tmp_path: Path, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AIVMM_SIMULATE"}
    env["AIVMM_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "cpu:0" in proc.stdout  # plain-text table: rich is hidden too
    assert "nvidia: absent: pynvml is not installed" in proc.stdout
    if "--check" in args:
        assert "no runtime" in proc.stdout  # no runtime installed: skipped, not failed


def test_check_without_onnx_uses_a_torch_module_where_the_runtime_takes_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU machine has torch and onnxruntime but not onnx: torch is still checked."""
    from aivmm.devices import _check

    def no_onnx(directory: Path) -> Path:
        raise ImportError("No module named 'onnx'")

    monkeypatch.setattr(_check, "_add_model", no_onnx)
    cpu = next(d for d in discover() if d.id == "cpu:0")
    results = {r.runtime: r for r in _check.check_device(cpu)}
    if "torch" in results:
        assert results["torch"].status is _check.CheckStatus.PASS, results["torch"]
        assert results["torch"].detail == "torch-module Add matched numpy"
    if "onnxruntime" in results:
        assert results["onnxruntime"].status is _check.CheckStatus.SKIPPED
        assert results["onnxruntime"].detail == 'onnx is not installed (pip install "aivmm[onnx]")'
    assert results, "no runtime claims the CPU"
