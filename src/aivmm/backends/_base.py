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
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from aivmm.devices._types import Device, DeviceKind
from aivmm.dtypes import Precision
from aivmm.errors import ModelClosedError
from aivmm.models._spec import ModelFormat, ModelSpec, TensorSpec


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


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """What a backend can do, as data."""

    name: str
    formats: frozenset[ModelFormat]
    device_kinds: frozenset[DeviceKind]
    precisions: frozenset[Precision]
    # Tunable options the planner may enumerate, each with its candidate values
    # (for example {"graph_optimization": ("basic", "all"), "compile": (False, True)}).
    options: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    versions: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "versions", MappingProxyType(dict(self.versions)))


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


class Backend(abc.ABC):
    """A runtime adapter. Instances are cheap; the runtime is imported on first real use."""

    name: ClassVar[str]
    extra: ClassVar[str]  # the pip extra that installs the runtime

    @abc.abstractmethod
    def available(self) -> Support:
        """Whether the runtime is installed and importable (cheap)."""

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Capabilities and runtime versions."""

    @abc.abstractmethod
    def drives(self, device: Device) -> Support:
        """Whether this runtime can drive the device, without initialising it where possible."""

    def check(self, model: ModelSpec, device: Device, config: Config) -> Support:
        """Whether the model can run on the device with this config, before anything loads.

        The default checks format, device and precision; adapters add operator coverage.
        """
        info = self.info()
        result = self.available()
        if not result:
            return result
        result = result & self.drives(device)
        if model.format not in info.formats:
            result = result & Support.no(f"{self.name} does not run {model.format.value} models")
        if config.precision not in info.precisions:
            result = result & Support.no(
                f"{self.name} does not offer precision {config.precision.value}"
            )
        return result & self._check(model, device, config)

    def _check(self, model: ModelSpec, device: Device, config: Config) -> Support:
        return Support.yes()

    def load(self, model: ModelSpec, device: Device, config: Config) -> Session:
        """Create a session. Raises BackendUnavailableError / UnsupportedModelError / OutOfMemoryError."""
        start = time.perf_counter()
        session = self._load(model, device, config)
        elapsed = time.perf_counter() - start
        session.report = dataclasses.replace(session.report, seconds=elapsed)
        return session

    @abc.abstractmethod
    def _load(self, model: ModelSpec, device: Device, config: Config) -> Session: ...
