"""Routing and cluster ids without Ray: least-loaded choice, ties, node loss; id round trips."""

from __future__ import annotations

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
    from aivmm.cluster._ray import _check_reachable
    from aivmm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1"):
        _check_reachable("127.0.0.1:1", timeout_s=2.0)
    with pytest.raises(ConfigError, match="bad Ray address"):
        _check_reachable("no-port-here")
