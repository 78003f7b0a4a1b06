"""Dynamic batching: validated configuration, exact per-request results, many concurrent clients."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import numpy as np
import pytest

from aivmm.backends import simulated
from aivmm.backends._base import Config
from aivmm.errors import ConfigError, ExecutionError, OverloadedError
from aivmm.options import DeployOptions
from aivmm.runtime import BatchingConfig, Engine
from aivmm.runtime._batching import compat_key, merge, split
from aivmm.runtime._toy import inputs, mlp, one_op, simulated_device


@pytest.fixture(autouse=True)
def _fresh_simulated_devices():
    yield
    with simulated._state_lock:
        simulated._allocated.clear()
        simulated._runs.clear()


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    return {
        "add": one_op(root / "add.onnx", width=8),
        "mlp": mlp(root / "mlp.onnx", width=32, layers=2),
        "reduce": mlp(root / "reduce.onnx", width=8, layers=1, batch_dim_preserved=False, name="reduce"),
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_batch_size": 2.5},
        {"max_batch_size": True},
        {"max_queue_delay_ms": -1},
        {"max_queue_delay_ms": float("nan")},
        {"max_queue_delay_ms": 1e6},
        {"max_queue_size": 0},
        {"max_batch_size": 4, "preferred_sizes": (8,)},
        {"preferred_sizes": (0,)},
    ],
)
def test_bad_batching_config_is_refused(kwargs):
    with pytest.raises(ConfigError, match="BatchingConfig"):
        BatchingConfig(**kwargs)


def test_from_mapping_is_the_one_way_from_plain_data():
    cfg = BatchingConfig.from_mapping({"max_batch_size": 8, "preferred_sizes": [4, 2]})
    assert cfg == BatchingConfig(max_batch_size=8, preferred_sizes=(2, 4))
    with pytest.raises(ConfigError, match=r"unknown batching key\(s\) \['max_batch'\]"):
        BatchingConfig.from_mapping({"max_batch": 3})
    with pytest.raises(ConfigError, match="preferred_sizes must be a list"):
        BatchingConfig.from_mapping({"preferred_sizes": "4"})
    with pytest.raises(ConfigError, match="must be a mapping"):
        BatchingConfig.from_mapping([("max_batch_size", 2)])


def test_padded_size_and_sorting():
    cfg = BatchingConfig(max_batch_size=8, preferred_sizes=(8, 2, 4))
    assert cfg.preferred_sizes == (2, 4, 8)
    assert [cfg.padded_size(n) for n in (1, 2, 3, 5, 8)] == [2, 2, 4, 8, 8]


def test_merge_pads_with_real_rows_and_split_cuts_back():
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    b = {"x": np.arange(3, dtype=np.float32).reshape(1, 3) + 100}
    merged = merge([a, b], 0, padded_to=4)
    assert merged["x"].shape == (4, 3)
    np.testing.assert_array_equal(merged["x"][3], merged["x"][2])  # padding repeats the last item
    parts = split({"y": merged["x"] * 2}, [2, 1], 0, "m", padded=4)
    np.testing.assert_array_equal(parts[0]["y"], a["x"] * 2)
    np.testing.assert_array_equal(parts[1]["y"], b["x"] * 2)


def test_split_refuses_outputs_that_lost_the_batch():
    with pytest.raises(ExecutionError, match="does not preserve the batch dimension"):
        split({"y": np.zeros(4)}, [2, 3], 0, "m")


def test_compat_key_separates_shapes_and_dtypes():
    a = {"x": np.zeros((1, 3), np.float32)}
    assert compat_key(a, 0) == compat_key({"x": np.zeros((5, 3), np.float32)}, 0)
    assert compat_key(a, 0) != compat_key({"x": np.zeros((1, 4), np.float32)}, 0)
    assert compat_key(a, 0) != compat_key({"x": np.zeros((1, 3), np.float64)}, 0)
    assert compat_key({"x": [1, 2]}, 0) is None


def _engine(dev, spec, **batching):
    engine = Engine([dev])
    options = DeployOptions(batching=BatchingConfig(**batching))
    handle = engine.add("m", spec, [(Config("simulated", dev.id), dev)], options)
    return engine, handle


def test_batched_results_are_exactly_each_requests_own(specs):
    spec = specs["add"]  # elementwise: batching cannot change a single bit
    dev = simulated_device("nvidia:0", simulated_latency_ms=2)
    engine, h = _engine(dev, spec, max_batch_size=16, max_queue_delay_ms=20)
    with engine:
        feeds = [inputs(spec, batch=1 + i % 3, seed=i) for i in range(96)]
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            outs = list(pool.map(h.infer, feeds))
        for f, o in zip(feeds, outs):
            assert np.array_equal(o["y"], f["x"] + 1)
        st = h.stats()
        assert st["batches"]["mean_size"] > 1.5  # they really were batched
        assert st["requests"] == 96


def test_batched_mlp_matches_unbatched(specs):
    spec = specs["mlp"]
    dev = simulated_device("nvidia:0")
    engine, h = _engine(dev, spec, max_batch_size=8, max_queue_delay_ms=20, preferred_sizes=(8,))
    with engine:
        single = engine.add("s", spec, [(Config("simulated", dev.id), dev)])
        feeds = [inputs(spec, 1, seed=i) for i in range(40)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outs = list(pool.map(h.infer, feeds))
        for f, o in zip(feeds, outs):
            np.testing.assert_allclose(o["y"], single.infer(f)["y"], rtol=1e-6, atol=1e-6)
        assert h.stats()["batches"]["count"] < 40


def test_asyncio_clients(specs):
    spec = specs["add"]
    dev = simulated_device("nvidia:0")
    engine, h = _engine(dev, spec, max_batch_size=8, max_queue_delay_ms=5)

    async def main() -> list:
        feeds = [inputs(spec, 1, seed=i) for i in range(64)]
        outs = await asyncio.gather(*(h.infer_async(f) for f in feeds))
        return list(zip(feeds, outs))

    with engine:
        for f, o in asyncio.run(main()):
            assert np.array_equal(o["y"], f["x"] + 1)
        assert h.stats()["batches"]["mean_size"] > 1


def test_asyncio_on_the_unbatched_path(specs):
    spec = specs["add"]
    dev = simulated_device("nvidia:0")
    with Engine([dev]) as engine:
        h = engine.add("m", spec, [(Config("simulated", dev.id), dev)])

        async def main() -> list:
            return await asyncio.gather(*(h.infer_async(inputs(spec, 1, seed=i)) for i in range(16)))

        outs = asyncio.run(main())
        for i, o in enumerate(outs):
            assert np.array_equal(o["y"], inputs(spec, 1, seed=i)["x"] + 1)


def test_model_that_drops_the_batch_fails_clearly(specs):
    spec = specs["reduce"]
    dev = simulated_device("nvidia:0")
    engine, h = _engine(dev, spec, max_batch_size=4, max_queue_delay_ms=1)
    with engine, pytest.raises(ExecutionError, match="does not preserve the batch dimension"):
        h.infer(inputs(spec, 2))


def test_batching_a_model_without_batch_dim_is_refused(specs):
    import dataclasses

    spec = dataclasses.replace(specs["add"], batch_dim=None)
    dev = simulated_device("nvidia:0")
    with Engine([dev]) as engine, pytest.raises(ConfigError, match="no batch dimension"):
        engine.add("m", spec, [(Config("simulated", dev.id), dev)], DeployOptions(batching=BatchingConfig()))


def test_full_queue_is_overloaded(specs):
    spec = specs["add"]
    dev = simulated_device("nvidia:0", simulated_latency_ms=50)
    engine, h = _engine(dev, spec, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
    x = inputs(spec)

    def enqueue():
        return h.submit(x)

    with engine:
        running = enqueue()
        queue = h.replicas[0].queue
        for _ in range(2000):  # bounded: until the executor has taken it
            if queue.running_items:
                break
            time.sleep(0.001)
        waiting = [enqueue(), enqueue()]  # the queue holds two
        with pytest.raises(OverloadedError, match=r"full \(2 requests waiting\)"):
            h.infer(x)
        for r in [running, *waiting]:
            assert np.array_equal(r.result()["y"], x["x"] + 1)


def test_bad_request_in_a_batch_fails_alone(specs):
    spec = specs["add"]
    dev = simulated_device("nvidia:0", simulated_latency_ms=5)
    engine, h = _engine(dev, spec, max_batch_size=8, max_queue_delay_ms=30)
    good = inputs(spec, 1)
    bad = {"x": np.zeros((1, 8), dtype=np.float64)}  # wrong dtype: not batched with the others, fails alone
    with engine, concurrent.futures.ThreadPoolExecutor(6) as pool:
        futs = [pool.submit(h.infer, good) for _ in range(5)] + [pool.submit(h.infer, bad)]
        for f in futs[:5]:
            assert np.array_equal(f.result()["y"], good["x"] + 1)
        with pytest.raises(Exception):  # noqa: B017 - the backend's own input error
            futs[5].result()


def test_batching_is_work_conserving_once_it_has_learnt_the_batch_size():
    """The queue delay is only paid while waiting can still grow the batch beyond what recent batches held."""
    from aivmm.runtime._batching import BatchingConfig
    from aivmm.runtime._executor import DeviceExecutor
    from aivmm.runtime._request import ReplicaQueue, Request

    queue = ReplicaQueue(
        "q",
        lambda batch: None,
        batching=BatchingConfig(64, 500.0),
        batch_dim=0,
        limit=100,
        runnable=lambda: True,
        latency=lambda n: 0.001,
    )
    queue.push(Request({}))
    now = queue.heap[0].arrival
    ready, wait = DeviceExecutor.batch_ready(queue, now)
    assert not ready and wait > 0.4  # nothing learnt yet: wait as configured
    queue.recent_batch = 1.0  # low load: batches of one
    assert DeviceExecutor.batch_ready(queue, now) == (True, 0.0)
    queue.recent_batch = 4.0  # a closed loop of four clients
    for _ in range(2):
        queue.push(Request({}))
    assert DeviceExecutor.batch_ready(queue, now)[0] is False  # three queued: the fourth is likely on its way
    queue.push(Request({}))
    assert DeviceExecutor.batch_ready(queue, now) == (True, 0.0)
    queue.running_items = 4  # a batch of this queue still running: keep accumulating until the delay
    assert DeviceExecutor.batch_ready(queue, now)[0] is False
