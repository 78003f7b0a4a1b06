"""The cost model: a roofline estimate from the model analysis and the device's figures.

latency = overhead(backend) + max(flops / achievable_flops, bytes / bandwidth) + transfers, where
``bytes`` is the weights at the candidate's precision plus the activations' traffic. It does not
try to be exact: it ranks candidates so only the promising few are measured, and it stands in for
measurement when ``measure=False``. Option factors are coarse heuristics, documented inline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aivmm.backends._base import Config
from aivmm.devices._types import Device, DeviceKind
from aivmm.dtypes import Precision
from aivmm.models._spec import Category, ModelSpec
from aivmm.planner._figures import Capability, physical_cores
from aivmm.planner._values import Prediction

# Fixed cost of one call through each runtime (Python binding, input checks, dispatch), in ms.
CALL_OVERHEAD_MS: Mapping[str, float] = {"onnxruntime": 0.02, "openvino": 0.03, "torch": 0.06, "simulated": 0.02}
DEFAULT_CALL_OVERHEAD_MS = 0.05
# Fraction of peak matmul throughput real graphs reach, per category: convolutions and large matmuls
# reach most of it; recurrent and recommender graphs (small ops, gathers) much less.
_EFFICIENCY: Mapping[Category, float] = {
    Category.CNN: 0.5, Category.TRANSFORMER: 0.45, Category.RNN: 0.15, Category.RECOMMENDER: 0.1,
    Category.SCIENTIFIC: 0.3, Category.OTHER: 0.3,
}
# ORT graph optimisation level: fusions matter most on transformers; "disable" leaves every op separate.
_GRAPH_LEVEL = {"disable": 1.35, "disabled": 1.35, "basic": 1.1, "extended": 1.0, "all": 0.97}


def _option_factor(spec: ModelSpec, config: Config, device: Device) -> tuple[float, float]:
    """(compute factor, overhead factor) from the config's options (1.0 = neutral)."""
    compute, overhead = 1.0, 1.0
    opts: Mapping[str, Any] = config.options
    level = opts.get("graph_optimization_level", opts.get("graph_optimization"))
    if isinstance(level, str):
        compute *= _GRAPH_LEVEL.get(level.lower(), 1.0)
    threads = opts.get("intra_op_threads") or opts.get("num_threads")
    if device.kind is DeviceKind.CPU and isinstance(threads, int) and threads > 0:
        cores = physical_cores()
        compute *= cores / min(threads, cores)
    if opts.get("compile"):
        compute *= 0.85
        overhead *= 0.7
    hint = str(opts.get("performance_hint", "")).upper()
    if hint == "THROUGHPUT":
        overhead *= 1.2  # several streams: better aggregate rate, a little more per-request latency
    return compute, overhead


# Session creation: reading and placing the weights, plus compilation when an option asks for it.
# torch.compile / TensorRT engines take tens of seconds on real models; CUDA graphs a capture.
LOAD_GBS = 1.0
LOAD_BASE_S = 0.05
COMPILE_LOAD_S: Mapping[str, float] = {"compile": 30.0, "tensorrt": 60.0, "cuda_graphs": 1.0}


def predict_load_seconds(spec: ModelSpec, config: Config) -> float:
    seconds = LOAD_BASE_S + spec.parameter_bytes / (LOAD_GBS * 1e9)
    for option, cost in COMPILE_LOAD_S.items():
        if config.options.get(option):
            seconds += cost
    return seconds


def predict_memory(spec: ModelSpec, precision: Precision, batch: int) -> int:
    weights = spec.parameter_bytes
    if precision is not Precision.FP32:
        weights = int(weights * precision.bytes_per_weight / 4.0)
    return int(weights + spec.peak_activation_bytes * max(1, batch))


def _io_bytes(spec: ModelSpec, batch: int) -> int:
    total = 0
    for t in (*spec.inputs, *spec.outputs):
        used = spec.shapes_used.get(t.name)
        dims = used if used is not None else tuple(d if isinstance(d, int) and d > 0 else 1 for d in t.shape)
        n = 1
        for d in dims:
            n *= int(d)
        total += n * max(1, t.dtype.itemsize)
    return total * max(1, batch)


def predict(spec: ModelSpec, device: Device, config: Config, cap: Capability, *, batch: int = 1,
            precision: Precision | None = None, transform: str | None = None) -> Prediction:
    """``precision`` is the candidate's effective precision (config.precision when None)."""
    precision = precision or config.precision
    compute_factor, overhead_factor = _option_factor(spec, config, device)
    if transform in ("graph-basic", "graph-extended"):
        compute_factor *= 0.98  # an offline-optimised graph loads faster and runs as its online equivalent
    efficiency = _EFFICIENCY.get(spec.primary_category, 0.3)
    flops = max(0, spec.flops) * max(1, batch)
    compute_s = flops / (cap.tflops[precision] * 1e12 * efficiency) * compute_factor if flops else 0.0
    weight_bytes = spec.parameter_bytes * (precision.bytes_per_weight / 4.0)
    traffic = weight_bytes + 2 * spec.peak_activation_bytes * max(1, batch)
    memory_s = traffic / (cap.bandwidth_gbs * 1e9)
    transfer_s = _io_bytes(spec, batch) / (cap.h2d_gbs * 1e9) if cap.h2d_gbs else 0.0
    overhead_s = CALL_OVERHEAD_MS.get(config.backend, DEFAULT_CALL_OVERHEAD_MS) * overhead_factor / 1e3
    bound = "compute" if compute_s >= memory_s else "memory"
    body = max(compute_s, memory_s)
    if overhead_s > body:
        bound = "overhead"
    latency_s = overhead_s + body + transfer_s
    energy = cap.power_w * latency_s / max(1, batch) if cap.power_w else None
    return Prediction(
        latency_ms=latency_s * 1e3,
        throughput=max(1, batch) / latency_s if latency_s > 0 else float("inf"),
        memory_bytes=predict_memory(spec, precision, batch),
        energy_j=energy,
        bound=bound,
        load_s=predict_load_seconds(spec, config),
    )
