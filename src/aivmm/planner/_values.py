"""Planner values: candidates, their predicted and measured figures, and rejection reasons."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from aivmm.backends import Config
from aivmm.dtypes import Precision
from aivmm.models import ModelSpec


class RejectReason(enum.Enum):
    """Why a candidate was not kept; every rejection carries one of these and a sentence."""

    BACKEND_UNAVAILABLE = "backend-unavailable"  # runtime not installed or cannot be imported
    DEVICE_NOT_DRIVEN = "device-not-driven"  # the backend cannot drive this device
    UNSUPPORTED = "unsupported"  # Backend.check refused (operator, format, precision on device)
    PRECISION_UNAVAILABLE = "precision-unavailable"  # neither the backend nor a pass offers it
    PRECISION_NOT_ALLOWED = "precision-not-allowed"  # the precision policy forbids it
    EXCLUDED_BY_USER = "excluded-by-user"
    NOT_PINNED = "not-pinned"  # the user pinned another device or backend
    DOES_NOT_FIT = "does-not-fit"  # device memory or the max_memory_bytes constraint
    DEVICE_FULL = "device-full"  # fits the device's budget, not what the memory ledger has free now
    CONSTRAINT = "constraint"  # a latency / throughput / power / energy limit
    ACCURACY = "accuracy"  # broke the tolerance against the fp32 reference (AccuracyError)
    FAILED = "failed"  # loading or running it raised
    NOT_MEASURED = "not-measured"  # measuring was asked for and this one was not measured: it cannot win
    PRUNED = "pruned"  # not ready for a fast start (its first load compiles)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What the cost model expects, before anything runs."""

    latency_ms: float
    throughput: float  # inferences per second at the constraint's batch size
    memory_bytes: int
    energy_j: float | None  # per inference, None when the device's power is unknown
    bound: str  # "compute", "memory" or "overhead": which roofline term dominates
    load_s: float = 0.0  # time to create the session (compilation dominates when an option compiles)

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": round(self.latency_ms, 4),
            "throughput": round(self.throughput, 2),
            "memory_bytes": self.memory_bytes,
            "energy_j": None if self.energy_j is None else round(self.energy_j, 6),
            "bound": self.bound,
            "load_s": round(self.load_s, 3),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Prediction:
        return cls(
            float(d["latency_ms"]),
            float(d["throughput"]),
            int(d["memory_bytes"]),
            d.get("energy_j"),
            str(d.get("bound", "")),
            float(d.get("load_s", 0.0)),
        )


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What profiling saw on the real device."""

    p50_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    warmup_runs: int
    load_seconds: float
    memory_bytes: int  # peak RSS growth (CPU) or peak device allocation (GPU) while loading and running
    memory_source: str  # "vmhwm", "rss-delta", "torch.cuda", "load-report"
    energy_j: float | None  # per inference
    power_w: float | None  # average while running
    energy_source: str  # "rapl", "nvml", "amdsmi" or why none was readable
    batch_size: int = 1

    @property
    def throughput(self) -> float:
        return 1000.0 * self.batch_size / self.p50_ms if self.p50_ms > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {
            "p50_ms": round(self.p50_ms, 6),
            "p99_ms": round(self.p99_ms, 6),
            "mean_ms": round(self.mean_ms, 6),
            "runs": self.runs,
            "warmup_runs": self.warmup_runs,
            "load_seconds": round(self.load_seconds, 4),
            "memory_bytes": self.memory_bytes,
            "memory_source": self.memory_source,
            "energy_j": None if self.energy_j is None else round(self.energy_j, 6),
            "power_w": None if self.power_w is None else round(self.power_w, 3),
            "energy_source": self.energy_source,
            "batch_size": self.batch_size,
            "throughput": round(self.throughput, 2),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Measurement:
        return cls(
            float(d["p50_ms"]),
            float(d["p99_ms"]),
            float(d["mean_ms"]),
            int(d["runs"]),
            int(d["warmup_runs"]),
            float(d["load_seconds"]),
            int(d["memory_bytes"]),
            str(d["memory_source"]),
            d.get("energy_j"),
            d.get("power_w"),
            str(d["energy_source"]),
            int(d.get("batch_size", 1)),
        )


@dataclasses.dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason.value, "detail": self.detail}

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


@dataclasses.dataclass(frozen=True, eq=False)
class Candidate:
    """One (backend, device, precision, options) with what is known about it.

    ``model`` is what the backend must load with ``config``: the analysed model itself, or the
    output of the optimisation pass named by ``transform`` (same signature). ``precision`` is the
    arithmetic the candidate computes in, which differs from ``config.precision`` when a pass
    lowered the file and the backend runs it as a plain fp32-I/O model.
    """

    config: Config
    model: ModelSpec
    transform: str | None = None
    materialised: bool = False  # the pass has run and ``model`` is its output file
    prediction: Prediction | None = None
    measurement: Measurement | None = None
    accuracy: dict[str, Any] | None = None  # AccuracyReport.to_json() of a lowered precision
    rejections: tuple[Rejection, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def precision(self) -> Precision:
        if self.transform == "fp16":
            return Precision.FP16
        if self.transform and self.transform.startswith("int8"):
            return Precision.INT8
        return self.config.precision

    @property
    def label(self) -> str:
        return self.config.label() + (f"+{self.transform}" if self.transform else "")

    @property
    def latency_ms(self) -> float | None:
        """Measured p50 when measured, else predicted."""
        if self.measurement is not None:
            return self.measurement.p50_ms
        return None if self.prediction is None else self.prediction.latency_ms

    @property
    def rejected(self) -> bool:
        return bool(self.rejections)

    def with_(self, **changes: Any) -> Candidate:
        return dataclasses.replace(self, **changes)

    def reject(self, reason: RejectReason, detail: str) -> Candidate:
        return dataclasses.replace(self, rejections=(*self.rejections, Rejection(reason, detail)))

    def to_json(self) -> dict[str, Any]:
        m, p = self.measurement, self.prediction
        out: dict[str, Any] = {
            **self.config.to_json(),
            "precision": self.precision.value,
            "backend_precision": self.config.precision.value,
            "transform": self.transform,
            "label": self.label,
            "model_path": str(self.model.source) if self.transform and self.materialised else None,
            "quantized_operators": list(self.model.quantized_operators) if self.materialised else [],
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 4),
            "latency_ms_predicted": None if p is None else round(p.latency_ms, 4),
            "latency_ms_measured": None if m is None else round(m.p50_ms, 4),
            "p99_ms": None if m is None else round(m.p99_ms, 4),
            "memory_bytes": m.memory_bytes if m is not None else (None if p is None else p.memory_bytes),
            "energy_j": m.energy_j if m is not None else (None if p is None else p.energy_j),
            "throughput": round(m.throughput, 2) if m is not None else (None if p is None else round(p.throughput, 2)),
            "predicted": None if p is None else p.to_json(),
            "measured": None if m is None else m.to_json(),
            "accuracy": self.accuracy,
            "notes": list(self.notes),
        }
        if self.rejections:
            out["reasons"] = [r.to_json() for r in self.rejections]
        return out
