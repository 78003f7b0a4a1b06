"""The ledger never hands out more than a budget, under any interleaving; the eviction policies."""

from __future__ import annotations

import random
import threading

import pytest

from aivmm.errors import ConfigError, DeviceNotFoundError, OutOfMemoryError
from aivmm.memory import Candidate, CostBenefitPolicy, CountLruPolicy, EntryState, Ledger, LruPolicy, RateEstimator


def test_reserve_commit_release():
    ledger = Ledger({"d:0": 100})
    assert ledger.try_reserve("a", "d:0", 60)
    assert not ledger.try_reserve("b", "d:0", 50)
    assert ledger.entry("a").state is EntryState.RESERVED
    assert ledger.commit("a", 70)
    assert ledger.entry("a").state is EntryState.COMMITTED and ledger.used("d:0") == 70
    assert not ledger.commit("a", 120)  # the measured size does not fit: the old size stays
    assert ledger.used("d:0") == 70
    assert ledger.release("a") == 70 and ledger.release("a") == 0
    assert ledger.free("d:0") == 100


def test_reserve_error_names_sizes():
    ledger = Ledger({"d:0": 2048})
    ledger.reserve("a", "d:0", 2000)
    with pytest.raises(OutOfMemoryError, match=r"b needs 1\.0 KiB on d:0 but only 48 B of its 2\.0 KiB"):
        ledger.reserve("b", "d:0", 1024)


def test_bad_use_is_refused():
    ledger = Ledger({"d:0": 10})
    with pytest.raises(DeviceNotFoundError):
        ledger.try_reserve("a", "x:0", 1)
    with pytest.raises(ConfigError):
        ledger.try_reserve("a", "d:0", -1)
    ledger.try_reserve("a", "d:0", 1)
    with pytest.raises(ConfigError, match="already holds"):
        ledger.try_reserve("a", "d:0", 1)
    with pytest.raises(ConfigError):
        Ledger({"d:0": -5})


def test_budget_never_exceeded_under_concurrency():
    capacity = 1000
    ledger = Ledger({"d:0": capacity})
    errors: list[str] = []
    stop = threading.Event()

    def watcher() -> None:
        while not stop.is_set():
            if ledger.used("d:0") > capacity:
                errors.append(f"used {ledger.used('d:0')}")

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(2000):
            key = f"{seed}-{i}"
            if ledger.try_reserve(key, "d:0", rng.randint(1, 300)):
                ledger.commit(key, rng.randint(1, 400))
                ledger.release(key)

    w = threading.Thread(target=watcher)
    w.start()
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    w.join()
    assert not errors
    assert ledger.peak("d:0") <= capacity
    assert ledger.peak("d:0") > capacity // 2  # the threads did contend
    assert ledger.used("d:0") == 0


def _cand(key, nbytes, reload_s, rate, last):
    return Candidate(key, nbytes, reload_s, rate, last)


def test_cost_benefit_keeps_the_hot_and_costly_model_that_lru_evicts():
    hot_big = _cand("hot", 100, reload_s=2.0, rate=5.0, last=1.0)  # used a lot, slow to reload, touched long ago
    cold = _cand("cold", 100, reload_s=0.1, rate=0.01, last=2.0)  # rarely used, touched more recently
    cb = CostBenefitPolicy().choose([hot_big, cold], 100)
    lru = LruPolicy().choose([hot_big, cold], 100)
    assert cb.victims == ("cold",) and cb.enough
    assert lru.victims == ("hot",)
    assert "req/s" in cb.reasons[0]


def test_cost_benefit_prefers_freeing_big_cheap_bytes():
    small = _cand("small", 10, 0.1, 1.0, 0.0)
    big = _cand("big", 1000, 0.1, 1.0, 0.0)
    assert CostBenefitPolicy().choose([small, big], 10).victims == ("big",)


def test_policy_reports_not_enough():
    d = CostBenefitPolicy().choose([_cand("a", 10, 1, 1, 0)], 100)
    assert d.victims == ("a",) and not d.enough and d.freed_bytes == 10


def test_count_lru_evicts_by_count_even_when_bytes_fit():
    cands = [_cand(f"m{i}", 1, 1.0, 1.0, float(i)) for i in range(4)]
    d = CountLruPolicy(max_models=2).choose(cands, 0, resident_count=4)
    assert d.victims == ("m0", "m1", "m2")  # room for the incoming one: two resident with it at most
    with pytest.raises(ValueError):
        CountLruPolicy(0)


def test_rate_estimator_decays():
    est = RateEstimator(half_life_s=1.0)
    assert est.rate(0, now=100.0) == 0.0
    r = est.rate(10, now=101.0)  # ten requests counted during the second
    assert r > 0
    assert est.rate(10, now=102.0) == pytest.approx(r / 2, rel=1e-6)  # nothing new: halves per half-life
    assert est.rate(20, now=102.0) > r / 2


def test_long_reloads_weigh_more_on_a_busy_device():
    # Same expected waiting on an idle device (1 req/s x 100 ms = 10 req/s x 10 ms)...
    slow = Candidate("slow", 100, reload_seconds=0.1, rate=1.0, last_used=0.0)
    fast = Candidate("fast", 100, reload_seconds=0.01, rate=10.0, last_used=1.0)
    assert slow.loss == pytest.approx(fast.loss)
    # ...but on a busy device the long reload also holds up everyone else's requests.
    busy = [Candidate(c.key, c.nbytes, c.reload_seconds, c.rate, c.last_used, device_rate=50.0) for c in (slow, fast)]
    assert busy[0].loss > busy[1].loss
    assert CostBenefitPolicy().choose(busy, 100).victims == ("fast",)
