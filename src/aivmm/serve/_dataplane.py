"""The one data plane HTTP and gRPC both call: model lifecycle, metadata and inference.

Runs on the server's event loop (no locks: one thread mutates state); blocking VMM work (deploy,
unload) goes to worker threads so serving continues meanwhile. A model version is
``LOADING -> READY -> DRAINING -> UNLOADED``. Reload deploys the new copy first and swaps it in,
then drains the old one: requests already inside the old copy finish there, none are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from aivmm._version import __version__
from aivmm.devices import DeviceKind
from aivmm.errors import (
    AivmmError,
    ConfigError,
    DeadlineExceededError,
    InputError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    PermissionDeniedError,
    UnsupportedModelError,
)
from aivmm.options import DeployOptions
from aivmm.planner.constraints import coerce_constraints
from aivmm.serve._host import Host, Limits, ModelHandle, within
from aivmm.serve._messages import InferRequest, InferResponse
from aivmm.serve._model_config import ModelConfig
from aivmm.serve._repository import ModelSource, Repository, check_name

log = logging.getLogger(__name__)

EXTENSIONS = ("binary_tensor_data", "model_repository", "model_configuration", "aivmm_status")
_gen = itertools.count(1)


class State(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    DRAINING = "UNLOADING"  # Triton's name for it in the repository index
    UNLOADED = "UNAVAILABLE"


@dataclasses.dataclass(eq=False)
class Version:
    """One loaded version of a model."""

    model: str
    version: int
    vmm_name: str
    handle: ModelHandle
    config: ModelConfig
    load_seconds: float
    state: State = State.READY
    inflight: int = 0
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


@dataclasses.dataclass
class _Model:
    versions: dict[int, Version] = dataclasses.field(default_factory=dict)
    state: State = State.UNLOADED
    reason: str = ""
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    ok: int = 0
    errors: int = 0
    # Recent (finish time, seconds) of successful requests: the status endpoint's percentiles.
    recent: collections.deque[tuple[float, float]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=4096)
    )

    def latest(self) -> Version | None:
        ready = [v for n, v in self.versions.items() if v.state is State.READY]
        return max(ready, key=lambda v: v.version) if ready else None


class Observer(Protocol):
    """Hooks the metrics exporter implements (telemetry's ServerMetrics)."""

    def request(self, model: str, version: str, seconds: float, ok: bool, error: str = "") -> None: ...

    def stage(self, model: str, stage: str, seconds: float) -> None: ...

    def load(self, model: str, seconds: float, ok: bool) -> None: ...

    def unload(self, model: str, seconds: float) -> None: ...


class _NoObserver:
    """The default Observer: does nothing."""

    def request(self, model: str, version: str, seconds: float, ok: bool, error: str = "") -> None:
        return None

    def stage(self, model: str, stage: str, seconds: float) -> None:
        return None

    def load(self, model: str, seconds: float, ok: bool) -> None:
        return None

    def unload(self, model: str, seconds: float) -> None:
        return None


class DataPlane:
    def __init__(
        self,
        host: Host,
        repository: Repository,
        *,
        limits: Limits | None = None,
        observer: Observer | None = None,
        server_name: str = "aivmm",
        default_constraints: Any = None,
        measure: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.host = host
        self.repository = repository
        self.limits = limits or Limits()
        self.observer: Observer = observer or _NoObserver()
        self.server_name = server_name
        self._clock = clock
        self.default_constraints = default_constraints
        self.measure = measure
        self.starting = False  # True while the startup loads run: not ready yet
        self._models: dict[str, _Model] = {}
        self._shutting_down = False
        self._started = time.time()
        self.requests_total = 0

    # -- server ---------------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not (self._shutting_down or self.starting)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": __version__, "extensions": list(EXTENSIONS)}

    # -- repository -----------------------------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        for name in sorted(set(self.repository.names()) | set(self._models)):
            model = self._models.get(name)
            if model is None or not model.versions:
                if ready_only:
                    continue
                row = {"name": name, "state": model.state.value if model else State.UNLOADED.value}
                if model and model.reason:
                    row["reason"] = model.reason
                rows.append(row)
                continue
            for v in sorted(model.versions):
                entry = model.versions[v]
                if ready_only and entry.state is not State.READY:
                    continue
                rows.append({"name": name, "version": str(v), "state": entry.state.value})
        return rows

    async def load(self, name: str, overrides: Mapping[str, Any] | None = None) -> None:
        """Load (or reload) a model's selected versions; the old copies drain after the swap."""
        check_name(name)
        if self._shutting_down:
            raise ModelNotReadyError("the server is shutting down")
        model = self._models.setdefault(name, _Model())
        async with model.lock:
            previous_state = model.state
            model.state = State.LOADING
            start = self._clock()
            try:
                source = await asyncio.to_thread(self.repository.source, name)
                if overrides:
                    from aivmm.serve._model_config import merge_mapping

                    source = dataclasses.replace(
                        source,
                        config=merge_mapping(source.config, dict(overrides), source="load parameters", llm=source.llm),
                    )
                fresh = {}
                try:
                    for v in source.selected():
                        fresh[v] = await self._deploy(source, v)
                except BaseException:
                    for entry in fresh.values():
                        await asyncio.to_thread(self.host.unload, entry.vmm_name, drain=False)
                    raise
            except Exception as exc:  # the old copy (if any) keeps serving; the reason is shown in the index
                model.reason = str(exc) if isinstance(exc, AivmmError) else f"internal error: {exc!r}"
                model.state = State.READY if model.versions else State.UNLOADED
                self.observer.load(name, self._clock() - start, False)
                log.warning("load of %r failed: %s", name, model.reason, exc_info=not isinstance(exc, AivmmError))
                if not model.versions and isinstance(exc, ModelNotFoundError | PermissionDeniedError):
                    self._models.pop(name, None)  # names that are not models leave no trace
                raise
            except BaseException:
                model.state = previous_state
                raise
            old = model.versions
            model.versions = fresh
            model.state = State.READY
            model.reason = ""
            self.observer.load(name, self._clock() - start, True)
        if old:
            await asyncio.gather(*(self._retire(e) for e in old.values()))

    async def _deploy(self, source: ModelSource, version: int) -> Version:
        cfg = source.config
        vmm_name = f"{source.name}:{version}:{next(_gen)}"
        device = self._pinned_device(cfg)
        path = source.file(version)
        start = self._clock()
        options = DeployOptions(
            constraints=coerce_constraints(self.default_constraints if cfg.constraints is None else cfg.constraints),
            device=device,
            backend=cfg.backend,
            strict=cfg.strict or device is not None,
            name=vmm_name,
            # An LLM export directory takes the generator's own batching keys (max_waiting, KV size).
            batching=dict(cfg.batching) if path.is_dir() and cfg.batching else batching_config(cfg.batching),
            replicas=cfg.instances,
            measure=self.measure,
            replan_on_first_request=cfg.replan_on_first_request,
        )
        handle = await asyncio.to_thread(self.host.deploy, str(path), options=options)
        boxed = [t.describe() for t in (*handle.spec.inputs, *handle.spec.outputs) if not t.is_tensor]
        if boxed:  # KServe v2 requests and responses carry tensors only: no request could reach it
            await asyncio.to_thread(self.host.unload, vmm_name, drain=False)
            raise UnsupportedModelError(
                f"model {source.name!r}: KServe v2 carries tensors only, not {', '.join(boxed[:3])}; "
                f"run it in-process (VMM.deploy takes lists for sequences and None for empty optionals)"
            )
        seconds = self._clock() - start
        log.info("loaded %s version %d in %.2f s on %s", source.name, version, seconds, _placement(handle))
        return Version(source.name, version, vmm_name, handle, cfg, seconds)

    def _pinned_device(self, cfg: ModelConfig) -> str | None:
        pin = cfg.pin
        if pin.device_id:
            return pin.device_id
        if pin.kind is None:
            return None
        kind = DeviceKind.GPU if pin.kind == "gpu" else DeviceKind.CPU
        devices = sorted((d for d in self.host.devices if d.kind is kind), key=lambda d: (d.vendor.value, d.index))
        ordinal = pin.gpu_ordinal or 0
        if ordinal >= len(devices):
            raise ConfigError(
                f"model {cfg.name!r}: instance_group asks for {pin.kind.upper()} {ordinal} but this server has "
                f"{len(devices)} such device(s): {[d.id for d in devices]}"
            )
        return devices[ordinal].id

    async def unload(self, name: str) -> None:
        check_name(name)
        model = self._models.get(name)
        if model is None or not model.versions:
            if model is None and not self._in_repository(name):
                raise ModelNotFoundError(f"unknown model {name!r}")
            return  # already unloaded: unloading is idempotent, as in Triton
        async with model.lock:
            old, model.versions = model.versions, {}
            model.state = State.UNLOADED
        await asyncio.gather(*(self._retire(e) for e in old.values()))

    async def _retire(self, entry: Version) -> None:
        """Stop routing to a version, wait for its in-flight requests, then free it."""
        entry.state = State.DRAINING
        start = self._clock()
        try:
            await asyncio.wait_for(entry.idle.wait(), self.limits.drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning(
                "%s: %d request(s) still running after %.0f s of draining; unloading anyway",
                entry.vmm_name,
                entry.inflight,
                self.limits.drain_timeout_s,
            )
        await asyncio.to_thread(self.host.unload, entry.vmm_name)
        entry.state = State.UNLOADED
        self.observer.unload(entry.model, self._clock() - start)

    # -- models ---------------------------------------------------------------------------------
    def resolve(self, name: str, version: str = "") -> Version:
        model = self._models.get(name)
        if model is None or (not model.versions and model.state is not State.LOADING):
            if name in self._models or self._in_repository(name):
                reason = f": {model.reason}" if model and model.reason else ""
                raise ModelNotReadyError(f"model {name!r} is not loaded{reason}")
            raise ModelNotFoundError(f"unknown model {name!r}")
        if version:
            if not version.isdigit():
                raise ModelNotFoundError(f"model {name!r}: version {version!r} is not a positive integer")
            entry = model.versions.get(int(version))
            if entry is None:
                raise ModelNotFoundError(
                    f"model {name!r} has no loaded version {version}; loaded: {sorted(model.versions) or 'none'}"
                )
            if entry.state is not State.READY:
                raise ModelNotReadyError(f"model {name!r} version {version} is {entry.state.value.lower()}")
            return entry
        entry = model.latest()
        if entry is None:
            raise ModelNotReadyError(f"model {name!r} is {model.state.value.lower()}")
        return entry

    def _in_repository(self, name: str) -> bool:
        try:
            return name in self.repository.names()
        except OSError:
            return False

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.resolve(name, version)
        except (ModelNotFoundError, ModelNotReadyError):
            return False
        return True

    def metadata(self, name: str, version: str = "") -> dict[str, Any]:
        entry = self.resolve(name, version)
        spec = entry.handle.spec
        model = self._models[name]

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.dtype.kserve, "shape": _dims(s.shape)} for s in specs]

        return {
            "name": name,
            "versions": [str(v) for v in sorted(model.versions)],
            "platform": entry.config.platform,
            "inputs": tensors(spec.inputs),
            "outputs": tensors(spec.outputs),
        }

    def config(self, name: str, version: str = "") -> dict[str, Any]:
        """Triton's model configuration (JSON form), as far as aivmm knows it."""
        entry = self.resolve(name, version)
        spec = entry.handle.spec

        def io(specs: Any) -> list[dict[str, Any]]:
            out = []
            for s in specs:
                dims = _dims(s.shape)
                if entry.config.max_batch_size and dims:
                    dims = dims[1:]  # Triton leaves the batch dimension out when max_batch_size > 0
                dt = s.dtype.kserve
                data_type = "TYPE_STRING" if dt == "BYTES" else f"TYPE_{dt}"
                out.append({"name": s.name, "data_type": data_type, "dims": dims})
            return out

        cfg: dict[str, Any] = {
            "name": name,
            "platform": entry.config.platform,
            "max_batch_size": entry.config.max_batch_size,
            "input": io(spec.inputs),
            "output": io(spec.outputs),
            "instance_group": [{"count": entry.config.instances, "kind": _kind_of(entry)}],
        }
        b = entry.config.batching
        if b:
            cfg["dynamic_batching"] = {
                "preferred_batch_size": list(b.get("preferred_sizes", [])),
                "max_queue_delay_microseconds": int(float(b.get("max_queue_delay_ms", 0)) * 1000),
            }
        return cfg

    def plan(self, name: str, version: str = "") -> dict[str, Any]:
        entry = self.resolve(name, version)
        plan = entry.handle.plan
        return plan.to_json() if hasattr(plan, "to_json") else {}

    # -- inference ------------------------------------------------------------------------------
    async def infer(self, req: InferRequest) -> InferResponse:
        start = self._clock()
        self.requests_total += 1
        version = ""  # the label stays "" until a loaded version is found: clients cannot invent labels
        try:
            entry = self.resolve(req.model, req.version)
            version = str(entry.version)
            if entry.inflight >= self.limits.max_inflight_per_model:
                raise OverloadedError(
                    f"model {req.model!r}: {entry.inflight} requests in flight (limit "
                    f"{self.limits.max_inflight_per_model}); retry later"
                )
            feeds = _check_inputs(entry.handle.spec, req)
            timeout, priority, deadline_ms = _request_options(req.parameters, self.limits.request_timeout_s)
            # The work is a task of its own: when the client's time runs out we answer at once but
            # the work keeps its in-flight slot until it really ends, so timed-out requests cannot
            # pile up unbounded work behind the admission limit, and drains wait for them too.
            work = asyncio.ensure_future(entry.handle.execute_async(feeds, priority=priority, deadline_ms=deadline_ms))
            entry.inflight += 1
            entry.idle.clear()
            work.add_done_callback(functools.partial(_release, entry))
            t0 = self._clock()
            try:
                outputs = await within(asyncio.shield(work), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                raise DeadlineExceededError(
                    f"model {req.model!r}: no result within the request timeout of {timeout:g} s"
                ) from None
            self.observer.stage(req.model, "execute", self._clock() - t0)
            resp = _select_outputs(entry, req, outputs)
        except AivmmError as exc:
            model = self._models.get(req.model)
            if model is not None:
                model.errors += 1
            # Unknown names share one label: clients must not be able to grow the metric space.
            label = req.model if model is not None else "_unknown_"
            self.observer.request(label, version, self._clock() - start, False, type(exc).__name__)
            raise
        seconds = self._clock() - start
        model = self._models[req.model]
        model.ok += 1
        model.recent.append((time.monotonic(), seconds))
        self.observer.request(req.model, version, seconds, True)
        return resp

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Server, models and the VMM's own status in one JSON document (``aivmm top`` reads it)."""
        models = []
        horizon = time.monotonic() - 60.0
        for name, model in sorted(self._models.items()):
            recent = [s for t, s in model.recent if t >= horizon]
            figures = {
                "requests": model.ok,
                "errors": model.errors,
                "latency_ms": {
                    "window_requests": len(recent),
                    "p50": round(float(np.percentile(recent, 50)) * 1e3, 4) if recent else None,
                    "p99": round(float(np.percentile(recent, 99)) * 1e3, 4) if recent else None,
                },
            }
            for v, entry in sorted(model.versions.items()):
                models.append(
                    {
                        "name": name,
                        "version": str(v),
                        "state": entry.state.value,
                        **figures,
                        "inflight": entry.inflight,
                        "vmm_name": entry.vmm_name,
                        "placement": _placement(entry.handle),
                        **({"replan": r} if (r := getattr(entry.handle, "replan_state", "")) else {}),
                        "load_seconds": round(entry.load_seconds, 4),
                        "config": entry.config.to_json(),
                    }
                )
            if not model.versions:
                models.append(
                    {"name": name, "version": "", "state": model.state.value, "reason": model.reason, **figures}
                )
        try:
            vmm = self.host.status()
        except AivmmError as exc:
            vmm = {"error": str(exc)}
        return {
            "server": {
                **self.server_metadata(),
                "ready": self.ready(),
                "uptime_s": round(time.time() - self._started, 3),
                "repository": self.repository.label,
                "requests_total": self.requests_total,
            },
            "models": models,
            "vmm_names": {k: list(v) for k, v in self.vmm_names().items()},
            "vmm": vmm,
        }

    def metric_label(self, name: str) -> str:
        """The model label for metrics: unknown names share one, so clients cannot grow the label space."""
        return name if name in self._models else "_unknown_"

    def vmm_names(self) -> dict[str, tuple[str, str]]:
        """VMM model name -> (served name, version), for labelling the VMM's own figures."""
        return {e.vmm_name: (n, str(v)) for n, m in self._models.items() for v, e in m.versions.items()}

    async def shutdown(self) -> None:
        """Refuse new work, let every in-flight request finish (bounded), unload everything."""
        self._shutting_down = True
        entries = [e for m in self._models.values() for e in m.versions.values()]
        for m in self._models.values():
            m.versions = {}
            m.state = State.UNLOADED
        await asyncio.gather(*(self._retire(e) for e in entries), return_exceptions=True)


def _release(entry: Version, work: asyncio.Future[Any]) -> None:
    entry.inflight -= 1
    if entry.inflight == 0:
        entry.idle.set()
    if not work.cancelled():
        work.exception()  # retrieved: an abandoned request's failure is not an unhandled error


def batching_config(mapping: Mapping[str, Any] | None) -> Any:
    """The runtime's BatchingConfig from a config file's mapping (None: the model's default)."""
    if mapping is None:
        return None
    from aivmm.runtime import BatchingConfig

    return BatchingConfig.from_mapping(mapping)


def _placement(handle: Any) -> str:
    chosen = getattr(getattr(handle, "plan", None), "chosen", None)
    config = getattr(chosen, "config", None)
    return config.label() if config is not None and hasattr(config, "label") else "?"


def _dims(shape: Any) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _kind_of(entry: Version) -> str:
    label = _placement(entry.handle)
    return "KIND_CPU" if "@cpu" in label else "KIND_GPU"


def _check_inputs(spec: Any, req: InferRequest) -> dict[str, np.ndarray]:
    """Names and datatypes against the signature (shapes are the VMM's job); clear messages."""
    expected = {s.name: s for s in spec.inputs}
    unknown = sorted(set(req.inputs) - set(expected))
    if unknown:
        raise InputError(f"model {req.model!r} has no input(s) {unknown}; {spec.signature()}")
    missing = sorted(set(expected) - set(req.inputs))
    if missing:
        raise InputError(f"model {req.model!r}: missing input(s) {missing}; {spec.signature()}")
    for name, dtype in req.datatypes.items():
        want = expected[name].dtype
        if dtype is not want:
            raise InputError(
                f"model {req.model!r}: input {name!r} sent as {dtype.kserve} but the model expects {want.kserve}"
            )
    return dict(req.inputs)


def _request_options(params: Mapping[str, Any], default_timeout: float) -> tuple[float, int, float | None]:
    """(seconds to wait, priority, deadline for the runtime's scheduler or None).

    The server's own timeout is enforced here; only a deadline the client asked for reaches the
    runtime, whose deadline scheduling costs its caller-thread fast path.
    """
    timeout = default_timeout
    deadline_ms = None
    # Triton's per-request "timeout" is in microseconds; aivmm also accepts "deadline_ms".
    for key, scale in (("timeout", 1e-6), ("deadline_ms", 1e-3)):
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise InputError(f"parameter {key!r} must be a positive number, got {value!r}")
        timeout = min(timeout, value * scale)
        deadline_ms = timeout * 1e3
    priority = params.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InputError(f"parameter 'priority' must be an integer, got {priority!r}")
    return timeout, priority, deadline_ms


def _select_outputs(entry: Version, req: InferRequest, outputs: Mapping[str, Any]) -> InferResponse:
    default_binary = req.binary_output
    if req.outputs:
        chosen = []
        for r in req.outputs:
            if r.name not in outputs:
                raise InputError(f"model {req.model!r} has no output {r.name!r}; outputs: {list(outputs)}")
            chosen.append((r.name, np.asarray(outputs[r.name]), default_binary if r.binary is None else r.binary))
    else:
        chosen = [(n, np.asarray(a), default_binary) for n, a in outputs.items()]
    return InferResponse(
        req.model,
        str(entry.version),
        req.id,
        tuple((n, a) for n, a, _ in chosen),
        tuple(b for _, _, b in chosen),
    )
