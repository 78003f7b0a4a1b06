"""Metric names and help texts: the documented contract (docs/serve.md lists this table)."""

from __future__ import annotations

# name -> (type, labels, help)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "aivmm_requests_total": (
        "counter",
        ("model", "version", "outcome"),
        "Inference requests answered, by outcome (ok/error).",
    ),
    "aivmm_request_errors_total": ("counter", ("model", "error"), "Failed inference requests by aivmm error class."),
    "aivmm_request_duration_seconds": (
        "histogram",
        ("model",),
        "Server time per inference request: body received to answer ready.",
    ),
    "aivmm_request_stage_seconds": (
        "histogram",
        ("model", "stage"),
        "Time per request stage: decode, queue, compute, execute (queue + compute + hand-off), encode.",
    ),
    "aivmm_batches_total": ("counter", ("model",), "Batches the runtime executed for the model (dynamic batching)."),
    "aivmm_batch_size_mean": ("gauge", ("model",), "Mean items per executed batch."),
    "aivmm_model_rejected_total": ("counter", ("model",), "Requests the runtime refused (queue full, late)."),
    "aivmm_replica_loads_total": (
        "counter",
        ("model", "device"),
        "Replica loads onto a device, including reloads after eviction.",
    ),
    "aivmm_replica_load_seconds_total": ("counter", ("model", "device"), "Seconds spent loading replicas."),
    "aivmm_model_loads_total": ("counter", ("model", "outcome"), "Model loads (ok/error) through the repository API."),
    "aivmm_model_load_duration_seconds": ("histogram", ("model",), "Seconds to plan and load a model."),
    "aivmm_model_unload_duration_seconds": ("histogram", ("model",), "Seconds to drain and unload a model."),
    "aivmm_model_inflight": ("gauge", ("model", "version"), "Requests inside the model now."),
    "aivmm_model_queue_depth": ("gauge", ("model",), "Requests waiting in the runtime's queues for the model."),
    "aivmm_model_residency": (
        "gauge",
        ("model", "device", "tier"),
        "1 for where each replica's weights are (device/host/disk).",
    ),
    "aivmm_model_state": ("gauge", ("model", "version", "state"), "1 for the model's lifecycle state."),
    "aivmm_evictions_total": ("counter", ("model", "device"), "Replicas evicted from a device to make room."),
    "aivmm_eviction_seconds_total": ("counter", ("model", "device"), "Seconds spent evicting replicas."),
    "aivmm_device_memory_used_bytes": ("gauge", ("device",), "Device memory in use."),
    "aivmm_device_memory_free_bytes": ("gauge", ("device",), "Device memory free."),
    "aivmm_device_memory_total_bytes": ("gauge", ("device",), "Device memory in total."),
    "aivmm_device_utilization_ratio": ("gauge", ("device",), "Device busy fraction, 0..1 (where readable)."),
    "aivmm_device_power_watts": (
        "gauge",
        ("device",),
        "Device power draw (NVML, amdgpu/Intel hwmon, RAPL; where readable).",
    ),
    "aivmm_device_energy_joules_total": (
        "counter",
        ("device",),
        "Energy used by the device since its counter started (RAPL: the meter).",
    ),
    # Text generation (LLM routes); rate(aivmm_llm_generated_tokens_total[1m]) is tokens/s.
    "aivmm_llm_time_to_first_token_seconds": (
        "histogram",
        ("model",),
        "Request start (admitted) to its first generated token.",
    ),
    "aivmm_llm_time_per_output_token_seconds": (
        "histogram",
        ("model",),
        "Mean time between a request's generated tokens after the first.",
    ),
    "aivmm_llm_generated_tokens_total": ("counter", ("model",), "Tokens generated (all requests)."),
    "aivmm_llm_prompt_tokens_total": ("counter", ("model",), "Prompt tokens of the requests generated for."),
    "aivmm_llm_requests_total": (
        "counter",
        ("model", "finish_reason"),
        "Generations ended, by finish reason (stop/length/cancelled).",
    ),
    "aivmm_llm_requests_running": ("gauge", ("model",), "Generations in the model's running batch now."),
    "aivmm_llm_requests_waiting": ("gauge", ("model",), "Generations admitted but waiting for a batch slot or KV."),
    "aivmm_llm_kv_cache_used_tokens": ("gauge", ("model",), "KV-cache tokens held by generations now."),
    "aivmm_llm_kv_cache_capacity_tokens": ("gauge", ("model",), "KV-cache tokens the model can hold."),
    "aivmm_llm_kv_cache_used_bytes": ("gauge", ("model",), "KV-cache bytes held by generations now."),
    "aivmm_llm_kv_cache_usage_ratio": ("gauge", ("model",), "KV-cache tokens used / capacity, 0..1."),
}

TOKEN_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
