"""The load generator behind ``aivmm bench``: bounded loops, every request counted, errors kept."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from aivmm.errors import ConfigError
from aivmm.serve import loadgen as lg


def _factory(fail_every: int = 0, sleep_s: float = 0.001):
    count = [0]
    lock = threading.Lock()

    def factory():
        def call() -> None:
            with lock:
                count[0] += 1
                n = count[0]
            time.sleep(sleep_s)
            if fail_every and n % fail_every == 0:
                raise RuntimeError(f"request {n} failed")

        return call

    return factory, count


def test_closed_loop_counts_and_bounds() -> None:
    factory, count = _factory(fail_every=5)
    r = lg.closed_loop(factory, 3, 0.3, warmup_s=0.05, label="t")
    assert r.mode == "closed" and r.level == 3
    assert len(r.latencies) > 10 and r.errors > 0
    assert len(r.latencies) + r.errors <= count[0]  # warm-up requests are not counted
    assert "failed" in r.error_samples[0]
    assert all(s >= 0.001 for s in r.latencies)
    j = r.to_json()
    assert j["p50_ms"] <= j["p90_ms"] <= j["p99_ms"] and j["throughput"] > 0


def test_open_loop_poisson_arrivals() -> None:
    factory, count = _factory()
    r = lg.open_loop(factory, 200.0, 0.5, seed=1)
    assert r.mode == "open" and r.errors == 0
    assert 40 <= len(r.latencies) <= 180 and len(r.latencies) == count[0]


def test_bad_levels_are_config_errors() -> None:
    factory, _ = _factory()
    with pytest.raises(ConfigError):
        lg.closed_loop(factory, 0, 1.0)
    with pytest.raises(ConfigError):
        lg.open_loop(factory, -1.0, 1.0)
    with pytest.raises(ConfigError, match="not an http URL"):
        lg.http_target("ftp://x", "m", {"x": np.zeros(1, np.float32)})


def test_empty_result_percentiles_are_nan() -> None:
    r = lg.Result("t", "closed", 1, (), 3, 1.0)
    assert np.isnan(r.percentile(50)) and r.throughput == 0.0
