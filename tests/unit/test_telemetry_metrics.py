"""The Prometheus exporter: observed request metrics plus figures read from the status at scrape."""

from __future__ import annotations

import pytest

from aivmm.telemetry import METRICS, Reading
from aivmm.telemetry._metrics import ServerMetrics, device_rows

pytest.importorskip("prometheus_client")

STATUS = {
    "models": [{"name": "resnet", "version": "1", "state": "READY", "inflight": 3}],
    "vmm_names": {"resnet:1:1": ["resnet", "1"]},
    "vmm": {
        "devices": {
            "cpu:0": {"budget_bytes": 1000, "used_bytes": 250, "free_bytes": 750, "resident": ["r"]},
            "nvidia:0": {"budget_bytes": 80, "used_bytes": 60, "free_bytes": 20},
        },
        "models": {
            "resnet:1:1": {
                "queue_length": 5,
                "rejected": 2,
                "batches": {"count": 10, "mean_size": 3.5},
                "replicas": [
                    {
                        "device": "nvidia:0",
                        "tier": "device",
                        "loads": [{"seconds": 0.5}, {"seconds": 0.25}],
                        "evictions": [{"seconds": 0.1}],
                    },
                    {"device": "cpu:0", "tier": "host", "loads": [], "evictions": []},
                ],
            }
        },
    },
}


class FakeSampler:
    name = "fake"
    unavailable = ""

    def sample(self) -> list[Reading]:
        return [Reading("nvidia:0", utilization=0.5, power_w=200.0, energy_j=1e4)]


class BrokenSampler:
    name = "broken"
    unavailable = ""

    def sample(self) -> list[Reading]:
        raise RuntimeError("driver went away")


def _scrape(m: ServerMetrics) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = m.render()[0].decode()
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_scrape_reads_status_and_samplers() -> None:
    m = ServerMetrics(status=lambda: STATUS, samplers=[FakeSampler(), BrokenSampler()])
    got = _scrape(m)
    assert got["aivmm_model_inflight[('model', 'resnet'), ('version', '1')]"] == 3
    assert got["aivmm_model_queue_depth[('model', 'resnet')]"] == 5
    assert got["aivmm_batch_size_mean[('model', 'resnet')]"] == 3.5
    assert got["aivmm_model_rejected_total[('model', 'resnet')]"] == 2
    assert got["aivmm_replica_loads_total[('device', 'nvidia:0'), ('model', 'resnet')]"] == 2
    assert got["aivmm_replica_load_seconds_total[('device', 'nvidia:0'), ('model', 'resnet')]"] == 0.75
    assert got["aivmm_evictions_total[('device', 'nvidia:0'), ('model', 'resnet')]"] == 1
    assert got["aivmm_model_residency[('device', 'cpu:0'), ('model', 'resnet'), ('tier', 'host')]"] == 1
    assert got["aivmm_device_memory_free_bytes[('device', 'cpu:0')]"] == 750
    assert got["aivmm_device_memory_used_bytes[('device', 'nvidia:0')]"] == 60
    assert got["aivmm_device_power_watts[('device', 'nvidia:0')]"] == 200
    assert got["aivmm_device_utilization_ratio[('device', 'nvidia:0')]"] == 0.5


def test_observed_request_metrics() -> None:
    m = ServerMetrics(status=None, samplers=[])
    m.request("resnet", "1", 0.004, True)
    m.request("resnet", "1", 0.2, False, "OverloadedError")
    m.stage("resnet", "decode", 0.0001)
    m.load("resnet", 1.5, True)
    m.load("resnet", 0.1, False)
    got = _scrape(m)
    assert got["aivmm_requests_total[('model', 'resnet'), ('outcome', 'ok'), ('version', '1')]"] == 1
    assert got["aivmm_request_errors_total[('error', 'OverloadedError'), ('model', 'resnet')]"] == 1
    assert got["aivmm_request_duration_seconds_count[('model', 'resnet')]"] == 2
    assert got["aivmm_request_duration_seconds_bucket[('le', '0.005'), ('model', 'resnet')]"] == 1
    assert got["aivmm_request_stage_seconds_count[('model', 'resnet'), ('stage', 'decode')]"] == 1
    assert got["aivmm_model_loads_total[('model', 'resnet'), ('outcome', 'error')]"] == 1


def test_a_failing_status_does_not_break_the_scrape() -> None:
    def broken() -> dict:
        raise RuntimeError("boom")

    assert b"aivmm_requests_total" in ServerMetrics(status=broken, samplers=[]).render()[0]


def test_every_documented_name_is_exported() -> None:
    m = ServerMetrics(status=lambda: STATUS, samplers=[FakeSampler()])
    m.request("resnet", "1", 0.001, False, "InputError")
    m.stage("resnet", "execute", 0.001)
    m.load("resnet", 1.0, True)
    m.unload("resnet", 1.0)
    text = m.render()[0].decode()
    for name in METRICS:
        assert f"# HELP {name.removesuffix('_total')}" in text, name


def test_device_rows_merge_ledger_and_readings() -> None:
    rows = {
        r["id"]: r
        for r in device_rows(
            STATUS, {"nvidia:0": Reading("nvidia:0", 0.5, 200.0), "amd:0": Reading("amd:0", 0.1, None, None, 5, 10)}
        )
    }
    assert rows["cpu:0"]["memory_free_bytes"] == 750 and rows["nvidia:0"]["power_w"] == 200.0
    assert rows["amd:0"]["memory_free_bytes"] == 5
