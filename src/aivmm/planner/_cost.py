"""The cost model: a roofline estimate from the model analysis and the device's figures.

latency = overhead(backend) + max(flops / achievable_flops, bytes / bandwidth) + transfers, where
``bytes`` is the weights at the candidate's precision plus the activations' traffic. It does not
try to be exact: it ranks candidates so only the promising few are measured, and it stands in for
measurement when ``measure=False``. What a backend's call costs and what its options do come from
its :class:`~aivmm.backends.BackendInfo`; nothing here names a backend.
"""

from __future__ import annotations

from collections.abc import Mapping

from aivmm.backends import BackendInfo, Config, registry
from aivmm.devices import Device, DeviceKind
from aivmm.dtypes import Precision
from aivmm.errors import AivmmError
from aivmm.models import Category, ModelSpec
from aivmm.planner._figures import Capability, physical_cores
from aivmm.planner._values import Prediction

# Fraction of peak matmul throughput real graphs reach, per category: convolutions and large matmuls
# reach most of it; recurrent and recommender graphs (small ops, gathers) much less.
_EFFICIENCY: Mapping[Category, float] = {
    Category.CNN: 0.5,
    Category.TRANSFORMER: 0.45,
    Category.RNN: 0.15,
    Category.RECOMMENDER: 0.1,
    Category.SCIENTIFIC: 0.3,
    Category.OTHER: 0.3,
}


def backend_info(name: str) -> BackendInfo:
    """The registry's description of ``name``; a backend that cannot be looked up costs as one that
    states no figures (it is rejected as unavailable before anything is measured)."""
    try:
        return registry.get(name).info()
    except AivmmError:
        return BackendInfo(name, frozenset(), frozenset(), frozenset())


def _option_factor(info: BackendInfo, config: Config, device: Device) -> tuple[float, float]:
    """(compute factor, overhead factor) from the config's options (1.0 = neutral), as the backend states them."""
    effect = info.effect(config.options)
    compute, overhead = effect.compute, effect.overhead
    threads = config.options.get(info.thread_option) if info.thread_option else None
    if device.kind is DeviceKind.CPU and isinstance(threads, int) and threads > 0:
        cores = physical_cores()
        compute *= cores / min(threads, cores)
    return compute, overhead


# Session creation: reading and placing the weights, plus what the backend says its options add
# (compilation, engine builds, graph captures).
LOAD_GBS = 1.0
LOAD_BASE_S = 0.05


def predict_load_seconds(spec: ModelSpec, config: Config, info: BackendInfo | None = None) -> float:
    info = info or backend_info(config.backend)
    return LOAD_BASE_S + spec.parameter_bytes / (LOAD_GBS * 1e9) + info.effect(config.options).load_s


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


def predict(
    spec: ModelSpec,
    device: Device,
    config: Config,
    cap: Capability,
    *,
    batch: int = 1,
    precision: Precision | None = None,
    transform: str | None = None,
    info: BackendInfo | None = None,
) -> Prediction:
    """``precision`` is the candidate's effective precision (config.precision when None); ``info`` the
    backend's description (looked up in the registry when None)."""
    precision = precision or config.precision
    info = info or backend_info(config.backend)
    compute_factor, overhead_factor = _option_factor(info, config, device)
    if transform in ("graph-basic", "graph-extended"):
        compute_factor *= 0.98  # an offline-optimised graph loads faster and runs as its online equivalent
    efficiency = _EFFICIENCY.get(spec.primary_category, 0.3)
    flops = max(0, spec.flops) * max(1, batch)
    compute_s = flops / (cap.tflops[precision] * 1e12 * efficiency) * compute_factor if flops else 0.0
    weight_bytes = spec.parameter_bytes * (precision.bytes_per_weight / 4.0)
    traffic = weight_bytes + 2 * spec.peak_activation_bytes * max(1, batch)
    memory_s = traffic / (cap.bandwidth_gbs * 1e9)
    transfer_s = _io_bytes(spec, batch) / (cap.h2d_gbs * 1e9) if cap.h2d_gbs else 0.0
    overhead_s = info.call_overhead_ms * overhead_factor / 1e3
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
        load_s=predict_load_seconds(spec, config, info),
    )
