"""Routing and cluster ids without Ray: least-loaded choice, ties, node loss; id round trips."""

from __future__ import annotations

import time
from typing import Any

import pytest

from aivmm.cluster._ids import node_label, qualify, split
from aivmm.cluster._routing import Router, Target
from aivmm.devices._types import Device, DeviceKind, Vendor
from aivmm.errors import DeviceNotFoundError


def _target(node: str, slots: int = 1) -> Target:
    return Target(node, f"{node}/cpu:0", "cpu:0", agent=None, slots=slots)


def test_least_loaded_target_is_chosen_per_slot() -> None:
    a, b = _target("node-a"), _target("node-b", slots=4)
    router = Router([a, b])
    picks = [router.acquire() for _ in range(5)]
    # b has four slots: it takes four requests before a takes its second.
    assert [t.node for t in picks].count("node-b") == 4
    assert a.outstanding == 1 and b.outstanding == 4
    for t in picks:
        assert t is not None
        router.release(t, ok=True)
    assert a.outstanding == b.outstanding == 0 and a.served + b.served == 5


def test_ties_rotate_so_idle_targets_share_sequential_work() -> None:
    a, b = _target("node-a"), _target("node-b")
    router = Router([a, b])
    seen = []
    for _ in range(4):
        t = router.acquire()
        assert t is not None
        seen.append(t.node)
        router.release(t)
    assert set(seen) == {"node-a", "node-b"}


def test_dropping_a_node_stops_routing_to_it() -> None:
    a, b = _target("node-a"), _target("node-b")
    router = Router([a, b])
    gone = router.drop_node("node-a")
    assert gone == [a] and not a.alive
    assert all(router.acquire() is b for _ in range(3))
    router.drop_node("node-b")
    assert router.acquire() is None


def test_cluster_ids_round_trip_and_keep_kind_selectors() -> None:
    dev = Device("nvidia:0", DeviceKind.GPU, Vendor.NVIDIA, "H100", 80 << 30, 80 << 30)
    label = node_label("ab12cd34" + "0" * 48)
    q = qualify(label, dev)
    assert q.id == "node-ab12cd34/nvidia:0"
    assert split(q.id) == ("node-ab12cd34", "nvidia:0")
    assert q.properties["local_id"] == "nvidia:0" and q.kind is DeviceKind.GPU


@pytest.mark.parametrize("bad", ["cpu:0", "/cpu:0", "node-x/"])
def test_malformed_cluster_ids_are_named_errors(bad: str) -> None:
    with pytest.raises(DeviceNotFoundError, match="NODE/DEVICE"):
        split(bad)


def test_serve_refuses_ray_with_single_machine_flags() -> None:
    import argparse

    from aivmm.cli import serve
    from aivmm.errors import ConfigError

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--ray", "127.0.0.1:6379", "--simulate", "x.json"])
    with pytest.raises(ConfigError, match="per node"):
        serve.run(args)


def test_unreachable_ray_address_fails_at_once_with_the_address() -> None:
    pytest.importorskip("ray")
    from aivmm.cluster._ray import probe
    from aivmm.errors import ClusterUnreachableError, ConfigError

    with pytest.raises(ClusterUnreachableError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1"):
        probe("127.0.0.1:1", timeout_s=2.0)
    with pytest.raises(ConfigError, match="bad Ray address"):
        probe("no-port-here")


def test_other_ray_versions_are_refused_before_joining() -> None:
    pytest.importorskip("ray")
    import platform

    import ray

    from aivmm.cluster._ray import check_versions
    from aivmm.errors import ClusterVersionError

    ours = {"ray_version": ray.__version__, "python_version": platform.python_version()}
    check_versions("h:1", ours)
    with pytest.raises(ClusterVersionError, match=r"runs Ray 1\.0\.0, this process Ray"):
        check_versions("h:1", {**ours, "ray_version": "1.0.0"})
    with pytest.raises(ClusterVersionError, match=r"Python 2\.7\.18"):
        check_versions("h:1", {**ours, "python_version": "2.7.18"})


def test_devices_become_ray_resources_per_kind_and_per_device() -> None:
    from aivmm.cluster._resources import claim, missing, node_resources

    cpu = Device("cpu:0", DeviceKind.CPU, Vendor.INTEL, "Xeon", 64 << 30, 64 << 30)
    gpus = [Device(f"nvidia:{i}", DeviceKind.GPU, Vendor.NVIDIA, "H100", 80 << 30, 80 << 30, index=i) for i in range(2)]
    res = node_resources([cpu, *gpus])
    assert res == {
        "aivmm/cpu": 1.0,
        "aivmm/device/cpu:0": 1.0,
        "aivmm/device/nvidia:0": 1.0,
        "aivmm/device/nvidia:1": 1.0,
        "aivmm/nvidia_gpu": 2.0,
    }
    assert missing({"aivmm/cpu": 1.0, "aivmm/nvidia_gpu": 1.0}, res) == {
        k: v for k, v in res.items() if k not in ("aivmm/cpu",)
    }
    # A GPU Ray schedules itself is also held as a Ray GPU, so Ray's own GPU work cannot land on it.
    assert claim(gpus[1], "nvidia:1", {"GPU": 2.0}) == {
        "aivmm/nvidia_gpu": 1.0,
        "aivmm/device/nvidia:1": 1.0,
        "GPU": 1.0,
    }
    assert "GPU" not in claim(gpus[1], "nvidia:1", {})
    assert claim(cpu, "cpu:0", {"GPU": 1.0}) == {"aivmm/cpu": 1.0, "aivmm/device/cpu:0": 1.0}


def test_channel_answers_requests_and_errors_and_reports_a_dead_end() -> None:
    import threading

    import numpy as np

    from aivmm.cluster._channel import ChannelLost, ChannelPool, ChannelServer, answers
    from aivmm.errors import ClusterAuthError, InputError

    def handler(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        if name == "bad":
            raise InputError("input 'x' has the wrong shape")
        return {"y": x * 2}

    key = b"k" * 32
    server = ChannelServer("127.0.0.1", key, handler)
    pool = ChannelPool(server.address, key)
    try:
        outs: list[Any] = []

        def call(i: int) -> None:
            try:
                outs.append(int(pool.call(("ok", np.full(3, i)), 30)["y"][0]))
            except Exception as exc:  # recorded: the assertion below shows it
                outs.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(outs, key=str) == sorted((2 * i for i in range(8)), key=str)
        with pytest.raises(InputError, match="wrong shape"):  # the agent's error class, not a wrapper
            pool.call(("bad", np.zeros(1)), 10)
        with pytest.raises(ClusterAuthError):  # a wrong key is refused by the handshake
            ChannelPool(server.address, b"x" * 32).call(("ok", np.zeros(1)), 5)
        assert answers(server.address, key, 10) and not answers(server.address, b"x" * 32, 10)
    finally:
        server.close()
        pool.close()
    with pytest.raises(ChannelLost):
        pool.call(("ok", np.zeros(1)), 5)
    start = time.monotonic()
    assert not answers(server.address, key, 10)  # a closed agent is known dead at once, not after the timeout
    assert time.monotonic() - start < 5


class _Cand:
    def __init__(self, device: str) -> None:
        self.config = type("Config", (), {"device": device})()


def _dev(node: str, local: str = "cpu:0", memory: int = 64 << 30) -> Device:
    kind = DeviceKind.CPU if local.startswith("cpu") else DeviceKind.GPU
    return qualify(node, Device(local, kind, Vendor.OTHER, "same", memory, memory))


def test_identical_devices_form_one_class_and_a_pin_leads_it() -> None:
    from aivmm.cluster._placement import device_classes

    devs = [_dev("node-a"), _dev("node-b"), _dev("node-c", memory=8 << 30), _dev("node-a", "nvidia:0")]
    classes = device_classes(devs)
    assert sorted(map(sorted, classes.values())) == [
        ["node-a/cpu:0", "node-b/cpu:0"],
        ["node-a/nvidia:0"],
        ["node-c/cpu:0"],
    ]
    assert "node-b/cpu:0" in device_classes(devs, keep="node-b/cpu:0")


def test_copies_spread_over_nodes_then_the_emptiest_devices() -> None:
    import collections

    from aivmm.cluster._placement import choose_devices

    classes = {"node-a/cpu:0": ["node-a/cpu:0", "node-b/cpu:0", "node-c/cpu:0"], "node-a/nvidia:0": ["node-a/nvidia:0"]}
    gpu, cpu = _Cand("node-a/nvidia:0"), _Cand("node-a/cpu:0")
    busy = collections.Counter({"node-b/cpu:0": 5})
    picks = choose_devices([gpu, cpu], classes, 3, set(), busy)
    # The GPU first; then CPUs on nodes without a copy (b and c), the emptier c before the busy b.
    assert [d for _, d in picks] == ["node-a/nvidia:0", "node-c/cpu:0", "node-b/cpu:0"]
    # Re-placing around surviving copies: only devices without one; none left means none.
    assert [d for _, d in choose_devices([cpu], classes, 1, {"node-c/cpu:0"}, busy)] == ["node-a/cpu:0"]
    assert choose_devices([cpu], classes, 1, set(classes["node-a/cpu:0"]), busy) == []
    # More replicas than devices: the first pick takes the rest.
    assert [d for _, d in choose_devices([gpu], classes, 2, set(), busy)] == ["node-a/nvidia:0"] * 2
