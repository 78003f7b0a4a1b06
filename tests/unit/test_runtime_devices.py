"""Several devices: replicas with least-outstanding-work dispatch, pipeline splits, failed devices."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from aivmm.backends import simulated
from aivmm.backends._base import Config
from aivmm.errors import ModelTooLargeError
from aivmm.options import DeployOptions
from aivmm.runtime import BatchingConfig, Engine, ModelState, plan_split
from aivmm.runtime._toy import inputs, mlp, simulated_device


@pytest.fixture(autouse=True)
def _fresh_simulated_devices():
    yield
    with simulated._state_lock:
        simulated._allocated.clear()
        simulated._runs.clear()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    # 4 layers x (128*128 + 128) fp32 parameters = 264 KiB
    return mlp(tmp_path_factory.mktemp("split") / "big.onnx", width=128, layers=4, seed=1, name="big")


def _place(*devs):
    return [(Config("simulated", d.id), d) for d in devs]


def test_replicas_share_work_by_outstanding_work():
    import tempfile
    from pathlib import Path

    spec = mlp(Path(tempfile.mkdtemp()) / "m.onnx", width=32, layers=1)
    fast = simulated_device("nvidia:0", simulated_latency_ms=2)
    slow = simulated_device("amd:0", simulated_latency_ms=20)  # another vendor, ten times slower
    with Engine([fast, slow]) as engine:
        h = engine.add("m", spec, _place(fast, slow))
        assert h.fast_replica is None  # two replicas: dispatch chooses
        x = inputs(spec)
        want = h.infer(x)["y"]
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            outs = list(pool.map(lambda _: h.infer(x)["y"], range(120)))
        assert all(np.array_equal(o, want) for o in outs)
        per = {r["device"]: r["requests"] for r in h.stats()["replicas"]}
        assert per["amd:0"] > 0 and per["nvidia:0"] > 2 * per["amd:0"], per


def test_batched_replicas(tmp_path):
    spec = mlp(tmp_path / "m.onnx", width=16, layers=1)
    a, b = simulated_device("nvidia:0", simulated_latency_ms=3), simulated_device("nvidia:1", simulated_latency_ms=3)
    with Engine([a, b]) as engine:
        h = engine.add("m", spec, _place(a, b), DeployOptions(batching=BatchingConfig(4, 2)))
        feeds = [inputs(spec, 1, seed=i) for i in range(64)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outs = list(pool.map(h.infer, feeds))
        single = engine.add("s", spec, _place(a))
        for f, o in zip(feeds, outs):
            np.testing.assert_allclose(o["y"], single.infer(f)["y"], rtol=1e-6, atol=1e-6)
        assert all(r["batches"] > 0 for r in h.stats()["replicas"])


def test_split_plan_cuts_by_parameter_bytes(big):
    plan = plan_split(big, [("nvidia:0", 140_000), ("nvidia:1", 140_000)])
    assert [s.device for s in plan.stages] == ["nvidia:0", "nvidia:1"]
    assert all(s.parameter_bytes <= 140_000 for s in plan.stages)
    assert sum(s.parameter_bytes for s in plan.stages) == big.parameter_bytes
    assert plan.cut_bytes_per_item == (128 * 4,)  # one [N, 128] fp32 activation crosses the cut
    assert plan.transfer_seconds(batch=8, link_bytes_per_s=1e9) == pytest.approx(8 * 512 / 1e9)
    with pytest.raises(ModelTooLargeError, match="together have room"):
        plan_split(big, [("nvidia:0", 100_000), ("nvidia:1", 100_000)])


def test_too_large_model_is_split_and_matches_the_unsplit_run(big, tmp_path):
    import onnxruntime as ort

    a = simulated_device("nvidia:0")
    b = simulated_device("amd:0", vendor=simulated_device().vendor.__class__("amd"))
    x = inputs(big, 3, seed=5)
    want = ort.InferenceSession(big.source, providers=["CPUExecutionProvider"]).run(None, x)[0]
    with Engine([a, b], budgets={"nvidia:0": 150_000, "amd:0": 150_000}, work_dir=tmp_path) as engine:
        h = engine.add("big", big, _place(a))  # does not fit nvidia:0 alone: split="auto"
        got = h.infer(x)["y"]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        # the cut's activation goes to each stage through its device's transfer layer (the host's)
        pipeline = h.replicas[0].session
        assert [t.name for t in pipeline.transfers] == ["cpu", "cpu"]
        assert pipeline.transfers[1].nbytes == 3 * 128 * 4 and pipeline.transfers[0].nbytes == x["x"].nbytes
        st = engine.status()
        assert st["models"]["big"]["split"]["stages"][1]["device"] == "amd:0"
        assert "split into 2 stages" in st["models"]["big"]["events"][0]
        assert st["devices"]["nvidia:0"]["used_bytes"] > 0 and st["devices"]["amd:0"]["used_bytes"] > 0
        assert all(u["used_bytes"] <= u["budget_bytes"] for u in st["devices"].values())
        engine.remove("big")
        assert engine.ledger.used("nvidia:0") == 0 and engine.ledger.used("amd:0") == 0


def test_split_false_refuses(big):
    a, b = simulated_device("nvidia:0"), simulated_device("nvidia:1")
    with (
        Engine([a, b], budgets={"nvidia:0": 150_000, "nvidia:1": 150_000}) as engine,
        pytest.raises(ModelTooLargeError, match="split='auto'"),
    ):
        engine.add("big", big, _place(a), split=False)


def test_failed_replica_device_is_taken_out_and_requests_retried(tmp_path):
    spec = mlp(tmp_path / "m.onnx", width=16, layers=1)
    good = simulated_device("nvidia:0")
    bad = simulated_device("nvidia:1", fail_after=0)  # every run on it raises a device error
    with Engine([good, bad], failure_threshold=2) as engine:
        h = engine.add("m", spec, _place(good, bad))
        x = inputs(spec)
        want = h.infer(x)["y"]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: h.infer(x)["y"], range(40)))
        assert all(np.array_equal(o, want) for o in outs)  # every request answered, retried on nvidia:0
        st = engine.status()
        assert not st["devices"]["nvidia:1"]["healthy"]
        assert "consecutive errors" in st["devices"]["nvidia:1"]["unhealthy_reason"]
        assert [r["device"] for r in st["models"]["m"]["replicas"]] == ["nvidia:0"]


def test_model_on_a_failed_device_is_re_placed(tmp_path):
    spec = mlp(tmp_path / "m.onnx", width=16, layers=1)
    spare = simulated_device("nvidia:0")
    failing = simulated_device("nvidia:1", fail_after=2)
    with Engine([spare, failing], failure_threshold=1) as engine:
        h = engine.add("m", spec, _place(failing), DeployOptions(batching=None))
        x = inputs(spec)
        outs = [h.infer(x)["y"] for _ in range(6)]  # runs 3+ fail on nvidia:1; the retry runs on nvidia:0
        assert all(np.array_equal(o, outs[0]) for o in outs)
        st = engine.status()["models"]["m"]
        assert st["state"] == ModelState.READY.value
        assert st["replicas"][0]["device"] == "nvidia:0"
        assert "re-placed from nvidia:1" in st["events"][-1]


def test_failed_device_under_batched_traffic(tmp_path):
    spec = mlp(tmp_path / "m.onnx", width=16, layers=1)
    good = simulated_device("nvidia:0")
    bad = simulated_device("nvidia:1", fail_after=0)
    with Engine([good, bad], failure_threshold=2) as engine:
        h = engine.add("m", spec, _place(good, bad), DeployOptions(batching=BatchingConfig(4, 2)))
        feeds = [inputs(spec, 1, seed=i) for i in range(60)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(h.infer, feeds))
        single = engine.add("s", spec, _place(good))
        for f, o in zip(feeds, outs):
            np.testing.assert_allclose(o["y"], single.infer(f)["y"], rtol=1e-6, atol=1e-6)
        assert not engine.status()["devices"]["nvidia:1"]["healthy"]
