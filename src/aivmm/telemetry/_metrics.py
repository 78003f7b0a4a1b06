"""The Prometheus exporter: request metrics observed by the server, the rest read at scrape time.

Request counters and histograms are updated as requests are answered (the data plane's
Observer hooks). Everything the VMM and the hardware know (memory, residency, queues,
evictions, utilisation, power) is read when Prometheus scrapes, by a custom collector: no
background thread, and the figures are never staler than the scrape.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aivmm.telemetry._meters import Meter, Reading, default_meters, merge
from aivmm.telemetry._names import LATENCY_BUCKETS, METRICS, TOKEN_LATENCY_BUCKETS

log = logging.getLogger(__name__)


def _need_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        from aivmm.errors import missing_extra

        raise missing_extra("prometheus-client", "serve") from None
    return prometheus_client


class ServerMetrics:
    """Implements the data plane's Observer; ``render()`` gives the exposition text."""

    def __init__(
        self,
        status: Callable[[], Mapping[str, Any]] | None = None,
        samplers: list[Meter] | None = None,
    ) -> None:
        prom = _need_prometheus()
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=False)
        r = self.registry

        def h(name: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Any:
            _, labels, help_text = METRICS[name]
            return prom.Histogram(name, help_text, labels, registry=r, buckets=buckets)

        def c(name: str) -> Any:
            _, labels, help_text = METRICS[name]
            return prom.Counter(name.removesuffix("_total"), help_text, labels, registry=r)

        self.requests = c("aivmm_requests_total")
        self.errors = c("aivmm_request_errors_total")
        self.duration = h("aivmm_request_duration_seconds")
        self.stages = h("aivmm_request_stage_seconds")
        self.loads = c("aivmm_model_loads_total")
        self.load_seconds = h("aivmm_model_load_duration_seconds")
        self.unload_seconds = h("aivmm_model_unload_duration_seconds")
        self.ttft = h("aivmm_llm_time_to_first_token_seconds", TOKEN_LATENCY_BUCKETS)
        self.tpot = h("aivmm_llm_time_per_output_token_seconds", TOKEN_LATENCY_BUCKETS)
        self.generated = c("aivmm_llm_generated_tokens_total")
        self.prompt_tokens = c("aivmm_llm_prompt_tokens_total")
        self.generations = c("aivmm_llm_requests_total")
        self._status = status
        self._samplers = samplers if samplers is not None else default_meters()
        self._lock = threading.Lock()  # scrapes may come from the metrics thread and the HTTP loop
        r.register(_StatusCollector(self))

    # -- Observer ---------------------------------------------------------------------------------
    def request(self, model: str, version: str, seconds: float, ok: bool, error: str = "") -> None:
        self.requests.labels(model, version, "ok" if ok else "error").inc()
        if not ok:
            self.errors.labels(model, error or "unknown").inc()
        self.duration.labels(model).observe(seconds)

    def stage(self, model: str, stage: str, seconds: float) -> None:
        self.stages.labels(model, stage).observe(seconds)

    def load(self, model: str, seconds: float, ok: bool) -> None:
        self.loads.labels(model, "ok" if ok else "error").inc()
        if ok:
            self.load_seconds.labels(model).observe(seconds)

    def unload(self, model: str, seconds: float) -> None:
        self.unload_seconds.labels(model).observe(seconds)

    def generation(
        self,
        model: str,
        ttft_s: float | None,
        tpot_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        finish: str,
    ) -> None:
        """One generation ended (the text-generation service's LLMObserver hook)."""
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        if tpot_s is not None:
            self.tpot.labels(model).observe(tpot_s)
        self.generated.labels(model).inc(completion_tokens)
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generations.labels(model, finish).inc()

    # -- exposition -------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        with self._lock:
            return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST

    def readings(self) -> dict[str, Reading]:
        out: list[Reading] = []
        for s in self._samplers:
            try:
                out.extend(s.sample())
            except Exception as exc:  # a sampler must never break a scrape
                log.debug("sampler %s failed: %s", getattr(s, "name", s), exc)
        return merge(out)


class _StatusCollector:
    """Reads the server's status document and the samplers at scrape time."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.m = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def fam(name: str) -> Any:
            kind, labels, help_text = METRICS[name]
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            return cls(name.removesuffix("_total") if kind == "counter" else name, help_text, labels=list(labels))

        status: Mapping[str, Any] = {}
        if self.m._status is not None:
            try:
                status = self.m._status()
            except Exception as exc:
                log.warning("status for metrics failed: %s", exc)
        readings = self.m.readings()
        yield from _model_families(status, fam)
        yield from _device_families(status, readings, fam)


def _model_families(status: Mapping[str, Any], fam: Callable[[str], Any]) -> Iterator[Any]:
    inflight, state = fam("aivmm_model_inflight"), fam("aivmm_model_state")
    for m in status.get("models", []):
        if m.get("version"):
            inflight.add_metric([m["name"], m["version"]], float(m.get("inflight", 0)))
        state.add_metric([m["name"], m.get("version", ""), str(m.get("state", ""))], 1.0)
    yield inflight
    yield state
    yield from _llm_families(status, fam)
    vmm = status.get("vmm", {}) or {}
    names = status.get("vmm_names", {})
    queue, residency = fam("aivmm_model_queue_depth"), fam("aivmm_model_residency")
    batches, mean_batch, rejected = (
        fam("aivmm_batches_total"),
        fam("aivmm_batch_size_mean"),
        fam("aivmm_model_rejected_total"),
    )
    loads, load_s = fam("aivmm_replica_loads_total"), fam("aivmm_replica_load_seconds_total")
    evictions, evict_s = fam("aivmm_evictions_total"), fam("aivmm_eviction_seconds_total")
    models = vmm.get("models", {})
    for vmm_name, info in models.items() if isinstance(models, Mapping) else ():
        if not isinstance(info, Mapping):
            continue
        served = names.get(vmm_name, [vmm_name])[0]
        _add(queue, [served], info.get("queue_length"))
        _add(rejected, [served], info.get("rejected"))
        b = info.get("batches")
        if isinstance(b, Mapping):
            _add(batches, [served], b.get("count"))
            _add(mean_batch, [served], b.get("mean_size"))
        per_device: dict[str, list[float]] = {}
        for rep in info.get("replicas", []) or []:
            if not isinstance(rep, Mapping) or not rep.get("device"):
                continue
            dev = str(rep["device"])
            if rep.get("tier"):
                residency.add_metric([served, dev, str(rep["tier"])], 1.0)
            acc = per_device.setdefault(dev, [0.0, 0.0, 0.0, 0.0])
            for event in rep.get("loads", []) or []:
                acc[0] += 1
                acc[1] += float(event.get("seconds", 0.0)) if isinstance(event, Mapping) else 0.0
            for event in rep.get("evictions", []) or []:
                acc[2] += 1
                acc[3] += float(event.get("seconds", 0.0)) if isinstance(event, Mapping) else 0.0
        for dev, (n_load, s_load, n_evict, s_evict) in per_device.items():
            loads.add_metric([served, dev], n_load)
            load_s.add_metric([served, dev], s_load)
            evictions.add_metric([served, dev], n_evict)
            evict_s.add_metric([served, dev], s_evict)
    yield from (queue, residency, batches, mean_batch, rejected, loads, load_s, evictions, evict_s)


def _llm_families(status: Mapping[str, Any], fam: Callable[[str], Any]) -> Iterator[Any]:
    """Gauges from each LLM's stats() as the status document carries them (read at scrape time)."""
    keys = {
        "aivmm_llm_requests_running": "running",
        "aivmm_llm_requests_waiting": "waiting",
        "aivmm_llm_kv_cache_used_tokens": "kv_tokens_used",
        "aivmm_llm_kv_cache_capacity_tokens": "kv_tokens_capacity",
        "aivmm_llm_kv_cache_used_bytes": "kv_bytes_used",
    }
    families = {name: fam(name) for name in keys}
    usage = fam("aivmm_llm_kv_cache_usage_ratio")
    for m in status.get("models", []):
        llm = m.get("llm")
        if not isinstance(llm, Mapping):
            continue
        for name, key in keys.items():
            _add(families[name], [m["name"]], llm.get(key))
        used, cap = llm.get("kv_tokens_used"), llm.get("kv_tokens_capacity")
        if isinstance(used, int | float) and isinstance(cap, int | float) and cap > 0:
            usage.add_metric([m["name"]], float(used) / float(cap))
    yield from families.values()
    yield usage


def _add(family: Any, labels: list[str], value: Any) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        family.add_metric(labels, float(value))


def _device_families(
    status: Mapping[str, Any], readings: dict[str, Reading], fam: Callable[[str], Any]
) -> Iterator[Any]:
    used, free, total = (
        fam("aivmm_device_memory_used_bytes"),
        fam("aivmm_device_memory_free_bytes"),
        fam("aivmm_device_memory_total_bytes"),
    )
    util, power, energy = (
        fam("aivmm_device_utilization_ratio"),
        fam("aivmm_device_power_watts"),
        fam("aivmm_device_energy_joules_total"),
    )
    for dev in device_rows(status, readings):
        d = dev["id"]
        for family, key in (
            (used, "memory_used_bytes"),
            (free, "memory_free_bytes"),
            (total, "memory_total_bytes"),
            (util, "utilization"),
            (power, "power_w"),
            (energy, "energy_j"),
        ):
            if dev.get(key) is not None:
                family.add_metric([d], float(dev[key]))
    yield from (used, free, total, util, power, energy)


def device_rows(status: Mapping[str, Any], readings: Mapping[str, Reading]) -> list[dict[str, Any]]:
    """Per device: the VMM's memory figures (its ledger) completed by the samplers' readings."""
    vmm = status.get("vmm", {}) or {}
    rows: dict[str, dict[str, Any]] = {}
    devices = vmm.get("devices", {})
    # The VMM's ledger: budget, bytes charged to resident replicas, and what is left.
    for dev_id, d in devices.items() if isinstance(devices, Mapping) else ():
        if not isinstance(d, Mapping):
            continue
        rows[dev_id] = {
            "id": dev_id,
            "memory_total_bytes": d.get("budget_bytes"),
            "memory_used_bytes": d.get("used_bytes"),
            "memory_free_bytes": d.get("free_bytes"),
            "resident": list(d.get("resident", []) or []),
            "healthy": d.get("healthy", True),
            "simulated": d.get("simulated", False),
        }
    for dev_id, r in readings.items():
        row = rows.setdefault(dev_id, {"id": dev_id})
        row["utilization"] = r.utilization
        row["power_w"] = r.power_w
        row["energy_j"] = r.energy_j
        if row.get("memory_total_bytes") is None and r.memory_total_bytes is not None:
            row["memory_total_bytes"] = r.memory_total_bytes
            row["memory_used_bytes"] = r.memory_used_bytes
            if r.memory_used_bytes is not None:
                row["memory_free_bytes"] = r.memory_total_bytes - r.memory_used_bytes
    return list(rows.values())
