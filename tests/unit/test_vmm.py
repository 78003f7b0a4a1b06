"""The façade end to end: real discovery, planner, engine and ONNX Runtime / OpenVINO sessions."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import aivmm
from aivmm.errors import (
    ConfigError,
    DeviceNotFoundError,
    FallbackError,
    InputError,
    ModelChangedError,
    ModelClosedError,
    ModelNotFoundError,
)


def _write_model(path: pathlib.Path, op: str = "Relu", width: int = 4) -> pathlib.Path:
    graph = oh.make_graph(
        [oh.make_node(op, ["x"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", width])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", width])],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def vmm():
    with aivmm.VMM() as v:
        yield v


@pytest.fixture
def relu(tmp_path):
    return _write_model(tmp_path / "relu.onnx")


def test_deploy_execute_returns_outputs_in_model_order(vmm, relu):
    with vmm.deploy(relu, measure=False) as model:
        x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
        out = model.execute(x)
        assert list(out) == ["y"]
        np.testing.assert_array_equal(out["y"], np.maximum(x, 0))
        assert model.execute({"x": x})["y"].shape == (2, 4)
        plan = model.plan.to_json()
        assert plan["chosen"]["device"] == "cpu:0"
        assert {"backend", "device", "precision", "latency_ms"} <= set(plan["chosen"])


def test_execute_async_and_many_threads_agree(vmm, relu):
    from concurrent.futures import ThreadPoolExecutor

    with vmm.deploy(relu, measure=False, name="relu-async") as model:
        xs = [np.full((1, 4), i - 4, dtype=np.float32) for i in range(8)]

        async def go():
            return await asyncio.gather(*(model.execute_async(x) for x in xs))

        outs = asyncio.run(go())
        with ThreadPoolExecutor(4) as pool:
            threaded = list(pool.map(model.execute, xs))
        for x, a, b in zip(xs, outs, threaded):
            np.testing.assert_array_equal(a["y"], np.maximum(x, 0))
            np.testing.assert_array_equal(b["y"], a["y"])


def test_bad_inputs_show_the_signature(vmm, relu):
    with vmm.deploy(relu, measure=False, name="relu-bad") as model:
        with pytest.raises(InputError, match=r"x: float32\[batch, 4\]"):
            model.execute(np.zeros((1, 4), np.float64))
        with pytest.raises(InputError, match="x"):
            model.execute({"nope": np.zeros((1, 4), np.float32)})
        with pytest.raises(InputError):
            model.execute(np.zeros((1, 5), np.float32))
        with pytest.raises(InputError):
            model.execute(np.zeros((4,), np.float32))


def test_execute_after_close_raises(vmm, relu):
    model = vmm.deploy(relu, measure=False, name="relu-closed")
    model.close()
    with pytest.raises(ModelClosedError):
        model.execute(np.zeros((1, 4), np.float32))
    with pytest.raises(ModelNotFoundError):
        vmm.get("relu-closed")


def test_model_changed_on_disk_is_detected(vmm, tmp_path):
    path = _write_model(tmp_path / "m.onnx")
    with vmm.deploy(path, measure=False, name="changing") as model:
        model.execute(np.zeros((1, 4), np.float32))
        _write_model(path, op="Sigmoid")  # same size, different content
        os.utime(path, ns=(1, 1))  # make sure the stat moves even on coarse clocks
        model._watch.next_check = 0.0  # skip the 1 s re-check interval
        with pytest.raises(ModelChangedError, match="changed on disk"):
            model.execute(np.zeros((1, 4), np.float32))


def test_pinned_backend_is_honoured_and_strict_refuses_fallback(vmm, relu):
    with vmm.deploy(relu, backend="openvino", measure=False, name="ov") as model:
        assert model.plan.chosen.config.backend == "openvino"
        np.testing.assert_allclose(model.execute(np.ones((1, 4), np.float32))["y"], 1.0)
    # "simulated" is a real backend that drives only simulated devices: on cpu:0 it must fall back
    with pytest.raises(FallbackError, match="simulated"):
        vmm.deploy(relu, backend="simulated", strict=True, measure=False, name="strict")
    with pytest.raises(ConfigError, match="unknown backend"):
        vmm.deploy(relu, backend="no-such-backend", measure=False, name="typo")
    with pytest.raises(DeviceNotFoundError):
        vmm.deploy(relu, device="nvidia:7", measure=False, name="nodev")


def test_fallback_is_recorded_not_silent(vmm, relu):
    with vmm.deploy(relu, backend="simulated", measure=False, name="fb") as model:
        assert model.plan.fallbacks, "a fallback from the pinned backend must be recorded in the plan"
        assert "simulated" in " ".join(model.plan.fallbacks)
        assert model.plan.chosen.config.backend != "simulated"


def test_duplicate_name_and_bad_arguments(vmm, relu):
    with vmm.deploy(relu, measure=False, name="dup"), pytest.raises(ConfigError, match="already deployed"):
        vmm.deploy(relu, measure=False, name="dup")
    with pytest.raises(ConfigError):
        vmm.deploy(relu, replicas=0)
    with pytest.raises(ConfigError):
        vmm.deploy(relu, constraints=42)  # type: ignore[arg-type]


def test_status_reports_devices_and_models(vmm, relu):
    with vmm.deploy(relu, measure=False, name="st") as model:
        model.execute(np.zeros((1, 4), np.float32))
        status = vmm.status()
        assert "cpu:0" in status["devices"]
        assert status["models"]["st"]["state"] == "ready"
        assert status["models"]["st"]["requests"] >= 1


def test_memory_budget_string_is_applied(relu):
    with aivmm.VMM(memory_budget="cpu:0=64MiB") as v:
        assert v.status()["models"] == {}
        with v.deploy(relu, measure=False):
            assert v.status()["devices"]["cpu:0"]["budget_bytes"] == 64 * 2**20
    with pytest.raises(ConfigError, match="memory_budget"):
        aivmm.VMM(memory_budget="cpu:0").engine  # noqa: B018 - the engine parses the budget


def test_simulated_devices_are_used_when_asked(relu, tmp_path):
    spec = [
        {
            "id": "amd:0",
            "kind": "gpu",
            "vendor": "amd",
            "name": "AMD Instinct MI210",
            "memory_total_bytes": 64 * 2**30,
            "memory_free_bytes": 64 * 2**30,
            "features": ["fp16", "bf16"],
        }
    ]
    path = tmp_path / "sim.json"
    path.write_text(json.dumps(spec))
    with aivmm.VMM(simulate=path) as v:
        assert "amd:0" in [d.id for d in v.devices]
        with v.deploy(relu, device="amd:0", measure=False) as model:
            assert model.plan.chosen.config.device == "amd:0"
            np.testing.assert_array_equal(model.execute(np.ones((1, 4), np.float32))["y"], 1.0)


def test_cli_run_json(relu):
    proc = subprocess.run(
        [sys.executable, "-m", "aivmm", "run", str(relu), "--random", "--repeat", "3", "--json", "--no-measure"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["device"] == "cpu:0"
    assert report["backend"]
    assert report["latency_ms"] > 0
    assert report["outputs"] == [
        {
            "name": "y",
            "shape": [1, 4],
            "dtype": "float32",
            "min": pytest.approx(report["outputs"][0]["min"]),
            "max": pytest.approx(report["outputs"][0]["max"]),
            "mean": pytest.approx(report["outputs"][0]["mean"]),
        }
    ]


def test_cli_run_writes_outputs(relu, tmp_path):
    x = np.arange(-2, 2, dtype=np.float32).reshape(1, 4)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aivmm",
            "run",
            str(relu),
            "--input",
            f"x={tmp_path / 'x.npy'}",
            "--output-dir",
            str(out),
            "--no-measure",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ran on cpu:0" in proc.stdout
    np.testing.assert_array_equal(np.load(out / "y.npy"), np.maximum(x, 0))


def test_cli_run_bad_input_is_a_clear_error(relu, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.int32))
    proc = subprocess.run(
        [sys.executable, "-m", "aivmm", "run", str(relu), "--input", f"x={tmp_path / 'x.npy'}", "--no-measure"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "dtype int32" in proc.stderr and "Traceback" not in proc.stderr


def _gemm_model(path: pathlib.Path) -> pathlib.Path:
    import onnx.numpy_helper as onh

    rng = np.random.default_rng(0)
    w = onh.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Relu", ["h"], ["y"])],
        "gemm",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 64])],
        [w],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def test_a_transformed_choice_is_loaded_from_its_own_file(vmm, tmp_path):
    """An int8 / fp16 / optimised candidate runs the pass's output file, not the original model."""
    path = _gemm_model(tmp_path / "gemm.onnx")
    cons = aivmm.Constraints(precision="int8", tolerance=10.0)
    with vmm.deploy(path, cons, backend="onnxruntime", name="int8") as model:
        chosen = model.plan.chosen
        x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
        y = model.execute(x)["y"]
        assert y.shape == (2, 64)
        assert (
            np.max(np.abs(y - np.maximum(x @ onnx.numpy_helper.to_array(onnx.load(path).graph.initializer[0]), 0)))
            <= 10.0
        )
        replica = vmm.status()["models"]["int8"]["replicas"][0]
        assert replica["config"] == chosen.config.label()
        if chosen.transform is not None:
            assert chosen.model.source != str(path)


def test_fast_start_switches_to_the_measured_plan_without_dropping_requests(vmm, tmp_path, monkeypatch):
    import threading
    import time

    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))  # a cached plan would skip the upgrade
    path = _gemm_model(tmp_path / "fast.onnx")
    errors: list[BaseException] = []
    served = [0]
    with vmm.deploy(path, fast_start=True, name="fast") as model:
        first = model.plan
        assert first.upgrade is not None
        x = np.ones((1, 64), np.float32)
        want = model.execute(x)["y"]
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                try:
                    np.testing.assert_allclose(model.execute(x)["y"], want, rtol=1e-4, atol=1e-4)
                    served[0] += 1
                except BaseException as exc:
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        measured = first.upgrade.result(timeout=120)
        deadline = time.monotonic() + 30
        while model.plan is first and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(10)
        assert not errors, errors[:1]
        assert served[0] > 0
        assert model.plan is not first
        assert model.plan.chosen.config == measured.chosen.config
        assert list(vmm.status()["models"]) == [model._engine_name]
