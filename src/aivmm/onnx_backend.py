"""aivmm as an ONNX backend: ``onnx.backend.base.Backend`` over the VMM.

This lets the ONNX project's own yardstick, ``onnx.backend.test.BackendTest``, run against aivmm::

    import onnx.backend.test
    import aivmm.onnx_backend as backend

    globals().update(onnx.backend.test.BackendTest(backend.AivmmBackend, __name__).test_cases)   # auto
    ov = backend.with_backend("openvino")                                                          # one runtime
    globals().update(onnx.backend.test.BackendTest(ov, __name__).test_cases)

Two modes:

* **auto** (:class:`AivmmBackend`, or ``with_backend(None)``): each model goes through
  ``VMM.deploy`` on the asked device, so the planner picks a backend that can run it. When the
  chosen configuration then fails on the model (load or run), the next backend that drives the
  device is deployed instead; every attempt is recorded in :attr:`AivmmBackendRep.attempts` and
  logged, never silent. A backend can also run and be wrong: on the first run the outputs are
  checked against the ONNX reference evaluator (the spec's own implementation, see
  :mod:`aivmm._onnx_reference`), and on a mismatch the other backends of the device are tried in
  order and the first that matches serves (recorded as ``validate`` attempts; ``validate=False``
  turns the check off).
* **one backend** (``with_backend("onnxruntime" | "openvino" | "torch")``): straight through the
  registry (``models.load`` then ``registry.get(name).load`` on the device), no planner, no retry.

Device strings follow the ONNX convention (``"CPU"``, ``"CUDA"``, ``"CUDA:1"``) and are mapped to
aivmm device ids here (``cpu:0``, ``nvidia:1``); aivmm ids (``"intel-gpu:0"``) are accepted too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import onnx
import onnx.backend.base

from aivmm.errors import (
    AivmmError,
    BackendError,
    ConfigError,
    DeviceNotFoundError,
    InputError,
    ModelLoadError,
    UnsupportedModelError,
)

if TYPE_CHECKING:
    from aivmm.backends import Session
    from aivmm.devices import Device
    from aivmm.models import ModelSpec
    from aivmm.vmm import VMM, DeployedModel

log = logging.getLogger(__name__)

__all__ = ["AivmmBackend", "AivmmBackendRep", "Attempt", "BackendOptions", "device_id", "with_backend"]

# ONNX device type -> aivmm device-id prefix. Only names the ONNX backend API defines.
_ONNX_DEVICE_PREFIX = {"CPU": "cpu", "CUDA": "nvidia"}

# Errors after which another backend may succeed where the chosen one failed. Errors about the
# model file itself (ModelLoadError), the inputs or the arguments would fail the same everywhere.
_RETRYABLE: tuple[type[AivmmError], ...] = (BackendError, UnsupportedModelError)


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """How an :class:`AivmmBackend` class places models.

    ``backend`` is ``None`` for auto placement or the name of one aivmm backend. ``measure`` lets
    the planner time candidates on the model (slower to prepare, better choices); ``retry`` lets
    auto mode deploy the next backend when the chosen one fails on the model; ``validate`` (auto
    mode) checks the first outputs against the ONNX reference evaluator and moves to the next
    backend when they differ (see :mod:`aivmm._onnx_reference`).
    """

    backend: str | None = None
    measure: bool = False
    retry: bool = True
    validate: bool = True

    def __post_init__(self) -> None:
        if self.backend is not None and (not isinstance(self.backend, str) or not self.backend.strip()):
            raise ConfigError(f"backend must be a backend name or None for auto placement, got {self.backend!r}")

    @property
    def label(self) -> str:
        return "auto" if self.backend is None else self.backend


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One configuration tried for a model: where, and whether it worked (the error when not)."""

    config: str  # Config.label(), or "backend@device" when the failure came before a plan
    ok: bool
    stage: str  # "load", "run", or "validate" (outputs checked against the ONNX reference)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def device_id(device: str) -> str:
    """Map an ONNX device string (``CPU``, ``CUDA``, ``CUDA:1``) or an aivmm id to an aivmm device id."""
    if not isinstance(device, str) or not device.strip():
        raise ConfigError(f"device must be a string such as 'CPU' or 'CUDA:0', got {device!r}")
    text = device.strip()
    kind, sep, index = text.partition(":")
    prefix = _ONNX_DEVICE_PREFIX.get(kind.upper())
    if prefix is None:
        if sep and index.isdigit() and kind == kind.lower():
            return text  # already an aivmm id such as "intel-gpu:0"
        raise ConfigError(
            f"unknown device {device!r}: expected 'CPU', 'CUDA', 'CUDA:<n>' or an aivmm device id such as 'cpu:0'"
        )
    if sep and not index.isdigit():
        raise ConfigError(f"bad device {device!r}: the index after ':' must be a number")
    return f"{prefix}:{int(index) if sep else 0}"


# -- shared per-process state -----------------------------------------------------------------
_state_lock = threading.Lock()
_devices: tuple[Device, ...] | None = None
_vmm: VMM | None = None


def _all_devices() -> tuple[Device, ...]:
    global _devices
    with _state_lock:
        if _devices is None:
            from aivmm.devices import discover

            _devices = tuple(discover())
        return _devices


def _find_device(dev_id: str) -> Device:
    for d in _all_devices():
        if d.id == dev_id:
            return d
    known = ", ".join(d.id for d in _all_devices()) or "none"
    raise DeviceNotFoundError(f"no device {dev_id!r} on this machine; found: {known}")


def _shared_vmm() -> VMM:
    global _vmm
    devices = _all_devices()
    with _state_lock:
        if _vmm is None:
            from aivmm.vmm import VMM

            _vmm = VMM(devices)
        return _vmm


# -- model preparation ------------------------------------------------------------------------
def _as_model_proto(model: onnx.ModelProto | bytes | str | os.PathLike[str]) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        if isinstance(model, bytes | bytearray):
            return onnx.load_from_string(bytes(model))
        if isinstance(model, str | os.PathLike):
            return onnx.load(os.fspath(model))
    except OSError as exc:
        raise ModelLoadError(f"cannot read ONNX model {os.fspath(model)!r}: {exc}") from exc
    except Exception as exc:  # protobuf's DecodeError and onnx's errors share no narrower public base
        raise ModelLoadError(f"cannot parse ONNX model: {type(exc).__name__}: {exc}") from exc
    raise ConfigError(f"model must be an onnx.ModelProto, bytes or a path, got {type(model).__name__}")


def _feed_names(model: onnx.ModelProto) -> tuple[str, ...]:
    """The inputs a caller feeds: graph inputs that are not initializers (ONNX IR >= 4 lets an
    initializer be listed as an input too, giving it a default the caller may override)."""
    initializers = {t.name for t in model.graph.initializer}
    return tuple(i.name for i in model.graph.input if i.name not in initializers)


def _output_names(model: onnx.ModelProto) -> tuple[str, ...]:
    return tuple(o.name for o in model.graph.output)


def _feeds(names: Sequence[str], inputs: Any) -> dict[str, Any]:
    """Positional inputs (a list, as BackendTest passes them), one array, or a name -> array mapping."""
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; the model takes {list(names)}")
        return dict(inputs)
    if isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence):
        inputs = [inputs]
    if len(inputs) > len(names):
        raise InputError(f"{len(inputs)} inputs given, the model takes {len(names)}: {list(names)}")
    # Fewer inputs than names: aivmm's feed validation names the missing ones.
    return dict(zip(names, inputs))


class AivmmBackendRep(onnx.backend.base.BackendRep):
    """A model prepared by aivmm; ``run`` returns the outputs in model order.

    ``attempts`` lists every configuration tried for this model, in order; ``config`` is the one
    that serves it now. Closing (or garbage collection) unloads the model.
    """

    def __init__(self, model: onnx.ModelProto, device: Device, options: BackendOptions) -> None:
        self.options = options
        self.device = device
        self._names = _feed_names(model)
        self._outputs = _output_names(model)
        self._tmp = tempfile.TemporaryDirectory(prefix="aivmm-onnx-backend-")
        self.path = pathlib.Path(self._tmp.name) / "model.onnx"
        # Save through onnx so models carrying tensors too large for one protobuf get external data.
        onnx.save_model(model, os.fspath(self.path))
        self._attempts: list[Attempt] = []
        self._proto = model
        self._validated = not (options.backend is None and options.validate and options.retry)
        self._lock = threading.Lock()
        self._switch = threading.Lock()  # one thread at a time moves the model to the next backend
        self._closed = False
        self._run_fn: Callable[[dict[str, Any]], dict[str, Any]]
        self.config = ""  # the configuration serving the model now (Config.label())
        self._tried: set[str] = set()
        self._order: list[str] = []  # backends on this device, planner's order first
        # One mutable slot shared with the finalizer, so garbage collection unloads what is loaded now.
        self._closers: list[Callable[[], None]] = [lambda: None]
        self._finalizer = weakref.finalize(self, AivmmBackendRep._cleanup, self._tmp, self._closers)
        try:
            from aivmm.models import load

            # Analysed once: a model aivmm cannot read fails here, the same for every backend.
            self._spec: ModelSpec = load(self.path)
            self._open_first()
        except BaseException:
            self._finalizer()
            raise

    # -- lifecycle ------------------------------------------------------------------------
    @staticmethod
    def _cleanup(tmp: tempfile.TemporaryDirectory[str], closers: list[Callable[[], None]]) -> None:
        for close in closers:
            try:
                close()
            except AivmmError as exc:  # a model already gone is fine at teardown
                log.debug("closing a prepared model: %s", exc)
        tmp.cleanup()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer()

    def __enter__(self) -> AivmmBackendRep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return tuple(self._attempts)

    @property
    def feed_names(self) -> tuple[str, ...]:
        return self._names

    # -- placement -------------------------------------------------------------------------
    def _set_closer(self, close: Callable[[], None]) -> None:
        self._closers[:] = [close]

    def _open_first(self) -> None:
        if self.options.backend is not None:
            self._open_one(self.options.backend)
            return
        try:
            self._open_auto(None)
        except _RETRYABLE as exc:
            if not self.options.retry:
                raise
            # The planner's pick failed to load. Planning again without measuring is deterministic
            # and cheap, and says which backend that was and what comes next.
            from aivmm.planner import plan

            try:
                again = plan(self._spec, _all_devices(), device=self.device.id, strict=True, measure=False)
            except AivmmError:
                raise exc from None
            self._order = _backend_order(again, self.device)
            self._tried.add(again.chosen.config.backend)
            self._attempts[-1] = dataclasses.replace(self._attempts[-1], config=again.chosen.config.label())
            self._open_next(exc)

    def _open_next(self, first: AivmmError) -> None:
        """Deploy the next backend not tried yet. When none is left, raises the first failure (the
        planner's choice), its message extended with what every other attempt said."""
        cause = first
        while True:
            remaining = [b for b in self._order if b not in self._tried]
            if not remaining:
                if cause is first:
                    raise first
                tried = "; ".join(f"{a.config}: {a.error}" for a in self._attempts if not a.ok)
                raise type(first)(f"{first} (every backend for {self.device.id} failed: {tried})") from first
            log.warning(
                "model %s: %s failed (%s); trying %s",
                self.path.name,
                self._attempts[-1].config,
                _first_line(cause),
                remaining[0],
            )
            try:
                self._open_auto(remaining[0])
                return
            except _RETRYABLE as exc:
                cause = exc

    def _open_one(self, name: str) -> None:
        from aivmm.backends import Config, registry
        from aivmm.backends.tensors import validate_feeds

        spec = self._spec
        backend = registry.get(name)
        config = Config(backend=name, device=self.device.id)
        support = backend.check(spec, self.device, config)
        if not support:
            self._attempts.append(Attempt(config.label(), False, "load", "; ".join(support.reasons)))
            raise UnsupportedModelError(
                f"{name} cannot run this model on {self.device.id}: {'; '.join(support.reasons)}"
            )
        try:
            session: Session = backend.load(spec, self.device, config)
        except AivmmError as exc:
            self._attempts.append(Attempt(config.label(), False, "load", _first_line(exc)))
            raise
        self._attempts.append(Attempt(config.label(), True, "load"))
        self.config = config.label()
        self._set_closer(session.close)

        def run(feeds: dict[str, Any]) -> dict[str, Any]:
            return session.run(validate_feeds(spec, feeds))

        self._run_fn = run

    def _open_auto(self, backend: str | None) -> None:
        """Deploy through the VMM: the planner's choice (``backend=None``) or one backend, on this device."""
        vmm = _shared_vmm()
        name = f"onnx-backend-{uuid.uuid4().hex[:12]}"
        if backend is not None:
            self._tried.add(backend)
        try:
            deployed: DeployedModel = vmm.deploy(
                self._spec,
                device=self.device.id,
                backend=backend,
                strict=True,
                name=name,
                measure=self.options.measure,
            )
        except AivmmError as exc:
            self._attempts.append(
                Attempt(f"{backend or 'planner choice'}@{self.device.id}", False, "load", _first_line(exc))
            )
            raise
        chosen = deployed.plan.chosen.config
        self._tried.add(chosen.backend)
        if not self._order:
            self._order = _backend_order(deployed.plan, self.device)
        self._attempts.append(Attempt(chosen.label(), True, "load"))
        self.config = chosen.label()
        self._set_closer(deployed.close)
        self._run_fn = deployed.execute

    # -- execution -------------------------------------------------------------------------
    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run the model; ``inputs`` positional (graph-input order), one array, or a mapping by name."""
        if kwargs:
            raise ConfigError(f"unsupported run option(s) {sorted(kwargs)}")
        feeds = _feeds(self._names, inputs)
        out = self._run_retrying(feeds)
        if not self._validated:
            out = self._validate(feeds, out)
        return tuple(out[name] for name in self._outputs)

    def _run_retrying(self, feeds: dict[str, Any]) -> dict[str, Any]:
        while True:
            run_fn, config = self._run_fn, self.config
            try:
                return run_fn(feeds)
            except _RETRYABLE as exc:
                if self.options.backend is not None or not self.options.retry:
                    self._attempts.append(Attempt(config, False, "run", _first_line(exc)))
                    raise
                with self._switch:
                    if self._run_fn is run_fn:  # another thread may have moved on already
                        self._attempts.append(Attempt(config, False, "run", _first_line(exc)))
                        self._closers[0]()
                        self._set_closer(lambda: None)
                        self._open_next(exc)

    def _validate(self, feeds: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        """First run in auto mode: keep the serving backend if its outputs match the ONNX reference;
        else serve from the first other backend of the device (planner's order, default
        configuration) whose outputs do, each try recorded in ``attempts`` and logged. When none
        matches, or the reference cannot run the model, the planner's choice keeps serving."""
        from aivmm import _onnx_reference

        with self._switch:
            if self._validated:
                return self._run_fn(feeds)  # another thread validated (and maybe moved) meanwhile
            self._validated = True
            ref = _onnx_reference.evaluate(self._proto, feeds, flops=self._spec.flops)
            if ref.outputs is None:
                log.debug("model %s: outputs not validated: %s", self.path.name, ref.unavailable)
                return out
            diff = _onnx_reference.mismatch(out, ref.outputs, self._outputs)
            if diff is None:
                return out
            first = (self._run_fn, self.config, self._closers[0])
            self._attempts.append(Attempt(self.config, False, "validate", diff))
            others = [b for b in self._order if b not in self._tried]
            log.warning("model %s: %s: %s; trying %s", self.path.name, first[1], diff, ", ".join(others) or "nothing")
            for backend in others:
                loaded = False
                self._tried.add(backend)
                try:
                    # The backend's default configuration straight from the registry, as in
                    # one-backend mode: a check on one input is no reason to compile a graph.
                    self._open_one(backend)  # records its own failure to load
                    loaded = True
                    candidate = self._run_fn(feeds)
                except AivmmError as exc:  # any failure of a try only rules that backend out
                    if loaded:
                        self._attempts.append(Attempt(self.config, False, "run", _first_line(exc)))
                    self._close_unless(first[2])
                    continue
                other = _onnx_reference.mismatch(candidate, ref.outputs, self._outputs)
                if other is None:
                    self._attempts.append(Attempt(self.config, True, "validate"))
                    log.warning("model %s: %s matches the ONNX reference and serves it", self.path.name, self.config)
                    first[2]()
                    return candidate
                self._attempts.append(Attempt(self.config, False, "validate", other))
                self._close_unless(first[2])
            # No backend agrees with the reference: the planner's choice serves, as before the check.
            log.warning("model %s: no backend matches the ONNX reference; %s keeps serving", self.path.name, first[1])
            self._run_fn, self.config = first[0], first[1]
            self._set_closer(first[2])
            return out

    def _close_unless(self, keep: Callable[[], None]) -> None:
        """Unload what a failed validation try loaded (never the configuration kept in reserve)."""
        if self._closers[0] is not keep:
            self._closers[0]()
        self._set_closer(keep)


def _backend_order(plan: Any, device: Device) -> list[str]:
    """Backends for this device: the plan's chosen and alternatives first, then the device's others."""
    order: list[str] = []
    for cand in (plan.chosen, *plan.alternatives):
        if cand.config.device == device.id and cand.config.backend not in order:
            order.append(cand.config.backend)
    order += [b for b in device.runtimes if b not in order]
    return order


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class AivmmBackend(onnx.backend.base.Backend):
    """The ONNX backend API over aivmm. Subclasses made by :func:`with_backend` bind the options."""

    options: ClassVar[BackendOptions] = BackendOptions()
    # Tooling hook (the conformance runner): called with every prepared model, for its attempts.
    observer: ClassVar[Callable[[AivmmBackendRep], None] | None] = None

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """Whether this machine has the device (and, in one-backend mode, whether that backend drives it)."""
        try:
            dev = _find_device(device_id(device))
        except (ConfigError, DeviceNotFoundError):
            return False
        if cls.options.backend is None:
            return bool(dev.runtimes)
        return cls.options.backend in dev.runtimes

    @classmethod
    def prepare(
        cls, model: onnx.ModelProto | bytes | str | os.PathLike[str], device: str = "CPU", **kwargs: Any
    ) -> AivmmBackendRep:
        if kwargs:
            raise ConfigError(f"unsupported prepare option(s) {sorted(kwargs)}")
        proto = _as_model_proto(model)
        dev = _find_device(device_id(device))
        rep = AivmmBackendRep(proto, dev, cls.options)
        if cls.observer is not None:
            cls.observer(rep)
        return rep

    @classmethod
    def run_model(
        cls, model: onnx.ModelProto | bytes | str | os.PathLike[str], inputs: Any, device: str = "CPU", **kwargs: Any
    ) -> tuple[Any, ...]:
        with cls.prepare(model, device, **kwargs) as rep:
            return rep.run(inputs)

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Any,
        device: str = "CPU",
        outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Run one operator: wraps the node in a one-node model typed from the inputs."""
        opset = kwargs.pop("opset_version", None)
        model = _node_model(node, inputs, outputs_info, opset)
        return cls.run_model(model, [np.asarray(x) for x in inputs], device, **kwargs)


def _node_model(
    node: onnx.NodeProto,
    inputs: Sequence[Any],
    outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None,
    opset: int | None,
) -> onnx.ModelProto:
    from onnx import helper

    present = [n for n in node.input if n]
    if len(inputs) != len(present):
        raise InputError(f"node {node.op_type} takes {len(present)} input(s), {len(inputs)} given")
    graph_inputs = []
    for name, value in zip(present, inputs):
        arr = np.asarray(value)
        try:
            elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"input {name!r}: numpy dtype {arr.dtype} has no ONNX element type") from exc
        graph_inputs.append(helper.make_tensor_value_info(name, elem, arr.shape))
    if outputs_info is not None:
        if len(outputs_info) != len(node.output):
            raise InputError(f"outputs_info has {len(outputs_info)} entries, node has {len(node.output)} outputs")
        graph_outputs = [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)
            for n, (dt, shape) in zip(node.output, outputs_info)
        ]
    else:
        graph_outputs = [helper.make_empty_tensor_value_info(n) for n in node.output if n]
    domain = node.domain or ""
    version = opset if opset is not None else onnx.defs.onnx_opset_version()
    opsets = [helper.make_opsetid("", version if domain == "" else onnx.defs.onnx_opset_version())]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    graph = helper.make_graph([node], f"{node.op_type}_node", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=opsets)
    if outputs_info is None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        except onnx.shape_inference.InferenceError as exc:
            raise UnsupportedModelError(f"node {node.op_type}: shape inference failed: {exc}") from exc
        typed = {v.name: v for v in inferred.graph.value_info}
        for out in model.graph.output:
            if out.name in typed:
                out.CopyFrom(typed[out.name])
    return model


def with_backend(
    name: str | None, *, measure: bool = False, retry: bool = True, validate: bool = True
) -> type[AivmmBackend]:
    """An :class:`AivmmBackend` class bound to one backend (``None`` = auto placement).

    >>> ov = with_backend("openvino")      # doctest: +SKIP
    >>> onnx.backend.test.BackendTest(ov, __name__)  # doctest: +SKIP
    """
    options = BackendOptions(backend=name, measure=measure, retry=retry, validate=validate)
    if name is not None:
        from aivmm.backends import registry

        if name not in registry.names():
            raise ConfigError(f"unknown backend {name!r}; known: {', '.join(registry.names())}")
    suffix = options.label.replace("-", "_")
    return type(f"AivmmBackend_{suffix}", (AivmmBackend,), {"options": options, "__module__": __name__})


# The ONNX backend convention is a module exposing these functions (onnxruntime.backend does so);
# they run in auto mode.
prepare = AivmmBackend.prepare
run_model = AivmmBackend.run_model
run_node = AivmmBackend.run_node
supports_device = AivmmBackend.supports_device
