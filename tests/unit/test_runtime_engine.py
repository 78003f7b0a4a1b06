"""Engine lifecycle, fast path, deadlines, overcommit and the ledger invariant, on real ONNX Runtime
sessions (the simulated backend runs them on ONNX Runtime CPU and charges the simulated device)."""

from __future__ import annotations

import concurrent.futures
import pathlib
import random
import threading
import time

import numpy as np
import pytest

from aivmm.backends import simulated
from aivmm.backends._base import Config
from aivmm.errors import (
    ConfigError,
    DeadlineExceededError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelTooLargeError,
)
from aivmm.options import DeployOptions
from aivmm.runtime import BatchingConfig, Engine, ModelState, Tier
from aivmm.runtime._toy import inputs, mlp, simulated_device


@pytest.fixture(autouse=True)
def _fresh_simulated_devices():
    yield
    with simulated._state_lock:
        simulated._allocated.clear()
        simulated._runs.clear()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root: pathlib.Path = tmp_path_factory.mktemp("engine-models")
    return {f"m{i}": mlp(root / f"m{i}.onnx", width=64, layers=2, seed=i, name=f"m{i}") for i in range(6)}


def _place(dev):
    return [(Config("simulated", dev.id), dev)]


def test_infer_runs_on_the_fast_path_and_matches_onnxruntime(models):
    import onnxruntime as ort

    spec = models["m0"]
    dev = simulated_device("nvidia:0")
    x = inputs(spec, 3)
    want = ort.InferenceSession(spec.source, providers=["CPUExecutionProvider"]).run(None, x)[0]
    with Engine([dev]) as engine:
        handle = engine.add("a", spec, _place(dev))
        assert handle.state is ModelState.READY
        assert handle.fast_replica is not None  # no batching, one replica: the caller's thread runs it
        np.testing.assert_array_equal(handle.infer(x)["y"], want)
        assert handle.stats()["requests"] == 1


def test_bad_arguments_are_config_errors(models):
    dev = simulated_device("nvidia:0")
    other = simulated_device("nvidia:1")
    with Engine([dev]) as engine:
        with pytest.raises(ConfigError, match="placement"):
            engine.add("a", models["m0"], [])
        with pytest.raises(ConfigError, match="names nvidia:1"):
            engine.add("a", models["m0"], [(Config("simulated", "nvidia:1"), dev)])
        with pytest.raises(Exception, match="nvidia:1"):
            engine.add("a", models["m0"], _place(other))
        engine.add("a", models["m0"], _place(dev))
        with pytest.raises(ConfigError, match="already deployed"):
            engine.add("a", models["m0"], _place(dev))
        with pytest.raises(ConfigError, match="deadline_ms"):
            engine.get("a").infer(inputs(models["m0"]), deadline_ms=-1)
    with pytest.raises(ConfigError):
        Engine([])
    with pytest.raises(ConfigError, match="duplicate"):
        Engine([dev, dev])


def test_unknown_model_is_not_found():
    with Engine([simulated_device("nvidia:0")]) as engine, pytest.raises(ModelNotFoundError, match="nope"):
        engine.get("nope")


def test_too_large_model_is_refused_with_sizes(models):
    dev = simulated_device("nvidia:0")
    with Engine([dev], budgets={"nvidia:0": "10KiB"}) as engine:
        with pytest.raises(ModelTooLargeError, match=r"needs 33\.\d KiB.*budget 10\.0 KiB"):
            engine.add("a", models["m0"], _place(dev), split=False)
        assert engine.models() == []
        assert engine.ledger.used("nvidia:0") == 0


def test_evicted_and_reloaded_model_gives_identical_outputs(models, tmp_path):
    # A real ONNX Runtime CPU device: eviction closes the session (disk tier) and reload reads the file.
    from aivmm.devices._types import Device, DeviceKind, Vendor

    cpu = Device("cpu:0", DeviceKind.CPU, Vendor.OTHER, "host", 2**34, 2**34, runtimes=("onnxruntime",))
    one = models["m0"]
    per_model = 40_000  # ~ one model's footprint: two cannot be resident together
    with Engine([cpu], budgets={"cpu:0": per_model}) as engine:
        a = engine.add("a", models["m0"], [(Config("onnxruntime", "cpu:0"), cpu)])
        b = engine.add("b", models["m1"], [(Config("onnxruntime", "cpu:0"), cpu)])
        x = inputs(one, 4, seed=3)
        first = a.infer(x)["y"]
        assert a.replicas[0].tier is Tier.DISK or b.replicas[0].tier is Tier.DISK
        for _ in range(3):
            b.infer(x)
            again = a.infer(x)["y"]
            assert np.array_equal(first, again)
        st = engine.status()
        assert st["models"]["a"]["evictions"] >= 2 and st["models"]["a"]["loads"] >= 3
        kinds = {m["kind"] for m in st["models"]["a"]["replicas"][0]["evictions"]}
        assert kinds == {"evict-to-disk"}
        assert st["devices"]["cpu:0"]["peak_bytes"] <= per_model


def test_overcommit_uses_host_tier_and_keeps_budget_under_concurrency(models):
    dev = simulated_device("nvidia:0", memory=2**30)
    budget = 90_000  # two of the six models at a time
    with Engine([dev], budgets={"nvidia:0": budget}) as engine:
        handles = [engine.add(n, s, _place(dev)) for n, s in models.items()]
        feeds = {h.name: inputs(h.spec, 2, seed=i) for i, h in enumerate(handles)}
        want = {h.name: h.infer(feeds[h.name])["y"] for h in handles}
        used_seen: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                used_seen.append(engine.ledger.used("nvidia:0"))
                time.sleep(0.0005)

        def client(seed: int) -> int:
            rng = random.Random(seed)
            bad = 0
            for _ in range(40):
                h = handles[min(int(rng.paretovariate(1.2)) - 1, len(handles) - 1)]
                bad += not np.array_equal(h.infer(feeds[h.name])["y"], want[h.name])
            return bad

        watcher = threading.Thread(target=watch)
        watcher.start()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            bad = sum(pool.map(client, range(8)))
        stop.set()
        watcher.join()
        assert bad == 0
        assert max(used_seen) <= budget and engine.ledger.peak("nvidia:0") <= budget
        st = engine.status()
        assert sum(m["evictions"] for m in st["models"].values()) > 0
        tiers = {r["tier"] for m in st["models"].values() for r in m["replicas"]}
        assert "host" in tiers  # the simulated session offloads to host memory, not to disk
        assert st["eviction_decisions"] and st["eviction_decisions"][0]["why"]


def test_out_of_memory_on_load_evicts_and_retries_once(models):
    # The budget says 1 MiB but the device itself holds only ~2 models: the third load hits the
    # device's own out-of-memory, and the engine evicts and retries instead of failing.
    dev = simulated_device("nvidia:0", memory=80_000)
    with Engine([dev], budgets={"nvidia:0": "1MiB"}) as engine:
        handles = [engine.add(f"x{i}", models[f"m{i}"], _place(dev)) for i in range(3)]
        for h in handles:
            assert h.infer(inputs(h.spec))["y"].shape == (1, 64)
        loads = [m for h in handles for r in h.replicas for m in r.loads]
        assert any("retry after out-of-memory" in m.reason for m in loads)
        assert simulated.allocated_bytes("nvidia:0") <= 80_000


def test_reject_late_fails_early_and_deadlines_order_the_queue(models):
    dev = simulated_device("nvidia:0", simulated_latency_ms=30)
    spec = models["m0"]
    with Engine([dev]) as engine:
        # max_batch_size=1: no batching, but requests go through the device queue (EDF, priorities)
        queued = DeployOptions(batching=BatchingConfig(max_batch_size=1, max_queue_delay_ms=0))
        h = engine.add("q", spec, _place(dev), queued)
        x = inputs(spec)
        h.infer(x)  # measured: ~30 ms per run
        order: list[str] = []

        def enqueue(tag: str, **kw):
            fut = h.submit(x, priority=kw.get("priority", 0), deadline_ms=kw.get("deadline_ms"))
            fut.add_done_callback(lambda f: order.append(tag))
            return fut

        blocker = enqueue("blocker")
        queue = h.replicas[0].queue
        for _ in range(2000):  # bounded: until the executor has taken the blocker
            if queue.running_items:
                break
            time.sleep(0.001)
        reqs = [
            blocker,
            enqueue("late", deadline_ms=5000),
            enqueue("soon", deadline_ms=1000),
            enqueue("urgent", deadline_ms=2000, priority=5),
            enqueue("none"),
        ]
        with pytest.raises(DeadlineExceededError, match="rejected before queueing"):
            h.infer(x, deadline_ms=20, reject_late=True)  # refused at once: five requests of ~30 ms are ahead
        for r in reqs:
            r.result()
        assert order == ["blocker", "urgent", "soon", "late", "none"]
        assert h.stats()["rejected"] == 1


def test_inline_reject_late(models):
    dev = simulated_device("nvidia:0", simulated_latency_ms=30)
    with Engine([dev]) as engine:
        h = engine.add("a", models["m0"], _place(dev))
        x = inputs(models["m0"])
        h.infer(x)
        with pytest.raises(DeadlineExceededError):
            h.infer(x, deadline_ms=5, reject_late=True)
        assert h.infer(x, deadline_ms=5000, reject_late=True)["y"].shape == (1, 64)


@pytest.mark.parametrize("batched", [False, True])
def test_unload_under_traffic_fails_only_later_requests(models, batched):
    dev = simulated_device("nvidia:0", simulated_latency_ms=1)
    spec = models["m0"]
    x = inputs(spec)
    with Engine([dev]) as engine:
        batching = BatchingConfig(max_batch_size=4, max_queue_delay_ms=1) if batched else None
        h = engine.add("a", spec, _place(dev), DeployOptions(batching=batching))
        want = h.infer(x)["y"]
        removed = threading.Event()
        outcomes: list[tuple[str, bool]] = []  # (result, arrived after remove() returned)
        lock = threading.Lock()

        def client() -> None:
            for _ in range(400):
                after = removed.is_set()
                try:
                    ok = np.array_equal(h.infer(x)["y"], want)
                    result = "ok" if ok else "wrong"
                except (ModelNotReadyError, ModelNotFoundError):
                    result = "not-ready"
                except Exception as exc:
                    result = f"error {exc!r}"
                with lock:
                    outcomes.append((result, after))
                if after and result == "not-ready":
                    return

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for _ in range(5000):  # bounded: until traffic is flowing
            if len(outcomes) >= 12:
                break
            time.sleep(0.001)
        engine.remove("a")
        removed.set()
        for t in threads:
            t.join()
        results = {r for r, _ in outcomes}
        assert results <= {"ok", "not-ready"}, results
        assert ("ok", True) not in outcomes  # nothing runs after remove() returned
        assert any(r == "ok" for r, _ in outcomes) and any(r == "not-ready" for r, _ in outcomes)
        assert h.state is ModelState.UNLOADED
        assert engine.ledger.used("nvidia:0") == 0 and simulated.allocated_bytes("nvidia:0") == 0
        with pytest.raises(ModelNotFoundError):
            engine.get("a")


def test_status_reports_devices_and_models(models):
    dev = simulated_device("nvidia:0")
    with Engine([dev], budgets={"nvidia:0": "1MiB"}) as engine:
        h = engine.add("a", models["m0"], _place(dev), DeployOptions(batching=BatchingConfig(4, 1)))
        h.infer(inputs(models["m0"]))
        st = engine.status()
        d = st["devices"]["nvidia:0"]
        assert d["budget_bytes"] == 2**20 and 0 < d["used_bytes"] <= d["budget_bytes"]
        assert d["resident"] == ["a#0@nvidia:0"] and d["healthy"]
        m = st["models"]["a"]
        assert m["state"] == "ready" and m["queue_length"] == 0 and m["batches"]["count"] == 1
        assert m["replicas"][0]["tier"] == "device" and m["loads"] == 1
        assert m["replicas"][0]["loads"][0]["seconds"] > 0
        assert st["policy"] == "cost-benefit"


def test_close_is_idempotent_and_releases_everything(models):
    dev = simulated_device("nvidia:0")
    engine = Engine([dev])
    h = engine.add("a", models["m0"], _place(dev))
    engine.close()
    engine.close()
    assert h.state is ModelState.UNLOADED
    assert simulated.allocated_bytes("nvidia:0") == 0
    with pytest.raises(ModelNotReadyError):
        h.infer(inputs(models["m0"]))


def test_queued_request_for_an_evicted_model_prefetches_it(models):
    dev = simulated_device("nvidia:0")
    with Engine([dev], budgets={"nvidia:0": 80_000}) as engine:
        a = engine.add("a", models["m0"], _place(dev), DeployOptions(batching=BatchingConfig(4, 1)))
        engine.add("b", models["m1"], _place(dev))
        engine.add("c", models["m2"], _place(dev))  # a third does not fit: something was evicted
        engine.get("b").infer(inputs(models["m1"]))
        engine.get("c").infer(inputs(models["m2"]))
        replica = a.replicas[0]
        assert replica.tier is not Tier.DEVICE
        assert a.infer(inputs(models["m0"]))["y"].shape == (1, 64)
        assert replica.loads[-1].reason == "prefetch for a queued request"


def test_out_of_memory_while_running_evicts_and_retries(models):
    from aivmm.backends import registry
    from aivmm.backends.simulated import SimulatedBackend, SimulatedSession
    from aivmm.errors import OutOfMemoryError

    class OomSession(SimulatedSession):
        failed = False

        def _run(self, feeds, output):
            if not OomSession.failed:
                OomSession.failed = True
                raise OutOfMemoryError("simulated: CUDA out of memory while allocating the workspace")
            return super()._run(feeds, output)

    class OomBackend(SimulatedBackend):
        name = "oom-once"

        def _load(self, model, device, config):
            s = super()._load(model, device, config)
            s.__class__ = OomSession
            return s

    registry.register("oom-once", OomBackend)
    try:
        dev = simulated_device("nvidia:0")
        with Engine([dev]) as engine:
            other = engine.add("other", models["m1"], _place(dev))
            h = engine.add("a", models["m0"], [(Config("oom-once", dev.id), dev)])
            assert h.infer(inputs(models["m0"]))["y"].shape == (1, 64)  # failed once, evicted, retried
            assert OomSession.failed
            assert other.replicas[0].tier is not Tier.DEVICE  # the idle neighbour made room
            assert any("out of memory running" in d["reason"] for d in engine.status()["eviction_decisions"])
    finally:
        registry.unregister("oom-once")


def test_requests_queued_for_a_model_evicted_under_them_still_run(models):
    dev = simulated_device("nvidia:0", simulated_latency_ms=20)
    with Engine([dev], budgets={"nvidia:0": 45_000}) as engine:  # one model at a time
        a = engine.add("a", models["m0"], _place(dev), DeployOptions(batching=BatchingConfig(1, 0)))
        x = inputs(models["m0"])
        queued = [a.submit(x) for _ in range(4)]
        b = engine.add("b", models["m1"], _place(dev))  # evicts "a" between two of its batches
        b.infer(inputs(models["m1"]))
        for r in queued:  # without the stalled-queue prefetch these would wait for the next submit
            assert r.result(timeout=30)["y"].shape == (1, 64)
        assert a.stats()["evictions"] >= 1 and a.stats()["loads"] >= 2
