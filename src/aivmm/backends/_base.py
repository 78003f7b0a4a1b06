"""The backend interface: a handful of members, capabilities as data.

A backend adapts one runtime (ONNX Runtime, OpenVINO, PyTorch, ...). Public methods validate,
account and time; the underscored hooks do the vendor work (template methods). Vendor strings
(execution-provider names, ``"cuda:0"``, OpenVINO device names) never leave the adapter: the
interface speaks :class:`~aivmm.devices.Device` and :class:`Config`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from aivmm.backends._info import BackendInfo
from aivmm.devices import Device
from aivmm.dtypes import Precision
from aivmm.errors import (
    AivmmError,
    BackendUnavailableError,
    ConfigError,
    ModelClosedError,
    OutOfMemoryError,
    UnsupportedModelError,
)
from aivmm.models import ModelSpec, TensorSpec


@dataclasses.dataclass(frozen=True)
class Support:
    """Whether something can be done, and if not, why (each reason a sentence)."""

    ok: bool
    reasons: tuple[str, ...] = ()

    @classmethod
    def yes(cls, *notes: str) -> Support:
        return cls(True, tuple(notes))

    @classmethod
    def no(cls, *reasons: str) -> Support:
        return cls(False, tuple(reasons))

    def __bool__(self) -> bool:
        return self.ok

    def __and__(self, other: Support) -> Support:
        if self.ok and other.ok:
            return Support(True, self.reasons + other.reasons)
        return Support(False, tuple(r for s in (self, other) if not s.ok for r in s.reasons))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """One execution configuration: the unit the planner enumerates, measures and chooses."""

    backend: str
    device: str  # a Device.id
    precision: Precision = Precision.FP32
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def __hash__(self) -> int:
        return hash((self.backend, self.device, self.precision, _freeze(self.options)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and (
            (self.backend, self.device, self.precision, _freeze(self.options))
            == (other.backend, other.device, other.precision, _freeze(other.options))
        )

    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.backend}@{self.device}/{self.precision.value}" + (f"[{opts}]" if opts else "")

    def key(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision.value,
            "options": {k: v for k, v in sorted(self.options.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Config:
        return cls(
            backend=str(data["backend"]),
            device=str(data["device"]),
            precision=Precision.parse(str(data.get("precision", "fp32"))),
            options=dict(data.get("options", {})),
        )


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What happened when a session was created."""

    seconds: float
    device_memory_bytes: int = 0  # bytes the session holds on its device (weights + workspace), best estimate
    fallback_nodes: tuple[str, ...] = ()  # nodes that run elsewhere than asked ("Conv_3 -> CPU")
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 6),
            "device_memory_bytes": self.device_memory_bytes,
            "fallback_nodes": list(self.fallback_nodes),
            "notes": list(self.notes),
        }


def estimated_device_bytes(model: ModelSpec, precision: Precision) -> int:
    """Weights at the configured precision plus peak activations: a lower bound of what a load needs.

    fp16/bf16 halve float weights stored as fp32; int8 configurations run pre-quantised models, whose
    ``parameter_bytes`` already count int8 weights.
    """
    weights = model.parameter_bytes
    if precision in (Precision.FP16, Precision.BF16):
        weights //= 2
    return weights + model.peak_activation_bytes


def memory_support(model: ModelSpec, device: Device, config: Config) -> Support:
    """Whether the device has the free memory a load needs (unknown memory, total 0, is not refused)."""
    if device.memory_total_bytes <= 0:
        return Support.yes()
    need = estimated_device_bytes(model, config.precision)
    if need > device.memory_free_bytes:
        mib = 1 << 20
        return Support.no(
            f"not enough memory on {device.id}: {model.name!r} needs about {need / mib:.1f} MiB "
            f"(weights {model.parameter_bytes / mib:.1f} MiB at fp32 storage, activations "
            f"{model.peak_activation_bytes / mib:.1f} MiB) but {device.memory_free_bytes / mib:.1f} MiB are free"
        )
    return Support.yes()


class Session(abc.ABC):
    """A model loaded on a device by one backend.

    ``run`` takes a mapping of input name to array-like already validated against the signature
    (see :func:`aivmm.backends.tensors.validate_feeds`) and returns a dict of output name to
    array in model order. ``output`` selects the framework of the outputs: ``"numpy"`` (default)
    or ``"native"`` (the backend's own tensor type, on the device — torch tensors for the torch
    backend, for example). Thread-safety: ``run`` may be called from several threads at once.
    """

    def __init__(self, model: ModelSpec, device: Device, config: Config) -> None:
        self.model = model
        self.device = device
        self.config = config
        self.report = LoadReport(0.0)
        self._closed = False
        self._lock = threading.Lock()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.model.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.model.outputs

    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, feeds: Mapping[str, Any], *, output: str = "numpy") -> dict[str, Any]:
        if self._closed:
            raise ModelClosedError(f"session {self.config.label()} of {self.model.name!r} is closed")
        return self._run(feeds, output)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def _run(self, feeds: Mapping[str, Any], output: str) -> dict[str, Any]: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        pass

    # Optional residency hooks used by aivmm.runtime for the device -> host tier. The defaults keep
    # a backend without them correct: the runtime then closes the session and reloads it instead.
    def offload_to_host(self) -> bool:
        """Move the device-resident weights to host memory, freeing the device; False if unsupported."""
        return False

    def reload_to_device(self) -> None:  # noqa: B027 - optional hook
        """Bring weights moved by :meth:`offload_to_host` back to the device."""

    def memory_bytes(self) -> int:
        """Bytes the session holds on its device now (the load report's figure by default)."""
        return self.report.device_memory_bytes

    def peak_memory(self) -> tuple[int, str] | None:
        """The most device bytes the runtime's own allocator held for this session since its load
        began (weights and run workspaces), with what counted them; None where the runtime keeps no
        such count (the planner then falls back to the load report or the process's peak RSS)."""
        return None


class Backend(abc.ABC):
    """A runtime adapter. Instances are cheap; the runtime is imported on first real use."""

    name: ClassVar[str]
    extra: ClassVar[str]  # the pip extra that installs the runtime

    @abc.abstractmethod
    def available(self) -> Support:
        """Whether the runtime is installed and importable (cheap)."""

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Everything the planner and the plan cache need to know about this backend (see BackendInfo)."""

    def versions(self) -> dict[str, str]:
        """What changes this backend's measurements, for the plan cache's key: ``info().versions``
        unless overridden. Read on every cache hit, so the built-ins answer from package metadata
        instead of importing their runtime (``info()`` may import it)."""
        return dict(self.info().versions)

    @abc.abstractmethod
    def drives(self, device: Device) -> Support:
        """Whether this runtime can drive the device, without initialising it where possible."""

    def candidate_options(self, model: ModelSpec, device: Device, precision: Precision) -> list[dict[str, Any]] | None:
        """The option sets worth measuring for ``model`` on ``device`` in ``precision``, or None for the
        planner's default: the first combinations of ``info().options``. A backend overrides this when
        that product is too large or mostly refused (the torch backend on CUDA GPUs)."""
        return None

    def check(self, model: ModelSpec, device: Device, config: Config) -> Support:
        """Whether the model can run on the device with this config, before anything loads.

        The default checks installation, device, format, precision and memory; adapters add operator
        coverage by overriding ``_check`` (or ``_requirements`` to choose the error class).
        """
        result = Support.yes()
        for support, _error in self._requirements(model, device, config):
            result = result & support
        return result

    def require(self, model: ModelSpec, device: Device, config: Config, *, memory: bool = True) -> None:
        """Raise the typed error of the first failed requirement (what ``load`` does before loading)."""
        for support, error in self._requirements(model, device, config):
            if not support and (memory or error is not OutOfMemoryError):
                raise error(f"{self.name} cannot load {model.name!r} on {device.id}: " + "; ".join(support.reasons))

    def _requirements(
        self, model: ModelSpec, device: Device, config: Config
    ) -> Iterator[tuple[Support, type[AivmmError]]]:
        """Each requirement with the error class its failure raises, in the order load checks them.

        Stops after a failure that makes the later checks meaningless (runtime missing, device not driven).
        """
        available = self.available()
        yield available, BackendUnavailableError
        if not available:
            return
        drives = self.drives(device)
        yield drives, BackendUnavailableError
        if not drives:
            return
        if config.device != device.id:
            yield Support.no(f"config is for device {config.device} but device {device.id} was given"), ConfigError
        info = self.info()
        if model.format not in info.formats:
            yield Support.no(f"{self.name} does not run {model.format.value} models"), UnsupportedModelError
            return
        boxed = [t.describe() for t in (*model.inputs, *model.outputs) if t.kind not in info.value_kinds]
        if boxed:
            more = f" (+{len(boxed) - 3} more)" if len(boxed) > 3 else ""
            yield (
                Support.no(f"{self.name} takes tensors only at the model boundary, not {', '.join(boxed[:3])}{more}"),
                UnsupportedModelError,
            )
            return
        if config.precision not in info.precisions:
            yield Support.no(f"{self.name} does not offer precision {config.precision.value}"), ConfigError
        yield memory_support(model, device, config), OutOfMemoryError
        yield self._check(model, device, config), UnsupportedModelError

    def _check(self, model: ModelSpec, device: Device, config: Config) -> Support:
        return Support.yes()

    def load(self, model: ModelSpec, device: Device, config: Config) -> Session:
        """Create a session. Raises BackendUnavailableError / UnsupportedModelError / ConfigError /
        OutOfMemoryError.

        Requirements are checked first, so load refuses exactly what ``check`` refuses, with the reason;
        free memory is left to the runtime's ledger (the device value may predate other loads) and to the
        runtime's own out-of-memory error.
        """
        start = time.perf_counter()
        self.require(model, device, config, memory=False)
        session = self._load(model, device, config)
        elapsed = time.perf_counter() - start
        session.report = dataclasses.replace(session.report, seconds=elapsed)
        return session

    @abc.abstractmethod
    def _load(self, model: ModelSpec, device: Device, config: Config) -> Session: ...
